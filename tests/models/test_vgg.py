"""VGG: vgg_block, vgg(conv_arch), VGG-11 and the ratio-4 small VGG-11.

Full VGG-11 (128.8M parameters, ~7.6 GFLOP per 224×224 image forward) is
only built once, for its parameter count and d2l's shape table; the
forward/backward and SGD tests use the small variant d2l actually trains
(224×224 is forced by the first Linear's 512·7·7 inputs).  Numerical parity
with PyTorch is shown on a two-block ``vgg`` at 28×28 (same code, 7·2² = 28)
and the state-dict layout on the small VGG-11.
"""
import numpy as np
import pytest

import models
import tinygrad_cnn as tc
from models import vgg
from tests.inputs import distinct
from tests.models.checks import (assert_forward_backward, assert_sgd_lowers_loss,
                                      count_parameters, once_per_run)
from tests.models.torch_nets import (assert_same_as_torch, assert_same_state_layout,
                                     torch_nets)
from tinygrad_cnn.summary import summary

TWO_BLOCKS = ((1, 4), (2, 8))           # 28×28 input: 28 / 2² = 7


@pytest.fixture(scope="module")
def vgg11_net():
    return vgg.vgg11()


@pytest.fixture(scope="module")
def vgg11_small_net():
    return vgg.vgg11_small()


# ======================================================================= blocks
@pytest.mark.parametrize("num_convs", [1, 2, 3])
def test_vgg_block_layers_and_shape(num_convs):
    block = vgg.vgg_block(num_convs, 3, 5)
    kinds = [type(layer).__name__ for layer in block]
    assert kinds == ["Conv2d", "ReLU"] * num_convs + ["MaxPool2d"]
    assert [block[2 * i].weight.shape for i in range(num_convs)] == \
        [(5, 3, 3, 3)] + [(5, 5, 3, 3)] * (num_convs - 1)
    assert block(tc.rand(2, 3, 8, 6)).shape == (2, 5, 4, 3)


def test_vgg_block_gradcheck():
    block = vgg.vgg_block(2, 2, 3).double()
    tc.gradcheck_module(block, (tc.tensor(distinct(2, 2, 4, 4), requires_grad=True),))


def test_vgg_chains_blocks_by_conv_arch():
    net = vgg.vgg(TWO_BLOCKS, in_channels=3, num_classes=7)
    assert net[0][0].weight.shape == (4, 3, 3, 3)
    assert [type(layer).__name__ for layer in net[1]] == \
        ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d"]
    assert net[3].weight.shape == (4096, 8 * 7 * 7)
    assert net(tc.rand(2, 3, 28, 28)).shape == (2, 7)


# ======================================================================= VGG-11
# d2l's walk over a 1×1×224×224 input (§7.2 Networks Using Blocks (VGG),
# https://d2l.ai/chapter_convolutional-modern/vgg.html).
D2L_VGG11_WALK = [
    ("Sequential", (1, 64, 112, 112)), ("Sequential", (1, 128, 56, 56)),
    ("Sequential", (1, 256, 28, 28)), ("Sequential", (1, 512, 14, 14)),
    ("Sequential", (1, 512, 7, 7)), ("Flatten", (1, 25088)),
    ("Linear", (1, 4096)), ("ReLU", (1, 4096)), ("Dropout", (1, 4096)),
    ("Linear", (1, 4096)), ("ReLU", (1, 4096)), ("Dropout", (1, 4096)),
    ("Linear", (1, 10)),
]


def test_vgg11_shape_walk_matches_seed(request, kernel_set, vgg11_net):
    once_per_run(request, kernel_set)
    rows = summary(vgg11_net, (1, 1, 224, 224), show=False).rows
    assert [(r.layer, r.output_shape) for r in rows] == D2L_VGG11_WALK


def test_vgg11_parameter_count(vgg11_net):
    assert count_parameters(vgg11_net) == 128_806_154


def test_vgg11_convs_follow_conv_arch(vgg11_net):
    """8 convs in blocks of 1, 1, 2, 2, 2 (hence VGG-11 with the 3 linears)."""
    convs = [[layer.weight.shape[:2] for layer in block if type(layer).__name__ == "Conv2d"]
             for block in list(vgg11_net)[:5]]
    assert convs == [[(64, 1)], [(128, 64)], [(256, 128), (256, 256)],
                     [(512, 256), (512, 512)], [(512, 512), (512, 512)]]


# ================================================================ small VGG-11
def test_small_shape_walk(request, kernel_set, vgg11_small_net):
    """d2l's table with the channels divided by 4."""
    once_per_run(request, kernel_set)
    rows = summary(vgg11_small_net, (1, 1, 224, 224), show=False).rows
    expected = [(kind, (1, shape[1] // 4) + shape[2:]) if kind == "Sequential" else
                (kind, shape) for kind, shape in D2L_VGG11_WALK]
    expected[5] = ("Flatten", (1, 25088 // 4))
    assert [(r.layer, r.output_shape) for r in rows] == expected


def test_small_parameter_count(vgg11_small_net):
    assert count_parameters(vgg11_small_net) == 43_093_322


def test_builder_takes_in_channels_and_num_classes():
    """(vgg11 passes them the same way; building its 128.8M parameters twice
    would only cost time.)"""
    net = vgg.vgg11_small(in_channels=3, num_classes=7)
    assert net[0][0].weight.shape[1] == 3
    assert net[-1].weight.shape == (7, 4096)


def test_ratio_divides_every_block():
    net = vgg.vgg11_small(ratio=8)
    assert [block[0].weight.shape[0] for block in list(net)[:5]] == [8, 16, 32, 64, 64]


# ================================================================ PyTorch parity
def test_vgg_matches_torch(request, kernel_set):
    """Eval mode only: dropout masks differ between libraries.  float32: even
    this VGG keeps the 4096-wide layers (17M weights)."""
    once_per_run(request, kernel_set)
    assert_same_as_torch(vgg.vgg(TWO_BLOCKS), torch_nets().vgg(TWO_BLOCKS), (2, 1, 28, 28),
                         modes=("eval",), dtype=np.float32, rtol=1e-4)


def test_small_state_dict_layout_matches_torch(request, kernel_set, vgg11_small_net):
    once_per_run(request, kernel_set)
    twin = torch_nets().vgg([(n, c // 4) for n, c in vgg.VGG11_ARCH])
    assert_same_state_layout(vgg11_small_net, twin)


# ================================================================ whole network
def test_vgg11_forward_backward_at_d2l_size(request, kernel_set, vgg11_net):
    """The full network (129M parameters, about 7.6 GFLOP per image forward)."""
    once_per_run(request, kernel_set)
    assert_forward_backward(vgg11_net.train(), (2, 1, 224, 224))


def test_vgg11_sgd_steps_lower_the_loss(request, kernel_set, vgg11_net):
    """As the small one below: dropout off, one image."""
    once_per_run(request, kernel_set)
    assert_sgd_lowers_loss(vgg11_net.eval(), (1, 1, 224, 224),
                           lr=models.spec("vgg11").lr, steps=2)


def test_small_forward_backward_at_d2l_size(request, kernel_set, vgg11_small_net):
    once_per_run(request, kernel_set)
    assert_forward_backward(vgg11_small_net.train(), (2, 1, 224, 224))


def test_small_sgd_steps_lower_the_loss(request, kernel_set, vgg11_small_net):
    """Dropout off (eval mode): the loss on the fixed batch is a function of
    the weights alone.  One image, to keep the three 224×224 passes cheap."""
    once_per_run(request, kernel_set)
    assert_sgd_lowers_loss(vgg11_small_net.eval(), (1, 1, 224, 224),
                           lr=models.spec("vgg11_small").lr, steps=2)
