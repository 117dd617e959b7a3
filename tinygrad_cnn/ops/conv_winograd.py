"""3×3 stride-1 convolution by Winograd's F(m×m, 3×3): α² = (m + 2)² small
matrix products instead of one large one; F(2×2, 3×3) needs 2.25x fewer
multiplications than im2col, F(4×4, 3×3) 4x fewer.

``conv2d`` (``conv.py``) runs ``Conv2dWinograd`` where ``winograd_suits``
says it pays; the transforms are the kernels ``kernels.winograd_*``
(``kernels/winograd_numpy.py``, compiled in ``kernels/winograd_numba.py``),
and docs/conv.md derives them.
"""
import math

import kernels
from kernels.geometry import batch_chunks, conv_output_hw, winograd_tiles

from ..autograd import Function
from ..backend import get_array_module
from ..backends import cudnn
from ..backends.tf32 import TF32

# Winograd's α² products are (O, C) @ (C, tiles): with fewer channels than this
# they are too thin for the matrix-product library to run near its speed.
WINOGRAD_MIN_CHANNELS = 16


def _tiles_well_used(out_hw, m=2):
    """Whether m×m output tiles cover out_hw with at most a quarter of them
    wasted: a 3x3 output needs 2x2 tiles of 2x2, 16 cells for 9 outputs."""
    tiles = [winograd_tiles(size, m) for size in out_hw]
    return 4 * math.prod(out_hw) >= 3 * m * m * math.prod(tiles)


def winograd_can_run(weight_shape, stride, dilation, groups):
    """Whether ``Conv2dWinograd`` can compute a convolution at all: a 3×3
    kernel with stride 1, no dilation and one group."""
    return (tuple(weight_shape[2:]) == (3, 3) and stride == (1, 1) and dilation == (1, 1)
            and groups == 1)


# F(4×4, 3×3) first: against F(2×2, 3×3) only, whole training steps on 2 threads ran
# 1.02-1.36x faster (ResNet-18 1.12x, DenseNet 1.15x, VGG-11 1.36x; benchmarks/results.md,
# "Winograd with 4×4 tiles"), at 5-28x im2col's float32 rounding (docs/conv.md).
def winograd_suits(x_shape, weight_shape, stride, dilation, groups, out_hw):
    """The output tile size m with which a convolution should run as
    ``Conv2dWinograd``, or None: one it can run (``winograd_can_run``) with at
    least ``WINOGRAD_MIN_CHANNELS`` input and output channels gets F(4×4, 3×3)
    where 4×4 tiles cover its output with at most a quarter wasted, else
    F(2×2, 3×3) where 2×2 tiles do."""
    if not (winograd_can_run(weight_shape, stride, dilation, groups)
            and min(x_shape[1], weight_shape[0]) >= WINOGRAD_MIN_CHANNELS):
        return None
    return next((m for m in (4, 2) if _tiles_well_used(out_hw, m)), None)


class Conv2dWinograd(Function):
    """y = W ⋆ x + b for a 3×3 kernel, stride 1, by Winograd's F(m×m, 3×3), m = 2 or 4.

    Each m×m block of outputs comes from one α×α input tile d, α = m + 2
    (tiles start every m pixels), with the 3×3 kernel g and the transform
    matrices Bᵀ, G, Aᵀ (``kernels/winograd_numpy.py``)::

        Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A

    Summed over the input channels, the α² cells (ξ, ν) of a transformed
    tile become α² matrix products over all T tiles of a chunk of the batch::

        U = G W Gᵀ           (α², O, C)      kernels.winograd_weight
        V = Bᵀ d B           (α², C, T)      kernels.winograd_input
        M = U @ V            (α², O, T)      the α² products
        y = Aᵀ M A + b       (N, O, OH, OW)  kernels.winograd_output, then b

    Backward: every step is linear, so each gradient is the step's adjoint::

        dM = A dy Aᵀ                          kernels.winograd_output_backward
        dU = Σ_chunks dM @ Vᵀ,   dW = Gᵀ dU G   kernels.winograd_weight_backward
        dV = Uᵀ @ dM,            dx = B dV Bᵀ   kernels.winograd_input_backward
        db = Σ_{n, oh, ow} dy

    Saved for backward: x (for dU, whose V is rebuilt per chunk as im2col's
    columns are) and the transformed weights U (for dV), each only when that
    gradient is wanted.  Chunks of the batch keep V and M within
    ``column_budget`` bytes.
    """
    name = "Conv2d[winograd]"         # F(2×2, 3×3); F(4×4, 3×3) is "Conv2d[winograd4x4]"

    def __init__(self, padding, has_bias, column_budget, m=2):
        # padding: (top, bottom, left, right)
        self.padding, self.has_bias, self.column_budget = padding, has_bias, column_budget
        self.m = m
        if m != 2:
            self.name = f"Conv2d[winograd{m}x{m}]"

    def forward(self, x, W, b=None):
        with TF32(x, cudnn.allow_tf32):      # the α² products are convolution products
            return self._forward(x, W, b)

    def backward(self, gy):
        with TF32(gy, cudnn.allow_tf32):
            return self._backward(gy)

    def _forward(self, x, W, b):
        need_x, need_W = self.needs_input_grad[:2]
        xp = get_array_module(x, W)
        N, C = x.shape[:2]
        O = W.shape[0]
        m, alpha = self.m, self.m + 2
        out_hw = conv_output_hw(x.shape, (3, 3), (1, 1), self.padding, (1, 1))
        tiles = tuple(winograd_tiles(size, m) for size in out_hw)
        U = kernels.winograd_weight(W, m).reshape(alpha * alpha, O, C)
        self.save_for_backward(x if need_W else None, U if need_x else None)
        self.x_shape = x.shape
        bytes_per_image = alpha * alpha * (C + O) * tiles[0] * tiles[1] * x.dtype.itemsize
        self.chunks = batch_chunks(N, bytes_per_image, self.column_budget, kernels.threads.shares_for(x))
        y = xp.empty((N, O) + out_hw, dtype=xp.result_type(x, W))

        def run(chunk):     # the chunks write disjoint parts of y: they may run side by side
            V = kernels.winograd_input(x[chunk], self.padding, tiles, m)   # (α, α, C, n, TH, TW)
            n = V.shape[3]
            M = kernels.matmul(U, V.reshape(alpha * alpha, C, -1))   # the α² products: (α², O, n·TH·TW)
            y_chunk = y[chunk]
            kernels.winograd_output(M.reshape((alpha, alpha, O, n) + tiles), out_hw, out=y_chunk)
            if b is not None:       # while the chunk's y is in this thread's cache
                y_chunk += b.reshape(1, O, 1, 1)
        kernels.map_chunks(x, run, self.chunks)
        return y

    def _backward(self, gy):
        x, U = self.saved
        need_x, need_W = self.needs_input_grad[:2]
        need_b = self.has_bias and self.needs_input_grad[2]
        xp = get_array_module(gy)
        C = self.x_shape[1]
        O = gy.shape[1]
        m, alpha = self.m, self.m + 2
        tiles = tuple(winograd_tiles(size, m) for size in gy.shape[2:])
        gx = xp.empty(self.x_shape, dtype=gy.dtype) if need_x else None

        def run(chunk):     # -> this chunk's (dU, db); its dx goes into its own part of gx
            gy_chunk = gy[chunk]
            gM = kernels.winograd_output_backward(gy_chunk, m)  # (α, α, O, n, TH, TW)
            n = gM.shape[3]
            gM = gM.reshape(alpha * alpha, O, -1)
            gU = None
            if need_W:
                V = kernels.winograd_input(x[chunk], self.padding, tiles, m)
                gU = kernels.matmul(gM, V.reshape(alpha * alpha, C, -1).swapaxes(1, 2))  # (α², O, C)
            if need_x:
                gV = kernels.matmul(U.swapaxes(1, 2), gM)        # (α², C, n·TH·TW)
                kernels.winograd_input_backward(gV.reshape((alpha, alpha, C, n) + tiles),
                                                (n,) + self.x_shape[1:], self.padding,
                                                out=gx[chunk])
            gb = gy_chunk.sum(axis=(0, 2, 3)) if need_b else None
            return gU, gb
        # summed in the chunks' order wherever they ran, each as it comes
        gU, gb = kernels.map_chunks(gy, run, self.chunks, combine=add_terms)
        gW = kernels.winograd_weight_backward(gU.reshape(alpha, alpha, O, C)) if need_W else None
        return (gx, gW, gb) if self.has_bias else (gx, gW)


def add_terms(total, terms):
    """The running sum of chunks' gradient terms, tuples with None for a
    gradient not wanted (``kernels.map_chunks``'s ``combine``): the first
    chunk's arrays become the totals and later ones are added in place, so
    one chunk costs no extra pass and only the totals stay alive.  (conv.py's
    convolutions use it too: it lives in the module conv.py imports.)"""
    if total is None:
        return terms
    for sum_so_far, term in zip(total, terms):
        if term is not None:
            sum_so_far += term
    return total
