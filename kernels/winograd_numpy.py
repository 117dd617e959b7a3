"""Winograd's minimal filtering F(m×m, 3×3), m = 2 or 4: the reference NumPy kernels.

A 3x3 convolution (stride 1) computes each m×m block of outputs from one
α×α tile of the padded input, α = m + 2.  Done directly that costs m²·9
multiplications; Winograd's algorithm (Lavin & Gray 2015) needs α², one per
cell of the tile, after transforming the tile and the kernel::

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d Bᵀᵀ) ] A          d: α×α input tile, g: 3x3 kernel,
                                                  Y: m×m output block, ⊙: cell by cell

With many channels the cell-by-cell products become matrix products: for
each of the α² cells (ξ, ν) of the transformed tile,

    M[ξ,ν] (O, T) = U[ξ,ν] (O, C) @ V[ξ,ν] (C, T)      U = G g Gᵀ  per (o, c)
                                                     V = Bᵀ d B  per (c, tile)

then Y = Aᵀ M A per (o, tile).  Per output that is α²/m² multiply-adds for
each (o, c) where im2col's one product needs 9:

- F(2×2, 3×3): 16/4 = 4, 2.25x fewer.  B, G and A hold only 0, ±1 and ±½,
  so the transforms are a few additions each, and float32 rounding stays
  near im2col's.
- F(4×4, 3×3): 36/16 = 2.25, 4x fewer, and the transformed tiles hold 2.25
  values per output instead of 4.  The matrices hold 4, 5, 8 and 1/24
  (interpolation at 0, ±1, ±2), so float32 results carry several times
  im2col's rounding error (docs/conv.md measures it); float64 is exact to
  its rounding too.

Shapes (n images, C input and O output channels, TH x TW tiles per image)::

    x    (n, C, H, W)                 the input; zero-padded to xpad (n, C, m·TH+2, m·TW+2)
    V    (α, α, C, n, TH, TW)         V[:, :, c, n, t, s] = Bᵀ xpad[n, c, mt:mt+α, ms:ms+α] B
    U    (α, α, O, C)                 U[:, :, o, c] = G W[o, c] Gᵀ
    M    (α, α, O, n, TH, TW)         M[ξ, ν] = U[ξ, ν] @ V[ξ, ν]  (as (O, C) @ (C, n·TH·TW))
    y    (n, O, m·TH, m·TW)           y[n, o, mt:mt+m, ms:ms+m] = Aᵀ M[:, :, o, n, t, s] A

Tiles overlap: tile (t, s) starts at (mt, ms) and is α wide, because an
m×m output block needs an α×α input window.  Functions whose input does not
show m take it as an argument (``m=2``); the others read α off the shape.

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

# The transform matrices (Lavin & Gray, "Fast Algorithms for Convolutional
# Neural Networks", 2015), by output tile size m.  Nested lists of Python
# numbers: ``_combine`` multiplies arrays by the entries, which keeps their dtype.
TRANSFORMS = {
    2: {"B_T": [[1, 0, -1, 0],          # Bᵀ (4, 4): input tile -> transformed tile
                [0, 1, 1, 0],
                [0, -1, 1, 0],
                [0, 1, 0, -1]],
        "G": [[1, 0, 0],                # G (4, 3): kernel -> transformed kernel
              [0.5, 0.5, 0.5],
              [0.5, -0.5, 0.5],
              [0, 0, 1]],
        "A_T": [[1, 1, 1, 0],           # Aᵀ (2, 4): product -> 2x2 output block
                [0, 1, -1, -1]]},
    4: {"B_T": [[4, 0, -5, 0, 1, 0],    # Bᵀ (6, 6)
                [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0],
                [0, 4, 0, -5, 0, 1]],
        "G": [[1 / 4, 0, 0],            # G (6, 3)
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]],
        "A_T": [[1, 1, 1, 1, 1, 0],     # Aᵀ (4, 6): product -> 4x4 output block
                [0, 1, -1, 2, -2, 0],
                [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]]},
}
TILE_SIZES = tuple(TRANSFORMS)


def transform(m, name):
    """The matrix ``name`` ("B_T", "G" or "A_T") of F(m×m, 3×3)."""
    if m not in TRANSFORMS:
        raise ValueError(f"winograd: output tile size m must be one of {TILE_SIZES}, got {m!r}")
    return TRANSFORMS[m][name]


def tile_side(m):
    """α = m + 2, the side of the input tiles of F(m×m, 3×3) (m checked)."""
    transform(m, "A_T")
    return m + 2


def tile_size(alpha):
    """m from a transformed array's leading axis α = m + 2 (checked)."""
    return tile_side(alpha - 2) - 2


def _combine(weights, arrays):
    """Σ_k weights[k]·arrays[k], skipping zero weights: one row of a transform
    matrix applied to a stack of arrays.  (Python numbers keep float32 arrays
    float32.)"""
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
def winograd_weight(W, m=2):
    """U[ξ, ν, o, c] = (G W[o, c] Gᵀ)[ξ, ν]:  W (O, C, 3, 3) -> U (α, α, O, C)."""
    xp = get_array_module(W)
    G, alpha = transform(m, "G"), tile_side(m)
    U = xp.empty((alpha, alpha) + W.shape[:2], dtype=W.dtype)
    for a in range(alpha):
        rows = _combine(G[a], [W[:, :, i] for i in range(3)])            # (G W)[a]: (O, C, 3)
        for b in range(alpha):
            U[a, b] = _combine(G[b], [rows[..., j] for j in range(3)])   # (G W Gᵀ)[a, b]
    return U


def winograd_weight_backward(gU):
    """The adjoint of ``winograd_weight``: gU (α, α, O, C) -> gW = Gᵀ gU G (O, C, 3, 3)."""
    xp = get_array_module(gU)
    G = transform(tile_size(gU.shape[0]), "G")
    gW = xp.empty(gU.shape[2:] + (3, 3), dtype=gU.dtype)
    for i in range(3):
        rows = _combine(_column(G, i), list(gU))                          # (Gᵀ gU)[i]: (α, O, C)
        for j in range(3):
            gW[:, :, i, j] = _combine(_column(G, j), list(rows))
    return gW


# ---------------------------------------------------------------- the input
def winograd_pad(x, padding, tiles, m=2):
    """x (n, C, H, W) -> xpad (n, C, m·TH + 2, m·TW + 2): x at (top, left), zeros
    around it (more than ``padding`` at the bottom/right when the output size
    is not a multiple of m and leaves the last tiles part used)."""
    xp = get_array_module(x)
    n, C, H, W = x.shape
    top, _, left, _ = padding
    xpad = xp.zeros((n, C, m * tiles[0] + 2, m * tiles[1] + 2), dtype=x.dtype)
    xpad[:, :, top:top + H, left:left + W] = x
    return xpad


def winograd_input(x, padding, tiles, m=2):
    """V = Bᵀ d B for every α×α tile d of the padded input:
    x (n, C, H, W) -> V (α, α, C, n, TH, TW).

    ``padding`` is (top, bottom, left, right), ``tiles`` (TH, TW).  Row i of
    every tile at once is a strided slice of the padded input (tile t starts
    at row m·t), so Bᵀ d combines α such slices, and (Bᵀ d) B α column
    slices of the result.
    """
    xp = get_array_module(x)
    B_T, alpha = transform(m, "B_T"), tile_side(m)
    n, C = x.shape[:2]
    TH, TW = tiles
    xpad = winograd_pad(x, padding, tiles, m)
    rows = [xpad[:, :, i:i + m * TH:m] for i in range(alpha)]      # α x (n, C, TH, m·TW+2)
    V = xp.empty((alpha, alpha, C, n, TH, TW), dtype=x.dtype)
    for a in range(alpha):
        e = _combine(B_T[a], rows)                                  # (Bᵀ d)[a], every tile
        columns = [e[..., j:j + m * TW:m] for j in range(alpha)]   # α x (n, C, TH, TW)
        for b in range(alpha):
            V[a, b] = _combine(B_T[b], columns).transpose(1, 0, 2, 3)
    return V


def winograd_input_backward(gV, x_shape, padding, out=None):
    """The adjoint of ``winograd_input``: gV (α, α, C, n, TH, TW) -> gx (n, C, H, W),
    written into ``out`` if given.

    Each tile's B gV Bᵀ is added where the tile lies (tiles overlap by two
    rows and two columns, so a cell gets up to 4 terms); what lands on the
    padding is dropped."""
    xp = get_array_module(gV)
    alpha, _, C, n, TH, TW = gV.shape
    m = tile_size(alpha)
    B_T = transform(m, "B_T")
    gxpad = xp.zeros((n, C, m * TH + 2, m * TW + 2), dtype=gV.dtype)
    for j in range(alpha):
        columns = [_combine(_column(B_T, j), list(gV[a])) for a in range(alpha)]   # (gV B)[:, j]
        for i in range(alpha):
            tile_cells = _combine(_column(B_T, i), columns)                    # (B gV B)[i, j]
            gxpad[:, :, i:i + m * TH:m, j:j + m * TW:m] += tile_cells.transpose(1, 0, 2, 3)
    top, _, left, _ = padding
    H, W = x_shape[2:]
    return _store(gxpad[:, :, top:top + H, left:left + W], out)


# ---------------------------------------------------------------- the output
def winograd_output(M, out_hw, out=None):
    """y = Aᵀ M A per tile:  M (α, α, O, n, TH, TW) -> y (n, O, OH, OW), the
    m·TH x m·TW blocks cropped to ``out_hw`` (a size that is not a multiple of
    m leaves rows or columns of the last tiles unused); written into ``out``
    if given."""
    xp = get_array_module(M)
    alpha, _, O, n, TH, TW = M.shape
    m = tile_size(alpha)
    A_T = transform(m, "A_T")
    blocks = xp.empty((n, O, TH, m, TW, m), dtype=M.dtype)        # block (t, s), cell (i, j)
    for i in range(m):
        rows = _combine(A_T[i], list(M))                            # (Aᵀ M)[i]: (α, O, n, TH, TW)
        for j in range(m):
            blocks[:, :, :, i, :, j] = _combine(A_T[j], list(rows)).transpose(1, 0, 2, 3)
    return _store(blocks.reshape(n, O, m * TH, m * TW)[:, :, :out_hw[0], :out_hw[1]], out)


def winograd_output_backward(gy, m=2):
    """The adjoint of ``winograd_output``: gy (n, O, OH, OW) -> gM = A gy Aᵀ per
    m×m block, (α, α, O, n, TH, TW); the cropped cells count as zero."""
    xp = get_array_module(gy)
    A_T, alpha = transform(m, "A_T"), tile_side(m)
    n, O, OH, OW = gy.shape
    TH, TW = winograd_tiles(OH, m), winograd_tiles(OW, m)
    blocks = xp.zeros((n, O, m * TH, m * TW), dtype=gy.dtype)
    blocks[:, :, :OH, :OW] = gy
    blocks = blocks.reshape(n, O, TH, m, TW, m).transpose(3, 5, 1, 0, 2, 4)   # (m, m, O, n, TH, TW)
    gM = xp.empty((alpha, alpha, O, n, TH, TW), dtype=gy.dtype)
    for a in range(alpha):
        rows = _combine(_column(A_T, a), list(blocks))              # (A gy)[a]: (m, O, n, TH, TW)
        for b in range(alpha):
            gM[a, b] = _combine(_column(A_T, b), list(rows))
    return gM
