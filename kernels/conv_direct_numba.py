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

**Blocks of channels.**  Each load feeds several sums.  forward carries B
output channels through each pass over the flat rows (B sums per input
element loaded), one kernel row (KW taps) per pass; backward_input, B input
channels (B sums per element of gy), gathering -- reading gy shifted -- rather
than scattering; backward_weight, B output channels times 5 taps of a row
(``DW_TAPS``: 4 x 5 dot products per pass, each load of gy or of the window
feeding 5 or 4 of them).  B, at most 4, is chosen per layer (``block_for``:
16 channels go as 4 blocks of 4, 6 as 2 of 3) and built into the compiled
loops; the weights get zero channels up to a multiple of B, whose sums are
dropped.  (One channel per pass left the loops waiting on loads: the
figures are in benchmarks/results.md, "The direct convolution in blocks of
channels".)  dW takes at most 2 channels per pass on CPUs with 16 vector
registers (``dw_block_for``): there, more sums than registers spill to the
stack.  forward and backward_input keep the reference's order of
additions, each product fused into its addition (``contract``).
``gy_flat`` is gy at width Wp with zeros in the scratch columns, so they add
nothing backward -- unless the other factor is inf or NaN, where 0 · inf
would put a NaN where PyTorch has a number: a W with such values (one sum
tells) sends dx to the reference, and a dW with a non-finite value is
computed again by it (the loops read all of x, so no pass of its own checks
it).  dW[o, c, i, j] is a dot product over (n, k): per image, one dot of
length L over that image's flat rows, copied into scratch that stays in the
cache, its partial sums in vector registers (the compiler may reorder this
sum's additions, ``reassoc``, as it does batch norm's; in float32 each dot's
error is that of a few dozen terms, the images' dots then add up in
float64).  It runs over twice as fast as keeping a row of L partial sums
in memory per (o, c, i, j), added element by element (benchmarks/results.md,
"The direct convolution's dW as dot products").  The bias's gradient is
summed as each image's gy is copied: gy is read once for both.

As in ``pool_numba.py``:

- The kernel size and the block are compile-time constants: ``_loops(KH, KW, B)``
  compiles the loops once per kernel size and block, so the (i, j) loops
  unroll and the lines for channels past B drop out.
- The batch is split over threads (``threads.batch_slices``, from a few
  million multiply-adds whatever the bytes), each running the
  compiled loop on its own slice of images with the GIL released
  (``nogil``).  Images never share an output, so nothing races; dW gets one
  set of partial sums per slice, added up in slice order afterwards, so the
  result does not depend on which thread finished first.

Only NumPy float32/float64 arrays of one dtype reach the loops; anything
else goes to the reference (``kernels/jit.py``).  Indices in the inner
loops are unsigned for the reason ``conv_numba.py`` gives.
"""
import functools
import platform
import types

import numpy as np

from . import conv_direct_numpy, threads
from .geometry import conv_output_hw
from .jit import compilable, compile_loops


# ---------------------------------------------------------------- the loops
# Each pass of the loops below carries a block of up to MAX_BLOCK channels
# (output channels forward and for dW, input channels for dx): one load of
# the input then feeds that many multiply-adds instead of one.  The block
# size is built into the compiled loops (``_loops``); the wrappers choose it
# per layer (``block_for``) and pad the weights with zero channels to a
# multiple of it (the sums of those channels are dropped).
MAX_BLOCK = 4
# dx sums a stretch of this many elements of the padded plane at a time: the
# block's rows of partial sums stay in the first-level cache however large
# the planes.  (forward runs over whole planes: in stretches it ran slower on
# LeNet's, and no faster on VGG's 224x224 ones.)
TILE = 1024
# dW sums this many taps of a kernel row per pass over the row: with 4 output
# channels, 4 x 5 partial sums in vector registers, and each load of gy or of
# the window feeds 5 or 4 multiply-adds.  (5 is LeNet's kernel width; a
# narrower kernel's extra taps read zero slack past the plane and are dropped.)
DW_TAPS = 5


def block_for(channels):
    """The block size (1 to MAX_BLOCK) for a loop over ``channels`` channels: the
    fewest passes, each pass costing its block plus one (the loads that its
    channels share), padded channels included -- 16 channels go as 4 blocks of
    4, 6 as 2 of 3 (not 2 of 4, two of them zeros), 1 as 1."""
    def cost(block):
        return -(-channels // block) * (block + 1)
    return min(range(MAX_BLOCK, 0, -1), key=cost)


# dW's blocks where the CPU has 16 vector registers (x86-64 without AVX-512):
# B x DW_TAPS sums, the DW_TAPS window values and gy's value must all stay in
# registers.  With B = 3 or 4 (15 or 20 sums) the compiler spills sums to the
# stack in the innermost loop, at 16-byte alignment: a 32-byte slot then
# straddles a cache line or not depending on how deep the caller's stack is,
# and LeNet's second layer ran twice as long when a pool thread called it.
# With B = 2 (10 sums) it ran faster than either, from every thread
# (benchmarks/results.md, "Spilled sums in the direct convolution's dW").
DW_BLOCK_16_REGISTERS = 2


def dw_block_for(channels):
    """``block_for`` for dW's loop: at most DW_BLOCK_16_REGISTERS output
    channels per pass where the CPU has 16 vector registers."""
    block = block_for(channels)
    return block if vector_registers() >= 32 else min(block, DW_BLOCK_16_REGISTERS)


@functools.cache
def vector_registers():
    """How many vector registers the compiled loops have: 32 with AVX-512, 16
    on other x86-64 CPUs (AVX2 and before); 32 elsewhere (ARM's NEON)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return 32
    import llvmlite.binding as llvm      # Numba compiles for the host's CPU
    return 32 if llvm.get_host_cpu_features().get("avx512f") else 16


@functools.cache
def _loops(KH, KW, B):
    """The three direct-convolution loops with the kernel size KH x KW and the
    block size B built in (compiled at the first call for each, ``kernels/jit.py``).
    The loops are written for MAX_BLOCK channels; with B fixed at compile time,
    the lines for channels past B (``if B > q``) are compiled out."""
    u = np.uint64

    def forward(x_flat, W, y, Wp, DH, DW, b, has_bias):
        """y[n, o] = Σ_{c, i, j} W[o, c, i, j] · x_flat[n, c, base(i, j) + k], cropped to
        (OH, OW), + b[o] if has_bias (as each output is written, after its sum, as the
        reference adds it).  x_flat: (N, C, Hp·Wp), padded; W: (O', C, KH, KW), O' a
        multiple of B (zero rows past O); y: (N, O, OH, OW), written.

        B output channels per pass over the flat rows, one kernel row (KW taps) per
        pass: each input element loaded feeds B sums."""
        N, C = x_flat.shape[:2]
        O, OH, OW = y.shape[1:]
        L = (OH - 1) * Wp + OW
        acc = np.zeros((MAX_BLOCK, L), dtype=y.dtype)
        for n in range(N):
            for o in range(0, O, B):
                acc[:B] = 0
                a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
                for c in range(C):
                    plane = x_flat[n, c]
                    w0, w1 = W[o, c], W[o + min(1, B - 1), c]
                    w2, w3 = W[o + min(2, B - 1), c], W[o + min(3, B - 1), c]
                    for i in range(KH):
                        row = plane[i * DH * Wp:]
                        for k in range(L):
                            t0, t1, t2, t3 = a0[u(k)], a1[u(k)], a2[u(k)], a3[u(k)]
                            for j in range(KW):
                                v = row[u(j * DW + k)]
                                t0 += w0[i, j] * v
                                if B > 1:
                                    t1 += w1[i, j] * v
                                if B > 2:
                                    t2 += w2[i, j] * v
                                if B > 3:
                                    t3 += w3[i, j] * v
                            a0[u(k)] = t0
                            if B > 1:
                                a1[u(k)] = t1
                            if B > 2:
                                a2[u(k)] = t2
                            if B > 3:
                                a3[u(k)] = t3
                for q in range(min(B, O - o)):
                    for oh in range(OH):
                        for ow in range(OW):
                            total = acc[q, u(oh * Wp + ow)]
                            y[n, o + q, oh, ow] = total + b[o + q] if has_bias else total

    def backward_input(gy, W, gx, Hp, Wp, DH, DW, top, left):
        """gx[n, c] = the forward's adjoint, gathered: padded-plane pixel p gets
        Σ_{o, i, j} W[o, c, i, j] · gy_flat[n, o, p - base(i, j)], then the plane
        is cropped.  gy: (N, O, OH, OW); W: (O, C', KH, KW), C' a multiple of B
        (zero columns past C); gx: (N, C, H, W), written.

        B input channels per pass, one kernel row per pass: each element of gy
        loaded feeds B sums.  (Its inner loop is forward's, reading gy where forward
        reads x: as one compiled helper that both call, neither loop could be kept
        in Numba's disk cache, and every process compiled them again.)"""
        N, C, H, Wd = gx.shape
        O, OH, OW = gy.shape[1:]
        reach = (KH - 1) * DH * Wp + (KW - 1) * DW      # the largest base(i, j)
        P = Hp * Wp
        # gy_flat with `reach` zeros before it and enough after, so every read is inside
        g_flat = np.zeros((O, reach + P), dtype=gy.dtype)
        planes = np.zeros((MAX_BLOCK, TILE), dtype=gx.dtype)
        for n in range(N):
            for o in range(O):
                for oh in range(OH):
                    for ow in range(OW):
                        g_flat[o, u(reach + oh * Wp + ow)] = gy[n, o, oh, ow]
            for c in range(0, C, B):
                for start in range(top * Wp, (top + H) * Wp, TILE):   # the rows gx keeps
                    length = min(TILE, (top + H) * Wp - start)
                    planes[:B] = 0
                    p0, p1, p2, p3 = planes[0], planes[1], planes[2], planes[3]
                    for o in range(O):
                        w0, w1 = W[o, c], W[o, c + min(1, B - 1)]
                        w2, w3 = W[o, c + min(2, B - 1)], W[o, c + min(3, B - 1)]
                        for i in range(KH):
                            # gy shifted by base(i, KW - 1): tap j reads (KW - 1 - j)·DW
                            # further on (indices that only grow: the loop vectorises)
                            g = g_flat[o, reach - i * DH * Wp - (KW - 1) * DW + start:]
                            for p in range(length):
                                t0, t1, t2, t3 = p0[u(p)], p1[u(p)], p2[u(p)], p3[u(p)]
                                for j in range(KW):
                                    v = g[u(p + (KW - 1 - j) * DW)]
                                    t0 += w0[i, j] * v
                                    if B > 1:
                                        t1 += w1[i, j] * v
                                    if B > 2:
                                        t2 += w2[i, j] * v
                                    if B > 3:
                                        t3 += w3[i, j] * v
                                p0[u(p)] = t0
                                if B > 1:
                                    p1[u(p)] = t1
                                if B > 2:
                                    p2[u(p)] = t2
                                if B > 3:
                                    p3[u(p)] = t3
                    for q in range(min(B, C - c)):
                        for r in range(start // Wp, (start + length - 1) // Wp + 1):
                            for v in range(max(start - r * Wp, left), min(start + length - r * Wp,
                                                                        left + Wd)):
                                gx[n, c + q, r - top, v - left] = planes[q, u(r * Wp + v - start)]

    def backward_weight(gy, x, dW, db, has_bias, top, left, Hp, Wp, DH, DW, zero):
        """dW[o, c, i, j] += Σ_n Σ_k gy_flat[n, o, k] · x_flat[n, c, base(i, j) + k]:
        one dot product per (o, c, i, j) and image; and if has_bias, db[o] += Σ_n Σ_k
        gy_flat[n, o, k], the bias's gradient.  gy: (N, O, OH, OW); x: (N, C, H, W),
        unpadded; dW: float64 (O, C, KH, KW), db: float64 (O,), added to; zero: 0 in
        x's dtype.

        Each image is first copied into scratch that stays in the cache: x zero-padded
        to (Hp, Wp) and flattened (with zeros after it for the slack reads below), gy
        at row width Wp with zeros in the scratch columns and in the rows that pad O
        to a multiple of B (never written again: only the interior changes) -- db is
        summed on the way, so gy is read once for both.  The dot
        products then read only cached data, and run in vector registers: a sum whose
        order the compiler may change (``reassoc``, see below).  Each pass over a row
        computes B output channels x DW_TAPS taps: taps past KW read the zeros after
        the plane, and their sums are dropped."""
        N, C, H, Wd = x.shape
        O, OH, OW = gy.shape[1:]
        L = (OH - 1) * Wp + OW
        planes = np.zeros((C, Hp * Wp + (DW_TAPS - 1) * DW), dtype=x.dtype)
        rows = np.zeros((O + (-O) % B + MAX_BLOCK, L), dtype=gy.dtype)
        sums = np.zeros((MAX_BLOCK, DW_TAPS), dtype=x.dtype)
        passes_per_row = -(-KW // DW_TAPS)
        for n in range(N):
            for c in range(C):
                for h in range(H):
                    for v in range(Wd):
                        planes[c, u((top + h) * Wp + left + v)] = x[n, c, h, v]
            for o in range(O):
                total = 0.0             # float64, as dW's sums add up
                for oh in range(OH):
                    for ow in range(OW):
                        g = gy[n, o, oh, ow]
                        rows[o, u(oh * Wp + ow)] = g
                        total += g
                if has_bias:
                    db[o] += total
            for c in range(C):
                for o in range(0, O, B):
                    g0, g1, g2, g3 = rows[o], rows[o + 1], rows[o + 2], rows[o + 3]
                    for r in range(KH * passes_per_row):    # kernel row i, taps j0 on
                        i, j0 = r // passes_per_row, r % passes_per_row * DW_TAPS
                        w = planes[c, i * DH * Wp + j0 * DW:]         # the window of tap j0
                        s00 = s01 = s02 = s03 = s04 = zero    # s<q><t>: channel o + q, tap j0 + t
                        s10 = s11 = s12 = s13 = s14 = zero
                        s20 = s21 = s22 = s23 = s24 = zero
                        s30 = s31 = s32 = s33 = s34 = zero
                        for k in range(L):
                            v0, v1, v2 = w[u(k)], w[u(k + DW)], w[u(k + 2 * DW)]
                            v3, v4 = w[u(k + 3 * DW)], w[u(k + 4 * DW)]
                            a = g0[u(k)]
                            s00 += a*v0; s01 += a*v1; s02 += a*v2; s03 += a*v3; s04 += a*v4
                            if B > 1:
                                a = g1[u(k)]
                                s10 += a*v0; s11 += a*v1; s12 += a*v2; s13 += a*v3; s14 += a*v4
                            if B > 2:
                                a = g2[u(k)]
                                s20 += a*v0; s21 += a*v1; s22 += a*v2; s23 += a*v3; s24 += a*v4
                            if B > 3:
                                a = g3[u(k)]
                                s30 += a*v0; s31 += a*v1; s32 += a*v2; s33 += a*v3; s34 += a*v4
                        sums[0, 0], sums[0, 1], sums[0, 2], sums[0, 3] = s00, s01, s02, s03
                        sums[1, 0], sums[1, 1], sums[1, 2], sums[1, 3] = s10, s11, s12, s13
                        sums[2, 0], sums[2, 1], sums[2, 2], sums[2, 3] = s20, s21, s22, s23
                        sums[3, 0], sums[3, 1], sums[3, 2], sums[3, 3] = s30, s31, s32, s33
                        sums[0, 4], sums[1, 4], sums[2, 4], sums[3, 4] = s04, s14, s24, s34
                        for q in range(min(B, O - o)):
                            for t in range(min(DW_TAPS, KW - j0)):
                                dW[o + q, c, i, j0 + t] += sums[q, t]

    # Forward and dx keep the reference's order of additions, each product fused
    # into its addition (``contract``: one rounding instead of two, as a
    # multiply-add instruction does); the dot products of dW may also reorder
    # theirs (``reassoc``: partial sums in vector registers, as batch norm's
    # sums do), the only way they vectorise.
    sums_in_order = compile_loops(forward, backward_input, nogil=True, fastmath={"contract"})
    dots = compile_loops(backward_weight, nogil=True, fastmath={"reassoc", "contract"})
    return types.SimpleNamespace(**vars(sums_in_order), **vars(dots))


def _batch_slices(y, x, kernel_size):
    """``threads.batch_slices`` for a loop over the batch of y (or gy) and x (or
    gx): its bytes, and its multiply-adds, C·KH·KW per output."""
    multiply_adds = y.size * x.shape[1] * kernel_size[0] * kernel_size[1]
    return threads.batch_slices(y.shape[0], y.nbytes + x.nbytes, multiply_adds)


def _compiles(stride, *arrays):
    """Whether the loops take these inputs: stride 1, NumPy float32/float64 of one dtype."""
    return (tuple(stride) == (1, 1) and compilable(*arrays)
            and len({a.dtype for a in arrays}) == 1)


def _finite(a):
    """Whether every element of ``a`` is finite, by one sum (an overflowing sum of
    finite values says no, which only costs a trip to the reference)."""
    return bool(np.isfinite(a.sum()))


def _zero_padded_channels(W, axis, block):
    """W (O, C, KH, KW) with zero channels appended along ``axis`` (0: output,
    1: input) up to a multiple of ``block``, for the loops' blocks of channels
    (W itself when it has one already)."""
    missing = -W.shape[axis] % block
    if not missing:
        return W
    widths = [(0, 0)] * W.ndim
    widths[axis] = (0, missing)
    return np.pad(W, widths)


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
    block = block_for(W.shape[0])
    loop = _loops(KH, KW, block).forward
    W_blocks = _zero_padded_channels(W, 0, block)

    def slice_job(lo, hi):      # each thread pads its own images, then sums them
        x_flat = _padded_flat(x[lo:hi], x_pad[lo:hi], padding)
        loop(x_flat, W_blocks, y[lo:hi], Wp, *dilation, bias, b is not None)
    threads.run_all([functools.partial(slice_job, lo, hi)
                     for lo, hi in _batch_slices(y, x, (KH, KW))])
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
    block = block_for(W.shape[1])
    loop = _loops(*W.shape[2:], block).backward_input
    W = _zero_padded_channels(W, 1, block)
    threads.run_all([functools.partial(loop, gy[lo:hi], W, gx[lo:hi], H + top + bottom,
                                       Wd + left + right, *dilation, top, left)
                     for lo, hi in _batch_slices(gy, gx, W.shape[2:])])
    return gx


def conv_direct_backward_weight(gy, x, kernel_size, stride, padding, dilation, with_bias=False):
    """``conv_direct_numpy.conv_direct_backward_weight``, compiled: gy (N, O, OH, OW),
    x (N, C, H, W) -> gW (O, C, KH, KW), or (gW, gb) ``with_bias``.

    x is not checked for inf or NaN beforehand (one pass over x of its own, on one
    thread): the loops read all of it, scratch columns included, so a non-finite x
    (or gy) leaves a non-finite value in the result, and such a result is computed
    again by the reference; a finite one means every value the loops read was."""
    def reference():
        return conv_direct_numpy.conv_direct_backward_weight(gy, x, kernel_size, stride,
                                                             padding, dilation, with_bias)
    if not _compiles(stride, gy, x):
        return reference()
    top, bottom, left, right = padding
    gy, x = np.ascontiguousarray(gy), np.ascontiguousarray(x)
    (N, O), (C, H, Wd) = gy.shape[:2], x.shape[1:]
    slices = _batch_slices(gy, x, kernel_size)
    # one float64 dW and db per slice: no two threads add into the same one
    partial = np.zeros((len(slices), O, C) + tuple(kernel_size), dtype=np.float64)
    partial_db = np.zeros((len(slices), O), dtype=np.float64)
    loop = _loops(*kernel_size, dw_block_for(O)).backward_weight
    threads.run_all([functools.partial(loop, gy[lo:hi], x[lo:hi], partial[s], partial_db[s],
                                       with_bias, top, left, H + top + bottom,
                                       Wd + left + right, *dilation, x.dtype.type(0))
                     for s, (lo, hi) in enumerate(slices)])
    gW, gb = _in_slice_order(partial, x.dtype), _in_slice_order(partial_db, x.dtype)
    if not (_finite(gW) and _finite(gb)):
        return reference()
    return (gW, gb) if with_bias else gW


def _in_slice_order(partial, dtype):
    """The slices' float64 partial sums added up in slice order, whichever thread
    finished first, in ``dtype`` (inf where a sum is beyond its range)."""
    total = partial[0]
    for more in partial[1:]:
        total += more
    with np.errstate(over="ignore"):
        return total.astype(dtype)
