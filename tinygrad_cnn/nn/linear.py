"""Fully connected layers, and the reshapes around them (``Flatten``, ``Identity``)."""
import math

import numpy as np

from . import functional as F
from . import init
from .module import Module, Parameter


def _default_init(weight, bias):
    """PyTorch's default for Linear and Conv2d: W, b ~ U(±1/sqrt(fan_in)).

    kaiming_uniform_ with a=sqrt(5) has gain sqrt(2/(1+5)) = 1/sqrt(3), so its
    bound sqrt(3)·gain/sqrt(fan_in) is exactly 1/sqrt(fan_in).
    """
    init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in, _ = init._calculate_fan_in_and_fan_out(weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        init.uniform_(bias, -bound, bound)


class Linear(Module):
    """y = x Wᵀ + b over the last axis: (*, in_features) -> (*, out_features).

    weight: (out_features, in_features), bias: (out_features,).
    """

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(np.empty((out_features, in_features), dtype=np.float32))
        if bias:
            self.bias = Parameter(np.empty(out_features, dtype=np.float32))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        _default_init(self.weight, self.bias)

    def forward(self, input):
        if input.ndim == 0 or input.shape[-1] != self.in_features:
            raise ValueError(f"{self!r}: expected input with {self.in_features} features in "
                             f"its last dimension, got input of shape {input.shape}")
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Flatten(Module):
    """Merge dims start_dim..end_dim into one: (N, C, H, W) -> (N, C·H·W) by default."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, input):
        return input.flatten(self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """Return the input unchanged (a placeholder, e.g. for a removed layer).

    Accepts and ignores any constructor arguments, as PyTorch's does.
    """

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, input):
        return input
