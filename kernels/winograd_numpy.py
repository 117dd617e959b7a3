"""Winograd's minimal filtering F(2x2, 3x3): the reference NumPy kernels.

A 3x3 convolution (stride 1) computes each 2x2 block of outputs from one
4x4 tile of the padded input.  Done directly that costs 2·2·9 = 36
multiplications; Winograd's algorithm (Lavin & Gray 2015) needs 16, one per
cell of the 4x4 tile, after transforming the tile and the kernel::

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d Bᵀᵀ) ] A          d: 4x4 input tile, g: 3x3 kernel,
                                                  Y: 2x2 output block, ⊙: cell by cell

With many channels the cell-by-cell products become matrix products: for
each of the 16 cells (ξ, ν) of the transformed tile,

    M[ξ,ν] (O, T) = U[ξ,ν] (O, C) @ V[ξ,ν] (C, T)      U = G g Gᵀ  per (o, c)
                                                     V = Bᵀ d B  per (c, tile)

then Y = Aᵀ M A per (o, tile).  That is 16·O·C·T multiply-adds where
im2col's one product needs 36·O·C·T: 2.25x fewer.  B, G and A hold only 0,
±1 and ±½, so the transforms are a few additions each.

Shapes (n images, C input and O output channels, TH x TW tiles per image)::

    x    (n, C, H, W)                 the input; zero-padded to xpad (n, C, 2·TH+2, 2·TW+2)
    V    (4, 4, C, n, TH, TW)         V[:, :, c, n, t, s] = Bᵀ xpad[n, c, 2t:2t+4, 2s:2s+4] B
    U    (4, 4, O, C)                 U[:, :, o, c] = G W[o, c] Gᵀ
    M    (4, 4, O, n, TH, TW)         M[ξ, ν] = U[ξ, ν] @ V[ξ, ν]  (as (O, C) @ (C, n·TH·TW))
    y    (n, O, 2·TH, 2·TW)           y[n, o, 2t:2t+2, 2s:2s+2] = Aᵀ M[:, :, o, n, t, s] A

Tiles overlap: tile (t, s) starts at (2t, 2s) and is 4 wide, because a 2x2
output block needs a 4x4 input window.

Every step is linear, so each backward is the step's adjoint (its
transpose): ``winograd_output_backward`` (dy -> dM = A dy Aᵀ per block),
``winograd_input_backward`` (dV -> dx: B dV Bᵀ per tile, summed where tiles
overlap, the padding cut off) and ``winograd_weight_backward``
(dU -> dW = Gᵀ dU G).

Each transform is a matrix on both sides of every tile, X ↦ P X Qᵀ; here
it is computed for all tiles at once, one row of P at a time over strided
slices of the whole batch (``_combine``), then one row of Q.  The compiled
versions (``winograd_numba.py``) go plane by plane.  All take their array
module from the input, so they run on NumPy and CuPy arrays.
"""
from .arrays import get_array_module

from .geometry import winograd_tiles

# The transform matrices of F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for
# Convolutional Neural Networks", 2015).  Nested lists of Python numbers:
# ``_combine`` multiplies arrays by the entries, which keeps their dtype.
B_T = [[1, 0, -1, 0],           # Bᵀ (4, 4): input tile -> transformed tile
       [0, 1, 1, 0],
       [0, -1, 1, 0],
       [0, 1, 0, -1]]
G = [[1, 0, 0],                 # G (4, 3): kernel -> transformed kernel
     [0.5, 0.5, 0.5],
     [0.5, -0.5, 0.5],
     [0, 0, 1]]
A_T = [[1, 1, 1, 0],            # Aᵀ (2, 4): product -> 2x2 output block
       [0, 1, -1, -1]]


def _combine(weights, arrays):
    """Σ_k weights[k]·arrays[k], skipping zero weights: one row of a transform
    matrix applied to a stack of arrays.  The matrices' entries are 0, ±1 and
    ±½, so most terms are plain additions.  (Python numbers keep float32
    arrays float32.)"""
    total = None
    for weight, array in zip(weights, arrays):
        if weight != 0:
            term = weight * array
            total = term if total is None else total + term
    return total


def _column(matrix, j):
    return [row[j] for row in matrix]


def _store(result, out):
    """``result`` (perhaps a view) as a contiguous array, or copied into ``out``."""
    if out is None:
        return get_array_module(result).ascontiguousarray(result)
    out[...] = result
    return out


# ---------------------------------------------------------------- the weights
def winograd_weight(W):
    """U[ξ, ν, o, c] = (G W[o, c] Gᵀ)[ξ, ν]:  W (O, C, 3, 3) -> U (4, 4, O, C)."""
    xp = get_array_module(W)
    U = xp.empty((4, 4) + W.shape[:2], dtype=W.dtype)
    for a in range(4):
        rows = _combine(G[a], [W[:, :, i] for i in range(3)])            # (G W)[a]: (O, C, 3)
        for b in range(4):
            U[a, b] = _combine(G[b], [rows[..., j] for j in range(3)])   # (G W Gᵀ)[a, b]
    return U


def winograd_weight_backward(gU):
    """The adjoint of ``winograd_weight``: gU (4, 4, O, C) -> gW = Gᵀ gU G (O, C, 3, 3)."""
    xp = get_array_module(gU)
    gW = xp.empty(gU.shape[2:] + (3, 3), dtype=gU.dtype)
    for i in range(3):
        rows = _combine(_column(G, i), list(gU))                          # (Gᵀ gU)[i]: (4, O, C)
        for j in range(3):
            gW[:, :, i, j] = _combine(_column(G, j), list(rows))
    return gW


# ---------------------------------------------------------------- the input
def winograd_pad(x, padding, tiles):
    """x (n, C, H, W) -> xpad (n, C, 2·TH + 2, 2·TW + 2): x at (top, left), zeros
    around it (more than ``padding`` at the bottom/right when an odd output
    size leaves the last tiles half used)."""
    xp = get_array_module(x)
    n, C, H, W = x.shape
    top, _, left, _ = padding
    xpad = xp.zeros((n, C, 2 * tiles[0] + 2, 2 * tiles[1] + 2), dtype=x.dtype)
    xpad[:, :, top:top + H, left:left + W] = x
    return xpad


def winograd_input(x, padding, tiles):
    """V = Bᵀ d B for every 4x4 tile d of the padded input:
    x (n, C, H, W) -> V (4, 4, C, n, TH, TW).

    ``padding`` is (top, bottom, left, right), ``tiles`` (TH, TW).  Row i of
    every tile at once is a strided slice of the padded input (tile t starts
    at row 2t), so Bᵀ d combines four such slices, and (Bᵀ d) B four column
    slices of the result.
    """
    xp = get_array_module(x)
    n, C = x.shape[:2]
    TH, TW = tiles
    xpad = winograd_pad(x, padding, tiles)
    rows = [xpad[:, :, i:i + 2 * TH:2] for i in range(4)]          # 4 x (n, C, TH, 2·TW+2)
    V = xp.empty((4, 4, C, n, TH, TW), dtype=x.dtype)
    for a in range(4):
        e = _combine(B_T[a], rows)                                  # (Bᵀ d)[a], every tile
        columns = [e[..., j:j + 2 * TW:2] for j in range(4)]       # 4 x (n, C, TH, TW)
        for b in range(4):
            V[a, b] = _combine(B_T[b], columns).transpose(1, 0, 2, 3)
    return V


def winograd_input_backward(gV, x_shape, padding, out=None):
    """The adjoint of ``winograd_input``: gV (4, 4, C, n, TH, TW) -> gx (n, C, H, W),
    written into ``out`` if given.

    Each tile's B gV Bᵀ is added where the tile lies (tiles overlap by two
    rows and two columns, so a cell gets up to 4 terms); what lands on the
    padding is dropped."""
    xp = get_array_module(gV)
    _, _, C, n, TH, TW = gV.shape
    gxpad = xp.zeros((n, C, 2 * TH + 2, 2 * TW + 2), dtype=gV.dtype)
    for j in range(4):
        columns = [_combine(_column(B_T, j), list(gV[a])) for a in range(4)]   # (gV B)[:, j]
        for i in range(4):
            tile_cells = _combine(_column(B_T, i), columns)                    # (B gV B)[i, j]
            gxpad[:, :, i:i + 2 * TH:2, j:j + 2 * TW:2] += tile_cells.transpose(1, 0, 2, 3)
    top, _, left, _ = padding
    H, W = x_shape[2:]
    return _store(gxpad[:, :, top:top + H, left:left + W], out)


# ---------------------------------------------------------------- the output
def winograd_output(M, out_hw, out=None):
    """y = Aᵀ M A per tile:  M (4, 4, O, n, TH, TW) -> y (n, O, OH, OW), the
    2·TH x 2·TW blocks cropped to ``out_hw`` (an odd size leaves one row or
    column of the last tiles unused); written into ``out`` if given."""
    xp = get_array_module(M)
    _, _, O, n, TH, TW = M.shape
    blocks = xp.empty((n, O, TH, 2, TW, 2), dtype=M.dtype)        # block (t, s), cell (i, j)
    for i in range(2):
        rows = _combine(A_T[i], list(M))                            # (Aᵀ M)[i]: (4, O, n, TH, TW)
        for j in range(2):
            blocks[:, :, :, i, :, j] = _combine(A_T[j], list(rows)).transpose(1, 0, 2, 3)
    return _store(blocks.reshape(n, O, 2 * TH, 2 * TW)[:, :, :out_hw[0], :out_hw[1]], out)


def winograd_output_backward(gy):
    """The adjoint of ``winograd_output``: gy (n, O, OH, OW) -> gM = A gy Aᵀ per
    2x2 block, (4, 4, O, n, TH, TW); the cropped cells count as zero."""
    xp = get_array_module(gy)
    n, O, OH, OW = gy.shape
    TH, TW = winograd_tiles(OH), winograd_tiles(OW)
    blocks = xp.zeros((n, O, 2 * TH, 2 * TW), dtype=gy.dtype)
    blocks[:, :, :OH, :OW] = gy
    blocks = blocks.reshape(n, O, TH, 2, TW, 2).transpose(3, 5, 1, 0, 2, 4)   # (2, 2, O, n, TH, TW)
    gM = xp.empty((4, 4, O, n, TH, TW), dtype=gy.dtype)
    for a in range(4):
        rows = _combine(_column(A_T, a), list(blocks))              # (A gy)[a]: (2, O, n, TH, TW)
        for b in range(4):
            gM[a, b] = _combine(_column(A_T, b), list(rows))
    return gM
