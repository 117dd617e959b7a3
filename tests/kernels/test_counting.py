"""kernels.counting(): the kernel calls of a block, counted through the kernel
interface; nothing changes outside the block.  Prints a ResNet-18 training
step's counts (issue 12 asks for launches per step; the figures are printed,
not asserted beyond what the network's structure fixes)."""
import collections

import numpy as np
import pytest

import kernels
import models
import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from tinygrad_cnn import optim


def test_counting_counts_the_calls_inside_the_block_only(kernel_set):
    x = np.arange(-3.0, 3.0, dtype=np.float32)
    originals = {name: getattr(kernels, name) for name in kernels.KERNELS}
    kernels.relu_forward(x)
    with kernels.counting() as calls:
        kernels.relu_forward(x)
        kernels.relu_forward(x)
        y = kernels.relu_forward(x)
        kernels.relu_backward(x, y)
    kernels.relu_forward(x)
    assert calls == collections.Counter(relu_forward=3, relu_backward=1)
    assert {name: getattr(kernels, name) for name in kernels.KERNELS} == originals
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_counting_restores_the_kernels_after_an_error():
    originals = {name: getattr(kernels, name) for name in kernels.KERNELS}
    with pytest.raises(ZeroDivisionError):
        with kernels.counting():
            1 / 0
    assert {name: getattr(kernels, name) for name in kernels.KERNELS} == originals


def resnet18_step_calls(batch=2, size=32, foreach=None):
    tc.manual_seed(0)
    net = models.get("resnet18")
    opt = optim.SGD(net.parameters(), lr=0.01, foreach=foreach)
    X = tc.randn(batch, 1, size, size)
    y = tc.randint(0, 10, (batch,))
    F.cross_entropy(net(X), y).backward()     # lazy shapes and compilation outside the count
    with kernels.counting() as calls:
        loss = F.cross_entropy(net(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    kinds = collections.Counter(type(m).__name__ for m in net.modules())
    return calls, len(list(net.parameters())), kinds


def test_a_resnet18_step_calls_each_kernel_as_its_layers_say(kernel_set):
    calls, parameters, kinds = resnet18_step_calls()
    print(f"\nResNet-18 training step ({kernel_set}): {sum(calls.values())} kernel calls: "
          f"{dict(sorted(calls.items()))}")
    assert calls["sgd_update_multi"] == 1 and calls["sgd_update"] == 0   # all at once
    assert calls["batchnorm_forward_train"] == calls["batchnorm_backward"] \
        == kinds["BatchNorm2d"] == 17                          # d2l: none on the 1x1 shortcut
    assert calls["maxpool2d_forward"] == calls["maxpool2d_backward"] == kinds["MaxPool2d"] == 1
    assert calls["adaptive_avgpool2d_forward"] == calls["adaptive_avgpool2d_backward"] == 1


def test_foreach_false_steps_each_parameter_with_its_own_kernel_call():
    calls, parameters, _ = resnet18_step_calls(foreach=False)
    assert calls["sgd_update"] == parameters and calls["sgd_update_multi"] == 0
