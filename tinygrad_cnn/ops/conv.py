"""2-D convolution: im2col + one matrix product (or, for 3x3 stride-1
layers, Winograd's F(2x2, 3x3): 16 smaller products).

``conv2d`` is the op models use: a Function with a hand-written backward
(two matrix products and col2im).  ``conv2d_simple`` computes the same thing
from primitive differentiable ops only (pad, slicing, stack, reshape,
matmul), so autograd derives its backward; compare the two to see what
``Conv2d.backward`` does by hand.

Shapes: input (N, C, H, W), weight (O, C/groups, KH, KW), bias (O,),
output (N, O, OH, OW) with, per axis (PyTorch's formula),
OH = (H + pad_top + pad_bottom - DH·(KH - 1) - 1) // SH + 1.

Memory: im2col's column matrix is KH·KW/(SH·SW) times larger than the
input (9x for a 3x3 conv), so ``conv2d`` builds it for one chunk of the
batch at a time, each chunk's columns at most ``column_budget`` bytes
(``set_column_budget(nbytes)`` changes it).  The default, 16 MB, is also
the fast choice on a CPU: a buffer that size is reused from the heap and
stays in the L3 cache between im2col and the matrix product, while one
above glibc's 32 MB mmap threshold comes fresh from the OS on every call
(allocating and filling 85 MB took 25 ms here, 16 MB 0.3 ms), and a
ResNet-18 trunk of convolutions ran ~10% slower with 256 MB chunks.
"""
import math
import operator

import kernels

from ..autograd import Function
from ..backend import get_array_module
from .shape import pad, squeeze, stack, unsqueeze

column_budget = 16 * 2**20      # bytes of im2col columns built at once (see set_column_budget)


algorithm = "auto"       # "auto" or "im2col" (see set_algorithm)

# Winograd's 16 products are (O, C) @ (C, tiles): with fewer channels than this
# they are too thin for the matrix-product library to run near its speed.
WINOGRAD_MIN_CHANNELS = 16


def set_algorithm(name):
    """Choose how conv2d computes 3×3 stride-1 convolutions; return the previous choice.

    ``"auto"`` (the default): Winograd's F(2×2, 3×3) (kernels/winograd_numpy.py),
    2.25x fewer multiplications, where the layer suits it (see
    ``Conv2d._choose_method``); im2col elsewhere.  ``"im2col"``: im2col and
    one matrix product for every convolution, the textbook way.
    """
    global algorithm
    if name not in ("auto", "im2col"):
        raise ValueError(f"set_algorithm: expected 'auto' or 'im2col', got {name!r}")
    previous, algorithm = algorithm, name
    return previous


def _winograd_tiles(out_hw):
    """(TH, TW): Winograd tiles along each axis, each giving 2 outputs."""
    # Looked up at call time, as in conv2d_output_hw.
    return tuple(kernels.winograd_numpy.winograd_tiles(size) for size in out_hw)


def _tiles_well_used(out_hw):
    """Whether 2x2 output tiles cover out_hw with at most a quarter of them
    wasted: a 3x3 output needs 2x2 tiles, 16 cells for 9 outputs."""
    return 4 * math.prod(out_hw) >= 3 * 4 * math.prod(_winograd_tiles(out_hw))


def set_column_budget(nbytes):
    """Bound the im2col column buffer of every conv2d to ``nbytes``; return the old bound.

    A batch whose columns exceed the bound is processed in chunks of images.
    Smaller bounds save memory but make smaller, less efficient matrix
    products.  A chunk holds at least one image, even one whose columns
    alone exceed the bound.
    """
    global column_budget
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
        raise ValueError(f"set_column_budget: expected a positive int number of bytes, "
                         f"got {nbytes!r}")
    previous, column_budget = column_budget, nbytes
    return previous


def batch_chunks(batch, bytes_per_image, budget):
    """Split a batch of ``batch`` images into as few slices as keep each slice's
    columns within ``budget`` bytes (at least one image per slice), their
    sizes differing by at most one: 64 images at 49 per chunk go as 32 + 32,
    not 49 + 15, which would make the second product a thin one."""
    images_per_chunk = max(1, budget // max(1, bytes_per_image))
    count = max(1, -(-batch // images_per_chunk))           # ceil(batch / images_per_chunk)
    bounds = [batch * k // count for k in range(count + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


class Conv2d(Function):
    """y = W ⋆ x + b  as  y = W @ im2col(x) + b   (one matrix product).

    With G groups, K = (C/G)·KH·KW rows per group, L = OH·OW, and the batch's
    columns side by side (``im2col(..., merge_batch=True)``)::

        col = im2col(x)       (C·KH·KW, N·L)    viewed as (G, K, N·L)
        W                     (O, C/G, KH, KW)  viewed as (G, O/G, K)
        y   = W @ col + b     (G, O/G, N·L)     transposed to (N, O, OH, OW)

    Backward, with dy transposed to (G, O/G, N·L) like y (each product is
    the forward one with an operand transposed):

        dx = col2im(Wᵀ @ dy)          col2im sums overlapping windows back
        dW = dy @ colᵀ
        db = Σ_{n, oh, ow} dy

    Memory: the columns are built one chunk of the batch at a time
    (``batch_chunks``, bounded by ``column_budget``), and backward builds
    them again instead of keeping the forward's; it saves x, which is
    KH·KW/(SH·SW) times smaller (see ``forward``).

    Two other methods, chosen per call (``_choose_method``):

    - "pointwise": a 1×1 kernel with stride 1 and no padding needs no
      im2col at all: each image x[n], viewed as (C, H·W), already is its
      column matrix.
    - "winograd": a 3×3 kernel with stride 1, no dilation, one group, and
      at least ``WINOGRAD_MIN_CHANNELS`` input and output channels, whose
      output the 2×2 tiles cover with at most a quarter wasted, goes through
      Winograd's F(2×2, 3×3) (kernels/winograd_numpy.py; docs/conv.md):
      2.25x fewer multiplications.  ``set_algorithm("im2col")`` turns it off.
    """
    def __init__(self, stride, padding, dilation, groups):
        # stride, dilation: (H, W) pairs; padding: (top, bottom, left, right)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups = groups

    def forward(self, x, W, b=None):
        need_x, need_W = self.needs_input_grad[:2]
        # Keep x, not the columns, for dW: the columns of every conv layer of
        # a network would take several times its activations' memory (about
        # 600 MB more for ResNet-18 at batch 64, 96x96), and rebuilding them
        # costs one im2col per chunk next to three matrix products.  x is no
        # copy, and often kept alive anyway (ReLU saves its output).
        self.save_for_backward(x if need_W else None, W if need_x else None)
        self.x_shape, self.W_shape = x.shape, W.shape
        N, O = x.shape[0], W.shape[0]
        OH, OW = conv2d_output_hw(x.shape, W.shape, self.stride, self.padding, self.dilation)
        self.method = self._choose_method(x.shape, W.shape, (OH, OW))
        if self.method == "pointwise":
            y = self._pointwise_forward(x, W)
            if b is not None:
                y += b.reshape(1, O, 1)
        elif self.method == "winograd":
            y = self._winograd_forward(x, W, b, (OH, OW))
        else:
            y = self._im2col_forward(x, W, b, OH * OW)
        return y.reshape(N, O, OH, OW)

    def backward(self, gy):
        x, W = self.saved
        need = self.needs_input_grad
        need_b = len(need) == 3 and need[2]
        if self.method == "pointwise":
            gx, gW = self._pointwise_backward(gy, x, W)
            gb = gy.sum(axis=(0, 2, 3)) if need_b else None
        elif self.method == "winograd":
            gx, gW, gb = self._winograd_backward(gy, x, need_b)
        else:
            gx, gW, gb = self._im2col_backward(gy, x, W, need_b)
        return (gx, gW) if len(need) == 2 else (gx, gW, gb)

    def _choose_method(self, x_shape, W_shape, out_hw):
        """'pointwise', 'winograd' or 'im2col' (see the class docstring)."""
        C, (KH, KW) = x_shape[1], W_shape[2:]
        # (dilation does not matter for a 1×1 kernel)
        if (KH, KW) == (1, 1) and self.stride == (1, 1) and not any(self.padding):
            return "pointwise"
        if (algorithm == "auto" and (KH, KW) == (3, 3) and self.stride == (1, 1)
                and self.dilation == (1, 1) and self.groups == 1
                and min(C, W_shape[0]) >= WINOGRAD_MIN_CHANNELS and _tiles_well_used(out_hw)):
            return "winograd"
        return "im2col"

    # ------------------------------------------------ 3×3, stride 1: Winograd
    def _winograd_forward(self, x, W, b, out_hw):
        xp = get_array_module(x, W)
        N, C = x.shape[:2]
        O = W.shape[0]
        tiles = _winograd_tiles(out_hw)
        U = kernels.winograd_weight(W).reshape(16, O, C)
        self.U = U if self.needs_input_grad[0] else None        # backward's dx needs it
        bytes_per_image = 16 * (C + O) * tiles[0] * tiles[1] * x.dtype.itemsize
        self.chunks = batch_chunks(N, bytes_per_image, column_budget)
        y = xp.empty((N, O) + tuple(out_hw), dtype=xp.result_type(x, W))
        for chunk in self.chunks:
            V = kernels.winograd_input(x[chunk], self.padding, tiles)      # (4, 4, C, n, TH, TW)
            n = V.shape[3]
            M = U @ V.reshape(16, C, -1)                  # the 16 products: (16, O, n·TH·TW)
            kernels.winograd_output(M.reshape((4, 4, O, n) + tiles), out_hw, out=y[chunk])
        if b is not None:
            y += b.reshape(1, O, 1, 1)
        return y.reshape(N, O, -1)

    def _winograd_backward(self, gy, x, need_b):
        need_x, need_W = self.needs_input_grad[:2]
        xp = get_array_module(gy)
        N, C = self.x_shape[:2]
        O = self.W_shape[0]
        tiles = _winograd_tiles(gy.shape[2:])
        gx = xp.empty(self.x_shape, dtype=gy.dtype) if need_x else None
        gU = 0
        for chunk in self.chunks:
            gM = kernels.winograd_output_backward(gy[chunk])     # (4, 4, O, n, TH, TW)
            n = gM.shape[3]
            gM = gM.reshape(16, O, -1)
            if need_W:
                V = kernels.winograd_input(x[chunk], self.padding, tiles).reshape(16, C, -1)
                gU = gU + gM @ V.swapaxes(1, 2)                  # (16, O, C)
            if need_x:
                gV = self.U.swapaxes(1, 2) @ gM                  # (16, C, n·TH·TW)
                kernels.winograd_input_backward(gV.reshape((4, 4, C, n) + tiles),
                                                (n,) + self.x_shape[1:], self.padding,
                                                out=gx[chunk])
        gW = kernels.winograd_weight_backward(gU.reshape(4, 4, O, C)) if need_W else None
        gb = gy.sum(axis=(0, 2, 3)) if need_b else None
        return gx, gW, gb

    def release(self):
        super().release()
        self.U = None       # the transformed weights, kept beside the saved arrays

    # ------------------------------------------------ the general case: im2col
    def _columns(self, x):
        """im2col of a chunk of images, as (G, K, n·L)."""
        col = kernels.im2col(x, self.W_shape[2:], self.stride, self.padding, self.dilation,
                             merge_batch=True)
        rows, columns = col.shape
        return col.reshape(self.groups, rows // self.groups, columns)

    def _im2col_forward(self, x, W, b, L):
        xp = get_array_module(x, W)
        N, C = x.shape[:2]
        O, _, KH, KW = W.shape
        G = self.groups
        self.chunks = batch_chunks(N, C * KH * KW * L * x.dtype.itemsize, column_budget)
        Wg = W.reshape(G, O // G, -1)
        y = xp.empty((N, O, L), dtype=xp.result_type(x, W))
        for chunk in self.chunks:
            y_chunk = Wg @ self._columns(x[chunk])                 # (G, O/G, n·L): the GEMM
            y_chunk = y_chunk.reshape(O, -1, L).transpose(1, 0, 2)   # -> (n, O, L)
            if b is None:
                y[chunk] = y_chunk
            else:       # the bias rides along the copy: no second pass over y
                xp.add(y_chunk, b.reshape(O, 1), out=y[chunk])
        return y

    def _im2col_backward(self, gy, x, W, need_b):
        need_x, need_W = self.needs_input_grad[:2]
        xp = get_array_module(gy)
        _, O, OH, OW = gy.shape
        G = self.groups
        WgT = W.reshape(G, O // G, -1).swapaxes(1, 2) if need_x else None     # (G, K, O/G)
        gW = gb = 0
        gx = xp.empty(self.x_shape, dtype=gy.dtype) if need_x else None
        for chunk in self.chunks:
            n = len(gy[chunk])
            # (n, O, OH, OW) -> (G, O/G, n·L), the layout of the forward's product
            gy_chunk = xp.ascontiguousarray(gy[chunk].reshape(n, O, OH * OW).transpose(1, 0, 2))
            gy_chunk = gy_chunk.reshape(G, O // G, n * OH * OW)
            if need_b:      # db = Σ dy, summed while the chunk is in the cache
                gb = gb + gy_chunk.sum(axis=2).reshape(O)
            col = None
            if need_W:
                col = self._columns(x[chunk])
                gW = gW + gy_chunk @ col.swapaxes(1, 2)            # (G, O/G, K)
            if need_x:
                # The columns are used up: Wᵀ @ dy may overwrite their buffer --
                # unless im2col returned a view of x itself (no padding, windows
                # that tile x exactly), which must survive for other consumers.
                reuse = col is not None and not xp.may_share_memory(col, x)
                gcol = xp.matmul(WgT, gy_chunk, out=col if reuse else None)  # (G, K, n·L)
                gx[chunk] = kernels.col2im(gcol.reshape(G * gcol.shape[1], -1),
                                           (n,) + self.x_shape[1:], self.W_shape[2:],
                                           self.stride, self.padding, self.dilation,
                                           merge_batch=True)
        return (gx, gW.reshape(self.W_shape) if need_W else None,
                gb if need_b else None)

    # ------------------------------------------------ 1×1, stride 1, no padding
    def _pointwise_forward(self, x, W):
        N, C, H, Wd = x.shape
        O, G = W.shape[0], self.groups
        y = W.reshape(G, O // G, C // G) @ x.reshape(N, G, C // G, H * Wd)   # (N, G, O/G, L)
        return y.reshape(N, O, H * Wd)

    def _pointwise_backward(self, gy, x, W):
        need_x, need_W = self.needs_input_grad[:2]
        N, C, H, Wd = self.x_shape
        O, G = gy.shape[1], self.groups
        gy = gy.reshape(N, G, O // G, H * Wd)
        gx = gW = None
        if need_x:
            gx = (W.reshape(G, O // G, C // G).swapaxes(1, 2) @ gy).reshape(self.x_shape)
        if need_W:
            x = x.reshape(N, G, C // G, H * Wd)
            # dW = Σ_n dy[n] @ x[n]ᵀ, one image at a time: a batched product
            # summed afterwards would hold N copies of dW.
            xp = get_array_module(gy)
            gW = xp.zeros((G, O // G, C // G), dtype=xp.result_type(gy, x))
            for n in range(N):
                gW += gy[n] @ x[n].swapaxes(1, 2)
            gW = gW.reshape(self.W_shape)
        return gx, gW


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
        raise ValueError(f"{op}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, "
                         f"got shape {input_shape}")
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

    An unbatched input (C, H, W) gives an unbatched output (O, OH, OW).

    ``stride``, ``dilation``: int or (H, W) pair.  ``padding``: int, (H, W)
    pair, ``'valid'`` (none) or ``'same'`` (output as large as the input;
    stride 1 only; an odd total pads one more pixel at the bottom/right).
    """
    _check_float("conv2d", input=input, weight=weight, bias=bias)
    unbatched = input.ndim == 3         # one (C, H, W) image, as PyTorch accepts
    if unbatched:
        input = unsqueeze(input, 0)
    stride, padding, dilation, _ = conv2d_geometry(input.shape, weight.shape, stride, padding,
                                                   dilation, groups)
    _check_bias("conv2d", bias, weight.shape)
    args = (input, weight) if bias is None else (input, weight, bias)
    y = Conv2d(stride, padding, dilation, groups)(*args)
    return squeeze(y, 0) if unbatched else y


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
    if input.ndim == 3:                 # one (C, H, W) image
        return squeeze(conv2d_simple(unsqueeze(input, 0), weight, bias, stride, padding), 0)
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
