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
    dW[o, c, i, j]  = Σ_{n, k} gy_flat[n, o, k] · x_flat[n, c, base(i, j) + k]  backward_weight

forward and backward_input sum the KH·KW taps inside the loop over k (the
backward one gathers, reading gy shifted, rather than scattering), so each
element is loaded and stored once per (o, c), not once per tap.
``gy_flat`` is gy at width Wp with zeros in the scratch columns, so they add
nothing backward -- unless the other factor is inf or NaN, where 0 · inf
would put a NaN where PyTorch has a number: such inputs (W for dx, x for dW;
one sum tells) go to the reference.  dW[o, c, i, j] is a dot product over
(n, k): per image, one dot of length L over that image's flat rows, copied
into scratch that stays in the cache, its partial sums in vector registers
(the compiler may reorder this sum's additions, ``reassoc``, as it does batch
norm's; in float32 each dot's error is that of a few dozen terms, the images'
dots then add up in float64).  It runs over twice as fast as keeping a
row of L partial sums in memory per (o, c, i, j), added element by element
(benchmarks/results.md, "The direct convolution's dW as dot products").

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
import types

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

    def backward_weight(gy, x, dW, top, left, Hp, Wp, DH, DW, zero):
        """dW[o, c, i, j] += Σ_n Σ_k gy_flat[n, o, k] · x_flat[n, c, base(i, j) + k]:
        one dot product per (o, c, i, j) and image.  gy: (N, O, OH, OW); x: (N, C, H, W),
        unpadded; dW: float64 (O, C, KH, KW), added to; zero: 0 in x's dtype.

        Each image is first copied into scratch that stays in the cache: x zero-padded
        to (Hp, Wp) and flattened, gy at row width Wp with zeros in the scratch
        columns (never written again: only the interior changes).  The dot products
        then read only cached data, and run in vector registers: a sum whose order
        the compiler may change (``reassoc``, see ``_loops``).  Two output channels
        share each load of the input window (an odd last one pairs with a zero row)."""
        N, C, H, Wd = x.shape
        O, OH, OW = gy.shape[1:]
        L = (OH - 1) * Wp + OW
        planes = np.zeros((C, Hp * Wp), dtype=x.dtype)
        rows = np.zeros((O + O % 2, L), dtype=gy.dtype)
        for n in range(N):
            for c in range(C):
                for h in range(H):
                    for v in range(Wd):
                        planes[c, np.uint64((top + h) * Wp + left + v)] = x[n, c, h, v]
            for o in range(O):
                for oh in range(OH):
                    for ow in range(OW):
                        rows[o, np.uint64(oh * Wp + ow)] = gy[n, o, oh, ow]
            for c in range(C):
                plane = planes[c]
                for o in range(0, O, 2):
                    g0, g1 = rows[o], rows[o + 1]
                    for i in range(KH):
                        for j in range(KW):
                            base = i * DH * Wp + j * DW
                            s0, s1 = zero, zero
                            for k in range(L):
                                window = plane[np.uint64(base + k)]
                                s0 += g0[np.uint64(k)] * window
                                s1 += g1[np.uint64(k)] * window
                            dW[o, c, i, j] += s0
                            if o + 1 < O:
                                dW[o + 1, c, i, j] += s1

    # The forward and dx loops keep the reference's order of additions; the dot
    # products of dW may reorder theirs (``reassoc``: partial sums in vector
    # registers, as batch norm's sums do), the only way they vectorise.
    exact = compile_loops(forward, backward_input, nogil=True)
    dots = compile_loops(backward_weight, nogil=True, fastmath={"reassoc", "contract"})
    return types.SimpleNamespace(**vars(exact), **vars(dots))


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
    top, bottom, left, right = padding
    gy, x = np.ascontiguousarray(gy), np.ascontiguousarray(x)
    (N, O), (C, H, Wd) = gy.shape[:2], x.shape[1:]
    slices = _batch_slices(gy, x)
    # one float64 dW per slice: no two threads add into the same one
    partial = np.zeros((len(slices), O, C) + tuple(kernel_size), dtype=np.float64)
    loop = _loops(*kernel_size).backward_weight
    threads.run_all([functools.partial(loop, gy[lo:hi], x[lo:hi], partial[s], top, left,
                                       H + top + bottom, Wd + left + right, *dilation,
                                       x.dtype.type(0))
                     for s, (lo, hi) in enumerate(slices)])
    total = partial[0]
    for more in partial[1:]:        # in slice order, whichever thread finished first
        total += more
    return total.astype(x.dtype)
