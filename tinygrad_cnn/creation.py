"""Tensor factories with PyTorch's names and defaults (float32 unless asked)."""
import numpy as np

from .backend import as_dtype, default_float, get_array_module, rng, to_device
from .tensor import Tensor, _to_array


def _size(size):
    """``zeros(2, 3)`` and ``zeros((2, 3))`` both mean shape (2, 3)."""
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    for n in size:
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"invalid size {tuple(size)}: sizes must be non-negative ints")
    return tuple(int(n) for n in size)


def _make(array, device, requires_grad):
    if device is not None:
        array = to_device(array, device)
    return Tensor(array, requires_grad=requires_grad)


def _float_dtype(dtype):
    return as_dtype(dtype) if dtype is not None else np.dtype(default_float)


def tensor(data, dtype=None, device=None, requires_grad=False):
    """A new tensor holding a copy of ``data``.

    NumPy arrays keep their dtype (float64 stays float64); Python floats and
    nested lists of floats become float32, ints int64, as in PyTorch."""
    array = _to_array(data, dtype)
    xp = get_array_module(array)
    array = xp.array(array, copy=True)
    return _make(array, device, requires_grad)


def zeros(*size, dtype=None, device=None, requires_grad=False):
    return _make(np.zeros(_size(size), _float_dtype(dtype)), device, requires_grad)


def ones(*size, dtype=None, device=None, requires_grad=False):
    return _make(np.ones(_size(size), _float_dtype(dtype)), device, requires_grad)


def full(size, fill_value, dtype=None, device=None, requires_grad=False):
    if dtype is None:
        dtype = np.int64 if isinstance(fill_value, (bool, int)) and not isinstance(
            fill_value, bool) else (np.bool_ if isinstance(fill_value, bool) else default_float)
    return _make(np.full(_size((size,)), fill_value, as_dtype(dtype)), device, requires_grad)


def _like(t, dtype, device):
    return (t.dtype if dtype is None else as_dtype(dtype)), (t.device if device is None else device)


def zeros_like(t, dtype=None, device=None, requires_grad=False):
    dtype, device = _like(t, dtype, device)
    return zeros(*t.shape, dtype=dtype, device=device, requires_grad=requires_grad)


def ones_like(t, dtype=None, device=None, requires_grad=False):
    dtype, device = _like(t, dtype, device)
    return ones(*t.shape, dtype=dtype, device=device, requires_grad=requires_grad)


def rand(*size, dtype=None, device=None, requires_grad=False):
    """Uniform on [0, 1), drawn from the generator seeded by ``manual_seed``."""
    array = rng().random(_size(size)).astype(_float_dtype(dtype))
    return _make(array, device, requires_grad)


def randn(*size, dtype=None, device=None, requires_grad=False):
    """Standard normal, drawn from the generator seeded by ``manual_seed``."""
    array = rng().standard_normal(_size(size)).astype(_float_dtype(dtype))
    return _make(array, device, requires_grad)


def randint(low, high=None, size=(), dtype=None, device=None):
    if high is None:
        low, high = 0, low
    array = rng().integers(low, high, size=_size((size,))).astype(as_dtype(dtype or np.int64))
    return _make(array, device, False)


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False):
    """Like ``torch.arange``: int64 for integer arguments, else float32."""
    if end is None:
        start, end = 0, start
    if dtype is None:
        ints = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
        dtype = np.int64 if ints else default_float
    return _make(np.arange(start, end, step, dtype=as_dtype(dtype)), device, requires_grad)


def linspace(start, end, steps, dtype=None, device=None, requires_grad=False):
    return _make(np.linspace(start, end, steps, dtype=_float_dtype(dtype)), device,
                 requires_grad)


def from_numpy(array):
    """Wrap a NumPy array without copying (dtype kept)."""
    return Tensor(array)
