"""GoogLeNet: d2l's shape walk at 96×96, parameter count, float64 gradcheck of
the Inception block, weight exchange with a PyTorch twin of the seed code,
one forward/backward and a few SGD steps."""
import functools
import types

import pytest

import tinygrad_cnn as tc
from models import googlenet
from tests.inputs import distinct
from tests.models.checks import (assert_forward_backward,
                                      assert_loads_float32_torch_state_dict,
                                      assert_sgd_lowers_loss, assert_torch_parity,
                                      count_parameters, once_per_run, shape_walk)


@functools.lru_cache(maxsize=None)
def torch_googlenet():
    """d2l's Inception and b1…b5 network in PyTorch."""
    torch = pytest.importorskip("torch")
    tnn, TF = torch.nn, torch.nn.functional

    class Inception(tnn.Module):
        def __init__(self, in_channels, c1, c2, c3, c4):
            super().__init__()
            self.p1_1 = tnn.Conv2d(in_channels, c1, kernel_size=1)
            self.p2_1 = tnn.Conv2d(in_channels, c2[0], kernel_size=1)
            self.p2_2 = tnn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1)
            self.p3_1 = tnn.Conv2d(in_channels, c3[0], kernel_size=1)
            self.p3_2 = tnn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2)
            self.p4_1 = tnn.MaxPool2d(kernel_size=3, stride=1, padding=1)
            self.p4_2 = tnn.Conv2d(in_channels, c4, kernel_size=1)

        def forward(self, x):
            p1 = TF.relu(self.p1_1(x))
            p2 = TF.relu(self.p2_2(TF.relu(self.p2_1(x))))
            p3 = TF.relu(self.p3_2(TF.relu(self.p3_1(x))))
            p4 = TF.relu(self.p4_2(self.p4_1(x)))
            return torch.cat((p1, p2, p3, p4), dim=1)

    def googlenet():
        b1 = tnn.Sequential(tnn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
                            tnn.ReLU(), tnn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        b2 = tnn.Sequential(tnn.Conv2d(64, 64, kernel_size=1), tnn.ReLU(),
                            tnn.Conv2d(64, 192, kernel_size=3, padding=1), tnn.ReLU(),
                            tnn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        b3 = tnn.Sequential(Inception(192, 64, (96, 128), (16, 32), 32),
                            Inception(256, 128, (128, 192), (32, 96), 64),
                            tnn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        b4 = tnn.Sequential(Inception(480, 192, (96, 208), (16, 48), 64),
                            Inception(512, 160, (112, 224), (24, 64), 64),
                            Inception(512, 128, (128, 256), (24, 64), 64),
                            Inception(512, 112, (144, 288), (32, 64), 64),
                            Inception(528, 256, (160, 320), (32, 128), 128),
                            tnn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        b5 = tnn.Sequential(Inception(832, 256, (160, 320), (32, 128), 128),
                            Inception(832, 384, (192, 384), (48, 128), 128),
                            tnn.AdaptiveAvgPool2d((1, 1)), tnn.Flatten())
        return tnn.Sequential(b1, b2, b3, b4, b5, tnn.Linear(1024, 10))

    return types.SimpleNamespace(Inception=Inception, googlenet=googlenet)


SMALL_INCEPTION = (3, 2, (2, 3), (2, 2), 2)     # in_channels, c1, c2, c3, c4


# ======================================================================= shapes
# d2l 7.4's walk over a 1×1×96×96 input.
D2L_GOOGLENET_WALK = [
    ("Sequential", (1, 64, 24, 24)),
    ("Sequential", (1, 192, 12, 12)),
    ("Sequential", (1, 480, 6, 6)),
    ("Sequential", (1, 832, 3, 3)),
    ("Sequential", (1, 1024)),
    ("Linear", (1, 10)),
]


def test_shape_walk_matches_d2l(request, kernel_set):
    once_per_run(request, kernel_set)
    assert shape_walk(googlenet.googlenet(), (1, 1, 96, 96)) == D2L_GOOGLENET_WALK


def test_inception_concatenates_paths_and_keeps_hw():
    blk = googlenet.Inception(192, 64, (96, 128), (16, 32), 32)
    assert blk(tc.rand(2, 192, 7, 5)).shape == (2, 64 + 128 + 32 + 32, 7, 5)


def test_inception_channel_order_is_p1_p2_p3_p4():
    """The concatenation order decides which weights meet which channels in
    the next block: zero every path but one and see where it lands."""
    blk = googlenet.Inception(*SMALL_INCEPTION)
    for conv in (blk.p1_1, blk.p2_2, blk.p3_2, blk.p4_2):
        conv.weight.data[...] = 0
        conv.bias.data[...] = 0
    blk.p3_2.bias.data[...] = 1.0                 # relu(1) = 1 on path 3 only
    out = blk(tc.rand(1, 3, 4, 4)).detach().numpy()
    on = [float(out[0, c].max()) for c in range(out.shape[1])]
    assert on == [0, 0, 0, 0, 0, 1, 1, 0, 0]        # channels: 2 | 3 | 2 | 2


# ================================================================= parameters
def test_parameter_count(request, kernel_set):
    once_per_run(request, kernel_set)
    assert count_parameters(googlenet.googlenet()) == 5_977_530


def test_state_dict_keys_follow_d2l(request, kernel_set):
    once_per_run(request, kernel_set)
    keys = googlenet.googlenet().state_dict()
    for key in ["0.0.weight", "1.2.bias", "2.0.p1_1.weight", "2.1.p2_2.weight",
                "3.4.p3_2.bias", "4.1.p4_2.weight", "5.weight"]:
        assert key in keys
    assert not any("p4_1" in key for key in keys)       # the max pool holds nothing


def test_builder_takes_in_channels_and_num_classes(request, kernel_set):
    once_per_run(request, kernel_set)
    net = googlenet.googlenet(in_channels=3, num_classes=7)
    assert net(tc.rand(2, 3, 32, 32)).shape == (2, 7)


# ================================================================== gradcheck
def test_inception_gradcheck():
    block = googlenet.Inception(*SMALL_INCEPTION).double()
    x = tc.tensor(distinct(2, 3, 5, 5), requires_grad=True)
    tc.gradcheck_module(block, (x,))


# ============================================================= PyTorch parity
def test_inception_matches_torch():
    assert_torch_parity(lambda: googlenet.Inception(4, 3, (2, 4), (2, 3), 2),
                        lambda: torch_googlenet().Inception(4, 3, (2, 4), (2, 3), 2),
                        (2, 4, 6, 6))


def test_network_matches_torch(request, kernel_set):
    once_per_run(request, kernel_set)
    assert_torch_parity(googlenet.googlenet, torch_googlenet().googlenet, (2, 1, 64, 64))


def test_loads_float32_torch_state_dict(request, kernel_set):
    once_per_run(request, kernel_set)
    assert_loads_float32_torch_state_dict(googlenet.googlenet, torch_googlenet().googlenet,
                                          (2, 1, 64, 64))


# ============================================================= whole network
def test_forward_backward_at_d2l_size(request, kernel_set):
    once_per_run(request, kernel_set)
    assert_forward_backward(googlenet.googlenet(), (2, 1, 96, 96))


def test_sgd_steps_lower_the_loss(request, kernel_set):
    once_per_run(request, kernel_set)
    assert_sgd_lowers_loss(googlenet.googlenet(), (4, 1, 96, 96), lr=0.1)     # d2l's lr
