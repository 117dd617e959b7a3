"""Matrix products: ``matmul`` (NumPy's @ semantics) and the fused ``linear``."""
import numpy as np

import kernels

from ..autograd import Function
from ..backends import cuda
from ..backends.tf32 import TF32
from .elementwise import unbroadcast


def _products(first, second):
    """The products a @ b of the pairs (a, b) asked for (False: not asked for,
    None comes back).  Two products of a backward do not depend on each other,
    so both go to the kernels at once, which may run them side by side
    (``kernels.matmuls``)."""
    asked = [pair for pair in (first, second) if pair]
    results = iter(kernels.matmuls(asked) if len(asked) == 2 else
                   [kernels.matmul(*pair) for pair in asked])
    return tuple(next(results) if pair else None for pair in (first, second))


class MatMul(Function):
    """Y = A @ B (batched, broadcasting);   dA = dY @ Bᵀ,  dB = Aᵀ @ dY

    On a GPU, float32 products may use TF32 where
    ``tinygrad_cnn.backends.cuda.matmul.allow_tf32`` (default False) says so;
    ``Linear`` likewise."""
    def forward(self, a, b):
        need_a, need_b = self.needs_input_grad
        self.save_for_backward(a if need_b else None, b if need_a else None)
        self.shapes = a.shape, b.shape
        with TF32(a, cuda.matmul.allow_tf32):
            return kernels.matmul(a, b)

    def backward(self, gy):
        a, b = self.saved
        need_a, need_b = self.needs_input_grad
        with TF32(gy, cuda.matmul.allow_tf32):
            ga, gb = _products(need_a and (gy, b.swapaxes(-1, -2)),
                               need_b and (a.swapaxes(-1, -2), gy))
        ga = unbroadcast(ga, self.shapes[0]) if need_a else None
        gb = unbroadcast(gb, self.shapes[1]) if need_b else None
        return ga, gb


class Linear(Function):
    """y = x Wᵀ + b   (x: (N, in), W: (out, in), b: (out,))

    dx = dy W,   dW = dyᵀ x,   db = Σ_N dy
    """
    def forward(self, x, W, b=None):
        need_x, need_W = self.needs_input_grad[:2]
        self.save_for_backward(x if need_W else None, W if need_x else None)
        with TF32(x, cuda.matmul.allow_tf32):
            y = kernels.matmul(x, W.T)
        if b is not None:
            y += b
        return y

    def backward(self, gy):
        x, W = self.saved
        need = self.needs_input_grad
        with TF32(gy, cuda.matmul.allow_tf32):
            gx, gW = _products(need[0] and (gy, W), need[1] and (gy.T, x))
        if len(need) == 2:
            return gx, gW
        return gx, gW, (gy.sum(axis=0) if need[2] else None)


def matmul(a, b):
    a_nd, b_nd = a.ndim, b.ndim
    a_shape, b_shape = tuple(a.shape), tuple(b.shape)
    if a_nd == 0 or b_nd == 0:
        raise ValueError("matmul: both arguments need at least 1 dimension, "
                         f"got shapes {a.shape} and {b.shape}")
    # 1-D operands are promoted to matrices and the added axis removed after.
    if a_nd == 1:
        a = a.reshape(1, -1)
    if b_nd == 1:
        b = b.reshape(-1, 1)
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: shapes {a_shape} and {b_shape} cannot be "
                         f"multiplied ({a.shape[-1]} != {b.shape[-2]})")
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"matmul: the batch axes of shapes {a_shape} and {b_shape} do not "
                         "broadcast") from None
    y = MatMul()(a, b)
    if a_nd == 1:
        y = y.reshape(*y.shape[:-2], y.shape[-1])
    if b_nd == 1:
        y = y.reshape(*y.shape[:-1])
    return y


def linear(x, weight, bias=None):
    """y = x Wᵀ + b over the last axis of x (any leading axes)."""
    if x.dtype.kind != "f":
        raise TypeError(f"linear: expected a floating-point input, got dtype {x.dtype}")
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out, in), got shape {weight.shape}")
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input has {x.shape[-1] if x.ndim else 0} features "
                         f"(shape {x.shape}) but weight of shape {weight.shape} expects "
                         f"{weight.shape[1]}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear: bias shape {bias.shape} does not match weight's "
                         f"{weight.shape[0]} outputs")
    lead = x.shape[:-1]
    x2 = x if x.ndim == 2 else x.reshape(-1, weight.shape[1])
    args = (x2, weight) if bias is None else (x2, weight, bias)
    y = Linear()(*args)
    return y if x.ndim == 2 else y.reshape(*lead, weight.shape[0])
