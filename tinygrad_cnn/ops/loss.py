"""Softmax, log-softmax and the losses, with hand-written backward passes.

Softmax subtracts the row maximum before ``exp`` so large logits cannot
overflow; cross-entropy is fused with log-softmax so its gradient is the
famous ``softmax(x) - onehot(t)``.
"""
import numpy as np

from ..autograd import Function
from ..backend import get_array_module, is_current_stream_capturing


def _log_softmax(x, axis):
    xp = get_array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class Softmax(Function):
    """y = eˣ / Σ eˣ;   dx = y ⊙ (dy - Σ(dy ⊙ y))"""
    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        xp = get_array_module(x)
        y = xp.exp(_log_softmax(x, self.axis))
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved
        return y * (gy - (gy * y).sum(axis=self.axis, keepdims=True))


class LogSoftmax(Function):
    """y = x - log Σ eˣ;   dx = dy - softmax(x) Σ dy"""
    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        y = _log_softmax(x, self.axis)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved
        xp = get_array_module(gy)
        return gy - xp.exp(y) * gy.sum(axis=self.axis, keepdims=True)


class CrossEntropy(Function):
    """Softmax cross-entropy over classes (axis 1) with integer targets t.

    lᵢ = -log softmax(xᵢ)[tᵢ];   dlᵢ/dxᵢ = softmax(xᵢ) - onehot(tᵢ)
    ``reduction``: 'mean' (divide by N), 'sum' or 'none'.
    """
    def __init__(self, target, reduction):
        self.target, self.reduction = target, reduction

    def forward(self, x):
        logp = _log_softmax(x, 1)
        self.save_for_backward(logp)
        return _reduce(-_take_target(logp, self.target), self.reduction)

    def backward(self, gy):
        logp, = self.saved
        xp = get_array_module(logp)
        gx = xp.exp(logp)
        _subtract_onehot(gx, self.target)
        return _chain(gx, gy, self.reduction)


class NLLLoss(Function):
    """lᵢ = -xᵢ[tᵢ]  (x holds log-probabilities);   dlᵢ/dxᵢ = -onehot(tᵢ)"""
    def __init__(self, target, reduction):
        self.target, self.reduction = target, reduction

    def forward(self, x):
        self.shape = x.shape
        return _reduce(-_take_target(x, self.target), self.reduction)

    def backward(self, gy):
        xp = get_array_module(gy)
        gx = xp.zeros(self.shape, dtype=gy.dtype)
        _subtract_onehot(gx, self.target)
        return _chain(gx, gy, self.reduction)


class MSELoss(Function):
    """l = (x - y)²;   dl/dx = 2(x - y),  dl/dy = -2(x - y)"""
    def __init__(self, reduction):
        self.reduction = reduction

    def forward(self, x, y):
        diff = x - y
        self.save_for_backward(diff)
        return _reduce(diff * diff, self.reduction)

    def backward(self, gy):
        diff, = self.saved
        scale = 2 / diff.size if self.reduction == "mean" else 2
        gx = diff * (gy * diff.dtype.type(scale))
        need_x, need_y = self.needs_input_grad
        return (gx if need_x else None), (-gx if need_y else None)


def _reduce(losses, reduction):
    """Per-example losses (N, ...) -> 'none': as they are; 'sum'; 'mean' over all."""
    if reduction == "none":
        return losses
    total = losses.sum()
    if reduction == "mean":
        total = total / losses.dtype.type(losses.size)
    return get_array_module(losses).asarray(total)


def _chain(gx, gy, reduction):
    """Multiply the per-example gradient gx (N, C, ...) by the upstream gradient of
    the reduced loss: per example for 'none', divided by the count for 'mean'.
    gx is a new array the caller made, so it is scaled in place."""
    if reduction == "none":
        gx *= gy.reshape(gy.shape[:1] + (1,) + gy.shape[1:])
        return gx
    if reduction == "mean":
        gy = gy / gy.dtype.type(gx.size // gx.shape[1])
    gx *= gy
    return gx


def _target_index(target):
    """Index arrays that pick element [n, t[n, ...], ...] of an (N, C, ...) array."""
    xp = get_array_module(target)
    # numpy.indices(shape, sparse=True), written out: CuPy's indices has no sparse=
    ndim = target.ndim
    grids = [xp.arange(size).reshape((1,) * axis + (size,) + (1,) * (ndim - axis - 1))
             for axis, size in enumerate(target.shape)]
    return (grids[0], target) + tuple(grids[1:])


def _take_target(x, target):
    return x[_target_index(target)]


def _subtract_onehot(gx, target):
    gx[_target_index(target)] -= 1


# ---------------------------------------------------------------- functions
def _axis(dim, ndim, op):
    if dim is None:
        raise TypeError(f"{op}: pass dim= explicitly (e.g. dim=1 for (N, C) logits)")
    if not -ndim <= dim < ndim:
        raise ValueError(f"{op}: dim {dim} is out of range for a tensor with {ndim} dims")
    return dim % ndim


def softmax(x, dim=None):
    _require_float("softmax", x)
    return Softmax(_axis(dim, x.ndim, "softmax"))(x)


def log_softmax(x, dim=None):
    _require_float("log_softmax", x)
    return LogSoftmax(_axis(dim, x.ndim, "log_softmax"))(x)


def _check_classification(op, x, target, reduction):
    from ..tensor import Tensor
    _require_float(op, x)
    t = target.data if isinstance(target, Tensor) else target
    xp = get_array_module(x.data)
    t = xp.asarray(t)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if t.dtype.kind not in "iu":
        raise TypeError(f"{op}: target must hold integer class indices, got dtype {t.dtype}")
    if x.ndim < 2 or t.shape != (x.shape[0],) + x.shape[2:]:
        raise ValueError(f"{op}: input of shape {x.shape} (N, C, ...) needs a target of "
                         f"shape {(x.shape[0],) + x.shape[2:] if x.ndim >= 2 else '(N,)'}, "
                         f"got {tuple(t.shape)}")
    # (a host read of the GPU, which a CUDA graph capture cannot hold: the graphed
    # caller checks its labels on the host before copying them in, as fit does)
    if t.size and not is_current_stream_capturing() and (
            int(t.min()) < 0 or int(t.max()) >= x.shape[1]):
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        raise ValueError(f"{op}: target {bad} is out of bounds for {x.shape[1]} classes "
                         f"(valid: 0 … {x.shape[1] - 1})")
    return t


def cross_entropy(input, target, reduction="mean"):
    """Mean (or sum, or per-example) softmax cross-entropy of logits (N, C) and classes (N,)."""
    t = _check_classification("cross_entropy", input, target, reduction)
    return CrossEntropy(t, reduction)(input)


def nll_loss(input, target, reduction="mean"):
    t = _check_classification("nll_loss", input, target, reduction)
    return NLLLoss(t, reduction)(input)


def mse_loss(input, target, reduction="mean"):
    _require_float("mse_loss", input)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"mse_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    tshape = target.shape if hasattr(target, "shape") else np.shape(target)
    if tuple(tshape) != input.shape:
        raise ValueError(f"mse_loss: input shape {input.shape} and target shape "
                         f"{tuple(tshape)} differ")
    return MSELoss(reduction)(input, target)


def _require_float(op, x):
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: expected a floating-point tensor, got dtype {x.dtype}")
