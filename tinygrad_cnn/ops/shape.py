"""Shape ops: they move elements around, so backward moves gradients back."""
import kernels

from ..autograd import Function
from ..backend import get_array_module


class Reshape(Function):
    """y = x viewed with a new shape;   dx = dy reshaped to x's shape"""
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gy):
        return gy.reshape(self.in_shape)


class Permute(Function):
    """y = x with axes reordered;   dx = dy with the inverse order"""
    def __init__(self, axes):
        self.axes = axes

    def forward(self, x):
        return x.transpose(self.axes)

    def backward(self, gy):
        inverse = [0] * len(self.axes)
        for i, a in enumerate(self.axes):
            inverse[a] = i
        return gy.transpose(inverse)


class GetItem(Function):
    """y = x[index];   dx = zeros with dy scattered back to x[index]

    Advanced (integer-array) indexes may pick one element several times;
    ``add.at`` then sums every contribution.
    """
    def __init__(self, index):
        self.index = index

    def forward(self, x):
        self.shape, self.dtype = x.shape, x.dtype
        return x[self.index]

    def backward(self, gy):
        xp = get_array_module(gy)
        gx = xp.zeros(self.shape, dtype=gy.dtype)
        if _is_advanced(self.index):
            xp.add.at(gx, self.index, gy)
        else:
            gx[self.index] = gy
        return gx


def _is_advanced(index):
    parts = index if isinstance(index, tuple) else (index,)
    return any(hasattr(p, "dtype") or isinstance(p, (list, tuple)) for p in parts)


class Cat(Function):
    """y = concatenate(x₁ … xₖ, axis);   dxᵢ = the slice of dy where xᵢ went"""
    def __init__(self, axis):
        self.axis = axis

    def forward(self, *xs):
        self.sizes = [x.shape[self.axis] for x in xs]
        return kernels.concatenate(xs, self.axis)         # side by side on the CPU's threads

    def backward(self, gy):
        grads, start = [], 0
        for size, need in zip(self.sizes, self.needs_input_grad):
            if need:
                index = [slice(None)] * gy.ndim
                index[self.axis] = slice(start, start + size)
                grads.append(gy[tuple(index)])
            else:
                grads.append(None)
            start += size
        return tuple(grads)


class Pad(Function):
    """y = x with a constant border;   dx = the interior of dy"""
    def __init__(self, widths, value):
        self.widths, self.value = widths, value

    def forward(self, x):
        xp = get_array_module(x)
        return xp.pad(x, self.widths, mode="constant", constant_values=self.value)

    def backward(self, gy):
        return gy[tuple(slice(lo, gy.shape[i] - hi)
                        for i, (lo, hi) in enumerate(self.widths))]


# ---------------------------------------------------------------- functions
def _axis(dim, ndim, op):
    if not -ndim <= dim < ndim:
        raise ValueError(f"{op}: dim {dim} is out of range for a tensor with {ndim} dims")
    return dim % ndim


def reshape(x, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    size = 1
    for n in x.shape:
        size *= n
    known = 1
    for n in shape:
        known *= n if n != -1 else 1
    if shape.count(-1) > 1 or (-1 not in shape and known != size) or \
            (-1 in shape and (known == 0 or size % known)):
        raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} "
                         f"({size} elements) into {tuple(shape)}")
    return Reshape(tuple(shape))(x)


def permute(x, *dims):
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    in_range = all(-x.ndim <= d < x.ndim for d in dims) or (x.ndim == 0 and not dims)
    if not in_range or sorted(d % x.ndim for d in dims) != list(range(x.ndim)):
        raise ValueError(f"permute: {dims} is not a permutation of the {x.ndim} dims "
                         f"of a tensor of shape {x.shape}")
    return Permute(tuple(d % x.ndim for d in dims))(x)


def transpose(x, dim0, dim1):
    axes = list(range(x.ndim))
    d0, d1 = _axis(dim0, x.ndim, "transpose"), _axis(dim1, x.ndim, "transpose")
    axes[d0], axes[d1] = axes[d1], axes[d0]
    return Permute(tuple(axes))(x)


def flatten(x, start_dim=0, end_dim=-1):
    if x.ndim == 0:
        return reshape(x, 1)
    s, e = _axis(start_dim, x.ndim, "flatten"), _axis(end_dim, x.ndim, "flatten")
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    return reshape(x, *x.shape[:s], -1, *x.shape[e + 1:])


def squeeze(x, dim=None):
    if dim is None:
        return reshape(x, *[n for n in x.shape if n != 1])
    d = _axis(dim, x.ndim, "squeeze")
    if x.shape[d] != 1:
        return x
    return reshape(x, *x.shape[:d], *x.shape[d + 1:])


def unsqueeze(x, dim):
    d = _axis(dim, x.ndim + 1, "unsqueeze")
    return reshape(x, *x.shape[:d], 1, *x.shape[d:])


def getitem(x, index):
    from ..tensor import Tensor
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return GetItem(index)(x)


def cat(tensors, dim=0):
    """Concatenate along an existing ``dim`` (PyTorch's ``torch.cat``)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat: expected a non-empty list of tensors")
    first = tensors[0]
    axis = _axis(dim, first.ndim, "cat")
    for i, t in enumerate(tensors):
        if t.ndim != first.ndim or any(
                a != b for k, (a, b) in enumerate(zip(t.shape, first.shape)) if k != axis):
            raise ValueError(f"cat: tensor {i} has shape {t.shape} but tensor 0 has shape "
                             f"{first.shape}; all sizes except dim {axis} must match")
    return Cat(axis)(*tensors)


def stack(tensors, dim=0):
    """Join along a new ``dim``: unsqueeze each, then ``cat``."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: expected a non-empty list of tensors")
    shapes = {t.shape for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"stack: all tensors must have the same shape, got {sorted(shapes)}")
    d = _axis(dim, tensors[0].ndim + 1, "stack")
    return cat([unsqueeze(t, d) for t in tensors], d)


def pad(x, pad, mode="constant", value=0.0):
    """PyTorch's ``F.pad``: ``pad`` lists (left, right) pairs from the LAST dim backwards."""
    if mode != "constant":
        raise ValueError(f"pad: only mode='constant' is supported, got {mode!r}")
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"pad: pad {tuple(pad)} must hold (left, right) pairs for at most "
                         f"{x.ndim} dims of shape {x.shape}")
    if any(p < 0 for p in pad):
        raise ValueError(f"pad: negative padding {tuple(pad)} is not supported")
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    return Pad(tuple(widths), value)(x)
