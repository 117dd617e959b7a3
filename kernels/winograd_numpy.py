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

Written with ``einsum`` over the tiles, a strided view of the input, so that
each function reads like its formula; the compiled versions
(``winograd_numba.py``) spell the additions out.  All take their array
module from the input, so they run on NumPy and CuPy arrays.
"""
from tinygrad_cnn.backend import get_array_module

# The transform matrices of F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for
# Convolutional Neural Networks", 2015).  Nested lists: each function makes
# them arrays of its input's module and dtype.
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


def _matrix(values, like):
    xp = get_array_module(like)
    return xp.asarray(values, dtype=like.dtype)


def winograd_tiles(out_size):
    """Tiles along an axis of ``out_size`` outputs: each tile gives 2 of them."""
    return -(-out_size // 2)


# ---------------------------------------------------------------- the weights
def winograd_weight(W):
    """U[ξ, ν, o, c] = (G W[o, c] Gᵀ)[ξ, ν]:  W (O, C, 3, 3) -> U (4, 4, O, C)."""
    g = _matrix(G, W)
    return get_array_module(W).einsum("ai,ocij,bj->aboc", g, W, g)


def winograd_weight_backward(gU):
    """The adjoint of ``winograd_weight``: gU (4, 4, O, C) -> gW = Gᵀ gU G (O, C, 3, 3)."""
    g = _matrix(G, gU)
    return get_array_module(gU).einsum("ai,aboc,bj->ocij", g, gU, g)


# ---------------------------------------------------------------- the input
def _tile_view(xpad):
    """The overlapping 4x4 tiles of xpad as a view: (n, C, TH, TW, 4, 4)."""
    xp = get_array_module(xpad)
    n, C, Hp, Wp = xpad.shape
    TH, TW = (Hp - 2) // 2, (Wp - 2) // 2
    sn, sc, sh, sw = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad, (n, C, TH, TW, 4, 4), (sn, sc, 2 * sh, 2 * sw, sh, sw), writeable=False)


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

    ``padding`` is (top, bottom, left, right), ``tiles`` (TH, TW)."""
    bt = _matrix(B_T, x)
    xp = get_array_module(x)
    tile_view = _tile_view(winograd_pad(x, padding, tiles))
    return xp.ascontiguousarray(xp.einsum("ai,ncxyij,bj->abcnxy", bt, tile_view, bt))


def winograd_input_backward(gV, x_shape, padding):
    """The adjoint of ``winograd_input``: gV (4, 4, C, n, TH, TW) -> gx (n, C, H, W).

    Each tile's B gV Bᵀ is added where the tile lies (tiles overlap by two
    rows and two columns, so a cell gets up to 4 terms); what lands on the
    padding is dropped."""
    bt = _matrix(B_T, gV)
    xp = get_array_module(gV)
    _, _, C, n, TH, TW = gV.shape
    g_tiles = xp.einsum("ai,abcnxy,bj->ncxyij", bt, gV, bt)        # (n, C, TH, TW, 4, 4)
    gxpad = xp.zeros((n, C, 2 * TH + 2, 2 * TW + 2), dtype=gV.dtype)
    for i in range(4):
        for j in range(4):
            gxpad[:, :, i:i + 2 * TH:2, j:j + 2 * TW:2] += g_tiles[..., i, j]
    top, _, left, _ = padding
    H, W = x_shape[2:]
    return xp.ascontiguousarray(gxpad[:, :, top:top + H, left:left + W])


# ---------------------------------------------------------------- the output
def winograd_output(M, out_hw):
    """y = Aᵀ M A per tile:  M (4, 4, O, n, TH, TW) -> y (n, O, OH, OW), the
    2·TH x 2·TW blocks cropped to ``out_hw`` (an odd size leaves one row or
    column of the last tiles unused)."""
    at = _matrix(A_T, M)
    xp = get_array_module(M)
    _, _, O, n, TH, TW = M.shape
    blocks = xp.einsum("ai,ijonxy,bj->noxayb", at, M, at)          # (n, O, TH, 2, TW, 2)
    y = blocks.reshape(n, O, 2 * TH, 2 * TW)[:, :, :out_hw[0], :out_hw[1]]
    return xp.ascontiguousarray(y)


def winograd_output_backward(gy):
    """The adjoint of ``winograd_output``: gy (n, O, OH, OW) -> gM = A gy Aᵀ per
    2x2 block, (4, 4, O, n, TH, TW); the cropped cells count as zero."""
    at = _matrix(A_T, gy)
    xp = get_array_module(gy)
    n, O, OH, OW = gy.shape
    TH, TW = winograd_tiles(OH), winograd_tiles(OW)
    blocks = xp.zeros((n, O, 2 * TH, 2 * TW), dtype=gy.dtype)
    blocks[:, :, :OH, :OW] = gy
    blocks = blocks.reshape(n, O, TH, 2, TW, 2)
    return xp.ascontiguousarray(xp.einsum("ai,noxayb,bj->ijonxy", at, blocks, at))
