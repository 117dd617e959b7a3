"""NiN: nin_block, d2l's shape table at 224×224, the parameter count,
weight exchange with a PyTorch twin, one forward/backward and a few SGD steps."""
import pytest

import models
import tinygrad_cnn as tc
from models import nin
from tests.inputs import distinct
from tests.models.checks import (assert_forward_backward, assert_sgd_lowers_loss,
                                      count_parameters, once_per_run)
from tests.models.torch_nets import assert_same_as_torch, torch_nets
from tinygrad_cnn.summary import summary


@pytest.fixture(scope="module")
def nin_net():
    return nin.nin()


# ======================================================================== block
@pytest.mark.parametrize("kernel_size, strides, padding, out_hw",
                         [(11, 4, 0, (1, 2)), (5, 1, 2, (14, 17)), (3, 1, 1, (14, 17))])
def test_nin_block_is_a_conv_then_two_1x1_convs(kernel_size, strides, padding, out_hw):
    block = nin.nin_block(3, 6, kernel_size, strides, padding)
    assert [type(layer).__name__ for layer in block] == ["Conv2d", "ReLU"] * 3
    assert [block[i].weight.shape for i in (0, 2, 4)] == \
        [(6, 3, kernel_size, kernel_size), (6, 6, 1, 1), (6, 6, 1, 1)]
    assert block(tc.rand(2, 3, 14, 17)).shape == (2, 6) + out_hw


def test_nin_block_gradcheck():
    block = nin.nin_block(2, 3, kernel_size=3, strides=2, padding=1).double()
    tc.gradcheck_module(block, (tc.tensor(distinct(2, 2, 5, 5), requires_grad=True),))


# ====================================================================== network
# d2l's walk over a 1×1×224×224 input (§7.3 Network in Network (NiN),
# https://d2l.ai/chapter_convolutional-modern/nin.html).
D2L_NIN_WALK = [
    ("Sequential", (1, 96, 54, 54)), ("MaxPool2d", (1, 96, 26, 26)),
    ("Sequential", (1, 256, 26, 26)), ("MaxPool2d", (1, 256, 12, 12)),
    ("Sequential", (1, 384, 12, 12)), ("MaxPool2d", (1, 384, 5, 5)),
    ("Dropout", (1, 384, 5, 5)), ("Sequential", (1, 10, 5, 5)),
    ("AdaptiveAvgPool2d", (1, 10, 1, 1)), ("Flatten", (1, 10)),
]


def test_shape_walk_matches_seed(request, kernel_set, nin_net):
    once_per_run(request, kernel_set)
    rows = summary(nin_net, (1, 1, 224, 224), show=False).rows
    assert [(r.layer, r.output_shape) for r in rows] == D2L_NIN_WALK


def test_global_pooling_accepts_inputs_down_to_67(request, kernel_set, nin_net):
    once_per_run(request, kernel_set)
    assert summary(nin_net, (1, 1, 67, 67), show=False).rows[-1].output_shape == (1, 10)


def test_parameter_count(nin_net):
    assert count_parameters(nin_net) == 1_992_166


def test_builder_takes_in_channels_and_num_classes():
    net = nin.nin(in_channels=3, num_classes=7)
    assert net[0][0].weight.shape == (96, 3, 11, 11)
    assert [net[7][i].weight.shape for i in (0, 2, 4)] == [(7, 384, 3, 3), (7, 7, 1, 1),
                                                           (7, 7, 1, 1)]


def test_matches_torch(request, kernel_set):
    """float64 at 96×96 (global pooling takes any size ≥ 67); eval mode only,
    as dropout masks differ between libraries."""
    once_per_run(request, kernel_set)
    assert_same_as_torch(nin.nin(), torch_nets().nin(), (2, 1, 96, 96), modes=("eval",))


def test_forward_backward_at_d2l_size(request, kernel_set, nin_net):
    once_per_run(request, kernel_set)
    assert_forward_backward(nin_net.train(), (2, 1, 224, 224))


def test_sgd_steps_lower_the_loss(request, kernel_set, nin_net):
    """At 96×96 to save time; dropout off (eval mode) so the loss on the fixed
    batch is a function of the weights alone."""
    once_per_run(request, kernel_set)
    assert_sgd_lowers_loss(nin_net.eval(), (2, 1, 96, 96), lr=models.spec("nin").lr, steps=2)
