"""Convolution on a tiny map as one dense matrix product: no im2col at all.

On a map no larger than the kernel's window (DenseNet's and GoogLeNet's last
blocks: 3×3 maps, 3×3 or 5×5 kernels) every output pixel sees nearly every
input pixel, so the convolution is a fully connected layer from the C·H·W
inputs of an image to its O·OH·OW outputs, with a weight matrix that repeats
W's taps in a fixed pattern::

    W_dense[(l, o), (c, q)] = W[o, c, tap(l, q)]   where input pixel q lies under
                                                   tap (i, j) of output pixel l's window
                            = 0                    where it lies under none

``tap_matrix`` works the pattern out once per geometry as a 0/1 matrix P
(KH·KW, L·HW), one 1 per (output pixel l, input pixel q) pair a tap
connects, so building the dense weight and folding its gradient back are
products too, one per output pixel l with P's block P_l (KH·KW, HW)::

    W_dense[l] = W (O·C, KH·KW) @ P_l            (L, O·C, HW): rows (l, o), columns (c, q)
    dW         = Σ_l dW_dense[l] (O·C, HW) @ P_lᵀ

W_dense's rows go output pixel first, as these L products lay them out
(one product W @ P lays them out (O, C, L, HW), and reordering that into
W_dense took longer than the product, on one thread; dW's fold still
reorders, into one product: Pᵀ's rows are the P_lᵀ one after another).  The
convolution is then the layer's three products over the whole batch, its
output reordered from (N, L, O) to y's (N, O, L) -- a copy of a tiny map's
output -- before the bias is added::

    y  = x (N, C·HW) @ W_denseᵀ              (N, L·O), then y[n, o, l] + b[o]
    dx = dy (N, L·O) @ W_dense               (N, C·HW)     dy reordered to (N, L, O)
    dW_dense = dyᵀ @ x                       (L·O, C·HW)

im2col on such maps spends its time on tiny planes (im2col, col2im) and thin
products; this has no loops of its own.  It costs no more multiply-adds than
im2col where the input map is no larger than the kernel's window (H·W ≤
KH·KW: each output pixel then has at most H·W inputs where im2col's column
has KH·KW rows, padding included), which is where ``conv2d`` runs it
(``dense_suits``).
"""
import functools
import math

import numpy as np

import kernels
from kernels.geometry import conv_output_size

from ..autograd import Function
from ..backend import get_array_module

# The most elements of a dense weight ``conv2d`` builds (4 MB in float32): it is
# H·W·OH·OW / (KH·KW) times the weights (9x for a 3x3 map and kernel), built and
# folded back every step, and kept for backward.  Larger ones cost more to build
# and fold than im2col's tiny planes do: GoogLeNet's 160 -> 320 layer on 3x3 maps
# (4.1M) ran 1.6x slower this way (benchmarks/results.md, "Tiny maps as one dense
# product"); DenseNet's 184 -> 32 (0.5M) 2x faster.
DENSE_MAX_ELEMENTS = 2**20


@functools.lru_cache(maxsize=64)
def tap_matrix(in_hw, kernel_size, stride, padding, dilation):
    """P and (OH, OW) for a convolution on an ``in_hw`` map: P a read-only
    0/1 NumPy array (KH·KW, OH·OW·H·W) with a 1 at [i·KW + j, p·H·W + q] where
    tap (i, j) of output pixel p's window lies on input pixel q (on none where
    it lies on the padding).  Built on the host once per geometry, as index
    arithmetic is; ``padding`` is (top, bottom, left, right), the rest (H, W)
    pairs."""
    (H, W), (KH, KW), (SH, SW), (DH, DW) = in_hw, kernel_size, stride, dilation
    top, bottom, left, right = padding
    OH = conv_output_size(H, KH, SH, top + bottom, DH)
    OW = conv_output_size(W, KW, SW, left + right, DW)
    P = np.zeros((KH * KW, OH * OW * H * W))
    for oh in range(OH):
        for ow in range(OW):
            for i in range(KH):
                for j in range(KW):
                    h, w = oh * SH + i * DH - top, ow * SW + j * DW - left
                    if 0 <= h < H and 0 <= w < W:
                        P[i * KW + j, (oh * OW + ow) * H * W + h * W + w] = 1
    P.flags.writeable = False
    return P, (OH, OW)


def dense_suits(x_shape, weight_shape, groups, out_hw):
    """Whether ``conv2d`` should run a CPU convolution as ``Conv2dDense``: one
    group, an input map no larger than the kernel's window, and a dense
    weight of at most ``DENSE_MAX_ELEMENTS``."""
    O, C, KH, KW = weight_shape
    in_pixels = x_shape[2] * x_shape[3]
    return (groups == 1 and in_pixels <= KH * KW
            and O * math.prod(out_hw) * C * in_pixels <= DENSE_MAX_ELEMENTS)


class Conv2dDense(Function):
    """y = W ⋆ x + b as one dense product per pass (module docstring).

    Saved for backward: x (for dW) and the dense weight (for dx), each only
    when that gradient is wanted.
    """
    name = "Conv2d[dense]"

    def __init__(self, stride, padding, dilation, has_bias):
        # stride, dilation: (H, W) pairs; padding: (top, bottom, left, right)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.has_bias = has_bias

    def forward(self, x, W, b=None):
        need_x, need_W = self.needs_input_grad[:2]
        xp = get_array_module(x, W)
        N, C, H, Wd = x.shape
        O, _, KH, KW = W.shape
        P, out_hw = tap_matrix((H, Wd), (KH, KW), self.stride, self.padding, self.dilation)
        self.taps = xp.asarray(P, dtype=W.dtype)                      # P (KH·KW, L·HW)
        self.out_hw, self.x_shape, self.kernel_hw = out_hw, x.shape, (KH, KW)
        L, HW = math.prod(out_hw), H * Wd
        blocks = self.taps.reshape(KH * KW, L, HW).swapaxes(0, 1)   # P_l: (L, KH·KW, HW), a view
        dense = kernels.matmul(W.reshape(O * C, KH * KW), blocks)     # W_dense: (L, O·C, HW)
        dense = dense.reshape(L * O, C * HW)
        self.save_for_backward(x if need_W else None, dense if need_x else None)
        y = kernels.matmul(x.reshape(N, C * HW), dense.T)             # (N, L·O)
        y = xp.ascontiguousarray(y.reshape(N, L, O).transpose(0, 2, 1))   # (N, O, L)
        if b is not None:
            y += b.reshape(1, O, 1)         # in y's dtype, as the other algorithms add it
        return y.reshape((N, O) + out_hw)

    def backward(self, gy):
        x, dense = self.saved
        need_x, need_W = self.needs_input_grad[:2]
        need_b = self.has_bias and self.needs_input_grad[2]
        N, C, H, Wd = self.x_shape
        O, L, HW = gy.shape[1], math.prod(self.out_hw), H * Wd
        gy2 = gy.reshape(N, O, L).transpose(0, 2, 1).reshape(N, L * O)  # W_dense's row order
        gx = kernels.matmul(gy2, dense).reshape(self.x_shape) if need_x else None
        gW = None
        if need_W:
            g_dense = kernels.matmul(gy2.T, x.reshape(N, C * HW))    # (L·O, C·HW)
            # Σ_l dW_dense[l] @ P_lᵀ as one product: dW_dense's blocks side by side, @ Pᵀ
            by_weight = g_dense.reshape(L, O * C, HW).transpose(1, 0, 2).reshape(O * C, L * HW)
            gW = kernels.matmul(by_weight, self.taps.T).reshape((O, C) + self.kernel_hw)
        gb = gy.sum(axis=(0, 2, 3)) if need_b else None
        return (gx, gW, gb) if self.has_bias else (gx, gW)
