"""``with tinygrad_cnn.profile():`` times each op's forward and backward."""
import time

import numpy as np
import pytest

import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from tinygrad_cnn import Tensor, autograd, nn
from tinygrad_cnn.autograd import Function

# a study tool, whose figures do not depend on the kernel set: run under the first
# kernel set only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free


def leaf(*shape, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


def mlp_step(net, x, y):
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    return loss


def make_mlp():
    tc.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def test_profile_counts_every_forward_and_backward_per_op():
    net, x, y = make_mlp(), leaf(4, 6), Tensor(np.array([0, 1, 2, 1]))
    with tc.profile() as prof:
        for _ in range(3):
            mlp_step(net, x, y)
    calls = {(name, event): calls for name, event, calls, _ in prof.rows()}
    assert calls == {("Linear", "forward"): 6, ("Linear", "backward"): 6,
                     ("ReLU", "forward"): 3, ("ReLU", "backward"): 3,
                     ("CrossEntropy", "forward"): 3, ("CrossEntropy", "backward"): 3}


def test_rows_by_shape_give_each_layer_its_row_and_add_up_to_the_rows():
    net, x, y = make_mlp(), leaf(4, 6), Tensor(np.array([0, 1, 2, 1]))
    with tc.profile() as prof:
        for _ in range(3):
            mlp_step(net, x, y)
    calls = {(name, event, shape): calls for name, event, shape, calls, _ in prof.rows_by_shape()}
    # forward: the op's result; backward: the first input gradient it computed
    assert calls == {("Linear", "forward", (4, 5)): 3, ("Linear", "forward", (4, 3)): 3,
                     ("Linear", "backward", (4, 6)): 3, ("Linear", "backward", (4, 5)): 3,
                     ("ReLU", "forward", (4, 5)): 3, ("ReLU", "backward", (4, 5)): 3,
                     ("CrossEntropy", "forward", ()): 3, ("CrossEntropy", "backward", (4, 3)): 3}
    seconds = {}
    for name, event, _, _, spent in prof.rows_by_shape():
        seconds[name, event] = seconds.get((name, event), 0.0) + spent
    assert seconds == pytest.approx({(name, event): spent
                                     for name, event, _, spent in prof.rows()})


class Sleep(Function):
    """An op whose forward and backward take a known time."""

    def __init__(self, forward_s, backward_s):
        self.forward_s, self.backward_s = forward_s, backward_s

    def forward(self, x):
        time.sleep(self.forward_s)
        return x * 2

    def backward(self, gy):
        time.sleep(self.backward_s)
        return gy * 2


def test_profile_times_each_op_and_the_rest_of_the_block():
    x = leaf(3)
    with tc.profile() as prof:
        y = Sleep(0.02, 0.04)(x)
        time.sleep(0.03)                    # outside any op
        y.sum().backward()
    times = {(name, event): seconds for name, event, _, seconds in prof.rows()}
    assert 0.02 <= times[("Sleep", "forward")] < 0.2
    assert 0.04 <= times[("Sleep", "backward")] < 0.2
    assert prof.rows()[0][:2] == ("Sleep", "backward")       # the longest first
    assert 0.03 <= prof.outside_seconds < prof.seconds
    assert prof.seconds == pytest.approx(sum(times.values()) + prof.outside_seconds)
    table = prof.table().splitlines()
    assert table[1].split()[:3] == ["Sleep", "backward", "1"]
    assert table[-2].startswith("(outside the ops)") and table[-1].startswith("in the block")
    assert table[-1].split()[-2:] == ["100.0", "%"]


def test_profile_changes_no_number():
    net, x, y = make_mlp(), leaf(4, 6), Tensor(np.array([0, 1, 2, 1]))
    loss = mlp_step(net, x, y)
    grads = [p.grad.numpy().copy() for p in net.parameters()]
    net.zero_grad()
    with tc.profile():
        profiled = mlp_step(net, x, y)
    assert profiled.item() == loss.item()
    for before, p in zip(grads, net.parameters()):
        np.testing.assert_array_equal(p.grad.numpy(), before)


def test_profile_ends_with_its_block_keeps_an_earlier_hook_and_adds_up_entries(monkeypatch):
    seen = []
    monkeypatch.setattr(autograd, "time_hook", lambda event, fn, *_: seen.append(event))
    earlier = autograd.time_hook
    x = leaf(3)
    prof = tc.profile()
    with prof:
        with prof:                          # entered again inside itself: counted once
            x.exp()
    assert autograd.time_hook is earlier and seen == ["forward"]
    x.exp()                                 # outside: not counted
    with prof:
        x.exp()
    assert [row[2] for row in prof.rows()] == [2]
    assert seen == ["forward"] * 3

    @tc.profile()
    def decorated():
        return x.exp()
    decorated()
    assert autograd.time_hook is earlier


def test_an_op_that_raises_leaves_no_hook_behind():
    class Broken(Function):
        def forward(self, x):
            raise ValueError("Broken: no forward")
    with pytest.raises(ValueError, match="Broken"):
        with tc.profile():
            Broken()(leaf(2))
    assert autograd.time_hook is None


def test_nothing_is_timed_while_a_cuda_graph_is_captured(monkeypatch):
    monkeypatch.setattr(tc.backend, "_capturing", True)
    with tc.profile() as prof:
        leaf(3).exp()
    assert prof.rows() == []
