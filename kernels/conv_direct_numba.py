"""Direct convolution as compiled loops (Numba): the interface of ``conv_direct_numpy``.

Same signatures, shapes and results as the reference kernels in
``conv_direct_numpy.py`` (read that file first for the sums); only the *how*
differs, and only for stride 1 (the thin layers conv2d runs this way, such
as LeNet's; other strides go to the reference).  No column matrix: each
kernel is one loop nest over one image at a time.

**Flat rows.**  With stride 1, output pixel (oh, ow) of tap (i, j) reads the
padded input at (oh + i·DH, ow + j·DW), so in the flattened padded plane
(width Wp) every tap is the same contiguous stretch shifted by
base(i, j) = i·DH·Wp + j·DW.  Laying the output out at width Wp too (the
columns ow >= OW are scratch: they read pixels past the row's end and are
dropped), a tap over a whole output plane is ONE contiguous stretch of
L = (OH - 1)·Wp + OW elements, and the loops run over it, innermost, where
the compiler vectorises them (instead of OH short loops of OW)::

    y_flat[o, k]  = Σ_{c, i, j} W[o, c, i, j] · x_flat[c, base(i, j) + k]       forward
    gx_flat[c, p] = Σ_{o, i, j} W[o, c, i, j] · gy_flat[o, p - base(i, j)]      backward_input
    dW_rows[o, c, i, j, k] = Σ_n gy_flat[n, o, k] · x_flat[n, c, base(i, j) + k]  backward_weight

forward and backward_input sum the KH·KW taps inside the loop over k (the
backward one gathers, reading gy shifted, rather than scattering), so each
element is loaded and stored once per (o, c), not once per tap.
``gy_flat`` is gy at width Wp with zeros in the scratch columns, so they add
nothing backward -- unless the other factor is inf or NaN, where 0 · inf
would put a NaN where PyTorch has a number: such inputs (W for dx, x for dW;
one sum tells) go to the reference.  dW[o, c, i, j] is a dot product over
(n, k); summing it into one float would need the additions reordered to run
in vector registers, which only fastmath allows, so each (o, c, i, j) keeps a
row of L partial sums, added element by element (vectorisable in order) and
summed once at the end.

As in ``pool_numba.py``:

- The kernel size is a compile-time constant: ``_loops(KH, KW)`` compiles
  the loops once per kernel size, so the (i, j) loops unroll.
- The batch is split over threads (``threads.batch_slices``), each running the
  compiled loop on its own slice of images with the GIL released
  (``nogil``).  Images never share an output, so nothing races; dW gets one
  set of partial sums per slice, added up in slice order afterwards, so the
  result does not depend on which thread finished first.

Only NumPy float32/float64 arrays of one dtype reach the loops; anything
else goes to the reference (``kernels/jit.py``).  Indices in the inner
loops are unsigned for the reason ``conv_numba.py`` gives.
"""
import functools

import numpy as np

from . import conv_direct_numpy, threads
from .geometry import conv_output_hw
from .jit import compilable, compile_loops


# ---------------------------------------------------------------- the loops
@functools.cache
def _loops(KH, KW):
    """The three direct-convolution loops with the kernel size KH x KW built in
    (compiled at the first call for a kernel size, ``kernels/jit.py``)."""

    def forward(x_flat, W, y, Wp, DH, DW, b, has_bias):
        """y[n, o] = Σ_{c, i, j} W[o, c, i, j] · x_flat[n, c, base(i, j) + k], cropped to
        (OH, OW), + b[o] if has_bias (as each output is written, after its sum, as the
        reference adds it).  x_flat: (N, C, Hp·Wp), padded; y: (N, O, OH, OW), written."""
        N, C = x_flat.shape[:2]
        O, OH, OW = y.shape[1:]
        L = (OH - 1) * Wp + OW
        acc = np.empty(L, dtype=y.dtype)
        for n in range(N):
            for o in range(O):
                acc[:] = 0
                for c in range(C):
                    plane, taps = x_flat[n, c], W[o, c]
                    for k in range(L):
                        total = acc[np.uint64(k)]
                        for i in range(KH):
                            for j in range(KW):
                                total += taps[i, j] * plane[np.uint64(i * DH * Wp + j * DW + k)]
                        acc[np.uint64(k)] = total
                if has_bias:
                    bias = b[o]
                    for oh in range(OH):
                        for ow in range(OW):
                            y[n, o, oh, ow] = acc[np.uint64(oh * Wp + ow)] + bias
                else:
                    for oh in range(OH):
                        for ow in range(OW):
                            y[n, o, oh, ow] = acc[np.uint64(oh * Wp + ow)]

    def backward_input(gy, W, gx, Hp, Wp, DH, DW, top, left):
        """gx[n, c] = the forward's adjoint, gathered: padded-plane pixel p gets
        Σ_{o, i, j} W[o, c, i, j] · gy_flat[n, o, p - base(i, j)], then the plane
        is cropped.  gy: (N, O, OH, OW); gx: (N, C, H, W), written."""
        N, C, H, Wd = gx.shape
        O, OH, OW = gy.shape[1:]
        reach = (KH - 1) * DH * Wp + (KW - 1) * DW      # the largest base(i, j)
        P = Hp * Wp
        # gy_flat with `reach` zeros before it and enough after, so every read is inside
        g_flat = np.zeros((O, reach + P), dtype=gy.dtype)
        plane = np.empty(P, dtype=gx.dtype)
        for n in range(N):
            for o in range(O):
                for oh in range(OH):
                    for ow in range(OW):
                        g_flat[o, np.uint64(reach + oh * Wp + ow)] = gy[n, o, oh, ow]
            for c in range(C):
                plane[:] = 0
                for o in range(O):
                    g, taps = g_flat[o], W[o, c]
                    for p in range(P):
                        total = plane[np.uint64(p)]
                        for i in range(KH):
                            for j in range(KW):
                                total += taps[i, j] * g[np.uint64(reach + p - i * DH * Wp - j * DW)]
                        plane[np.uint64(p)] = total
                for h in range(H):
                    for v in range(Wd):
                        gx[n, c, h, v] = plane[np.uint64((top + h) * Wp + left + v)]

    def backward_weight(g_flat, x_flat, rows, Wp, DH, DW):
        """rows[o, c, i, j, k] += Σ_n g_flat[n, o, k] · x_flat[n, c, base(i, j) + k];
        dW is rows summed over k.  g_flat: (N, O, OH·Wp), gy at row width Wp with
        zeros in the scratch columns; rows: (O, C, KH, KW, L), zeroed by the caller.
        (o, c) outermost: its rows stay in the cache while the images stream by,
        two at a time, so each load and store of a partial sum carries two products."""
        N, C = x_flat.shape[:2]
        O, L = g_flat.shape[1], rows.shape[4]
        for o in range(O):
            for c in range(C):
                for n in range(0, N - 1, 2):
                    g0, plane0 = g_flat[n, o], x_flat[n, c]
                    g1, plane1 = g_flat[n + 1, o], x_flat[n + 1, c]
                    for i in range(KH):
                        for j in range(KW):
                            sums, base = rows[o, c, i, j], i * DH * Wp + j * DW
                            for k in range(L):
                                u, q = np.uint64(k), np.uint64(base + k)
                                sums[u] += g0[u] * plane0[q] + g1[u] * plane1[q]
                if N % 2:                               # the odd image out
                    g, plane = g_flat[N - 1, o], x_flat[N - 1, c]
                    for i in range(KH):
                        for j in range(KW):
                            sums, base = rows[o, c, i, j], i * DH * Wp + j * DW
                            for k in range(L):
                                u, q = np.uint64(k), np.uint64(base + k)
                                sums[u] += g[u] * plane[q]

    return compile_loops(forward, backward_input, backward_weight, nogil=True)


def _batch_slices(*arrays):
    """``threads.batch_slices`` for the batch of ``arrays`` (its inputs and outputs)."""
    return threads.batch_slices(arrays[0].shape[0], sum(a.nbytes for a in arrays))


def _compiles(stride, *arrays):
    """Whether the loops take these inputs: stride 1, NumPy float32/float64 of one dtype."""
    return (tuple(stride) == (1, 1) and compilable(*arrays)
            and len({a.dtype for a in arrays}) == 1)


def _finite(a):
    """Whether every element of ``a`` is finite, by one sum (an overflowing sum of
    finite values says no, which only costs a trip to the reference)."""
    return bool(np.isfinite(a.sum()))


def _padded_buffer(x, padding):
    """(a buffer for x (N, C, H, W) zero-padded -- x itself if there is no
    padding -- filled slice by slice by ``_padded_flat``, and its row width Wp)."""
    top, bottom, left, right = padding
    N, C, H, W = x.shape
    if not any(padding):
        return x, W
    return np.empty((N, C, H + top + bottom, W + left + right), dtype=x.dtype), W + left + right


def _padded_flat(x, x_pad, padding):
    """Images x (n, C, H, W) written into their part x_pad of ``_padded_buffer``
    with zeros around, then flattened: (n, C, Hp·Wp).  (NumPy's copies release
    the GIL, so each thread pads its own slice side by side.)"""
    top, bottom, left, right = padding
    if any(padding):
        H, W = x.shape[2:]
        x_pad[:, :, :top] = 0
        x_pad[:, :, top + H:] = 0
        x_pad[:, :, top:top + H, :left] = 0
        x_pad[:, :, top:top + H, left + W:] = 0
        x_pad[:, :, top:top + H, left:left + W] = x
    return x_pad.reshape(x_pad.shape[:2] + (-1,))


# ---------------------------------------------------------------- the interface
def conv_direct_forward(x, W, stride, padding, dilation, b=None):
    """``conv_direct_numpy.conv_direct_forward``, compiled: x (N, C, H, W),
    W (O, C, KH, KW), b (O,) or None -> y (N, O, OH, OW)."""
    if not (_compiles(stride, x, W) and (b is None or _compiles(stride, x, b))):
        return conv_direct_numpy.conv_direct_forward(x, W, stride, padding, dilation, b)
    KH, KW = W.shape[2:]
    out_hw = conv_output_hw(x.shape, (KH, KW), stride, padding, dilation)
    x, W = np.ascontiguousarray(x), np.ascontiguousarray(W)
    y = np.empty((x.shape[0], W.shape[0]) + out_hw, dtype=x.dtype)
    bias = np.empty(0, dtype=x.dtype) if b is None else np.ascontiguousarray(b)
    x_pad, Wp = _padded_buffer(x, padding)
    loop = _loops(KH, KW).forward

    def slice_job(lo, hi):      # each thread pads its own images, then sums them
        x_flat = _padded_flat(x[lo:hi], x_pad[lo:hi], padding)
        loop(x_flat, W, y[lo:hi], Wp, *dilation, bias, b is not None)
    threads.run_all([functools.partial(slice_job, lo, hi) for lo, hi in _batch_slices(x, y)])
    return y


def conv_direct_backward_input(gy, W, x_shape, stride, padding, dilation):
    """``conv_direct_numpy.conv_direct_backward_input``, compiled: gy (N, O, OH, OW),
    W (O, C, KH, KW) -> gx (N, C, H, W)."""
    if not (_compiles(stride, gy, W) and _finite(W)):
        return conv_direct_numpy.conv_direct_backward_input(gy, W, x_shape, stride, padding,
                                                            dilation)
    top, bottom, left, right = padding
    N, _, H, Wd = x_shape
    gy, W = np.ascontiguousarray(gy), np.ascontiguousarray(W)
    gx = np.empty(tuple(x_shape), dtype=gy.dtype)
    loop = _loops(*W.shape[2:]).backward_input
    threads.run_all([functools.partial(loop, gy[lo:hi], W, gx[lo:hi], H + top + bottom,
                                       Wd + left + right, *dilation, top, left)
                     for lo, hi in _batch_slices(gy, gx)])
    return gx


def conv_direct_backward_weight(gy, x, kernel_size, stride, padding, dilation):
    """``conv_direct_numpy.conv_direct_backward_weight``, compiled: gy (N, O, OH, OW),
    x (N, C, H, W) -> gW (O, C, KH, KW)."""
    if not (_compiles(stride, gy, x) and _finite(x)):
        return conv_direct_numpy.conv_direct_backward_weight(gy, x, kernel_size, stride,
                                                             padding, dilation)
    x = np.ascontiguousarray(x)
    x_pad, Wp = _padded_buffer(x, padding)
    (N, O, OH, OW), C = gy.shape, x.shape[1]
    L = (OH - 1) * Wp + OW
    g_flat = np.empty((N, O, OH * Wp), dtype=gy.dtype)    # gy at row width Wp
    slices = _batch_slices(g_flat, x_pad)
    # per slice, one row of partial sums per (o, c, i, j): no two threads share one
    rows = np.zeros((len(slices), O, C) + tuple(kernel_size) + (L,), dtype=x.dtype)
    loop = _loops(*kernel_size).backward_weight

    def slice_job(s, lo, hi):
        # each thread pads its own images and lays out their gy at width Wp, then sums
        x_flat = _padded_flat(x[lo:hi], x_pad[lo:hi], padding)
        _widen(gy[lo:hi], g_flat[lo:hi].reshape(hi - lo, O, OH, Wp))
        loop(g_flat[lo:hi], x_flat, rows[s], Wp, *dilation)
    threads.run_all([functools.partial(slice_job, s, lo, hi)
                     for s, (lo, hi) in enumerate(slices)])
    return rows.sum(axis=(0, 5))


def _widen(gy, wide):
    """wide (n, O, OH, Wp) = gy (n, O, OH, OW) in its first OW columns, 0 in the rest."""
    OW = gy.shape[3]
    wide[..., :OW] = gy
    wide[..., OW:] = 0
