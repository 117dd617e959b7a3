"""Max and average pooling as ``numba.cuda`` kernels, for CuPy arrays.

Same signatures and results as the reference (``pool_numpy.py``, which
states the rules: -inf padding, first winner on ties, NaN wins, PyTorch's
divisor).  Forward: one GPU thread per output cell walks its window.
Backward: one thread per input cell visits the windows that read it
(``window_reading``) and adds up their gradients, in the order of the
window's cells -- the reference's order, so the sums round alike.

Padding is never stored: a window cell outside the input is skipped, which
is what -inf padding does for max pooling (-inf never beats the running
max, which starts at -inf) and zero padding for average pooling.
"""
import math

from numba import cuda

from kernels.cuda_common import launch, unravel4, window_reading
from kernels.geometry import pool_output_hw
from .arrays import get_array_module


# ---------------------------------------------------------------- max pooling
@cuda.jit
def _maxpool_forward_kernel(x, y, argmax, KH, KW, SH, SW, PH, PW, DH, DW, lowest):
    index = cuda.grid(1)
    if index >= y.size:
        return
    n, c, oh, ow = unravel4(index, y.shape)
    best, winner = lowest, 0
    for i in range(KH):
        h = oh * SH - PH + i * DH
        for j in range(KW):
            w = ow * SW - PW + j * DW
            if 0 <= h < x.shape[2] and 0 <= w < x.shape[3]:
                value = x[n, c, h, w]
                # strictly greater: ties keep the first winner; a NaN always wins
                if value > best or math.isnan(value):
                    best, winner = value, i * KW + j
    y[n, c, oh, ow] = best
    argmax[n, c, oh, ow] = winner


@cuda.jit
def _maxpool_backward_kernel(gy, argmax, gx, KH, KW, SH, SW, PH, PW, DH, DW, zero):
    index = cuda.grid(1)
    if index >= gx.size:
        return
    n, c, h, w = unravel4(index, gx.shape)
    total = zero
    for i in range(KH):
        oh = window_reading(h, i, SH, PH, DH, gy.shape[2])
        if oh < 0:
            continue
        for j in range(KW):
            ow = window_reading(w, j, SW, PW, DW, gy.shape[3])
            if ow >= 0 and argmax[n, c, oh, ow] == i * KW + j:
                total += gy[n, c, oh, ow]
    gx[n, c, h, w] = total


def maxpool2d_forward(x, kernel_size, stride, padding, ceil_mode=False, dilation=(1, 1)):
    """y, argmax = max of every window and the row-major offset of its winner
    (see pool_numpy.maxpool2d_forward)."""
    xp = get_array_module(x)
    out_shape = pool_output_hw(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    y = xp.empty(x.shape[:2] + out_shape, dtype=x.dtype)
    argmax = xp.empty(y.shape, dtype=xp.int64)
    launch(_maxpool_forward_kernel, y.size, x, y, argmax, *kernel_size, *stride, *padding,
           *dilation, x.dtype.type(-math.inf))
    return y, argmax


def maxpool2d_backward(gy, argmax, x_shape, kernel_size, stride, padding, dilation=(1, 1)):
    """gx = sum of gy over the windows each cell won (see pool_numpy.maxpool2d_backward)."""
    xp = get_array_module(gy)
    gx = xp.empty(tuple(x_shape), dtype=gy.dtype)
    launch(_maxpool_backward_kernel, gx.size, gy, argmax, gx, *kernel_size, *stride, *padding,
           *dilation, gy.dtype.type(0))
    return gx


# ---------------------------------------------------------------- average pooling
@cuda.jit(device=True)
def _window_count(o, size, kernel, stride, padding, count_include_pad):
    """Cells window ``o`` counts along one axis (pool_numpy._window_counts): clipped
    to the padded input, and to the input itself unless padding counts."""
    # (clipped with ifs, not min/max: Numba 0.68's CUDA target did not compile
    # two-argument min/max -- see tests/kernels_cuda/compile_ptx.py; the
    # simulator, which runs the kernel as Python, cannot notice)
    start = o * stride - padding
    end = start + kernel
    if end > size + padding:
        end = size + padding
    if not count_include_pad:
        if start < 0:
            start = 0
        if end > size:
            end = size
    return end - start


@cuda.jit(device=True)
def _divisor(oh, ow, H, W, KH, KW, SH, SW, PH, PW, count_include_pad, override):
    """What window (oh, ow)'s sum is divided by; ``override`` 0 means none."""
    if override != 0:
        return override
    return (_window_count(oh, H, KH, SH, PH, count_include_pad)
            * _window_count(ow, W, KW, SW, PW, count_include_pad))


@cuda.jit
def _avgpool_forward_kernel(x, y, KH, KW, SH, SW, PH, PW, count_include_pad, override, zero):
    index = cuda.grid(1)
    if index >= y.size:
        return
    n, c, oh, ow = unravel4(index, y.shape)
    H, W = x.shape[2], x.shape[3]
    total = zero              # x's dtype, as the reference sums
    for i in range(KH):
        h = oh * SH - PH + i
        for j in range(KW):
            w = ow * SW - PW + j
            if 0 <= h < H and 0 <= w < W:
                total += x[n, c, h, w]
    y[n, c, oh, ow] = total / _divisor(oh, ow, H, W, KH, KW, SH, SW, PH, PW,
                                       count_include_pad, override)


@cuda.jit
def _avgpool_backward_kernel(gy, gx, KH, KW, SH, SW, PH, PW, count_include_pad, override,
                             zero):
    index = cuda.grid(1)
    if index >= gx.size:
        return
    n, c, h, w = unravel4(index, gx.shape)
    H, W = gx.shape[2], gx.shape[3]
    total = zero
    for i in range(KH):
        oh = window_reading(h, i, SH, PH, 1, gy.shape[2])
        if oh < 0:
            continue
        for j in range(KW):
            ow = window_reading(w, j, SW, PW, 1, gy.shape[3])
            if ow >= 0:
                total += gy[n, c, oh, ow] / _divisor(oh, ow, H, W, KH, KW, SH, SW, PH, PW,
                                                     count_include_pad, override)
    gx[n, c, h, w] = total


def avgpool2d_forward(x, kernel_size, stride, padding, ceil_mode=False,
                      count_include_pad=True, divisor_override=None):
    """y = window sum / divisor (see pool_numpy.avgpool2d_forward)."""
    xp = get_array_module(x)
    out_shape = pool_output_hw(x.shape, kernel_size, stride, padding, (1, 1), ceil_mode)
    y = xp.empty(x.shape[:2] + out_shape, dtype=x.dtype)
    launch(_avgpool_forward_kernel, y.size, x, y, *kernel_size, *stride, *padding,
           bool(count_include_pad), int(divisor_override or 0), x.dtype.type(0))
    return y


def avgpool2d_backward(gy, x_shape, kernel_size, stride, padding, count_include_pad=True,
                       divisor_override=None):
    """gx = sum of gy / divisor over the windows holding each cell
    (see pool_numpy.avgpool2d_backward)."""
    xp = get_array_module(gy)
    gx = xp.empty(tuple(x_shape), dtype=gy.dtype)
    launch(_avgpool_backward_kernel, gx.size, gy, gx, *kernel_size, *stride, *padding,
           bool(count_include_pad), int(divisor_override or 0), gy.dtype.type(0))
    return gx
