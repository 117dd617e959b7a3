"""Weight initialisation, as ``torch.nn.init``: every function fills ``tensor.data``
in place from the engine's seeded generator and returns the tensor.

Fans (PyTorch's convention) for a weight of shape (O, C, KH, KW) or (O, C)::

    fan_in  = C · KH · KW        (inputs feeding one output)
    fan_out = O · KH · KW        (outputs one input feeds)

Xavier/Glorot keeps activations' variance across a layer for linear/tanh
units: std = gain · sqrt(2 / (fan_in + fan_out)).  Kaiming/He does so for
ReLU-like units from one side only: std = gain / sqrt(fan).  A uniform
U(-b, b) has std b/sqrt(3), hence the bounds b = sqrt(3) · std.
"""
import math
import numbers
import warnings

from ..backend import get_array_module, rng

_LINEAR_GAIN = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                "conv_transpose2d", "conv_transpose3d", "sigmoid")


def calculate_gain(nonlinearity, param=None):
    """The factor by which a nonlinearity shrinks activations' std, to undo in init.

    linear/conv/sigmoid 1, tanh 5/3, relu sqrt(2), leaky_relu
    sqrt(2 / (1 + slope²)) (slope ``param``, default 0.01), selu 3/4.
    """
    if nonlinearity in _LINEAR_GAIN:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, numbers.Number) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"calculate_gain: negative_slope {param!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def _calculate_fan_in_and_fan_out(tensor):
    if tensor.ndim < 2:
        raise ValueError(f"fan in and fan out can not be computed for a tensor with fewer "
                         f"than 2 dimensions (shape {tensor.shape})")
    receptive_field = math.prod(tensor.shape[2:])     # KH·KW for a conv weight, 1 for linear
    return tensor.shape[1] * receptive_field, tensor.shape[0] * receptive_field


def _calculate_correct_fan(tensor, mode):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode {mode!r} not supported, please use one of 'fan_in', 'fan_out'")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


# ---------------------------------------------------------------- fills
def uniform_(tensor, a=0.0, b=1.0):
    """Fill with U(a, b)."""
    xp = get_array_module(tensor.data)
    tensor.data[...] = a + (b - a) * rng(xp).random(tensor.shape)
    return tensor


def normal_(tensor, mean=0.0, std=1.0):
    """Fill with N(mean, std²)."""
    xp = get_array_module(tensor.data)
    tensor.data[...] = mean + std * rng(xp).standard_normal(tensor.shape)
    return tensor


def constant_(tensor, val):
    tensor.data[...] = val
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0)


def ones_(tensor):
    return constant_(tensor, 1)


# ---------------------------------------------------------------- Xavier / Kaiming
def xavier_uniform_(tensor, gain=1.0):
    """U(-b, b) with b = gain · sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound)


def xavier_normal_(tensor, gain=1.0):
    """N(0, std²) with std = gain · sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return normal_(tensor, 0.0, std)


def _kaiming_std(tensor, a, mode, nonlinearity):
    fan = _calculate_correct_fan(tensor, mode)
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def _is_empty(tensor, name):
    if tensor.numel() == 0:
        warnings.warn(f"Initializing zero-element tensors is a no-op ({name})")
        return True
    return False


def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    """U(-b, b) with b = sqrt(3) · gain / sqrt(fan); ``a`` is leaky_relu's slope.

    PyTorch's Conv2d/Linear default is ``a=sqrt(5)``: gain = sqrt(2/6), so
    b = 1/sqrt(fan_in).
    """
    if _is_empty(tensor, "kaiming_uniform_"):
        return tensor
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    """N(0, std²) with std = gain / sqrt(fan)."""
    if _is_empty(tensor, "kaiming_normal_"):
        return tensor
    return normal_(tensor, 0.0, _kaiming_std(tensor, a, mode, nonlinearity))
