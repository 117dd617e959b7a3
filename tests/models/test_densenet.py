"""DenseNet: the shape walk at 96×96, parameter count, float64 gradchecks of
the conv, dense and transition blocks, weight exchange with a PyTorch twin of
the seed code, one forward/backward and a few SGD steps."""
import functools
import types

import pytest

import tinygrad_cnn as tc
from models import densenet
from tests.inputs import distinct
from tests.models.checks import (assert_forward_backward,
                                      assert_loads_float32_torch_state_dict,
                                      assert_sgd_lowers_loss, assert_torch_parity,
                                      count_parameters, once_per_run, shape_walk)


@functools.lru_cache(maxsize=None)
def torch_densenet():
    """d2l's conv_block, DenseBlock, transition_block and DenseNet in PyTorch."""
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    def conv_block(input_channels, num_channels):
        return tnn.Sequential(tnn.BatchNorm2d(input_channels), tnn.ReLU(),
                              tnn.Conv2d(input_channels, num_channels, kernel_size=3,
                                         padding=1))

    class DenseBlock(tnn.Module):
        def __init__(self, num_convs, input_channels, num_channels):
            super().__init__()
            layer = []
            for i in range(num_convs):
                layer.append(conv_block(num_channels * i + input_channels, num_channels))
            self.net = tnn.Sequential(*layer)

        def forward(self, X):
            for blk in self.net:
                Y = blk(X)
                X = torch.cat((X, Y), dim=1)
            return X

    def transition_block(input_channels, num_channels):
        return tnn.Sequential(tnn.BatchNorm2d(input_channels), tnn.ReLU(),
                              tnn.Conv2d(input_channels, num_channels, kernel_size=1),
                              tnn.AvgPool2d(kernel_size=2, stride=2))

    def densenet():
        b1 = tnn.Sequential(tnn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
                            tnn.BatchNorm2d(64), tnn.ReLU(),
                            tnn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        num_channels, growth_rate = 64, 32
        num_convs_in_dense_blocks = [4, 4, 4, 4]
        blks = []
        for i, num_convs in enumerate(num_convs_in_dense_blocks):
            blks.append(DenseBlock(num_convs, num_channels, growth_rate))
            num_channels += num_convs * growth_rate
            if i != len(num_convs_in_dense_blocks) - 1:
                blks.append(transition_block(num_channels, num_channels // 2))
                num_channels = num_channels // 2
        return tnn.Sequential(b1, *blks, tnn.BatchNorm2d(num_channels), tnn.ReLU(),
                              tnn.AdaptiveAvgPool2d((1, 1)), tnn.Flatten(),
                              tnn.Linear(num_channels, 10))

    return types.SimpleNamespace(conv_block=conv_block, DenseBlock=DenseBlock,
                                 transition_block=transition_block, densenet=densenet)


# ======================================================================= shapes
# d2l's DenseNet over a 1×1×96×96 input.  The stem quarters H and W (96 -> 24);
# each dense block adds 4 convs × growth rate 32 = 128 channels; each
# transition halves the channels and H, W: 64 -> 192 -> 96 -> 224 -> 112 ->
# 240 -> 120 -> 248.
D2L_DENSENET_WALK = [
    ("Sequential", (1, 64, 24, 24)),
    ("DenseBlock", (1, 192, 24, 24)),
    ("Sequential", (1, 96, 12, 12)),
    ("DenseBlock", (1, 224, 12, 12)),
    ("Sequential", (1, 112, 6, 6)),
    ("DenseBlock", (1, 240, 6, 6)),
    ("Sequential", (1, 120, 3, 3)),
    ("DenseBlock", (1, 248, 3, 3)),
    ("BatchNorm2d", (1, 248, 3, 3)),
    ("ReLU", (1, 248, 3, 3)),
    ("AdaptiveAvgPool2d", (1, 248, 1, 1)),
    ("Flatten", (1, 248)),
    ("Linear", (1, 10)),
]


def test_shape_walk_matches_d2l(request, kernel_set):
    once_per_run(request, kernel_set)
    assert shape_walk(densenet.densenet(), (1, 1, 96, 96)) == D2L_DENSENET_WALK


def test_dense_block_matches_d2l_example():
    """d2l: 2 convs of 10 channels on 3 input channels give 3 + 2·10 = 23."""
    assert densenet.DenseBlock(2, 3, 10)(tc.rand(4, 3, 8, 8)).shape == (4, 23, 8, 8)


def test_dense_block_passes_its_input_through():
    """The block's first channels ARE its input (concatenation, not a sum)."""
    x = tc.rand(2, 3, 4, 4)
    with tc.no_grad():
        y = densenet.DenseBlock(2, 3, 4)(x)
    assert (y.numpy()[:, :3] == x.numpy()).all()


def test_transition_block_halves_hw_and_sets_channels():
    assert densenet.transition_block(23, 10)(tc.rand(4, 23, 8, 8)).shape == (4, 10, 4, 4)


# ================================================================= parameters
def test_parameter_count(request, kernel_set):
    once_per_run(request, kernel_set)
    assert count_parameters(densenet.densenet()) == 758_226


def test_state_dict_keys_follow_d2l(request, kernel_set):
    once_per_run(request, kernel_set)
    keys = densenet.densenet().state_dict()
    for key in ["0.0.weight", "0.1.running_mean", "1.net.0.0.weight", "1.net.3.2.bias",
                "2.2.weight", "7.net.3.0.num_batches_tracked", "8.running_var",
                "12.weight"]:
        assert key in keys


def test_builder_takes_in_channels_and_num_classes(request, kernel_set):
    once_per_run(request, kernel_set)
    net = densenet.densenet(in_channels=3, num_classes=7)
    assert net(tc.rand(2, 3, 32, 32)).shape == (2, 7)


# ================================================================= gradchecks
BLOCKS = {
    "conv_block": (lambda: densenet.conv_block(3, 2), (2, 3, 4, 4)),
    "dense_block": (lambda: densenet.DenseBlock(2, 3, 2), (2, 3, 4, 4)),
    "transition_block": (lambda: densenet.transition_block(4, 2), (2, 4, 4, 4)),
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", BLOCKS)
def test_block_gradcheck(name, mode):
    build, shape = BLOCKS[name]
    block = build().double()
    if mode == "eval":
        with tc.no_grad():      # move the running statistics off their (0, 1) start
            block(tc.tensor(distinct(*shape, seed=1) + 0.5))
        block.eval()
    x = tc.tensor(distinct(*shape), requires_grad=True)
    tc.gradcheck_module(block, (x,))


# ============================================================= PyTorch parity
@pytest.mark.parametrize("name, args, input_shape", [
    ("DenseBlock", (3, 4, 3), (3, 4, 6, 6)),          # num_convs, in, growth
    ("transition_block", (6, 3), (3, 6, 6, 6)),
])
def test_block_matches_torch(name, args, input_shape):
    assert_torch_parity(lambda: getattr(densenet, name)(*args),
                        lambda: getattr(torch_densenet(), name)(*args), input_shape)


def test_network_matches_torch(request, kernel_set):
    once_per_run(request, kernel_set)
    # 64×64: the last dense block's BN then sees 2·2·2 values per channel.
    assert_torch_parity(densenet.densenet, torch_densenet().densenet, (2, 1, 64, 64))


def test_loads_float32_torch_state_dict(request, kernel_set):
    once_per_run(request, kernel_set)
    assert_loads_float32_torch_state_dict(densenet.densenet, torch_densenet().densenet,
                                          (2, 1, 64, 64))


# ============================================================= whole network
def test_forward_backward_at_d2l_size(request, kernel_set):
    once_per_run(request, kernel_set)
    assert_forward_backward(densenet.densenet(), (2, 1, 96, 96))


def test_sgd_steps_lower_the_loss(request, kernel_set):
    once_per_run(request, kernel_set)
    assert_sgd_lowers_loss(densenet.densenet(), (4, 1, 96, 96), lr=0.1)     # d2l's lr
