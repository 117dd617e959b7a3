"""2-D convolution: im2col + one matrix product.

``conv2d`` is the op models use: a Function with a hand-written backward
(two matrix products and col2im).  ``conv2d_simple`` computes the same thing
from primitive differentiable ops only (pad, slicing, stack, reshape,
matmul), so autograd derives its backward; compare the two to see what
``Conv2d.backward`` does by hand.

Shapes: input (N, C, H, W), weight (O, C/groups, KH, KW), bias (O,),
output (N, O, OH, OW) with, per axis (PyTorch's formula),
OH = (H + pad_top + pad_bottom - DH·(KH - 1) - 1) // SH + 1.
"""
import operator

import kernels

from ..autograd import Function
from .shape import pad, stack


class Conv2d(Function):
    """y = W ⋆ x + b  as  y = W @ im2col(x) + b   (one batched matmul).

    With G groups, K = (C/G)·KH·KW rows per group and L = OH·OW::

        col = im2col(x)       (N, C·KH·KW, L)  viewed as (N, G, K, L)
        W                     (O, C/G, KH, KW) viewed as (G, O/G, K)
        y   = W @ col + b     (N, G, O/G, L)   viewed as (N, O, OH, OW)

    Backward (each product is the forward one with an operand transposed):

        dx = col2im(Wᵀ @ dy)          col2im sums overlapping windows back
        dW = Σ_n dy[n] @ col[n]ᵀ
        db = Σ_{n, oh, ow} dy
    """
    def __init__(self, stride, padding, dilation, groups):
        # stride, dilation: (H, W) pairs; padding: (top, bottom, left, right)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups = groups

    def forward(self, x, W, b=None):
        need_x, need_W = self.needs_input_grad[:2]
        N = x.shape[0]
        O, _, KH, KW = W.shape
        G = self.groups
        OH, OW = conv2d_output_hw(x.shape, W.shape, self.stride, self.padding,
                                  self.dilation)
        col = kernels.im2col(x, (KH, KW), self.stride, self.padding, self.dilation)
        col = col.reshape(N, G, -1, OH * OW)
        Wg = W.reshape(G, O // G, -1)
        # dx needs W, dW needs the columns; x itself is never needed again.
        self.save_for_backward(col if need_W else None, Wg if need_x else None)
        self.x_shape, self.W_shape = x.shape, W.shape
        y = (Wg @ col).reshape(N, O, OH, OW)
        if b is not None:
            y += b.reshape(1, O, 1, 1)
        return y

    def backward(self, gy):
        col, Wg = self.saved
        need = self.needs_input_grad
        N, O, OH, OW = gy.shape
        G = self.groups
        gy = gy.reshape(N, G, O // G, OH * OW)
        gx = gW = gb = None
        if need[0]:
            gcol = (Wg.swapaxes(1, 2) @ gy).reshape(N, -1, OH * OW)
            KH, KW = self.W_shape[2:]
            gx = kernels.col2im(gcol, self.x_shape, (KH, KW), self.stride, self.padding,
                                self.dilation)
        if need[1]:
            gW = (gy @ col.swapaxes(2, 3)).sum(axis=0).reshape(self.W_shape)
        if len(need) == 2:
            return gx, gW
        if need[2]:
            gb = gy.sum(axis=(0, 3)).reshape(O)
        return gx, gW, gb


# ---------------------------------------------------------------- arguments
def conv2d_output_hw(input_shape, weight_shape, stride, padding, dilation):
    """(OH, OW) from (H, W) pairs ``stride``, ``dilation`` and 4-tuple ``padding``."""
    (SH, SW), (DH, DW) = stride, dilation
    top, bottom, left, right = padding
    # Looked up at call time: `import kernels` may run before this package finishes loading.
    size = kernels.conv_numpy.conv_output_size
    return (size(input_shape[2], weight_shape[2], SH, top + bottom, DH),
            size(input_shape[3], weight_shape[3], SW, left + right, DW))


def _pair(value, name, op):
    """An int or an (H, W) pair as a pair of ints."""
    pair = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    try:
        if len(pair) == 2:
            return tuple(operator.index(v) for v in pair)
    except TypeError:
        pass
    raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")


def _padding4(padding, kernel_hw, stride, dilation, op):
    """PyTorch's padding argument as (top, bottom, left, right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"{op}: padding must be an int, a pair, 'valid' or 'same', "
                             f"got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"{op}: padding='same' is not supported for strided "
                             f"convolutions (stride={stride}), as in PyTorch")
        out = []
        for k, d in zip(kernel_hw, dilation):
            total = d * (k - 1)          # an odd total puts the extra pixel after
            out += [total // 2, total - total // 2]
        return tuple(out)
    ph, pw = _pair(padding, "padding", op)
    if ph < 0 or pw < 0:
        raise ValueError(f"{op}: padding must be non-negative, got {padding!r}")
    return (ph, ph, pw, pw)


def conv2d_geometry(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1,
                    op="conv2d"):
    """Check a convolution's shapes and arguments; return its normalised geometry.

    Returns ``(stride, padding, dilation, (OH, OW))`` with ``stride`` and
    ``dilation`` as (H, W) pairs and ``padding`` as (top, bottom, left, right).
    Raises ValueError naming the op, the shapes and the offending values.
    """
    input_shape, weight_shape = tuple(input_shape), tuple(weight_shape)
    if len(input_shape) != 4:
        raise ValueError(f"{op}: expected a 4-D input (N, C, H, W), got shape {input_shape}")
    if len(weight_shape) != 4:
        raise ValueError(f"{op}: expected a 4-D weight (O, C/groups, KH, KW), got shape "
                         f"{weight_shape}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    _, C, H, W = input_shape
    O, C_per_group, KH, KW = weight_shape
    if C % groups or O % groups:
        raise ValueError(f"{op}: groups={groups} must divide both the input's {C} channels "
                         f"and the weight's {O} output channels (weight shape {weight_shape})")
    if C != C_per_group * groups:
        raise ValueError(f"{op}: input has {C} channels but weight of shape {weight_shape} "
                         f"expects {C_per_group * groups} (groups={groups})")
    if KH < 1 or KW < 1:
        raise ValueError(f"{op}: kernel size must be positive, got weight shape {weight_shape}")
    stride = _pair(stride, "stride", op)
    dilation = _pair(dilation, "dilation", op)
    if min(stride) < 1:
        raise ValueError(f"{op}: stride must be positive, got {stride}")
    if min(dilation) < 1:
        raise ValueError(f"{op}: dilation must be positive, got {dilation}")
    padding = _padding4(padding, (KH, KW), stride, dilation, op)
    top, bottom, left, right = padding
    OH, OW = conv2d_output_hw(input_shape, weight_shape, stride, padding, dilation)
    if OH < 1 or OW < 1:
        raise ValueError(
            f"{op}: kernel {KH}x{KW} (dilation {dilation}, so it spans "
            f"{dilation[0] * (KH - 1) + 1}x{dilation[1] * (KW - 1) + 1}) is larger than the "
            f"padded input {H + top + bottom}x{W + left + right} (input shape {input_shape}, "
            f"padding (top, bottom, left, right) = {padding}): output size would be {OH}x{OW}")
    return stride, padding, dilation, (OH, OW)


def _check_float(op, **tensors):
    for name, t in tensors.items():
        if t is not None and t.dtype.kind != "f":
            raise TypeError(f"{op}: expected a floating-point {name}, got dtype {t.dtype}")


def _check_bias(op, bias, weight_shape):
    if bias is not None and tuple(bias.shape) != (weight_shape[0],):
        raise ValueError(f"{op}: bias must have shape ({weight_shape[0]},) to match weight "
                         f"of shape {tuple(weight_shape)}, got {tuple(bias.shape)}")


# ---------------------------------------------------------------- functions
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """PyTorch's ``F.conv2d``: y (N, O, OH, OW) = x (N, C, H, W) ⋆ W (O, C/groups, KH, KW) + b.

    ``stride``, ``dilation``: int or (H, W) pair.  ``padding``: int, (H, W)
    pair, ``'valid'`` (none) or ``'same'`` (output as large as the input;
    stride 1 only; an odd total pads one more pixel at the bottom/right).
    """
    _check_float("conv2d", input=input, weight=weight, bias=bias)
    stride, padding, dilation, _ = conv2d_geometry(input.shape, weight.shape, stride, padding,
                                                   dilation, groups)
    _check_bias("conv2d", bias, weight.shape)
    args = (input, weight) if bias is None else (input, weight, bias)
    return Conv2d(stride, padding, dilation, groups)(*args)


def conv2d_simple(input, weight, bias=None, stride=1, padding=0):
    """``conv2d`` (groups=1, dilation=1) from primitive differentiable ops only.

    The same im2col idea, written with Tensor ops so that autograd builds
    the backward: each kernel offset (i, j) is one strided slice of the
    padded input, of shape (N, C, OH, OW); stacking the KH·KW slices gives
    the columns, and one matmul the output.  Slower and hungrier than
    ``conv2d`` (every slice, the stack and the pad are kept for backward),
    but every step is visible.
    """
    _check_float("conv2d_simple", input=input, weight=weight, bias=bias)
    stride, padding, _, (OH, OW) = conv2d_geometry(input.shape, weight.shape, stride, padding,
                                                   op="conv2d_simple")
    _check_bias("conv2d_simple", bias, weight.shape)
    N, C = input.shape[:2]
    O, _, KH, KW = weight.shape
    (SH, SW), (top, bottom, left, right) = stride, padding
    x = pad(input, (left, right, top, bottom))                # (N, C, H + pads, W + pads)
    windows = [x[:, :, i:i + SH * (OH - 1) + 1:SH, j:j + SW * (OW - 1) + 1:SW]
               for i in range(KH) for j in range(KW)]         # KH·KW × (N, C, OH, OW)
    col = stack(windows, dim=2).reshape(N, C * KH * KW, OH * OW)
    y = (weight.reshape(O, C * KH * KW) @ col).reshape(N, O, OH, OW)
    return y if bias is None else y + bias.reshape(1, O, 1, 1)
