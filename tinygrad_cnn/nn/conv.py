"""The 2-D convolution layer: holds the weight and bias, calls ``F.conv2d``."""
import numpy as np

from ..ops.conv import conv2d_arguments
from . import functional as F
from .linear import _default_init
from .module import Module, Parameter


class Conv2d(Module):
    """Cross-correlate (N, C, H, W) input with ``out_channels`` learned filters.

    weight: (out_channels, in_channels/groups, KH, KW), bias: (out_channels,).
    Output (N, out_channels, OH, OW), OH = (H + 2·PH - DH·(KH-1) - 1) // SH + 1.
    ``padding``: int, (PH, PW), 'valid' (none) or 'same' (stride 1 only).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True):
        super().__init__()
        # Checked here, as PyTorch does, so a bad setting fails where it was written.
        (self.kernel_size, self.stride, self.padding, self.dilation,
         self.groups) = conv2d_arguments("Conv2d", in_channels, out_channels, kernel_size,
                                         stride, padding, dilation, groups)
        self.in_channels, self.out_channels = in_channels, out_channels
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
