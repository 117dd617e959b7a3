"""``with tinygrad_cnn.trace():`` prints each op forward and each gradient backward."""
import io

import numpy as np
import pytest

import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from tinygrad_cnn import Tensor, autograd

# a study tool, whose output does not depend on the kernel set: run under the first kernel
# set only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free


def leaf(*shape):
    return Tensor(np.random.default_rng(0).standard_normal(shape), requires_grad=True)


def test_trace_prints_forward_ops_then_backward_gradients_with_shapes(capsys):
    x, w = leaf(2, 3), leaf(3, 4)
    with tc.trace():
        loss = (x @ w).relu().sum()
        loss.backward()
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        ["forward", "MatMul", "(2,", "3)", "(3,", "4)", "->", "(2,", "4)"],
        ["forward", "ReLU", "(2,", "4)", "->", "(2,", "4)"],
        ["forward", "Sum", "(2,", "4)", "->", "()"],
        ["backward", "Sum", "grad", "()", "->", "(2,", "4)"],
        ["backward", "ReLU", "grad", "(2,", "4)", "->", "(2,", "4)"],
        ["backward", "MatMul", "grad", "(2,", "4)", "->", "(2,", "3)", "(3,", "4)"]]


def test_gradients_not_computed_show_as_a_dash_and_a_conv_shows_its_shapes():
    x = Tensor(np.zeros((1, 1, 6, 6)))                  # needs no gradient
    w = leaf(2, 1, 3, 3)
    stream = io.StringIO()
    with tc.trace(stream):
        F.conv2d(x, w, padding=1).sum().backward()
    forward, _, _, backward = stream.getvalue().splitlines()
    assert forward.split()[:2] == ["forward", "Conv2d[direct]"]       # a thin layer
    assert forward.endswith("(1, 1, 6, 6) (2, 1, 3, 3) -> (1, 2, 6, 6)")
    assert backward.split()[:2] == ["backward", "Conv2d[direct]"]
    assert backward.endswith("grad (1, 2, 6, 6) -> - (2, 1, 3, 3)")


# (input shape, weight shape, padding) that conv2d runs with each algorithm
CONV_ALGORITHMS = {
    "pointwise": ((1, 4, 5, 5), (6, 4, 1, 1), 0),
    "im2col": ((1, 8, 5, 5), (96, 8, 3, 3), 1),        # beyond the direct loops' bound
    "direct": ((1, 1, 6, 6), (2, 1, 3, 3), 1),
    "winograd": ((1, 16, 6, 6), (16, 16, 3, 3), 1),
}


@pytest.mark.parametrize("algorithm", CONV_ALGORITHMS)
def test_a_conv_names_the_algorithm_that_ran(algorithm):
    x_shape, w_shape, padding = CONV_ALGORITHMS[algorithm]
    stream = io.StringIO()
    with tc.trace(stream):
        F.conv2d(leaf(*x_shape), leaf(*w_shape), padding=padding).sum().backward()
    lines = stream.getvalue().splitlines()
    assert lines[0].split()[:2] == ["forward", f"Conv2d[{algorithm}]"]
    assert lines[-1].split()[:2] == ["backward", f"Conv2d[{algorithm}]"]


def test_trace_ends_with_its_block_and_keeps_an_earlier_hook(capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(autograd, "trace_hook", lambda event, fn, *_: seen.append(event))
    earlier = autograd.trace_hook
    x = leaf(3)
    with tc.trace():
        y = x.exp()
    assert autograd.trace_hook is earlier
    assert seen == ["forward"]                         # the earlier hook still saw the op
    y.sum()                                            # outside the block: nothing printed
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and printed[0].split()[:2] == ["forward", "Exp"]
    assert seen == ["forward", "forward"]


def test_a_traced_step_gives_the_same_gradients():
    x, w = leaf(4, 3), leaf(3, 2)
    (x @ w).tanh().sum().backward()
    plain = w.grad.data.copy()
    w.grad = None
    with tc.trace(io.StringIO()):
        (x @ w).tanh().sum().backward()
    np.testing.assert_array_equal(w.grad.data, plain)
