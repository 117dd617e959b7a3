"""One rule for bad settings, PyTorch's: a wrong type (stride=1.5, "2") raises
TypeError, a wrong value (stride=0, -1, a pair of three) raises ValueError, and
the message names the op and the value -- the same for every op, layer and
transform that takes an int or an (H, W) pair."""
import re

import numpy as np
import pytest

import tinygrad_cnn.data.transforms as T
from tinygrad_cnn import Tensor, nn
from tinygrad_cnn.ops.arguments import as_int, as_pair
from tinygrad_cnn.ops.conv import conv2d, conv2d_simple
from tinygrad_cnn.ops.pooling import (adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d,
                                      max_pool2d, max_pool2d_simple)


def image():
    return Tensor(np.ones((1, 2, 6, 6)))


def weight():
    return Tensor(np.ones((4, 2, 3, 3)))


# name in the message -> a call that puts the value into one int-or-pair setting
CALLS = {
    "conv2d": lambda v: conv2d(image(), weight(), stride=v),
    "conv2d_simple": lambda v: conv2d_simple(image(), weight(), stride=v),
    "Conv2d": lambda v: nn.Conv2d(2, 4, 3, stride=v),
    "max_pool2d": lambda v: max_pool2d(image(), v),
    "avg_pool2d": lambda v: avg_pool2d(image(), kernel_size=v),
    "adaptive_avg_pool2d": lambda v: adaptive_avg_pool2d(image(), v),
    "adaptive_max_pool2d": lambda v: adaptive_max_pool2d(image(), v),
    "max_pool2d_simple": lambda v: max_pool2d_simple(image(), v),
    "nn.MaxPool2d -> max_pool2d": lambda v: nn.MaxPool2d(v)(image()),
    "nn.AvgPool2d -> avg_pool2d": lambda v: nn.AvgPool2d(v)(image()),
    "nn.AdaptiveAvgPool2d -> adaptive_avg_pool2d": lambda v: nn.AdaptiveAvgPool2d(v)(image()),
    "Resize": lambda v: T.Resize(v),
    "RandomCrop": lambda v: T.RandomCrop(v),
}

WRONG_TYPES = [1.5, "2", None, True, (2, 2.0), [2, "2"]]
WRONG_VALUES = [0, -1, (2, 0), (1, 2, 3), []]


def op_named(call_id):
    return call_id.split(" -> ")[-1]


@pytest.mark.parametrize("value", WRONG_TYPES, ids=repr)
@pytest.mark.parametrize("call_id", CALLS)
def test_a_setting_of_the_wrong_type_is_a_type_error(call_id, value):
    with pytest.raises(TypeError) as error:
        CALLS[call_id](value)
    message = str(error.value)
    assert message.startswith(op_named(call_id) + ": ") and repr(value) in message


@pytest.mark.parametrize("value", WRONG_VALUES, ids=repr)
@pytest.mark.parametrize("call_id", CALLS)
def test_a_setting_with_a_wrong_value_is_a_value_error(call_id, value):
    with pytest.raises(ValueError) as error:
        CALLS[call_id](value)
    message = str(error.value)
    assert message.startswith(op_named(call_id) + ": ") and repr(value) in message


@pytest.mark.parametrize("call_id", ["conv2d", "Conv2d", "max_pool2d", "avg_pool2d"])
def test_negative_padding_is_a_value_error(call_id):
    calls = {"conv2d": lambda: conv2d(image(), weight(), padding=-1),
             "Conv2d": lambda: nn.Conv2d(2, 4, 3, padding=(1, -1)),
             "max_pool2d": lambda: max_pool2d(image(), 2, padding=-1),
             "avg_pool2d": lambda: avg_pool2d(image(), 2, padding=(0, -1))}
    with pytest.raises(ValueError, match=f"^{call_id}: .*padding"):
        calls[call_id]()


@pytest.mark.parametrize("value, expected", [
    (3, (3, 3)), ((2, 5), (2, 5)), ([1, 4], (1, 4)), (np.int64(2), (2, 2)),
    ((np.int32(1), 2), (1, 2))])
def test_as_pair_takes_ints_and_pairs_of_them(value, expected):
    pair = as_pair(value, "stride", "op", minimum=1)
    assert pair == expected and all(type(v) is int for v in pair)


def test_as_int_checks_type_then_value():
    assert as_int(np.int64(2), "groups", "op", minimum=1) == 2
    with pytest.raises(TypeError, match=re.escape("op: groups must be an int, got 2.0")):
        as_int(2.0, "groups", "op")
    with pytest.raises(ValueError, match=re.escape("op: groups must be positive, got 0")):
        as_int(0, "groups", "op", minimum=1)
    with pytest.raises(ValueError, match=re.escape("op: padding must be non-negative, "
                                                   "got -1")):
        as_int(-1, "padding", "op", minimum=0)
