"""The Tensor: an array, its gradient, and the Function that made it.

The class is deliberately thin: every op lives in ``ops/`` and the methods
below only forward to it, so ``x.relu()`` and ``F.relu(x)`` are one op.
"""
import numpy as np

from . import autograd
from .backend import (as_dtype, default_float, device_of, get_array_module, parse_device,
                      to_device)


def _to_array(data, dtype=None):
    """NumPy/CuPy arrays keep their dtype; Python floats and lists become float32."""
    if isinstance(data, Tensor):
        data = data.data
    xp = get_array_module(data)
    if dtype is not None:
        return xp.asarray(data, dtype=as_dtype(dtype))
    if isinstance(data, np.ndarray) or xp is not np:
        return data
    array = np.asarray(data)
    if array.dtype == np.float64 and not _holds_typed_values(data):
        array = array.astype(default_float)   # Python floats -> float32, as PyTorch
    return array


def _holds_typed_values(data):
    """Whether ``data`` (maybe nested lists) holds NumPy scalars/arrays or Tensors,
    whose float64 is chosen, rather than only Python floats, whose float64 is not."""
    if isinstance(data, (list, tuple)):
        return any(_holds_typed_values(d) for d in data)
    return isinstance(data, (np.generic, np.ndarray, Tensor))


class Tensor:
    __slots__ = ("data", "grad", "_requires_grad", "_ctx", "_hooks", "_post_accumulate_hooks",
                 "__weakref__")
    __array_priority__ = 1000     # ndarray + Tensor -> Tensor.__radd__

    def __init__(self, data, requires_grad=False, dtype=None):
        if not (type(data) is np.ndarray and dtype is None):
            data = _to_array(data, dtype)
        self.data = data
        self.grad = None
        self._ctx = None          # the Function that produced this tensor (None: a leaf)
        self._hooks = None
        self._requires_grad = False
        if requires_grad:
            self.requires_grad = True

    # ------------------------------------------------------------ attributes
    @property
    def requires_grad(self):
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, flag):
        if flag and self.data.dtype.kind not in "fc":
            raise TypeError("only floating-point tensors can require gradients, "
                            f"got dtype {self.data.dtype}")
        if not flag and self._ctx is not None:
            raise RuntimeError("requires_grad can only be turned off on a leaf; "
                               "use .detach()")
        self._requires_grad = bool(flag)

    def requires_grad_(self, flag=True):
        self.requires_grad = flag
        return self

    @property
    def is_leaf(self):
        return self._ctx is None

    @property
    def grad_fn(self):
        return self._ctx

    shape = property(lambda self: tuple(self.data.shape))
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    device = property(lambda self: device_of(self.data))

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self):
        return self.data.ndim

    def numel(self):
        return int(self.data.size)

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self):
        body = np.array2string(to_device(self.data, "cpu"), separator=", ", precision=4,
                               prefix="tensor(")
        extras = []
        if self.dtype != default_float and self.dtype.kind == "f":
            extras.append(f"dtype={self.dtype}")
        if self.device != "cpu":
            extras.append(f"device='{self.device}'")
        if self._ctx is not None:
            extras.append(f"grad_fn=<{self._ctx.name}>")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + ", ".join([body] + extras) + ")"

    __hash__ = object.__hash__   # == is elementwise, so hash by identity

    # ------------------------------------------------------------ conversion
    def numpy(self):
        """A NumPy array (copied to the host for a GPU tensor)."""
        if self.requires_grad:
            raise RuntimeError("numpy() on a tensor that requires grad: call "
                               ".detach().numpy()")
        return to_device(self.data, "cpu")

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(t)``, and ``tensor([t1, t2])`` of 0-d tensors: the data as
        NumPy, by the same rules as ``numpy()`` (without it NumPy would build an
        object array of Tensors)."""
        array = self.numpy()
        if dtype is not None:
            array = array.astype(dtype, copy=False)
        return array.copy() if copy else array

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item(): only one-element tensors can be converted to a "
                             f"Python number, got shape {self.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        return to_device(self.data, "cpu").tolist()

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def to(self, *args, dtype=None):
        """``to('cuda')``, ``to('cpu')``, ``to(np.float64)`` or ``to('cuda', np.float64)``.

        Differentiable: the gradient flows back to the original device and dtype."""
        device = None
        for arg in args:
            if isinstance(arg, str) and (arg == "cpu" or arg.startswith("cuda")):
                device = parse_device(arg)
            else:
                dtype = arg
        out = self
        if dtype is not None and as_dtype(dtype) != self.dtype:
            out = elementwise.cast(out, as_dtype(dtype))
        if device is not None and device != out.device:
            out = _Move(device)(out)
        return out

    def cpu(self):
        return self.to("cpu")

    def cuda(self, device="cuda"):
        return self.to(device)

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    def long(self):
        return self.to(np.int64)

    def type_as(self, other):
        return self.to(other.dtype)

    # ------------------------------------------------------------ autograd
    def backward(self, gradient=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``gradient`` is the upstream dL/d(self); it may be omitted only for a
        scalar (one-element) tensor, where it defaults to 1.
        """
        if not self.requires_grad:
            raise autograd.BackwardError(
                "backward(): this tensor does not require grad and has no graph (was it "
                "made under no_grad, or from leaves without requires_grad=True?)")
        xp = get_array_module(self.data)
        if gradient is None:
            if self.data.size != 1:
                raise autograd.BackwardError(
                    f"backward(): grad can be implicitly created only for scalar outputs; "
                    f"this tensor has shape {self.shape}, pass gradient= of that shape")
            g = xp.ones(self.data.shape, dtype=self.dtype)
        else:
            g = gradient.data if isinstance(gradient, Tensor) else xp.asarray(gradient)
            if tuple(g.shape) != self.shape:
                raise ValueError(f"backward(): gradient has shape {tuple(g.shape)} but the "
                                 f"tensor has shape {self.shape}")
            g = g.astype(self.dtype, copy=False)
        autograd.backward(self, g, retain_graph=retain_graph)

    def register_hook(self, hook):
        """Call ``hook(grad)`` when this tensor's gradient is computed; a returned
        tensor replaces the gradient.  Returns a handle with ``.remove()``."""
        if not self.requires_grad:
            raise RuntimeError("register_hook: cannot register a hook on a tensor that "
                               "doesn't require grad")
        # A non-leaf's hooks live on the Function that makes its gradient.
        if self._ctx is not None:
            if self._ctx.hooks is None:
                self._ctx.hooks = []
            hooks = self._ctx.hooks
        else:
            if self._hooks is None:
                self._hooks = []
            hooks = self._hooks
        hooks.append(hook)
        return _HookHandle(hooks, hook)

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(tensor)`` on a leaf once backward has added this pass's gradient
        to its ``.grad`` (PyTorch's name): where DistributedDataParallel averages
        ``.grad`` across processes.  Returns a handle with ``.remove()``."""
        if self._ctx is not None or not self.requires_grad:
            raise RuntimeError("register_post_accumulate_grad_hook: only leaf tensors that "
                               "require grad have a .grad to accumulate into")
        # Unset until the first registration (a slot with no value): Tensor()
        # runs for every op's output and need not pay for it.
        hooks = getattr(self, "_post_accumulate_hooks", None)
        if hooks is None:
            hooks = self._post_accumulate_hooks = []
        hooks.append(hook)
        return _HookHandle(hooks, hook)

    # ------------------------------------------------------------ operators
    def __add__(self, other): return elementwise.add(self, other)
    def __radd__(self, other): return elementwise.add(other, self)
    def __sub__(self, other): return elementwise.sub(self, other)
    def __rsub__(self, other): return elementwise.sub(other, self)
    def __mul__(self, other): return elementwise.mul(self, other)
    def __rmul__(self, other): return elementwise.mul(other, self)
    def __truediv__(self, other): return elementwise.div(self, other)
    def __rtruediv__(self, other): return elementwise.div(other, self)
    def __pow__(self, other): return elementwise.pow(self, other)
    def __rpow__(self, other): return elementwise.pow(other, self)
    def __matmul__(self, other): return matmul.matmul(self, _wrap(other, self))
    def __rmatmul__(self, other): return matmul.matmul(_wrap(other, self), self)
    def __neg__(self): return elementwise.neg(self)
    def __pos__(self): return self

    # comparisons give boolean tensors and no gradient
    def _compare(self, other, op):
        other = other.data if isinstance(other, Tensor) else other
        return Tensor(op(self.data, other))

    def __eq__(self, other): return self._compare(other, lambda a, b: a == b)
    def __ne__(self, other): return self._compare(other, lambda a, b: a != b)
    def __lt__(self, other): return self._compare(other, lambda a, b: a < b)
    def __le__(self, other): return self._compare(other, lambda a, b: a <= b)
    def __gt__(self, other): return self._compare(other, lambda a, b: a > b)
    def __ge__(self, other): return self._compare(other, lambda a, b: a >= b)

    def __bool__(self):
        if self.data.size != 1:
            raise RuntimeError(f"the truth value of a tensor with {self.data.size} "
                               "elements is ambiguous")
        return bool(self.data)

    def __float__(self): return float(self.item())
    def __int__(self): return int(self.item())
    def __index__(self): return int(self.item())

    def __getitem__(self, index): return shape.getitem(self, index)

    def __setitem__(self, index, value):
        if self.requires_grad and autograd.is_grad_enabled():
            raise RuntimeError("in-place assignment to a tensor that requires grad; "
                               "wrap it in no_grad() or assign to .data")
        index = index.data if isinstance(index, Tensor) else index
        self.data[index] = value.data if isinstance(value, Tensor) else value

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    # ------------------------------------------------------------ methods -> ops
    def exp(self): return elementwise.exp(self)
    def log(self): return elementwise.log(self)
    def sqrt(self): return elementwise.sqrt(self)
    def abs(self): return elementwise.abs(self)
    def relu(self): return elementwise.relu(self)
    def sigmoid(self): return elementwise.sigmoid(self)
    def tanh(self): return elementwise.tanh(self)
    def clamp(self, min=None, max=None): return elementwise.clamp(self, min, max)
    clip = clamp

    def sum(self, dim=None, keepdim=False, *, axis=None):
        return reduction.sum(self, _dim(dim, axis), keepdim)

    def mean(self, dim=None, keepdim=False, *, axis=None):
        return reduction.mean(self, _dim(dim, axis), keepdim)

    def var(self, dim=None, unbiased=True, keepdim=False, *, axis=None, correction=None):
        return reduction.var(self, _dim(dim, axis), unbiased, keepdim, correction=correction)

    def max(self, dim=None, keepdim=False, *, axis=None):
        return reduction.max(self, _dim(dim, axis), keepdim)

    def min(self, dim=None, keepdim=False, *, axis=None):
        return reduction.min(self, _dim(dim, axis), keepdim)

    def amax(self, dim=None, keepdim=False): return reduction.amax(self, dim, keepdim)
    def amin(self, dim=None, keepdim=False): return reduction.amin(self, dim, keepdim)

    def argmax(self, dim=None, keepdim=False, *, axis=None):
        return reduction.argmax(self, _dim(dim, axis), keepdim)

    def argmin(self, dim=None, keepdim=False, *, axis=None):
        return reduction.argmin(self, _dim(dim, axis), keepdim)

    def softmax(self, dim): return loss.softmax(self, dim)
    def log_softmax(self, dim): return loss.log_softmax(self, dim)

    def reshape(self, *shape_): return shape.reshape(self, *shape_)
    view = reshape
    def flatten(self, start_dim=0, end_dim=-1): return shape.flatten(self, start_dim, end_dim)
    def permute(self, *dims): return shape.permute(self, *dims)
    def transpose(self, dim0, dim1): return shape.transpose(self, dim0, dim1)
    def t(self): return self if self.ndim < 2 else shape.transpose(self, 0, 1)
    T = property(lambda self: shape.permute(self, *reversed(range(self.ndim))))
    def squeeze(self, dim=None): return shape.squeeze(self, dim)
    def unsqueeze(self, dim): return shape.unsqueeze(self, dim)
    def contiguous(self): return self
    def clone(self): return self * 1 if self.requires_grad else Tensor(self.data.copy())

    def matmul(self, other): return self @ other

    # in-place helpers used by init and optimisers (outside the graph)
    def zero_(self):
        self.data[...] = 0
        return self

    def fill_(self, value):
        self.data[...] = value
        return self

    def copy_(self, src):
        src = src.data if isinstance(src, Tensor) else src
        self.data[...] = get_array_module(self.data).asarray(src)
        return self


class _HookHandle:
    def __init__(self, hooks, hook):
        self.hooks, self.hook = hooks, hook

    def remove(self):
        if self.hook in self.hooks:
            self.hooks.remove(self.hook)


def _dim(dim, axis):
    """PyTorch accepts ``axis=`` as an alias of ``dim=`` (d2l uses it)."""
    return axis if dim is None else dim


def _wrap(x, ref):
    return x if isinstance(x, Tensor) else as_tensor_like(x, ref)


def as_tensor_like(x, ref):
    """A constant operand (Python number or array) as a Tensor on ``ref``'s device.

    Python numbers take ``ref``'s dtype (``x * 2`` stays float32), except a
    float next to an integer tensor, which gives the default float, and an int
    next to a bool tensor, which gives int64 (``mask * 2`` counts, as PyTorch).
    """
    if isinstance(x, np.generic) and x.dtype.kind in "biuf":
        x = x.item()     # a NumPy scalar counts as a Python number (np.int64(2) * x)
    if isinstance(x, (bool, int, float)):
        dtype = ref.dtype
        if isinstance(x, float) and dtype.kind != "f":
            dtype = np.dtype(default_float)
        elif not isinstance(x, bool) and isinstance(x, int) and dtype.kind == "b":
            dtype = np.dtype(np.int64)
        xp = get_array_module(ref.data)
        # a fill on the device, the number its argument: no host-to-device copy
        # (which a CUDA graph capture cannot hold), the same array as asarray's
        return Tensor(xp.full((), x, dtype=dtype))
    return Tensor(to_device(_to_array(x), ref.device))


class _Move(autograd.Function):
    """y = x copied to another device;   dx = dy copied back"""
    def __init__(self, device):
        self.device = device

    def forward(self, x):
        self.source = device_of(x)
        return to_device(x, self.device)

    def backward(self, gy):
        return to_device(gy, self.source)


# The methods above forward to the ops, which build on autograd.Function and
# make Tensors: imported once Tensor exists.
from .ops import elementwise, loss, matmul, reduction, shape  # noqa: E402
