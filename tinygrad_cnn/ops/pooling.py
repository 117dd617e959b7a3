"""Pooling: max, average and adaptive pooling over the H and W axes.

Inputs are (N, C, H, W), or (C, H, W) treated as a batch of one.  Each
window (KH, KW) slides with ``stride`` over the input padded by
``padding``; there are (OH, OW) windows, counted by ``pool_output_size``.
The hot loops live in ``kernels`` (``kernels.maxpool2d_forward``,
``kernels.adaptive_avgpool2d_forward`` ...), so the kernel set can be
switched at run time; the ops here hold the graph logic (what backward needs).

The output-size rule is geometry, not a hot loop: the ops and every kernel
set count windows with ``kernels.geometry.pool_output_size`` (and cut
adaptive bins with ``adaptive_bins``).  Settings are checked by the rule of
``arguments.py``: TypeError for a wrong type, ValueError for a wrong value.
"""
import kernels
from kernels.geometry import pool_output_hw, pool_output_size

from ..autograd import Function
from ..backend import get_array_module
from . import reduction, shape
from .arguments import as_int, as_pair


class MaxPool2d(Function):
    """y[n,c,oh,ow] = max of x over window (oh, ow)   (padding is -inf)

    dx[n,c,h,w] = Σ dy[n,c,oh,ow] over the windows whose max is x[n,c,h,w]:
    the max passes its gradient only to the winner (the first one on ties),
    and a cell that wins several overlapping windows collects them all.
    """
    def __init__(self, kernel_size, stride, padding, dilation, ceil_mode, return_indices=False):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode
        self.return_indices = return_indices

    def forward(self, x):
        y, argmax = kernels.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                              self.ceil_mode, self.dilation)
        self.x_shape = x.shape
        if self.needs_input_grad[0]:
            self.save_for_backward(argmax)
        if self.return_indices:
            self.indices = self.plane_indices(argmax, x.shape[3])
        return y

    def backward(self, gy):
        argmax, = self.saved
        return kernels.maxpool2d_backward(gy, argmax, self.x_shape, self.kernel_size,
                                          self.stride, self.padding, self.dilation)

    def plane_indices(self, argmax, width):
        """Window offsets -> PyTorch's indices: row * W + col of the winner in its plane."""
        xp = get_array_module(argmax)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (self.kernel_size, self.stride,
                                                  self.padding, self.dilation)
        oh, ow = argmax.shape[2:]
        rows = (xp.arange(oh) * sh - ph)[:, None] + (argmax // kw) * dh
        cols = (xp.arange(ow) * sw - pw)[None, :] + (argmax % kw) * dw
        return rows * width + cols


class AvgPool2d(Function):
    """y[n,c,oh,ow] = Σ x over window (oh, ow) / divisor(oh, ow)   (padding is 0)

    dx[n,c,h,w] = Σ dy[n,c,oh,ow] / divisor(oh, ow) over the windows holding (h, w)
    """
    def __init__(self, kernel_size, stride, padding, ceil_mode, count_include_pad,
                 divisor_override):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.divisor_override = divisor_override

    def forward(self, x):
        self.x_shape = x.shape
        return kernels.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                         self.ceil_mode, self.count_include_pad,
                                         self.divisor_override)

    def backward(self, gy):
        return kernels.avgpool2d_backward(gy, self.x_shape, self.kernel_size, self.stride,
                                          self.padding, self.count_include_pad,
                                          self.divisor_override)


class AdaptiveAvgPool2d(Function):
    """y[n,c,i,j] = mean of x over row bin i x column bin j.

    Bins are PyTorch's (``kernels.geometry.adaptive_bins``).  The mean over a
    rectangle is a mean over rows then over columns, so with the averaging
    matrices A_H (OH, H), A_W (OW, W) -- A[i, h] = 1/len(bin i) for h in
    bin i, else 0 --

        y = A_H x A_Wᵀ        dx = A_Hᵀ dy A_W

    The global pool, output (1, 1), that ends NiN, GoogLeNet, ResNet and
    DenseNet is a plain mean over H and W: every cell of a plane gets dy/(H·W).
    Backward needs only the input's shape.
    """
    def __init__(self, output_size):
        self.output_size = tuple(output_size)

    def forward(self, x):
        self.x_shape = x.shape
        return kernels.adaptive_avgpool2d_forward(x, self.output_size)

    def backward(self, gy):
        return kernels.adaptive_avgpool2d_backward(gy, self.x_shape)


class AdaptiveMaxPool2d(Function):
    """y[n,c,i,j] = max of x over row bin i x column bin j (the first one on ties).

    dx[n,c,h,w] = Σ dy[n,c,i,j] over the bins whose max is x[n,c,h,w]
    (bins may overlap, so one cell can win several).  Forward keeps where each
    max sits -- row * W + col in its plane, PyTorch's format -- for backward
    and for ``return_indices``.
    """
    def __init__(self, output_size):
        self.output_size = tuple(output_size)

    def forward(self, x):
        y, self.indices = kernels.adaptive_maxpool2d_forward(x, self.output_size)
        self.x_shape = x.shape
        return y

    def backward(self, gy):
        return kernels.adaptive_maxpool2d_backward(gy, self.indices, self.x_shape)


# ---------------------------------------------------------------- validation
def _check_input(op, input):
    """Return (input as 4-D, whether it was 3-D)."""
    from ..tensor import Tensor
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(input).__name__}")
    if input.ndim not in (3, 4):
        raise ValueError(f"{op}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, "
                         f"got shape {input.shape}")
    if input.dtype.kind != "f":
        raise TypeError(f"{op}: expected a floating-point input, got dtype {input.dtype}")
    if 0 in input.shape[-2:]:
        raise ValueError(f"{op}: input of shape {input.shape} has an empty spatial dim")
    unbatched = input.ndim == 3
    return (shape.unsqueeze(input, 0) if unbatched else input), unbatched


def _window_geometry(op, x, kernel_size, stride, padding, dilation, ceil_mode):
    """Validate a sliding window; return (kernel, stride, padding, dilation) pairs."""
    kernel = as_pair(kernel_size, "kernel_size", op, minimum=1)
    stride = kernel if stride is None else as_pair(stride, "stride", op, minimum=1)
    dilation = as_pair(dilation, "dilation", op, minimum=1)
    padding = as_pair(padding, "padding", op)
    if min(padding) < 0 or any(p > k // 2 for p, k in zip(padding, kernel)):
        raise ValueError(f"{op}: pad should be at most half of kernel size (and >= 0), "
                         f"got padding={padding}, kernel_size={kernel}")
    out = pool_output_hw(x.shape, kernel, stride, padding, dilation, ceil_mode)
    if min(out) < 1:
        effective = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
        raise ValueError(f"{op}: the window {effective} (kernel_size={kernel}, "
                         f"dilation={dilation}) is larger than the padded input: input "
                         f"{x.shape[2:]}, padding={padding}, stride={stride} give an "
                         f"output size of {out}")
    return kernel, stride, padding, dilation


def _adaptive_output_size(op, output_size, x):
    """``output_size`` (int, or pair where None keeps the input's size) as a pair."""
    if isinstance(output_size, (tuple, list)) and None in output_size and len(output_size) == 2:
        output_size = tuple(n if v is None else v for v, n in zip(output_size, x.shape[2:]))
    return as_pair(output_size, "output_size", op, minimum=1)


def _restore_rank(y, unbatched):
    return shape.squeeze(y, 0) if unbatched else y


# ---------------------------------------------------------------- functions
def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max over each (KH, KW) window; ``stride`` defaults to ``kernel_size``.

    With ``return_indices`` also returns, per output, the flat index
    row * W + col of the winner in its (H, W) plane (int64, as PyTorch)."""
    from ..tensor import Tensor
    x, unbatched = _check_input("max_pool2d", input)
    geometry = _window_geometry("max_pool2d", x, kernel_size, stride, padding, dilation,
                                ceil_mode)
    kernel, stride, padding, dilation = geometry
    pool = MaxPool2d(kernel, stride, padding, dilation, ceil_mode, return_indices)
    y = _restore_rank(pool(x), unbatched)
    if not return_indices:
        return y
    indices = pool.indices[0] if unbatched else pool.indices
    return y, Tensor(indices)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """Mean over each (KH, KW) window; ``stride`` defaults to ``kernel_size``.

    ``count_include_pad``: padding zeros count in the divisor.
    ``divisor_override``: divide every window's sum by this instead."""
    x, unbatched = _check_input("avg_pool2d", input)
    kernel, stride, padding, _ = _window_geometry("avg_pool2d", x, kernel_size, stride,
                                                  padding, 1, ceil_mode)
    if divisor_override is not None and as_int(divisor_override, "divisor_override",
                                               "avg_pool2d") == 0:
        raise ValueError(f"avg_pool2d: divisor_override must be a non-zero int, "
                         f"got {divisor_override!r}")
    pool = AvgPool2d(kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    return _restore_rank(pool(x), unbatched)


def adaptive_avg_pool2d(input, output_size):
    """Average over PyTorch's adaptive bins so the output is ``output_size`` (OH, OW)."""
    x, unbatched = _check_input("adaptive_avg_pool2d", input)
    out = _adaptive_output_size("adaptive_avg_pool2d", output_size, x)
    return _restore_rank(AdaptiveAvgPool2d(out)(x), unbatched)


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """Max over PyTorch's adaptive bins so the output is ``output_size`` (OH, OW)."""
    from ..tensor import Tensor
    x, unbatched = _check_input("adaptive_max_pool2d", input)
    out = _adaptive_output_size("adaptive_max_pool2d", output_size, x)
    pool = AdaptiveMaxPool2d(out)
    y = _restore_rank(pool(x), unbatched)
    if not return_indices:
        return y
    return y, Tensor(pool.indices[0] if unbatched else pool.indices)


def max_pool2d_simple(input, kernel_size, stride=None):
    """Teaching twin of ``max_pool2d`` (no padding, no dilation, 4-D input) built
    only from differentiable primitives, so autograd derives the backward pass.

    Cell (i, j) of every window is one strided slice x[:, :, i::s, j::s]
    (cut to OH x OW).  Stacking the KH*KW slices on a new last axis and taking
    the max over it gives the pooled output; the backward of ``max`` routes
    the gradient to the first maximum, and the backward of each slice puts it
    back in place -- autograd sums the slices, so overlapping windows add up.
    """
    x, unbatched = _check_input("max_pool2d_simple", input)
    if unbatched:
        raise ValueError(f"max_pool2d_simple: expected a 4-D (N, C, H, W) input, "
                         f"got shape {input.shape}")
    (kh, kw), (sh, sw), _, _ = _window_geometry("max_pool2d_simple", x, kernel_size, stride,
                                                0, 1, False)
    oh = pool_output_size(x.shape[2], kh, sh, 0)
    ow = pool_output_size(x.shape[3], kw, sw, 0)
    cells = [x[:, :, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw]
             for i in range(kh) for j in range(kw)]
    return reduction.max(shape.stack(cells, dim=-1), dim=-1).values

