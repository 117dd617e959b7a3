"""The 2-D convolution layer: holds the weight and bias, calls ``F.conv2d``."""
import numpy as np

from . import functional as F
from .linear import _default_init
from .module import Module, Parameter


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class Conv2d(Module):
    """Cross-correlate (N, C, H, W) input with ``out_channels`` learned filters.

    weight: (out_channels, in_channels/groups, KH, KW), bias: (out_channels,).
    Output (N, out_channels, OH, OW), OH = (H + 2·PH - DH·(KH-1) - 1) // SH + 1.
    ``padding``: int, (PH, PW), 'valid' (none) or 'same' (stride 1 only).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True):
        super().__init__()
        _check_conv_args(in_channels, out_channels, groups, padding, stride)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.dilation, self.groups = _pair(dilation), groups
        shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = Parameter(np.empty(shape, dtype=np.float32))
        if bias:
            self.bias = Parameter(np.empty(out_channels, dtype=np.float32))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        _default_init(self.weight, self.bias)

    def forward(self, input):
        if input.ndim not in (3, 4) or input.shape[-3] != self.in_channels:
            raise ValueError(f"{self!r}: expected a 4-D input (N, {self.in_channels}, H, W) "
                             f"or a 3-D one ({self.in_channels}, H, W), got input of shape "
                             f"{input.shape}")
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding,
                        self.dilation, self.groups)

    def extra_repr(self):
        # PyTorch's format: settings at their default values are left out.
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


def _check_conv_args(in_channels, out_channels, groups, padding, stride):
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"Conv2d: groups must be a positive integer, got {groups!r}")
    if in_channels % groups:
        raise ValueError(f"Conv2d: in_channels ({in_channels}) must be divisible by "
                         f"groups ({groups})")
    if out_channels % groups:
        raise ValueError(f"Conv2d: out_channels ({out_channels}) must be divisible by "
                         f"groups ({groups})")
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"Conv2d: invalid padding string {padding!r}, should be one "
                             "of 'valid', 'same'")
        if padding == "same" and _pair(stride) != (1, 1):
            raise ValueError(f"Conv2d: padding='same' is not supported for strided "
                             f"convolutions (stride={stride})")
