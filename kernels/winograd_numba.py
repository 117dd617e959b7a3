"""Winograd F(2x2, 3x3) transforms as compiled loops (Numba): the interface of
``winograd_numpy``.

Read ``winograd_numpy.py`` first: it states the algorithm, the shapes and
the three matrices.  Here the matrix products with Bᵀ and Aᵀ, whose entries
are 0 and ±1, are written out as the additions they are (about 32 per tile
instead of 128 multiply-adds), and each function is one loop over image
planes, compiled by Numba and run on all cores:

- ``winograd_input`` and ``winograd_output_backward`` read one plane of
  ``x`` or ``gy`` per (c, n) or (o, n) iteration and write that plane's
  tiles into 16 separate matrices; planes never share a tile, so no two
  threads write the same element.
- ``winograd_input_backward`` sums overlapping tiles back into an input
  plane.  One thread owns each (n, c) plane, as in ``col2im``: splitting
  the tiles of one plane over threads would race where tiles overlap.
- ``winograd_output`` reads each tile's 16 products and writes its 2x2
  output block, which no other tile writes.

The padding is not materialised: the input loops treat cells outside the
image as 0 (reading) or drop them (adding back).

What runs where, and start-up: ``kernels/jit.py`` (only NumPy
float32/float64 arrays reach the loops, others go to the reference; Numba
is imported and the loops compiled, or loaded from the disk cache, at the
first call).
"""
import contextlib

import numpy as np

from . import threads, winograd_numpy
from .geometry import winograd_tiles
from .jit import compilable, for_shares, on_first_use

prange = range          # numba.prange once the loops compile (kernels/jit.py)


# ---------------------------------------------------------------- the loops
# Each loop works on whole rows: a row of tiles shares its four input rows,
# so Bᵀ (or A) combines those rows once, in contiguous loops the compiler
# vectorises, and only the column step goes tile by tile.  (Tile by tile with
# a 4x4 scratch tile, the input transform was slower than im2col itself,
# which would leave Winograd nothing to gain.)  The scratch rows are
# allocated once per block of planes (``_blocks``: one block on one thread),
# not per plane, and array expressions inside the loops, which would
# allocate on every row, are avoided.  The input transform, which runs twice per step
# (forward, and backward for dW), indexes 1-D row views with unsigned
# integers (see conv_numba.py: Numba then skips the test for a negative
# index), which made it faster; the same change made the other three loops
# no faster, so they stay plain (benchmarks/results.md, "Figures behind
# design choices in kernels/").
def _input_loops(x, V, top, left, blocks):
    """V[:, :, c, n, t, s] = Bᵀ d B,  d = x[n, c, 2t - top : +4, 2s - left : +4] (0 outside)."""
    N, C, H, W = x.shape
    TH, TW = V.shape[4:]
    width = 2 * TW + 2
    planes = C * N
    for block in prange(blocks):
        d = np.zeros((4, width), dtype=x.dtype)     # the 4 rows of a row of tiles, padded
        e = np.empty((4, width), dtype=x.dtype)     # Bᵀ d         (its pad columns stay 0)
        for plane in range(block * planes // blocks, (block + 1) * planes // blocks):
            c, n = plane // N, plane % N
            image, tiles = x[n, c], V[:, :, c, n]        # (H, W) in, (4, 4, TH, TW) out
            for t in range(TH):
                for i in range(4):
                    h, row = 2 * t - top + i, d[i]
                    if 0 <= h < H:
                        source = image[np.uint64(h)]
                        for w in range(W):
                            row[np.uint64(left + w)] = source[np.uint64(w)]
                    else:
                        row[:] = 0
                d0, d1, d2, d3 = d[0], d[1], d[2], d[3]
                for w in range(width):                  # Bᵀ d: the rows combined
                    e[0, w] = d0[w] - d2[w]
                    e[1, w] = d1[w] + d2[w]
                    e[2, w] = d2[w] - d1[w]
                    e[3, w] = d1[w] - d3[w]
                for a in range(4):                      # (Bᵀ d) B: the columns, tile by tile
                    ea = e[a]
                    v0, v1, v2, v3 = tiles[a, 0, t], tiles[a, 1, t], tiles[a, 2, t], tiles[a, 3, t]
                    for s in range(TW):
                        w = np.uint64(2 * s)
                        v0[s] = ea[w] - ea[w + 2]
                        v1[s] = ea[w + 1] + ea[w + 2]
                        v2[s] = ea[w + 2] - ea[w + 1]
                        v3[s] = ea[w + 1] - ea[w + 3]


def _input_backward_loops(gV, gx, top, left, blocks):
    """gx[n, c] = Σ over tiles of B gV Bᵀ, added where the tile lies (cells outside dropped).

    Tile s's last two columns are tile s + 1's first two, and tile row t's
    last two rows tile row t + 1's first two: each overlap is carried to the
    next tile (two scalars, two rows) and written once, with its sum, instead
    of zeroing the plane and adding every tile into it."""
    N, C, H, W = gx.shape
    TH, TW = gV.shape[4:]
    width = 2 * TW + 2
    planes = N * C
    for block in prange(blocks):
        padded = np.empty((2 * TH + 2, width), dtype=gx.dtype)
        g = np.empty((4, width), dtype=gx.dtype)    # gV B: each tile row a, spread out
        for plane in range(block * planes // blocks, (block + 1) * planes // blocks):
            c, n = plane // N, plane % N
            for t in range(TH):
                for a in range(4):          # gV B: column j mixes the columns b with B[j, b] ≠ 0
                    tile = gV[a, :, c, n, t]                # (4, TW): row a of every tile
                    ga = g[a]
                    carry2 = carry3 = ga.dtype.type(0)      # the previous tile's columns 2, 3
                    for s in range(TW):
                        w = 2 * s
                        v0, v1, v2, v3 = tile[0, s], tile[1, s], tile[2, s], tile[3, s]
                        ga[w] = carry2 + v0
                        ga[w + 1] = carry3 + v1 - v2 + v3
                        carry2 = v2 + v1 - v0
                        carry3 = -v3
                    ga[2 * TW] = carry2
                    ga[2 * TW + 1] = carry3
                h = 2 * t
                first = t == 0              # rows h, h + 1 start here, or add to the last tile row's
                for w in range(width):      # B (gV B): the rows, written into the tiles' 4 rows
                    g0, g1, g2, g3 = g[0, w], g[1, w], g[2, w], g[3, w]
                    if first:
                        padded[h, w] = g0
                        padded[h + 1, w] = g1 - g2 + g3
                    else:
                        padded[h, w] += g0
                        padded[h + 1, w] += g1 - g2 + g3
                    padded[h + 2, w] = g2 + g1 - g0
                    padded[h + 3, w] = -g3
            for h in range(H):
                for w in range(W):
                    gx[n, c, h, w] = padded[top + h, left + w]


def _output_loops(M, y, blocks):
    """y[n, o, 2t:2t+2, 2s:2s+2] = Aᵀ M[:, :, o, n, t, s] A, cropped to y's size."""
    N, O, OH, OW = y.shape
    TH, TW = M.shape[4:]
    planes = O * N
    for block in prange(blocks):
        for plane in range(block * planes // blocks, (block + 1) * planes // blocks):
            o, n = plane // N, plane % N
            # per plane: allocated once per block, it made this loop slower
            r = np.empty((2, 4, TW), dtype=y.dtype)     # Aᵀ M for a row of tiles
            for t in range(TH):
                for b in range(4):                      # Aᵀ M: the rows combined
                    for s in range(TW):
                        m0, m1 = M[0, b, o, n, t, s], M[1, b, o, n, t, s]
                        m2, m3 = M[2, b, o, n, t, s], M[3, b, o, n, t, s]
                        r[0, b, s] = m0 + m1 + m2
                        r[1, b, s] = m1 - m2 - m3
                for i in range(min(2, OH - 2 * t)):     # (Aᵀ M) A: the columns
                    for s in range(TW):
                        y[n, o, 2 * t + i, 2 * s] = r[i, 0, s] + r[i, 1, s] + r[i, 2, s]
                        if 2 * s + 1 < OW:
                            y[n, o, 2 * t + i, 2 * s + 1] = r[i, 1, s] - r[i, 2, s] - r[i, 3, s]


def _output_backward_loops(gy, gM, blocks):
    """gM[:, :, o, n, t, s] = A gy[n, o, 2t:2t+2, 2s:2s+2] Aᵀ (cells past gy's edge are 0)."""
    N, O, OH, OW = gy.shape
    TH, TW = gM.shape[4:]
    planes = O * N
    for block in prange(blocks):
        rows = np.zeros((2, 2 * TW), dtype=gy.dtype)   # a row of 2x2 blocks, padded
        q = np.empty((4, 2 * TW), dtype=gy.dtype)      # A gy      (its pad columns stay 0)
        for plane in range(block * planes // blocks, (block + 1) * planes // blocks):
            o, n = plane // N, plane % N
            for t in range(TH):
                for i in range(2):
                    if 2 * t + i < OH:
                        for w in range(OW):
                            rows[i, w] = gy[n, o, 2 * t + i, w]
                    else:
                        rows[i, :] = 0
                for w in range(2 * TW):                    # A gy: the rows
                    q[0, w] = rows[0, w]
                    q[1, w] = rows[0, w] + rows[1, w]
                    q[2, w] = rows[0, w] - rows[1, w]
                    q[3, w] = -rows[1, w]
                for a in range(4):                         # (A gy) Aᵀ: the columns
                    for s in range(TW):
                        left_, right_ = q[a, 2 * s], q[a, 2 * s + 1]
                        gM[a, 0, o, n, t, s] = left_
                        gM[a, 1, o, n, t, s] = left_ + right_
                        gM[a, 2, o, n, t, s] = left_ - right_
                        gM[a, 3, o, n, t, s] = -right_


# The weight transforms go one output channel o at a time, through a
# scratch row of all its input channels: U's 16 matrices (and gU's) lie
# O·C elements apart, and a loop touching all 16 at once for each (o, c)
# kept 16 streams whose addresses collide in the same cache sets; staged
# this way, each loop touches at most four of them.
def _weight_loops(W, U):
    """U[:, :, o, c] = G W[o, c] Gᵀ   (G's rows: g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2)."""
    O, C = W.shape[:2]
    for o in prange(O):
        r = np.empty((4, 3, C), dtype=U.dtype)      # G W: the rows combined, for every c
        for c in range(C):
            k = W[o, c]
            for j in range(3):
                r[0, j, c] = k[0, j]
                r[1, j, c] = (k[0, j] + k[1, j] + k[2, j]) * 0.5
                r[2, j, c] = (k[0, j] - k[1, j] + k[2, j]) * 0.5
                r[3, j, c] = k[2, j]
        for a in range(4):                          # (G W) Gᵀ: the columns
            for c in range(C):
                U[a, 0, o, c] = r[a, 0, c]
                U[a, 1, o, c] = (r[a, 0, c] + r[a, 1, c] + r[a, 2, c]) * 0.5
                U[a, 2, o, c] = (r[a, 0, c] - r[a, 1, c] + r[a, 2, c]) * 0.5
                U[a, 3, o, c] = r[a, 2, c]


def _weight_backward_loops(gU, gW):
    """gW[o, c] = Gᵀ gU[:, :, o, c] G   (Gᵀ's rows: u0 + (u1+u2)/2, (u1-u2)/2, (u1+u2)/2 + u3)."""
    O, C = gW.shape[:2]
    for o in prange(O):
        r = np.empty((3, 4, C), dtype=gW.dtype)     # Gᵀ gU: the rows combined, for every c
        for b in range(4):
            for c in range(C):
                u0, u1, u2, u3 = gU[0, b, o, c], gU[1, b, o, c], gU[2, b, o, c], gU[3, b, o, c]
                r[0, b, c] = u0 + (u1 + u2) * 0.5
                r[1, b, c] = (u1 - u2) * 0.5
                r[2, b, c] = (u1 + u2) * 0.5 + u3
        for c in range(C):                          # (Gᵀ gU) G: the columns
            for i in range(3):
                gW[o, c, i, 0] = r[i, 0, c] + (r[i, 1, c] + r[i, 2, c]) * 0.5
                gW[o, c, i, 1] = (r[i, 1, c] - r[i, 2, c]) * 0.5
                gW[o, c, i, 2] = (r[i, 1, c] + r[i, 2, c]) * 0.5 + r[i, 3, c]


# ---------------------------------------------------------------- F(4x4, 3x3)
# The same four plane loops for 6x6 tiles that start every 4 pixels (Bᵀ and
# Aᵀ of ``winograd_numpy.TRANSFORMS[4]`` written out: entries 1, 2, 4, 5, 8).
def _input_4x4_loops(x, V, top, left, blocks):
    """V[:, :, c, n, t, s] = Bᵀ d B,  d = x[n, c, 4t - top : +6, 4s - left : +6] (0 outside)."""
    # the constants in the arrays' dtype: Numba makes int × float32 a float64
    two, four, five = (x.dtype.type(2), x.dtype.type(4), x.dtype.type(5))
    N, C, H, W = x.shape
    TH, TW = V.shape[4:]
    width = 4 * TW + 2
    planes = C * N
    for block in prange(blocks):
        d = np.zeros((6, width), dtype=x.dtype)     # the 6 rows of a row of tiles, padded
        e = np.empty((6, width), dtype=x.dtype)     # Bᵀ d         (its pad columns stay 0)
        for plane in range(block * planes // blocks, (block + 1) * planes // blocks):
            c, n = plane // N, plane % N
            image, tiles = x[n, c], V[:, :, c, n]        # (H, W) in, (6, 6, TH, TW) out
            for t in range(TH):
                for i in range(6):
                    h, row = 4 * t - top + i, d[i]
                    if 0 <= h < H:
                        source = image[np.uint64(h)]
                        for w in range(W):
                            row[np.uint64(left + w)] = source[np.uint64(w)]
                    else:
                        row[:] = 0
                d0, d1, d2, d3, d4, d5 = d[0], d[1], d[2], d[3], d[4], d[5]
                for w in range(width):                  # Bᵀ d: the rows combined
                    e[0, w] = four * d0[w] - five * d2[w] + d4[w]
                    e[1, w] = d3[w] + d4[w] - four * (d1[w] + d2[w])
                    e[2, w] = d4[w] - d3[w] + four * (d1[w] - d2[w])
                    e[3, w] = d4[w] - d2[w] + two * (d3[w] - d1[w])
                    e[4, w] = d4[w] - d2[w] + two * (d1[w] - d3[w])
                    e[5, w] = four * d1[w] - five * d3[w] + d5[w]
                for a in range(6):                      # (Bᵀ d) B: the columns, tile by tile
                    ea = e[a]
                    v0, v1, v2 = tiles[a, 0, t], tiles[a, 1, t], tiles[a, 2, t]
                    v3, v4, v5 = tiles[a, 3, t], tiles[a, 4, t], tiles[a, 5, t]
                    for s in range(TW):
                        w = np.uint64(4 * s)
                        c0, c1, c2 = ea[w], ea[w + 1], ea[w + 2]
                        c3, c4, c5 = ea[w + 3], ea[w + 4], ea[w + 5]
                        v0[s] = four * c0 - five * c2 + c4
                        v1[s] = c3 + c4 - four * (c1 + c2)
                        v2[s] = c4 - c3 + four * (c1 - c2)
                        v3[s] = c4 - c2 + two * (c3 - c1)
                        v4[s] = c4 - c2 + two * (c1 - c3)
                        v5[s] = four * c1 - five * c3 + c5


def _input_backward_4x4_loops(gV, gx, top, left, blocks):
    """gx[n, c] = Σ over tiles of B gV Bᵀ, added where the tile lies (cells outside dropped).

    Tile s's last two columns are tile s + 1's first two, and tile row t's
    last two rows tile row t + 1's first two: each overlap is carried to the
    next tile (two scalars, two rows) and written once, with its sum, instead
    of zeroing the plane and adding every tile into it."""
    # the constants in the arrays' dtype: Numba makes int × float32 a float64
    two, four, five = (gV.dtype.type(2), gV.dtype.type(4), gV.dtype.type(5))
    N, C, H, W = gx.shape
    TH, TW = gV.shape[4:]
    width = 4 * TW + 2
    planes = N * C
    for block in prange(blocks):
        padded = np.empty((4 * TH + 2, width), dtype=gx.dtype)
        g = np.empty((6, width), dtype=gx.dtype)    # gV B: each tile row a, spread out
        for plane in range(block * planes // blocks, (block + 1) * planes // blocks):
            c, n = plane // N, plane % N
            for t in range(TH):
                for a in range(6):          # gV B: column j mixes the columns b with B[j, b] ≠ 0
                    tile = gV[a, :, c, n, t]                # (6, TW): row a of every tile
                    ga = g[a]
                    carry4 = carry5 = ga.dtype.type(0)      # the previous tile's columns 4, 5
                    for s in range(TW):
                        w = 4 * s
                        v0, v1, v2 = tile[0, s], tile[1, s], tile[2, s]
                        v3, v4, v5 = tile[3, s], tile[4, s], tile[5, s]
                        ga[w] = carry4 + four * v0
                        ga[w + 1] = carry5 + four * (v2 - v1 + v5) + two * (v4 - v3)
                        ga[w + 2] = -(five * v0 + four * (v1 + v2) + v3 + v4)
                        ga[w + 3] = v1 - v2 + two * (v3 - v4) - five * v5
                        carry4 = v0 + v1 + v2 + v3 + v4
                        carry5 = v5
                    ga[4 * TW] = carry4
                    ga[4 * TW + 1] = carry5
                h = 4 * t
                first = t == 0              # rows h, h + 1 start here, or add to the last tile row's
                for w in range(width):      # B (gV B): the rows, written into the tiles' 6 rows
                    g0, g1, g2, g3, g4, g5 = g[0, w], g[1, w], g[2, w], g[3, w], g[4, w], g[5, w]
                    r0 = four * g0
                    r1 = four * (g2 - g1 + g5) + two * (g4 - g3)
                    if first:
                        padded[h, w] = r0
                        padded[h + 1, w] = r1
                    else:
                        padded[h, w] += r0
                        padded[h + 1, w] += r1
                    padded[h + 2, w] = -(five * g0 + four * (g1 + g2) + g3 + g4)
                    padded[h + 3, w] = g1 - g2 + two * (g3 - g4) - five * g5
                    padded[h + 4, w] = g0 + g1 + g2 + g3 + g4
                    padded[h + 5, w] = g5
            for h in range(H):
                for w in range(W):
                    gx[n, c, h, w] = padded[top + h, left + w]


def _output_4x4_loops(M, y, blocks):
    """y[n, o, 4t:4t+4, 4s:4s+4] = Aᵀ M[:, :, o, n, t, s] A, cropped to y's size."""
    # the constants in the arrays' dtype: Numba makes int × float32 a float64
    two, four, eight = (M.dtype.type(2), M.dtype.type(4), M.dtype.type(8))
    N, O, OH, OW = y.shape
    TH, TW = M.shape[4:]
    planes = O * N
    for block in prange(blocks):
        r = np.empty((4, 6, TW), dtype=y.dtype)     # Aᵀ M for a row of tiles
        for plane in range(block * planes // blocks, (block + 1) * planes // blocks):
            o, n = plane // N, plane % N
            for t in range(TH):
                for b in range(6):                      # Aᵀ M: the rows combined
                    for s in range(TW):
                        m0, m1, m2 = M[0, b, o, n, t, s], M[1, b, o, n, t, s], M[2, b, o, n, t, s]
                        m3, m4, m5 = M[3, b, o, n, t, s], M[4, b, o, n, t, s], M[5, b, o, n, t, s]
                        r[0, b, s] = m0 + m1 + m2 + m3 + m4
                        r[1, b, s] = m1 - m2 + two * (m3 - m4)
                        r[2, b, s] = m1 + m2 + four * (m3 + m4)
                        r[3, b, s] = m1 - m2 + eight * (m3 - m4) + m5
                for i in range(min(4, OH - 4 * t)):     # (Aᵀ M) A: the columns
                    row = y[n, o, 4 * t + i]
                    for s in range(TW):
                        q0, q1, q2 = r[i, 0, s], r[i, 1, s], r[i, 2, s]
                        q3, q4, q5 = r[i, 3, s], r[i, 4, s], r[i, 5, s]
                        w = 4 * s
                        if w + 3 < OW:
                            row[w] = q0 + q1 + q2 + q3 + q4
                            row[w + 1] = q1 - q2 + two * (q3 - q4)
                            row[w + 2] = q1 + q2 + four * (q3 + q4)
                            row[w + 3] = q1 - q2 + eight * (q3 - q4) + q5
                        else:                           # the last tile, cut by the edge
                            last = (q0 + q1 + q2 + q3 + q4, q1 - q2 + two * (q3 - q4),
                                    q1 + q2 + four * (q3 + q4), q1 - q2 + eight * (q3 - q4) + q5)
                            for j in range(OW - w):
                                row[w + j] = last[j]


def _output_backward_4x4_loops(gy, gM, blocks):
    """gM[:, :, o, n, t, s] = A gy[n, o, 4t:4t+4, 4s:4s+4] Aᵀ (cells past gy's edge are 0)."""
    # the constants in the arrays' dtype: Numba makes int × float32 a float64
    two, four, eight = (gy.dtype.type(2), gy.dtype.type(4), gy.dtype.type(8))
    N, O, OH, OW = gy.shape
    TH, TW = gM.shape[4:]
    planes = O * N
    for block in prange(blocks):
        rows = np.zeros((4, 4 * TW), dtype=gy.dtype)   # a row of 4x4 blocks, padded
        q = np.empty((6, 4 * TW), dtype=gy.dtype)      # A gy      (its pad columns stay 0)
        for plane in range(block * planes // blocks, (block + 1) * planes // blocks):
            o, n = plane // N, plane % N
            for t in range(TH):
                for i in range(4):
                    if 4 * t + i < OH:
                        for w in range(OW):
                            rows[i, w] = gy[n, o, 4 * t + i, w]
                    else:
                        rows[i, :] = 0
                for w in range(4 * TW):                    # A gy: the rows
                    g0, g1, g2, g3 = rows[0, w], rows[1, w], rows[2, w], rows[3, w]
                    q[0, w] = g0
                    q[1, w] = g0 + g1 + g2 + g3
                    q[2, w] = g0 - g1 + g2 - g3
                    q[3, w] = g0 + two * g1 + four * g2 + eight * g3
                    q[4, w] = g0 - two * g1 + four * g2 - eight * g3
                    q[5, w] = g3
                for a in range(6):                         # (A gy) Aᵀ: the columns
                    for s in range(TW):
                        w = 4 * s
                        g0, g1, g2, g3 = q[a, w], q[a, w + 1], q[a, w + 2], q[a, w + 3]
                        gM[a, 0, o, n, t, s] = g0
                        gM[a, 1, o, n, t, s] = g0 + g1 + g2 + g3
                        gM[a, 2, o, n, t, s] = g0 - g1 + g2 - g3
                        gM[a, 3, o, n, t, s] = g0 + two * g1 + four * g2 + eight * g3
                        gM[a, 4, o, n, t, s] = g0 - two * g1 + four * g2 - eight * g3
                        gM[a, 5, o, n, t, s] = g3


# The weight transforms of F(4x4, 3x3) run once per layer and step, on
# small arrays: one loop for any G, its entries read from an array.
def _weight_any_loops(W, G, U):
    """U[:, :, o, c] = G W[o, c] Gᵀ."""
    O, C = W.shape[:2]
    alpha = G.shape[0]
    for o in prange(O):
        r = np.empty((alpha, 3, C), dtype=U.dtype)  # G W: the rows combined, for every c
        for a in range(alpha):
            for j in range(3):
                for c in range(C):
                    k = W[o, c]
                    r[a, j, c] = G[a, 0] * k[0, j] + G[a, 1] * k[1, j] + G[a, 2] * k[2, j]
        for a in range(alpha):                      # (G W) Gᵀ: the columns
            for b in range(alpha):
                for c in range(C):
                    U[a, b, o, c] = (r[a, 0, c] * G[b, 0] + r[a, 1, c] * G[b, 1]
                                     + r[a, 2, c] * G[b, 2])


def _weight_backward_any_loops(gU, G, gW):
    """gW[o, c] = Gᵀ gU[:, :, o, c] G."""
    O, C = gW.shape[:2]
    alpha = G.shape[0]
    for o in prange(O):
        r = np.zeros((3, alpha, C), dtype=gW.dtype)  # Gᵀ gU: the rows combined, for every c
        for i in range(3):
            for a in range(alpha):
                for b in range(alpha):
                    for c in range(C):
                        r[i, b, c] += G[a, i] * gU[a, b, o, c]
        for c in range(C):                          # (Gᵀ gU) G: the columns
            for i in range(3):
                for j in range(3):
                    total = r[i, 0, c] * G[0, j]
                    for b in range(1, alpha):
                        total += r[i, b, c] * G[b, j]
                    gW[o, c, i, j] = total


_compiled = on_first_use(_input_loops, _input_backward_loops, _output_loops,
                         _output_backward_loops, _weight_loops, _weight_backward_loops,
                         _input_4x4_loops, _input_backward_4x4_loops, _output_4x4_loops,
                         _output_backward_4x4_loops, _weight_any_loops,
                         _weight_backward_any_loops, parallel=True)
# one thread: inside a share of a convolution's chunks (shares_threads.map_chunks),
# with one thread, or while another Python thread runs a parallel loop (_loops)
_compiled_in_share = for_shares(_input_loops, _input_backward_loops, _output_loops,
                                _output_backward_loops, _weight_loops, _weight_backward_loops,
                                _input_4x4_loops, _input_backward_4x4_loops, _output_4x4_loops,
                                _output_backward_4x4_loops, _weight_any_loops,
                                _weight_backward_any_loops)


def _loops():
    """``with _loops() as loops:`` the loops for the calling thread: all
    threads, or its own inside a share, with one thread (no parallel launch
    to pay for) or while another Python thread runs a parallel loop."""
    return threads.loops_for_this_thread(_compiled_in_share, _compiled)


# Below this many transformed weights (α²·O·C), the weight transforms run on
# the calling thread: Numba's parallel launch between the ops of a training
# step costs more than the loop, and the parallel build of the loop runs
# slower per thread than the plain one (benchmarks/results.md, "Weight
# transforms on the calling thread").
WEIGHT_PARALLEL_MIN_CELLS = 2**22


def _weight_loops_for(cells):
    """``with _weight_loops_for(cells) as loops:`` ``_loops()``, or the
    one-thread loops for a transform of fewer than WEIGHT_PARALLEL_MIN_CELLS."""
    if cells < WEIGHT_PARALLEL_MIN_CELLS:
        return contextlib.nullcontext(_compiled_in_share())
    return _loops()


def _blocks(planes, loops):
    """How many blocks of planes a plane loop's ``prange`` runs, each block
    with its scratch rows allocated once: one for the one-thread ``loops``
    (``_loops`` chose them), else a few per thread, so the threads still
    share the planes out evenly."""
    if loops is _compiled_in_share():
        return 1
    return max(1, min(planes, 4 * threads.numba_threads()))


# ---------------------------------------------------------------- the interface
def _loops_for(loops, name, m):
    """The compiled loop ``name`` for tiles of size m (F(2x2, 3x3) or F(4x4, 3x3))."""
    return getattr(loops, name if m == 2 else name + "_4x4")


def winograd_weight(W, m=2):
    """``winograd_numpy.winograd_weight``, compiled: W (O, C, 3, 3) -> U (α, α, O, C)."""
    if not compilable(W):
        return winograd_numpy.winograd_weight(W, m)
    alpha = winograd_numpy.tile_side(m)
    U = np.empty((alpha, alpha) + W.shape[:2], dtype=W.dtype)
    W = np.ascontiguousarray(W)
    with _weight_loops_for(U.size) as loops:
        if m == 2:
            loops.weight(W, U)
        else:
            loops.weight_any(W, np.array(winograd_numpy.transform(m, "G"), W.dtype), U)
    return U


def winograd_weight_backward(gU):
    """``winograd_numpy.winograd_weight_backward``, compiled: gU (α, α, O, C) -> gW."""
    if not compilable(gU):
        return winograd_numpy.winograd_weight_backward(gU)
    m = winograd_numpy.tile_size(gU.shape[0])
    gW = np.empty(gU.shape[2:] + (3, 3), dtype=gU.dtype)
    gU = np.ascontiguousarray(gU)
    with _weight_loops_for(gU.size) as loops:
        if m == 2:
            loops.weight_backward(gU, gW)
        else:
            loops.weight_backward_any(gU, np.array(winograd_numpy.transform(m, "G"), gU.dtype),
                                      gW)
    return gW


def winograd_input(x, padding, tiles, m=2):
    """``winograd_numpy.winograd_input``, compiled: x (n, C, H, W) -> V (α, α, C, n, TH, TW)."""
    if not compilable(x):
        return winograd_numpy.winograd_input(x, padding, tiles, m)
    alpha = winograd_numpy.tile_side(m)
    x = np.ascontiguousarray(x)
    n, C = x.shape[:2]
    V = _stack_of_cells(alpha, (C, n) + tuple(tiles), x.dtype)
    with _loops() as loops:
        _loops_for(loops, "input", m)(x, V, padding[0], padding[2], _blocks(C * n, loops))
    return V


def winograd_input_backward(gV, x_shape, padding, out=None):
    """``winograd_numpy.winograd_input_backward``, compiled: gV -> gx (n, C, H, W)."""
    if not compilable(gV):
        return winograd_numpy.winograd_input_backward(gV, x_shape, padding, out)
    m = winograd_numpy.tile_size(gV.shape[0])
    gx = _output_array(out, tuple(x_shape), gV.dtype)
    with _loops() as loops:
        blocks = _blocks(gx.shape[0] * gx.shape[1], loops)
        _loops_for(loops, "input_backward", m)(np.ascontiguousarray(gV), gx, padding[0],
                                               padding[2], blocks)
    return _deliver(gx, out)


def winograd_output(M, out_hw, out=None):
    """``winograd_numpy.winograd_output``, compiled: M (α, α, O, n, TH, TW) -> y."""
    if not compilable(M):
        return winograd_numpy.winograd_output(M, out_hw, out)
    m = winograd_numpy.tile_size(M.shape[0])
    _, _, O, n = M.shape[:4]
    y = _output_array(out, (n, O) + tuple(out_hw), M.dtype)
    with _loops() as loops:
        _loops_for(loops, "output", m)(np.ascontiguousarray(M), y, _blocks(O * n, loops))
    return _deliver(y, out)


def _output_array(out, shape, dtype):
    """``out`` itself where the loops can write into it (a C-contiguous NumPy
    array of the result's dtype: conv2d passes its chunk of the output, so no
    copy follows), else a new array."""
    if (isinstance(out, np.ndarray) and out.shape == shape and out.dtype == dtype
            and out.flags.c_contiguous):
        return out
    return np.empty(shape, dtype=dtype)


def _deliver(result, out):
    """The result, copied into ``out`` if it was computed elsewhere."""
    if out is None or result is out:
        return result
    out[...] = result
    return out


def winograd_output_backward(gy, m=2):
    """``winograd_numpy.winograd_output_backward``, compiled: gy (n, O, OH, OW) -> gM."""
    if not compilable(gy):
        return winograd_numpy.winograd_output_backward(gy, m)
    alpha = winograd_numpy.tile_side(m)
    n, O, OH, OW = gy.shape
    gM = _stack_of_cells(alpha, (O, n, winograd_tiles(OH, m), winograd_tiles(OW, m)), gy.dtype)
    with _loops() as loops:
        _loops_for(loops, "output_backward", m)(np.ascontiguousarray(gy), gM, _blocks(O * n, loops))
    return gM


# Elements left between the α² matrices of a transform's output: a cache
# line.  Laid end to end, matrices of a size that is a multiple of 4 KB (all
# of ResNet-18's chunks: 27 x 4 KB) start at the same offset within a page,
# so the loops' rows of the 16 land in the same cache sets and evict one
# another; shifted a line apart, the transforms into them ran several times
# faster on ResNet-18's deeper layers (benchmarks/results.md, "Batch norm over
# slices of the batch").
STACK_GAP = 16


def _stack_of_cells(alpha, inner_shape, dtype):
    """An empty (α, α) + inner_shape array whose α² matrices are each
    C-contiguous, STACK_GAP elements apart: its reshape to (α², rows, columns)
    is a view, as the matrix products take it."""
    size = int(np.prod(inner_shape))
    cells = alpha * alpha
    buffer = np.empty(cells * (size + STACK_GAP), dtype=dtype)
    return buffer.reshape(cells, size + STACK_GAP)[:, :size].reshape((alpha, alpha)
                                                                     + tuple(inner_shape))
