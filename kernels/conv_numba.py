"""im2col / col2im as compiled loops (Numba): the interface of ``conv_numpy``.

Same signatures, shapes and results as the reference kernels in
``conv_numpy.py`` (read that file first for what the two functions mean);
only the *how* differs.  The reference version is vectorised NumPy: one
strided copy for im2col, KH·KW slice-``+=`` passes over the whole batch for
col2im.  Here each function is one plain loop nest, compiled by Numba and
run on all cores:

- ``im2col`` gives each thread whole rows of the column matrix (one kernel
  tap (c, i, j) per row).  Rows never overlap, so the threads never write
  the same element.
- ``col2im`` gives each thread whole (n, c) image planes and lets it add
  every tap of every window into its plane, which stays in the cache.
  Splitting the work over kernel taps instead would race: two taps of
  overlapping windows add into the same pixel.

Where a tap falls on the padding, im2col writes 0 and col2im adds nothing;
the loops visit only the output positions whose tap lands inside the image
(``_inside`` works those ranges out once per call), so the inner loops have
no bounds test.

What runs where, and start-up: ``kernels/jit.py`` (only NumPy float32/float64
arrays reach the loops, others go to the reference; Numba is imported and
the loops compiled, or loaded from the disk cache, at the first call).
"""
import numpy as np

from . import conv_numpy, threads
from .geometry import conv_output_hw, taps_inside
from .jit import compilable, for_shares, on_first_use

prange = range          # numba.prange once the loops compile (kernels/jit.py)


# ---------------------------------------------------------------- the loops
# Speed note: indices computed in the inner loops are cast to unsigned
# (np.uint64).  Numba, like Python, counts a negative index from the end,
# which costs a test on every access; an unsigned index skips it, and the
# loops run markedly faster (benchmarks/results.md, "Figures behind design
# choices in kernels/").  Nothing wraps: the loops visit only positions
# inside the image (``_inside``), so every index is >= 0 anyway.
def _im2col_loops(x, col, rows_inside, cols_inside, KH, KW, SH, SW, DH, DW, top, left, OW):
    """x: (N, C, H, W) -> col: (C·KH·KW, N, OH·OW) (any strides), where

        col[(c·KH + i)·KW + j, n, oh·OW + ow]
            = x[n, c, oh·SH + i·DH - top, ow·SW + j·DW - left],  0 on the padding.
    """
    N = x.shape[0]
    OH = col.shape[2] // OW
    for row in prange(col.shape[0]):           # one kernel tap (c, i, j) per row
        c, i, j = row // (KH * KW), row // KW % KH, row % KW
        h0, w0 = i * DH - top, j * DW - left     # where the tap reads for output (0, 0)
        oh0, oh1 = rows_inside[i, 0], rows_inside[i, 1]
        ow0, ow1 = cols_inside[j, 0], cols_inside[j, 1]
        # zeros only where some of the tap's reads fall on the padding
        touches_padding = oh0 > 0 or oh1 < OH or ow0 > 0 or ow1 < OW
        for n in range(N):
            out = col[row, n]                    # (OH·OW,): this tap over image n
            if touches_padding:
                out[:] = 0
            image = x[n, c]
            for oh in range(oh0, oh1):
                source = image[np.uint64(oh * SH + h0)]      # the input row this output row reads
                start = oh * OW
                # Stride 1 gets a loop of its own: with the stride known to be 1
                # the compiler turns the copy into vector moves.
                if SW == 1:
                    for ow in range(ow0, ow1):
                        out[np.uint64(start + ow)] = source[np.uint64(ow + w0)]
                else:
                    for ow in range(ow0, ow1):
                        out[np.uint64(start + ow)] = source[np.uint64(ow * SW + w0)]


def _col2im_loops(col, x, rows_inside, cols_inside, KH, KW, SH, SW, DH, DW, top, left, OW):
    """x[n, c, h, w] = Σ of the col entries im2col copied from (n, c, h, w).

    col: (C·KH·KW, N, OH·OW), any strides; x: (N, C, H, W), overwritten.
    """
    N, C = x.shape[:2]
    # One (n, c) image plane per thread: no races.  Planes go channel-major so
    # that consecutive planes read consecutive stretches of each col row.
    for plane in prange(N * C):
        c, n = plane // N, plane % N
        image = x[n, c]
        image[:] = 0
        for i in range(KH):
            h0 = i * DH - top
            oh0, oh1 = rows_inside[i, 0], rows_inside[i, 1]
            for j in range(KW):
                w0 = j * DW - left
                ow0, ow1 = cols_inside[j, 0], cols_inside[j, 1]
                tap = col[(c * KH + i) * KW + j, n]       # (OH·OW,)
                for oh in range(oh0, oh1):
                    target = image[np.uint64(oh * SH + h0)]
                    start = oh * OW
                    if SW == 1:                            # vector adds, as in im2col
                        for ow in range(ow0, ow1):
                            target[np.uint64(ow + w0)] += tap[np.uint64(start + ow)]
                    else:
                        for ow in range(ow0, ow1):
                            target[np.uint64(ow * SW + w0)] += tap[np.uint64(start + ow)]


_compiled = on_first_use(_im2col_loops, _col2im_loops, parallel=True)
# one thread: inside a share of a convolution's chunks (shares_threads.map_chunks),
# with one thread, or while another Python thread runs a parallel loop (_loops)
_compiled_in_share = for_shares(_im2col_loops, _col2im_loops)


def _loops():
    """``with _loops() as loops:`` the loops for the calling thread: all
    threads, or its own inside a share, with one thread (no parallel launch
    to pay for) or while another Python thread runs a parallel loop."""
    return threads.loops_for_this_thread(_compiled_in_share, _compiled)


# ---------------------------------------------------------------- geometry
def _inside(taps, dilation, pad, stride, size, out_size):
    """``geometry.taps_inside`` as the (taps, 2) int64 array the loops index:
    per kernel tap, the output positions [lo, hi) whose input lies inside."""
    return np.array(taps_inside(taps, dilation, pad, stride, size, out_size),
                    dtype=np.int64).reshape(taps, 2)


def _loop_arguments(x_shape, kernel_size, stride, padding, dilation):
    """(OH, OW) and the geometry arguments shared by both loops."""
    H, W = x_shape[2:]
    (KH, KW), (SH, SW), (DH, DW) = kernel_size, stride, dilation
    top, _, left, _ = padding
    OH, OW = conv_output_hw(x_shape, kernel_size, stride, padding, dilation)
    rows_inside = _inside(KH, DH, top, SH, H, OH)
    cols_inside = _inside(KW, DW, left, SW, W, OW)
    return (OH, OW), (rows_inside, cols_inside, KH, KW, SH, SW, DH, DW, top, left, OW)


# ---------------------------------------------------------------- the interface
def im2col(x, kernel_size, stride, padding, dilation, merge_batch=False):
    """``conv_numpy.im2col``, compiled.  x (N, C, H, W) ->
    col (N, C·KH·KW, OH·OW), or (C·KH·KW, N·OH·OW) with ``merge_batch``."""
    if not compilable(x):
        return conv_numpy.im2col(x, kernel_size, stride, padding, dilation, merge_batch)
    x = np.ascontiguousarray(x)            # the loops read x row by row
    N, C = x.shape[:2]
    (OH, OW), geometry = _loop_arguments(x.shape, kernel_size, stride, padding, dilation)
    rows = C * kernel_size[0] * kernel_size[1]
    col = np.empty((rows, N, OH * OW) if merge_batch else (N, rows, OH * OW), dtype=x.dtype)
    with _loops() as loops:             # the loops index (row, n, l)
        loops.im2col(x, col if merge_batch else col.transpose(1, 0, 2), *geometry)
    return col.reshape(rows, N * OH * OW) if merge_batch else col


def col2im(col, x_shape, kernel_size, stride, padding, dilation, merge_batch=False):
    """``conv_numpy.col2im``, compiled: col (N, C·KH·KW, OH·OW), or
    (C·KH·KW, N·OH·OW) with ``merge_batch`` -> x (N, C, H, W)."""
    if not compilable(col):
        return conv_numpy.col2im(col, x_shape, kernel_size, stride, padding, dilation,
                                 merge_batch)
    N, C = x_shape[:2]
    (OH, OW), geometry = _loop_arguments(x_shape, kernel_size, stride, padding, dilation)
    rows = C * kernel_size[0] * kernel_size[1]
    if merge_batch:
        col = col.reshape(rows, N, OH * OW)
    else:
        col = col.reshape(N, rows, OH * OW).transpose(1, 0, 2)
    x = np.empty(x_shape, dtype=col.dtype)
    with _loops() as loops:
        loops.col2im(col, x, *geometry)
    return x
