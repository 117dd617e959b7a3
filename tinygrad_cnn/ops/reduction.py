"""Reductions over ``dim`` (PyTorch's name; NumPy's ``axis``) with ``keepdim``.

Backward of a reduction spreads the output gradient back over the reduced
axes: ``expand`` re-inserts the reduced axes so it broadcasts against x.
"""
import builtins
from collections import namedtuple

from ..autograd import Function
from ..backend import get_array_module


def normalize_dims(dim, ndim, op):
    """``dim`` as a sorted tuple of non-negative axes (None: all axes)."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    out, size = [], builtins.max(ndim, 1)
    for d in dims:
        if not -size <= d < size:
            raise ValueError(f"{op}: dim {d} is out of range for a tensor with {ndim} dims")
        out.append(d % size)
    if ndim == 0:    # a 0-d tensor accepts dim 0 / -1 (as PyTorch) but has no axis
        return ()
    return tuple(sorted(set(out)))


def expand(gy, axes, keepdim):
    """Re-insert the reduced ``axes`` (size 1) into ``gy`` when keepdim was False."""
    if keepdim:
        return gy
    shape = list(gy.shape)
    for a in axes:
        shape.insert(a, 1)
    return gy.reshape(shape)


class Sum(Function):
    """y = Σ_axes x;   dy/dx = 1 (every element gets gy)"""
    def __init__(self, axes, keepdim):
        self.axes, self.keepdim = axes, keepdim

    def forward(self, x):
        self.shape = x.shape
        return get_array_module(x).asarray(x.sum(axis=self.axes, keepdims=self.keepdim))

    def backward(self, gy):
        xp = get_array_module(gy)
        return xp.broadcast_to(expand(gy, self.axes, self.keepdim), self.shape)


class Mean(Sum):
    """y = (1/n) Σ_axes x;   dy/dx = 1/n"""
    def forward(self, x):
        self.count = _count(x.shape, self.axes)
        return super().forward(x) / x.dtype.type(self.count)

    def backward(self, gy):
        return super().backward(gy / gy.dtype.type(self.count))


class Var(Function):
    """y = Σ(x - x̄)² / (n - correction);   dy/dx = 2(x - x̄) / (n - correction)"""
    def __init__(self, axes, correction, keepdim):
        self.axes, self.correction, self.keepdim = axes, correction, keepdim

    def forward(self, x):
        n = _count(x.shape, self.axes)
        self.denominator = builtins.max(n - self.correction, 0)
        centered = x - x.mean(axis=self.axes, keepdims=True)
        self.save_for_backward(centered)
        xp = get_array_module(x)
        ss = (centered * centered).sum(axis=self.axes, keepdims=self.keepdim)
        with _quiet(xp):   # n <= correction gives inf/nan, as in PyTorch
            return xp.asarray(ss / x.dtype.type(self.denominator))

    def backward(self, gy):
        centered, = self.saved
        xp = get_array_module(gy)
        with _quiet(xp):   # n <= correction: NaN gradient, as PyTorch (not ZeroDivisionError)
            scale = gy.dtype.type(2) / gy.dtype.type(self.denominator)
            return expand(gy, self.axes, self.keepdim) * centered * scale


class MaxAll(Function):
    """y = max(x) over ``axes``;  dy/dx = 1/k on each of the k tied maxima, else 0.

    (PyTorch's ``amax`` convention: ties share the gradient evenly.)"""
    def __init__(self, axes, keepdim, largest=True):
        self.axes, self.keepdim, self.largest = axes, keepdim, largest

    def forward(self, x):
        y = x.max(axis=self.axes, keepdims=True) if self.largest else \
            x.min(axis=self.axes, keepdims=True)
        winners = x == y
        self.save_for_backward(winners / winners.sum(axis=self.axes, keepdims=True))
        return y if self.keepdim else y.reshape(
            [n for i, n in enumerate(y.shape) if i not in self.axes])

    def backward(self, gy):
        share, = self.saved
        return expand(gy, self.axes, self.keepdim) * share.astype(gy.dtype, copy=False)


class MaxDim(Function):
    """values = max along ``dim``;  the gradient goes to the index returned
    (the first maximum along ``dim``, as ``argmax`` picks it)."""
    def __init__(self, dim, keepdim, largest=True):
        self.dim, self.keepdim, self.largest = dim, keepdim, largest

    def forward(self, x):
        xp = get_array_module(x)
        arg = x.argmax(axis=self.dim) if self.largest else x.argmin(axis=self.dim)
        self.indices = xp.expand_dims(arg, self.dim)
        self.shape = x.shape
        y = xp.take_along_axis(x, self.indices, axis=self.dim)
        return y if self.keepdim else y.squeeze(self.dim)

    def backward(self, gy):
        xp = get_array_module(gy)
        gx = xp.zeros(self.shape, dtype=gy.dtype)
        xp.put_along_axis(gx, self.indices, expand(gy, (self.dim,), self.keepdim),
                          axis=self.dim)
        return gx


def _count(shape, axes):
    n = 1
    for a in axes:
        n *= shape[a]
    return n


class _quiet:
    def __init__(self, xp):
        self.xp = xp

    def __enter__(self):
        self.old = self.xp.seterr(divide="ignore", invalid="ignore") \
            if hasattr(self.xp, "seterr") else None

    def __exit__(self, *exc):
        if self.old is not None:
            self.xp.seterr(**self.old)


# ---------------------------------------------------------------- functions
# (these names shadow Python's sum/max/min in this module: use builtins.* above)
MaxResult = namedtuple("max", ["values", "indices"])


def sum(x, dim=None, keepdim=False):
    return Sum(normalize_dims(dim, x.ndim, "sum"), keepdim)(x)


def mean(x, dim=None, keepdim=False):
    _require_float("mean", x)
    return Mean(normalize_dims(dim, x.ndim, "mean"), keepdim)(x)


def var(x, dim=None, unbiased=True, keepdim=False, *, correction=None):
    """Variance; ``unbiased=True`` (PyTorch's default) divides by n - 1."""
    _require_float("var", x)
    if correction is None:
        correction = 1 if unbiased else 0
    return Var(normalize_dims(dim, x.ndim, "var"), correction, keepdim)(x)


def _extreme(x, dim, keepdim, largest, op):
    if dim is None:
        return MaxAll(tuple(range(x.ndim)), False, largest)(x)
    if not isinstance(dim, int):
        raise TypeError(f"{op}: dim must be an int (got {dim!r}); use amax for several dims")
    d, = normalize_dims(dim, x.ndim, op)
    values = MaxDim(d, keepdim, largest)(x)
    return MaxResult(values, argmax(x, d, keepdim) if largest else argmin(x, d, keepdim))


def max(x, dim=None, keepdim=False):
    """``max(x)``: the largest element.  ``max(x, dim)``: (values, indices)."""
    return _extreme(x, dim, keepdim, True, "max")


def min(x, dim=None, keepdim=False):
    return _extreme(x, dim, keepdim, False, "min")


def amax(x, dim=None, keepdim=False):
    return MaxAll(normalize_dims(dim, x.ndim, "amax"), keepdim, True)(x)


def amin(x, dim=None, keepdim=False):
    return MaxAll(normalize_dims(dim, x.ndim, "amin"), keepdim, False)(x)


def _arg(x, dim, keepdim, largest):
    from ..tensor import Tensor
    a = x.data
    pick = a.argmax if largest else a.argmin
    if dim is None:
        return Tensor(get_array_module(a).asarray(pick()).astype("int64"))
    d, = normalize_dims(dim, x.ndim, "argmax" if largest else "argmin")
    out = pick(axis=d).astype("int64")
    return Tensor(get_array_module(a).expand_dims(out, d) if keepdim else out)


def argmax(x, dim=None, keepdim=False):
    """Index of the first maximum (no gradient)."""
    return _arg(x, dim, keepdim, True)


def argmin(x, dim=None, keepdim=False):
    return _arg(x, dim, keepdim, False)


def _require_float(op, x):
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: expected a floating-point tensor, got dtype {x.dtype}")
