"""Pooling kernels as compiled loops (Numba): the interface of ``pool_numpy``.

Same signatures, shapes and results as the reference kernels in
``pool_numpy.py`` (read that file first for what each one means and for
PyTorch's rules: -inf padding, ties to the first cell in row-major window
order, NaN propagation, ceil_mode windows, the average's divisor).  Only
the *how* differs.  The reference loops over the KH*KW kernel offsets and
touches the whole batch once per offset; here each kernel is one plain loop
nest that visits every window once, compiled by Numba.  Padding cells are
skipped: for max pooling that is what -inf padding means (it never wins),
for average pooling what zero padding means (it adds nothing); only the
average's divisor counts them.

Two choices make these loops fast (the measurements are in
benchmarks/results.md, "Figures behind design choices in kernels/"):

- The kernel size is a compile-time constant.  ``_loops(KH, KW)`` compiles
  the loops once per kernel size (2x2 and 3x3 are all the chapter networks
  use), so the compiler unrolls the window loops; with KH and KW as run-time
  values the loops ran several times slower.
- The batch is split over threads (``threads.over_batch``), each running the
  compiled loop on its own slice of samples with the GIL released
  (``nogil``).  Samples never share an output cell, so nothing races -- in
  backward too, where overlapping windows add into shared cells of one
  plane.  (Numba's own ``parallel=True``/``prange`` lost the first gain:
  inside a ``prange`` loop the constant-size windows were no faster than
  run-time ones.)

Adaptive pooling (``_adaptive_loops``) has no fixed window to build in: its
loops read each bin's edges from small arrays and run over the (N·C, H, W)
stack of planes, so a batch of one still splits over threads.

What runs where, and start-up: ``kernels/jit.py`` (only NumPy
float32/float64 arrays reach the loops, others go to the reference; Numba
is imported at the first call, which compiles the loops for that kernel
size and dtype, or loads them from the disk cache).
"""
import functools
import math

import numpy as np

from . import pool_numpy, threads
from .geometry import adaptive_bins, pool_output_hw
from .jit import compilable, compile_loops, on_first_use


# ---------------------------------------------------------------- the loops
@functools.cache
def _loops(KH, KW):
    """The four pooling loops with the kernel size KH x KW built in as constants.

    Compiled at the first call for a kernel size (``kernels/jit.py``; Numba's
    disk cache keys each compiled version by the KH, KW it was built with).
    """

    def maxpool_forward(x, y, argmax, SH, SW, PH, PW, DH, DW):
        """y[n, c, oh, ow] = max over window (oh, ow); argmax = its offset i*KW + j.

        x: (N, C, H, W); y, argmax: (N, C, OH, OW), written.  A cell takes
        over only when strictly greater (ties keep the first) or NaN (NaN
        propagates; the last NaN wins), exactly the reference's rule.  The
        running max starts at -inf with offset 0, which is what the
        reference's all -inf start gives when no cell beats it.

        No branches on the values: ``where`` moves by arithmetic, and
        ``max`` keeps a NaN already held (it returns its first argument
        unless the second is greater), so the unrolled window stays in
        registers; ``if v > best: best, where = v, k`` was several times slower.
        """
        N, C, H, W = x.shape
        OH, OW = y.shape[2:]
        for n in range(N):
            for c in range(C):
                for oh in range(OH):
                    for ow in range(OW):
                        best, where = -math.inf, 0
                        for i in range(KH):
                            h = oh * SH - PH + i * DH
                            if h < 0 or h >= H:          # a padding row: -inf never wins
                                continue
                            for j in range(KW):
                                w = ow * SW - PW + j * DW
                                if w < 0 or w >= W:
                                    continue
                                v = x[n, c, h, w]
                                takes_over = (v > best) | (v != v)      # v != v: v is NaN
                                where += takes_over * (i * KW + j - where)
                                best = max(best, v)
                                best = v if v != v else best
                        y[n, c, oh, ow] = best
                        argmax[n, c, oh, ow] = where

    def maxpool_backward(gy, argmax, gx, SH, SW, PH, PW, DH, DW):
        """gx[n, c, h, w] = Σ gy over the windows whose max sits at (h, w).

        gy, argmax: (N, C, OH, OW); gx: (N, C, H, W), overwritten.  A winner
        in the padding (only when a window holds nothing above -inf) sends
        its gradient nowhere, as in the reference.
        """
        N, C, H, W = gx.shape
        OH, OW = gy.shape[2:]
        gx[...] = 0
        for n in range(N):
            for c in range(C):
                for oh in range(OH):
                    for ow in range(OW):
                        k = argmax[n, c, oh, ow]
                        h = oh * SH - PH + (k // KW) * DH
                        w = ow * SW - PW + (k % KW) * DW
                        if 0 <= h < H and 0 <= w < W:
                            gx[n, c, h, w] += gy[n, c, oh, ow]

    def avgpool_forward(x, y, divisor, SH, SW, PH, PW):
        """y[n, c, oh, ow] = Σ x over window (oh, ow) / divisor[oh, ow], summed in x's dtype."""
        N, C, H, W = x.shape
        OH, OW = y.shape[2:]
        for n in range(N):
            for c in range(C):
                for oh in range(OH):
                    for ow in range(OW):
                        total = x.dtype.type(0)
                        for i in range(KH):
                            h = oh * SH - PH + i
                            if h < 0 or h >= H:
                                continue
                            for j in range(KW):
                                w = ow * SW - PW + j
                                if 0 <= w < W:
                                    total += x[n, c, h, w]
                        y[n, c, oh, ow] = total / divisor[oh, ow]

    def avgpool_backward(gy, gx, divisor, SH, SW, PH, PW):
        """gx[n, c, h, w] = Σ gy[n, c, oh, ow] / divisor[oh, ow] over the windows holding (h, w)."""
        N, C, H, W = gx.shape
        OH, OW = gy.shape[2:]
        gx[...] = 0
        for n in range(N):
            for c in range(C):
                for oh in range(OH):
                    for ow in range(OW):
                        share = gy[n, c, oh, ow] / divisor[oh, ow]
                        for i in range(KH):
                            h = oh * SH - PH + i
                            if h < 0 or h >= H:
                                continue
                            for j in range(KW):
                                w = ow * SW - PW + j
                                if 0 <= w < W:
                                    gx[n, c, h, w] += share

    def avgpool_forward_tiled(x, y, divisor):
        """``avgpool_forward`` when the windows tile the input (stride == kernel,
        no padding) and every window lies inside it.  x: (P, H, W) and y:
        (P, OH, OW) stacks of planes.  No bounds to check, and the window's
        cells added in the same order from the same 0, so the sums are the
        general loop's bit for bit; about twice as fast on LeNet's 2x2 pools."""
        P = x.shape[0]
        OH, OW = y.shape[1:]
        for p in range(P):
            for oh in range(OH):
                for ow in range(OW):
                    total = x.dtype.type(0)
                    for i in range(KH):
                        for j in range(KW):
                            total += x[p, oh * KH + i, ow * KW + j]
                    y[p, oh, ow] = total / divisor[oh, ow]

    def avgpool_backward_tiled(gy, gx, divisor):
        """``avgpool_backward`` when stride == kernel and there is no padding.

        gy: (P, OH, OW) and gx: (P, H, W) stacks of planes.  The windows tile
        the input, so each cell belongs to one window at most and is written
        once -- no zeroing, no read-modify-write.  Each window row's shares
        gy / divisor go to a buffer first (a contiguous loop the compiler
        vectorises), then each of its KH input rows copies them out KW times.
        Faster than the general loop on LeNet's 2x2 pools (benchmarks/results.md).
        """
        P, H, W = gx.shape
        OH, OW = gy.shape[1:]
        whole = min(OW, W // KW)            # windows that end inside the row
        share = np.empty(OW, dtype=gy.dtype)
        for p in range(P):
            for h in range(H):
                oh = h // KH
                if oh >= OH:                # below the last window (floor mode)
                    gx[p, h, :] = 0
                    continue
                if h % KH == 0:             # the first input row of window row oh
                    for ow in range(OW):
                        share[ow] = gy[p, oh, ow] / divisor[oh, ow]
                for ow in range(whole):
                    for j in range(KW):
                        gx[p, h, ow * KW + j] = share[ow]
                for w in range(whole * KW, W):  # a ceil_mode part window, or no window
                    ow = w // KW
                    gx[p, h, w] = share[ow] if ow < OW else 0

    # NumPy's error model drops the divide-by-zero check Python's rules put on every
    # division (no divisor is 0), so the compiler vectorises the share loop.
    loops = compile_loops(maxpool_forward, maxpool_backward, avgpool_forward,
                          avgpool_backward, nogil=True)
    tiled = compile_loops(avgpool_forward_tiled, avgpool_backward_tiled, nogil=True,
                          error_model="numpy")
    loops.avgpool_forward_tiled = tiled.avgpool_forward_tiled
    loops.avgpool_backward_tiled = tiled.avgpool_backward_tiled
    return loops


# ---------------------------------------------------------------- adaptive pooling loops
# The adaptive pooling loops, on (P, H, W) stacks of planes (P = N·C).
#
# Bins vary in size, so there is no constant to build in; each loop reads
# bin i's rows [top[i], bottom[i]) and bin j's columns [left[j], right[j])
# from int64 arrays (``_bin_edges``).  Each plane is one thread's (see
# ``threads.over_batch``), so overlapping bins adding into it never race.  The
# global pool, which ends most chapter networks, has its own two loops on
# (P, H·W) flat planes; the max's backward also takes gx flat.
def _adaptive_avg_forward_loop(x, y, top, bottom, left, right):
    """y[p, i, j] = mean of x[p] over bin (i, j), in two steps: first sum the
    rows of row bin i column by column (cols[w]: W independent sums along
    whole rows), then each column bin's cells of cols.  Summing bin by bin
    makes one chain of dependent additions per bin, which the processor
    cannot overlap, and was slower (benchmarks/results.md).  Sums are float64: a bin may be a
    large part of a plane, where float32 sums drift.
    """
    P, H, W = x.shape
    OH, OW = y.shape[1:]
    cols = np.empty(W)
    for p in range(P):
        for i in range(OH):
            cols[:] = 0
            for h in range(top[i], bottom[i]):
                for w in range(W):
                    cols[w] += x[p, h, w]
            for j in range(OW):
                total = 0.0
                for w in range(left[j], right[j]):
                    total += cols[w]
                y[p, i, j] = total / ((bottom[i] - top[i]) * (right[j] - left[j]))

def _adaptive_max_forward_loop(x, y, indices, top, bottom, left, right):
    """y[p, i, j] = max of x[p] over bin (i, j); indices = its h * W + w.

    The running max starts at the bin's first cell and moves only to a
    strictly greater cell, or to a NaN while it holds none: the first
    maximum, or the first NaN, as the reference's ``argmax`` picks.
    """
    P, H, W = x.shape
    OH, OW = y.shape[1:]
    for p in range(P):
        for i in range(OH):
            for j in range(OW):
                best, where = x[p, top[i], left[j]], top[i] * W + left[j]
                for h in range(top[i], bottom[i]):
                    for w in range(left[j], right[j]):
                        v = x[p, h, w]
                        # no branch on the values (as in maxpool_forward): v != v is NaN
                        takes_over = (v > best) | ((v != v) & (best == best))
                        where += takes_over * (h * W + w - where)
                        best = v if takes_over else best
                y[p, i, j] = best
                indices[p, i, j] = where

def _adaptive_max_backward_loop(gy, indices, gx):
    """gx[p, k] = Σ gy[p, i, j] over the bins whose max sits at k = h * W + w
    (gx: (P, H·W), so k indexes it directly)."""
    OH, OW = gy.shape[1:]
    gx[...] = 0
    for p in range(gx.shape[0]):
        for i in range(OH):
            for j in range(OW):
                gx[p, indices[p, i, j]] += gy[p, i, j]

def _adaptive_global_avg_forward_loop(x, y):
    """The global pool, output (1, 1): y[p] = mean of x[p].  x: (P, H·W), so the sum
    runs along one contiguous row, not H short ones, which is faster than
    the general loop on small planes such as GoogLeNet's 3x3 (benchmarks/results.md)."""
    P, HW = x.shape
    for p in range(P):
        total = 0.0
        for k in range(HW):
            total += x[p, k]
        y[p] = total / HW

def _adaptive_global_avg_backward_loop(gy, gx):
    """gx[p, k] = gy[p] / (H·W) on every cell: written once, no zeroing (a general
    bin loop's zero-then-add was much slower, benchmarks/results.md).
    Other output sizes go to the reference's matrix products (see
    ``adaptive_avgpool2d_backward``)."""
    P, HW = gx.shape
    for p in range(P):
        share = gy[p] / gy.dtype.type(HW)
        for k in range(HW):
            gx[p, k] = share


_adaptive_loops = on_first_use(_adaptive_avg_forward_loop, _adaptive_max_forward_loop,
                               _adaptive_max_backward_loop, _adaptive_global_avg_forward_loop,
                               _adaptive_global_avg_backward_loop, nogil=True)


# ---------------------------------------------------------------- the interface
def maxpool2d_forward(x, kernel_size, stride, padding, ceil_mode=False, dilation=(1, 1)):
    """``pool_numpy.maxpool2d_forward``, compiled: x (N, C, H, W) ->
    (y (N, C, OH, OW), argmax int64 (N, C, OH, OW))."""
    if not compilable(x):
        return pool_numpy.maxpool2d_forward(x, kernel_size, stride, padding, ceil_mode,
                                            dilation)
    out_shape = pool_output_hw(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    y = np.empty(x.shape[:2] + out_shape, dtype=x.dtype)
    argmax = np.empty(y.shape, dtype=np.int64)
    threads.over_batch(_loops(*kernel_size).maxpool_forward, (np.ascontiguousarray(x), y, argmax),
                       *stride, *padding, *dilation)
    return y, argmax


def maxpool2d_backward(gy, argmax, x_shape, kernel_size, stride, padding, dilation=(1, 1)):
    """``pool_numpy.maxpool2d_backward``, compiled: gy, argmax (N, C, OH, OW) -> gx (N, C, H, W)."""
    if not compilable(gy) or not isinstance(argmax, np.ndarray):
        return pool_numpy.maxpool2d_backward(gy, argmax, x_shape, kernel_size, stride,
                                             padding, dilation)
    gx = np.empty(tuple(x_shape), dtype=gy.dtype)
    threads.over_batch(_loops(*kernel_size).maxpool_backward,
                       (np.ascontiguousarray(gy), np.ascontiguousarray(argmax, dtype=np.int64), gx),
                       *stride, *padding, *dilation)
    return gx


def avgpool2d_forward(x, kernel_size, stride, padding, ceil_mode=False,
                      count_include_pad=True, divisor_override=None):
    """``pool_numpy.avgpool2d_forward``, compiled: x (N, C, H, W) -> y (N, C, OH, OW)."""
    if not compilable(x):
        return pool_numpy.avgpool2d_forward(x, kernel_size, stride, padding, ceil_mode,
                                            count_include_pad, divisor_override)
    out_shape = pool_output_hw(x.shape, kernel_size, stride, padding, (1, 1), ceil_mode)
    divisor = pool_numpy.avgpool_divisors(x.shape, out_shape, kernel_size, stride, padding,
                                          count_include_pad, divisor_override, x.dtype, np)
    y = np.empty(x.shape[:2] + out_shape, dtype=x.dtype)
    loops = _loops(*kernel_size)
    if _tiles(x.shape, out_shape, kernel_size, stride, padding):
        # LeNet's and DenseNet's 2x2 pools, every window inside the input
        threads.over_batch(loops.avgpool_forward_tiled, (_planes(x), _planes(y)), divisor)
    else:
        threads.over_batch(loops.avgpool_forward, (np.ascontiguousarray(x), y), divisor,
                           *stride, *padding)
    return y


def _windows_abut(kernel_size, stride, padding):
    """Whether each pooling window starts where the last one ends: stride ==
    kernel and no padding, so every input cell lies in one window at most."""
    return tuple(stride) == tuple(kernel_size) and tuple(padding) == (0, 0)


def _tiles(x_shape, out_hw, kernel_size, stride, padding):
    """Whether the pooling windows tile the input: they abut, and none is a
    part window past its edge (ceil_mode's)."""
    return (_windows_abut(kernel_size, stride, padding)
            and all(o * k <= n for o, k, n in zip(out_hw, kernel_size, x_shape[2:])))


def avgpool2d_backward(gy, x_shape, kernel_size, stride, padding, count_include_pad=True,
                       divisor_override=None):
    """``pool_numpy.avgpool2d_backward``, compiled: gy (N, C, OH, OW) -> gx (N, C, H, W)."""
    if not compilable(gy):
        return pool_numpy.avgpool2d_backward(gy, x_shape, kernel_size, stride, padding,
                                             count_include_pad, divisor_override)
    divisor = pool_numpy.avgpool_divisors(x_shape, gy.shape[2:], kernel_size, stride,
                                          padding, count_include_pad, divisor_override, gy.dtype, np)
    gx = np.empty(tuple(x_shape), dtype=gy.dtype)
    loops = _loops(*kernel_size)
    if _windows_abut(kernel_size, stride, padding):
        # LeNet's and DenseNet's 2x2 pools; the loop handles ceil_mode's part windows
        threads.over_batch(loops.avgpool_backward_tiled, (_planes(gy), _planes(gx)), divisor)
    else:
        threads.over_batch(loops.avgpool_backward, (np.ascontiguousarray(gy), gx), divisor,
                           *stride, *padding)
    return gx


# ---------------------------------------------------------------- adaptive pooling
def _planes(a, flat=False):
    """(N, C, H, W) -> (N·C, H, W), or (N·C, H·W) if ``flat``: adaptive pooling treats
    every plane alike, and a batch of one still splits over threads by channel."""
    planes = a.shape[0] * a.shape[1]
    return np.ascontiguousarray(a).reshape((planes, -1) if flat else (planes,) + a.shape[2:])


def _bin_edges(x_shape, output_size):
    """(top, bottom, left, right): int64 arrays of ``geometry.adaptive_bins`` edges."""
    rows, cols = (np.array(adaptive_bins(n, out), dtype=np.int64).reshape(out, 2)
                  for n, out in zip(x_shape[2:], output_size))
    return rows[:, 0], rows[:, 1], cols[:, 0], cols[:, 1]


def adaptive_avgpool2d_forward(x, output_size):
    """``pool_numpy.adaptive_avgpool2d_forward``, compiled: x (N, C, H, W) -> y (N, C, OH, OW)."""
    if not compilable(x):
        return pool_numpy.adaptive_avgpool2d_forward(x, output_size)
    y = np.empty(x.shape[:2] + tuple(output_size), dtype=x.dtype)
    if tuple(output_size) == (1, 1):
        threads.over_batch(_adaptive_loops().adaptive_global_avg_forward,
                           (_planes(x, flat=True), y.ravel()))
    else:
        threads.over_batch(_adaptive_loops().adaptive_avg_forward, (_planes(x), _planes(y)),
                           *_bin_edges(x.shape, output_size))
    return y


def adaptive_avgpool2d_backward(gy, x_shape):
    """``pool_numpy.adaptive_avgpool2d_backward``, compiled: gy (N, C, OH, OW) -> gx (N, C, H, W)."""
    # Only the global pool is compiled: for other outputs the reference's two
    # matrix products (A_Hᵀ dy A_W), which BLAS runs, beat a compiled loop
    # over bins (benchmarks/results.md).
    if not compilable(gy) or gy.shape[2:] != (1, 1):
        return pool_numpy.adaptive_avgpool2d_backward(gy, x_shape)
    gx = np.empty(tuple(x_shape), dtype=gy.dtype)
    threads.over_batch(_adaptive_loops().adaptive_global_avg_backward,
                       (np.ascontiguousarray(gy).ravel(), _planes(gx, flat=True)))
    return gx


def adaptive_maxpool2d_forward(x, output_size):
    """``pool_numpy.adaptive_maxpool2d_forward``, compiled: x (N, C, H, W) ->
    (y, indices int64 (N, C, OH, OW), row * W + col in the plane)."""
    if not compilable(x):
        return pool_numpy.adaptive_maxpool2d_forward(x, output_size)
    y = np.empty(x.shape[:2] + tuple(output_size), dtype=x.dtype)
    indices = np.empty(y.shape, dtype=np.int64)
    threads.over_batch(_adaptive_loops().adaptive_max_forward,
                       (_planes(x), _planes(y), _planes(indices)),
                       *_bin_edges(x.shape, output_size))
    return y, indices


def adaptive_maxpool2d_backward(gy, indices, x_shape):
    """``pool_numpy.adaptive_maxpool2d_backward``, compiled: gy, indices (N, C, OH, OW) ->
    gx (N, C, H, W)."""
    if not compilable(gy) or not isinstance(indices, np.ndarray):
        return pool_numpy.adaptive_maxpool2d_backward(gy, indices, x_shape)
    gx = np.empty(tuple(x_shape), dtype=gy.dtype)
    threads.over_batch(_adaptive_loops().adaptive_max_backward,
                       (_planes(gy), _planes(np.asarray(indices, dtype=np.int64)),
                        _planes(gx, True)))
    return gx
