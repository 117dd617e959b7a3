"""Elementwise ops.  Each backward states its local derivative.

Binary ops broadcast like NumPy; their backward sums the gradient back to
each input's own shape (``unbroadcast``).
"""
import kernels

from ..autograd import Function
from ..backend import default_float, get_array_module


def unbroadcast(g, shape):
    """Sum ``g`` over the axes that broadcasting added or stretched to reach ``shape``."""
    if g.shape == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        i + extra for i, n in enumerate(shape) if n == 1 and g.shape[i + extra] != 1)
    g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def promote(a, b):
    """PyTorch's dtype rule where NumPy's differs: an integer or bool operand
    next to a float one takes the float's dtype (int64 * float32 -> float32,
    where NumPy gives float64)."""
    if a.dtype.kind == "f" and b.dtype.kind in "biu":
        return a, b.astype(a.dtype)
    if b.dtype.kind == "f" and a.dtype.kind in "biu":
        return a.astype(b.dtype), b
    return a, b


class _Binary(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return self.compute(*promote(a, b))

    def reduce(self, ga, gb):
        sa, sb = self.shapes
        return (unbroadcast(ga, sa) if ga is not None else None,
                unbroadcast(gb, sb) if gb is not None else None)


class Add(_Binary):
    """y = a + b;   dy/da = 1, dy/db = 1"""
    def compute(self, a, b):
        return a + b

    def backward(self, gy):
        return self.reduce(gy, gy)


class Sub(_Binary):
    """y = a - b;   dy/da = 1, dy/db = -1"""
    def compute(self, a, b):
        return a - b

    def backward(self, gy):
        return self.reduce(gy, -gy if self.needs_input_grad[1] else None)


class Mul(_Binary):
    """y = a * b;   dy/da = b, dy/db = a"""
    def compute(self, a, b):
        need_a, need_b = self.needs_input_grad
        self.save_for_backward(a if need_b else None, b if need_a else None)
        return a * b

    def backward(self, gy):
        a, b = self.saved
        need_a, need_b = self.needs_input_grad
        return self.reduce(gy * b if need_a else None, gy * a if need_b else None)


class Div(_Binary):
    """y = a / b;   dy/da = 1/b, dy/db = -a/b² = -y/b"""
    def compute(self, a, b):
        if a.dtype.kind != "f":     # integers divide to the default float, as in PyTorch
            a, b = promote(a.astype(default_float), b)
        y = a / b
        self.save_for_backward(b, y if self.needs_input_grad[1] else None)
        return y

    def backward(self, gy):
        b, y = self.saved
        need_a, need_b = self.needs_input_grad
        ga = gy / b
        return self.reduce(ga if need_a else None, -ga * y if need_b else None)


class Pow(_Binary):
    """y = a ** b;   dy/da = b·a^(b-1),  dy/db = y·log(a)"""
    def compute(self, a, b):
        y = a ** b
        self.save_for_backward(a, b, y)
        return y

    def backward(self, gy):
        a, b, y = self.saved
        need_a, need_b = self.needs_input_grad
        xp = get_array_module(a)
        ga = gy * b * a ** (b - 1) if need_a else None
        gb = None
        if need_b:   # log(a) is only defined for a > 0; PyTorch gives 0 where a == 0
            gb = gy * y * xp.log(xp.where(a > 0, a, 1))
        return self.reduce(ga, gb)


class Neg(Function):
    """y = -x;   dy/dx = -1"""
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Exp(Function):
    """y = eˣ;   dy/dx = eˣ = y"""
    def forward(self, x):
        y = get_array_module(x).exp(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved
        return gy * y


class Log(Function):
    """y = ln x;   dy/dx = 1/x"""
    def forward(self, x):
        self.save_for_backward(x)
        return get_array_module(x).log(x)

    def backward(self, gy):
        x, = self.saved
        return gy / x


class Sqrt(Function):
    """y = √x;   dy/dx = 1/(2√x) = 1/(2y)"""
    def forward(self, x):
        y = get_array_module(x).sqrt(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved
        return gy / (2 * y)


class Abs(Function):
    """y = |x|;   dy/dx = sign(x)  (0 at x = 0, as PyTorch)"""
    def forward(self, x):
        xp = get_array_module(x)
        self.save_for_backward(xp.sign(x))
        return xp.abs(x)

    def backward(self, gy):
        sign, = self.saved
        return gy * sign


class Clamp(Function):
    """y = min(max(x, lo), hi);   dy/dx = 1 where lo <= x <= hi, else 0"""
    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi

    def forward(self, x):
        xp = get_array_module(x)
        inside = xp.ones(x.shape, dtype=bool)
        if self.lo is not None:
            inside &= x >= self.lo
        if self.hi is not None:
            inside &= x <= self.hi
        self.save_for_backward(inside)
        return xp.clip(x, self.lo, self.hi).astype(x.dtype, copy=False)

    def backward(self, gy):
        inside, = self.saved
        return gy * inside


class ReLU(Function):
    """y = max(x, 0);   dy/dx = 1 where x > 0, else 0"""
    def forward(self, x):
        y = kernels.relu_forward(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved
        # 0 where y <= 0, else gy (PyTorch's rule); over gy where the engine allows
        return kernels.relu_backward(gy, y, overwrite_gy=self.may_overwrite_gy)


class Sigmoid(Function):
    """y = 1 / (1 + e⁻ˣ);   dy/dx = y (1 - y)"""
    def forward(self, x):
        y = kernels.sigmoid_forward(x)           # from exp(-|x|) or ½ tanh(x/2) + ½: no overflow
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved
        # gy·y(1 - y), in one pass; over gy where the engine allows
        return kernels.sigmoid_backward(gy, y, overwrite_gy=self.may_overwrite_gy)


class Tanh(Function):
    """y = tanh x;   dy/dx = 1 - y²"""
    def forward(self, x):
        y = get_array_module(x).tanh(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved
        gx = 1 - y * y
        gx *= gy             # in place: one temporary fewer
        return gx


class Cast(Function):
    """y = x as another dtype;   dy/dx = 1 (the gradient is cast back)"""
    def __init__(self, dtype):
        self.dtype = dtype

    def forward(self, x):
        self.src = x.dtype
        return x.astype(self.dtype)

    def backward(self, gy):
        return gy.astype(self.src)


# ---------------------------------------------------------------- functions
def add(a, b):
    return Add()(a, b)


def sub(a, b):
    return Sub()(a, b)


def mul(a, b):
    return Mul()(a, b)


def div(a, b):
    return Div()(a, b)


def pow(a, b):
    return Pow()(a, b)


def neg(x):
    return Neg()(x)


def exp(x):
    return Exp()(x)


def log(x):
    return Log()(x)


def sqrt(x):
    return Sqrt()(x)


def abs(x):
    return Abs()(x)


def clamp(x, min=None, max=None):
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    return Clamp(min, max)(x)


def relu(x):
    return ReLU()(x)


def sigmoid(x):
    return Sigmoid()(x)


def tanh(x):
    return Tanh()(x)


def cast(x, dtype):
    return Cast(dtype)(x)
