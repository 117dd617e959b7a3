"""The NumPy pooling kernels against explicit Python loops.

The loop references below (one window, one cell at a time) are also used by
tests/ops/test_pooling.py as the independent forward reference.
"""
import math

import numpy as np
import pytest

import kernels
from kernels.geometry import pool_output_size
from tinygrad_cnn.backend import to_device
from tests.inputs import distinct


# ---------------------------------------------------------------- loop references
def loop_output_size(size, k, s, p, d, ceil_mode):
    """PyTorch's rule, written out: count the windows, rounding up in ceil_mode,
    then drop a last window that would start in the right padding."""
    exact = (size + 2 * p - d * (k - 1) - 1) / s
    out = (math.ceil(exact) if ceil_mode else math.floor(exact)) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def window_cells(oh, ow, k, s, p, d):
    """Yield (offset number, row, col) of every cell of window (oh, ow), row-major,
    in input coordinates (may lie in the padding)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = k, s, p, d
    for i in range(kh):
        for j in range(kw):
            yield i * kw + j, oh * sh - ph + i * dh, ow * sw - pw + j * dw


def out_shape(x_shape, k, s, p, d, ceil_mode):
    return tuple(loop_output_size(n, *g, ceil_mode) for n, g in zip(x_shape[2:], zip(k, s, p, d)))


def loop_max_pool(x, k, s, p, d=(1, 1), ceil_mode=False):
    """(y, argmax offset): strict > keeps the first maximum; cells outside the input
    are skipped, which is what -inf padding means."""
    n_, c_, h, w = x.shape
    oh_, ow_ = out_shape(x.shape, k, s, p, d, ceil_mode)
    y = np.full((n_, c_, oh_, ow_), -np.inf, dtype=x.dtype)
    argmax = np.zeros(y.shape, dtype=np.int64)
    for n in range(n_):
        for c in range(c_):
            for oh in range(oh_):
                for ow in range(ow_):
                    for number, r, col in window_cells(oh, ow, k, s, p, d):
                        if 0 <= r < h and 0 <= col < w and x[n, c, r, col] > y[n, c, oh, ow]:
                            y[n, c, oh, ow], argmax[n, c, oh, ow] = x[n, c, r, col], number
    return y, argmax


def loop_max_pool_backward(gy, x, k, s, p, d=(1, 1), ceil_mode=False):
    """Each window sends its gradient to the cell holding its (first) maximum."""
    _, argmax = loop_max_pool(x, k, s, p, d, ceil_mode)
    gx = np.zeros(x.shape, dtype=gy.dtype)
    for n, c, oh, ow in np.ndindex(*gy.shape):
        for number, r, col in window_cells(oh, ow, k, s, p, d):
            if number == argmax[n, c, oh, ow]:
                gx[n, c, r, col] += gy[n, c, oh, ow]
    return gx


def loop_avg_divisor(oh, ow, x_shape, k, s, p, count_include_pad, divisor_override):
    if divisor_override is not None:
        return divisor_override
    h, w = x_shape[2:]
    (ph, pw) = p
    count = 0
    for _, r, col in window_cells(oh, ow, k, s, p, (1, 1)):
        if count_include_pad:
            count += r < h + ph and col < w + pw      # inside input + padding
        else:
            count += 0 <= r < h and 0 <= col < w      # inside the input
    return count


def loop_avg_pool(x, k, s, p, ceil_mode=False, count_include_pad=True, divisor_override=None):
    n_, c_, h, w = x.shape
    y = np.zeros((n_, c_) + out_shape(x.shape, k, s, p, (1, 1), ceil_mode), dtype=x.dtype)
    for n, c, oh, ow in np.ndindex(*y.shape):
        total = sum(x[n, c, r, col] for _, r, col in window_cells(oh, ow, k, s, p, (1, 1))
                    if 0 <= r < h and 0 <= col < w)
        y[n, c, oh, ow] = total / loop_avg_divisor(oh, ow, x.shape, k, s, p,
                                                   count_include_pad, divisor_override)
    return y


def loop_avg_pool_backward(gy, x_shape, k, s, p, count_include_pad=True,
                           divisor_override=None):
    h, w = x_shape[2:]
    gx = np.zeros(x_shape, dtype=gy.dtype)
    for n, c, oh, ow in np.ndindex(*gy.shape):
        share = gy[n, c, oh, ow] / loop_avg_divisor(oh, ow, x_shape, k, s, p,
                                                    count_include_pad, divisor_override)
        for _, r, col in window_cells(oh, ow, k, s, p, (1, 1)):
            if 0 <= r < h and 0 <= col < w:
                gx[n, c, r, col] += share
    return gx


# ---------------------------------------------------------------- geometries
# (x shape, kernel, stride, padding, dilation, ceil_mode)
GEOMETRIES = {
    "non-overlapping": ((2, 3, 6, 6), (2, 2), (2, 2), (0, 0), (1, 1), False),
    "overlap-stride1-pad": ((1, 2, 5, 5), (3, 3), (1, 1), (1, 1), (1, 1), False),
    "overlap-stride2": ((2, 1, 7, 7), (3, 3), (2, 2), (0, 0), (1, 1), False),
    "ceil-pad": ((1, 2, 7, 6), (3, 3), (2, 2), (1, 1), (1, 1), True),
    "ceil-past-edge": ((1, 1, 6, 6), (3, 3), (2, 2), (0, 0), (1, 1), True),
    "ceil-drop-last": ((1, 1, 5, 5), (2, 2), (2, 2), (1, 1), (1, 1), True),
    "kernel-beyond-input": ((1, 1, 2, 2), (3, 3), (2, 2), (0, 0), (1, 1), True),
    "non-square": ((3, 2, 5, 8), (3, 2), (1, 3), (1, 0), (1, 1), False),
    "dilated": ((1, 2, 8, 7), (2, 3), (1, 2), (1, 1), (2, 2), False),
}
AVG_GEOMETRIES = {name: g for name, g in GEOMETRIES.items() if g[4] == (1, 1)}

TOLERANCE = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-6)}


def make_input(kind, shape, dtype):
    """'distinct': no ties; 'ties': few values, many ties; 'negative': all < 0."""
    if kind == "ties":
        return np.random.default_rng(1).integers(-2, 3, size=shape).astype(dtype)
    if kind == "negative":
        return distinct(*shape, low=-3.0, high=-1.0, dtype=dtype)
    return distinct(*shape, dtype=dtype)


def cpu(array):
    return to_device(array, "cpu")


def test_output_size_matches_loop_rule():
    for size in range(1, 10):
        for k in range(1, 5):
            for s in range(1, 4):
                for p in range(k // 2 + 1):
                    for d in (1, 2):
                        for ceil_mode in (False, True):
                            assert pool_output_size(size, k, s, p, d, ceil_mode) == \
                                loop_output_size(size, k, s, p, d, ceil_mode)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["distinct", "ties", "negative"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_maxpool2d_forward_backward(name, kind, dtype, device):
    shape, k, s, p, d, ceil_mode = GEOMETRIES[name]
    x = make_input(kind, shape, dtype)
    y, argmax = kernels.maxpool2d_forward(to_device(x, device), k, s, p, ceil_mode, d)
    expected_y, expected_arg = loop_max_pool(x, k, s, p, d, ceil_mode)
    assert y.dtype == dtype and argmax.dtype == np.int64
    np.testing.assert_array_equal(cpu(y), expected_y)
    np.testing.assert_array_equal(cpu(argmax), expected_arg)

    gy = distinct(*y.shape, seed=2, dtype=dtype)
    gx = kernels.maxpool2d_backward(to_device(gy, device), argmax, shape, k, s, p, d)
    assert gx.dtype == dtype and gx.shape == shape
    np.testing.assert_allclose(cpu(gx), loop_max_pool_backward(gy, x, k, s, p, d, ceil_mode),
                               **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("count_include_pad, divisor_override",
                         [(True, None), (False, None), (True, 5)])
@pytest.mark.parametrize("name", list(AVG_GEOMETRIES))
def test_avgpool2d_forward_backward(name, count_include_pad, divisor_override, dtype, device):
    shape, k, s, p, _, ceil_mode = AVG_GEOMETRIES[name]
    x = distinct(*shape, dtype=dtype)
    y = kernels.avgpool2d_forward(to_device(x, device), k, s, p, ceil_mode, count_include_pad,
                                  divisor_override)
    assert y.dtype == dtype
    np.testing.assert_allclose(
        cpu(y), loop_avg_pool(x, k, s, p, ceil_mode, count_include_pad, divisor_override),
        **TOLERANCE[dtype])

    gy = distinct(*y.shape, seed=2, dtype=dtype)
    gx = kernels.avgpool2d_backward(to_device(gy, device), shape, k, s, p, count_include_pad,
                                    divisor_override)
    assert gx.dtype == dtype and gx.shape == shape
    np.testing.assert_allclose(
        cpu(gx), loop_avg_pool_backward(gy, shape, k, s, p, count_include_pad,
                                        divisor_override),
        **TOLERANCE[dtype])


def test_maxpool2d_ties_go_to_first_cell_in_row_major_order():
    x = np.ones((1, 1, 2, 2))          # one window, four equal cells
    y, argmax = kernels.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))
    assert argmax.item() == 0
    gx = kernels.maxpool2d_backward(np.full(y.shape, 3.0), argmax, x.shape, (2, 2), (2, 2),
                                    (0, 0))
    np.testing.assert_array_equal(gx, [[[[3.0, 0.0], [0.0, 0.0]]]])
