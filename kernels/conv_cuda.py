"""im2col / col2im as ``numba.cuda`` kernels, for CuPy arrays.

Same signatures, layouts and results as the reference (``conv_numpy.py``,
which explains them).  One GPU thread per element written: per column entry
in im2col (in memory order, so neighbouring threads write neighbouring
entries), per input pixel in col2im.

The kernels see the column matrix flat, and ``merge_batch`` says which of
the two layouts it has: entry (n, c, i, j, oh, ow) sits at row (c*KH + i)*KW + j
of image n's (C*KH*KW, OH*OW) block, or of the merged (C*KH*KW, N*OH*OW)
matrix at column n*OH*OW + oh*OW + ow.  (Flat and contiguous rather than a
strided 6-D view: Numba's simulator, which the tests use, takes contiguous
arrays only.)
"""
from numba import cuda

from kernels.cuda_common import launch, window_reading
from kernels.geometry import conv_output_hw
from .arrays import get_array_module


@cuda.jit(device=True)
def _column_entry(index, N, C, KH, KW, OH, OW, merge_batch):
    """(n, c, i, j, oh, ow) of entry ``index`` of the flat column matrix."""
    ow = index % OW
    index //= OW
    oh = index % OH
    index //= OH
    if merge_batch:           # memory order (C, KH, KW, N, OH, OW)
        n = index % N
        index //= N
        j = index % KW
        index //= KW
        i = index % KH
        c = index // KH
    else:                     # memory order (N, C, KH, KW, OH, OW)
        j = index % KW
        index //= KW
        i = index % KH
        index //= KH
        c = index % C
        n = index // C
    return n, c, i, j, oh, ow


@cuda.jit(device=True)
def _column_offset(n, c, i, j, oh, ow, N, C, KH, KW, OH, OW, merge_batch):
    """Where entry (n, c, i, j, oh, ow) sits in the flat column matrix."""
    row = (c * KH + i) * KW + j
    if merge_batch:
        return (row * N + n) * (OH * OW) + oh * OW + ow
    return (n * (C * KH * KW) + row) * (OH * OW) + oh * OW + ow


@cuda.jit
def _im2col_kernel(x, col, KH, KW, OH, OW, SH, SW, top, left, DH, DW, merge_batch):
    index = cuda.grid(1)
    if index >= col.size:
        return
    N, C, H, W = x.shape
    n, c, i, j, oh, ow = _column_entry(index, N, C, KH, KW, OH, OW, merge_batch)
    h = oh * SH - top + i * DH
    w = ow * SW - left + j * DW
    if 0 <= h < H and 0 <= w < W:
        col[index] = x[n, c, h, w]
    else:                     # zero padding
        col[index] = 0


@cuda.jit
def _col2im_kernel(col, x, KH, KW, OH, OW, SH, SW, top, left, DH, DW, merge_batch, zero):
    index = cuda.grid(1)
    if index >= x.size:
        return
    N, C, H, W = x.shape
    w = index % W
    index //= W
    h = index % H
    index //= H
    c = index % C
    n = index // C
    total = zero              # x's dtype, added in the reference's (i, j) order
    for i in range(KH):
        oh = window_reading(h, i, SH, top, DH, OH)
        if oh < 0:
            continue
        for j in range(KW):
            ow = window_reading(w, j, SW, left, DW, OW)
            if ow >= 0:
                total += col[_column_offset(n, c, i, j, oh, ow, N, C, KH, KW, OH, OW,
                                            merge_batch)]
    x[n, c, h, w] = total


def im2col(x, kernel_size, stride, padding, dilation, merge_batch=False):
    """Unfold every receptive field of ``x`` into one column (see conv_numpy.im2col)."""
    xp = get_array_module(x)
    N, C = x.shape[:2]
    (KH, KW), (SH, SW), (DH, DW) = kernel_size, stride, dilation
    top, _, left, _ = padding      # bottom/right padding only shows in (OH, OW)
    OH, OW = conv_output_hw(x.shape, kernel_size, stride, padding, dilation)
    shape = (C * KH * KW, N * OH * OW) if merge_batch else (N, C * KH * KW, OH * OW)
    col = xp.empty(shape, dtype=x.dtype)
    launch(_im2col_kernel, col.size, xp.ascontiguousarray(x), col.reshape(-1),
           KH, KW, OH, OW, SH, SW, top, left, DH, DW, bool(merge_batch))
    return col


def col2im(col, x_shape, kernel_size, stride, padding, dilation, merge_batch=False):
    """The adjoint of ``im2col`` (see conv_numpy.col2im): each input pixel's
    thread adds up the column entries read from it."""
    xp = get_array_module(col)
    (KH, KW), (SH, SW), (DH, DW) = kernel_size, stride, dilation
    top, _, left, _ = padding
    OH, OW = conv_output_hw(x_shape, kernel_size, stride, padding, dilation, "col2im")
    x = xp.empty(tuple(x_shape), dtype=col.dtype)
    launch(_col2im_kernel, x.size, xp.ascontiguousarray(col).reshape(-1), x,
           KH, KW, OH, OW, SH, SW, top, left, DH, DW, bool(merge_batch), col.dtype.type(0))
    return x
