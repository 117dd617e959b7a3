"""A convolution whose batch is cut into chunks runs the chunks side by side
as shares of the threads (``kernels.map_chunks``, Numba set, 2 threads): the
output and every gradient equal one thread's, which runs them one after
another, for Winograd and im2col (with groups, without bias, without dx) and
the 1×1 convolution's dW."""
import numpy as np
import pytest

import kernels
import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from kernels import threads
from tinygrad_cnn.ops import conv

pytestmark = pytest.mark.kernel_free     # the Numba set by design (it has the shares)

# name -> (x shape, weight shape, stride, padding, groups, bias, dx wanted)
LAYERS = {
    "winograd": ((6, 16, 10, 10), (16, 16, 3, 3), 1, 1, 1, True, True),
    "winograd-no-dx": ((6, 16, 10, 10), (24, 16, 3, 3), 1, 1, 1, True, False),
    "im2col-strided": ((7, 5, 11, 11), (8, 5, 3, 3), 2, 1, 1, True, True),
    "im2col-groups-no-bias": ((5, 6, 9, 9), (4, 3, 3, 3), 1, 0, 2, False, True),
    "pointwise": ((6, 8, 7, 7), (12, 8, 1, 1), 1, 0, 1, True, True),     # dW's chunks
}


def run(name, n_threads):
    x_shape, w_shape, stride, padding, groups, bias, dx = LAYERS[name]
    rng = np.random.default_rng(3)
    x = tc.Tensor(rng.standard_normal(x_shape).astype(np.float32), requires_grad=dx)
    w = tc.Tensor(rng.standard_normal(w_shape).astype(np.float32), requires_grad=True)
    b = tc.Tensor(rng.standard_normal(w_shape[0]).astype(np.float32),
                  requires_grad=True) if bias else None
    before = threads.get_num_threads()
    threads.set_num_threads(n_threads)
    try:
        y = F.conv2d(x, w, b, stride, padding, groups=groups)
        y.backward(tc.Tensor(rng.standard_normal(y.shape).astype(np.float32)))
    finally:
        threads.set_num_threads(before)
    grads = [t.grad.numpy() if t is not None and t.requires_grad else None for t in (x, w, b)]
    return y, [y.detach().numpy()] + grads


@pytest.fixture
def small_chunks():
    """The Numba set, and a column budget of about two images: several chunks."""
    previous_set = kernels.set_kernels("numba")
    previous_budget = conv.set_column_budget(6000)
    yield
    conv.set_column_budget(previous_budget)
    kernels.set_kernels(previous_set)


@pytest.mark.parametrize("name", LAYERS)
def test_chunks_run_as_shares_give_one_threads_results(small_chunks, monkeypatch, name):
    shared = []
    real = threads.map_in_shares
    monkeypatch.setattr(threads, "map_in_shares",
                        lambda work, items, *rest: shared.append(len(items))
                        or real(work, items, *rest))
    y, one = run(name, 1)
    assert shared == []
    y, two = run(name, 2)
    assert shared and min(shared) >= 3          # forward and backward, as shares
    assert y.grad_fn.name == f"Conv2d[{name.split('-')[0]}]"
    for a, b in zip(one, two):
        if a is None:
            assert b is None
        else:   # each product is BLAS's own on one thread or two; the chunks summed in order
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
