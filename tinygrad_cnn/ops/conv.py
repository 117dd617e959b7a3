"""2-D convolution: ``conv2d`` checks its arguments, chooses an algorithm and
runs it as one Function, each with its hand-written backward:

- ``Conv2dIm2col`` (here), the general case: im2col + one matrix product;
- ``Conv2dPointwise`` (here): a 1×1 kernel, stride 1, no padding, where the
  input already is its column matrix;
- ``Conv2dWinograd`` (``conv_winograd.py``): 3×3, stride 1, Winograd's
  F(4×4, 3×3) or F(2×2, 3×3), 36 or 16 smaller products;
- ``Conv2dDirect`` (``conv_direct.py``): thin layers on the CPU (few
  multiply-adds per output, such as LeNet's two), summed directly by
  compiled loops, no column matrix;
- ``Conv2dDense`` (``conv_dense.py``): maps no larger than the kernel's
  window on the CPU (DenseNet's 3×3 maps), one dense product with an
  unrolled weight, no column matrix;
- ``Conv2dTaps`` (``conv_taps.py``): small maps with many channels on the
  CPU (ResNet-18's 3×3 maps), one product per kernel tap over the outputs it
  reaches inside the map, no multiply-adds on the padding.

``choose_algorithm`` holds the rule.  The Function names its algorithm
(``Conv2d[im2col]``, ``Conv2d[pointwise]``, ``Conv2d[winograd]``,
``Conv2d[winograd4x4]``, ``Conv2d[direct]``, ``Conv2d[dense]``,
``Conv2d[taps]``), and so do
``trace()``, ``draw_graph`` and error messages.

``conv2d_simple`` computes the same thing from primitive differentiable ops
only (pad, slicing, stack, reshape, matmul), so autograd derives its
backward; compare the two to see what ``Conv2dIm2col.backward`` does by hand.

Shapes: input (N, C, H, W), weight (O, C/groups, KH, KW), bias (O,),
output (N, O, OH, OW) with, per axis (PyTorch's formula,
``kernels.geometry.conv_output_size``),
OH = (H + pad_top + pad_bottom - DH·(KH - 1) - 1) // SH + 1.

Memory: im2col's column matrix is KH·KW/(SH·SW) times larger than the
input (9x for a 3x3 conv), so ``conv2d`` builds it for one chunk of the
batch at a time, each chunk's columns at most ``column_budget`` bytes
(``set_column_budget(nbytes)`` changes it).  The default, 4 MB
(``DEFAULT_COLUMN_BUDGET``, or four times the weights where they are larger:
``WEIGHT_MULTIPLE``), is also the fast choice on a CPU: each thread
runs whole chunks of its own (``kernels.map_chunks``), and a chunk that
small stays in the cache between im2col and the matrix product, where a
16 MB one per thread spills out of it; far larger chunks come fresh from
the OS, page faults and all (benchmarks/results.md, "Figures behind
design choices").

On a GPU the opposite holds: every chunk costs kernel launches and host time
while the GPU waits, so a GPU convolution's bound is a share of the GPU's
free memory (``tinygrad_cnn.cuda.conv_column_budget``): the whole batch's
columns and one matrix product per convolution (per group), wherever they
fit.  Its products may use TF32 (``tinygrad_cnn.backends.cudnn.allow_tf32``).
"""
import math
import warnings

import numpy as np

import kernels
from kernels.geometry import batch_chunks, conv_output_hw

from .. import backend, cuda
from ..autograd import Function
from ..backend import get_array_module
from ..backends import cudnn
from ..backends.tf32 import TF32
from .arguments import as_int, as_pair
from .conv_direct import Conv2dDirect, direct_suits
from .conv_dense import Conv2dDense, dense_suits
from .conv_taps import Conv2dTaps, taps_suits
from .conv_winograd import Conv2dWinograd, add_terms, winograd_can_run, winograd_suits
from .shape import pad, squeeze, stack, unsqueeze

column_budget = None    # bytes of im2col columns per chunk; None: DEFAULT_COLUMN_BUDGET

algorithm = "auto"  # "auto", "im2col", "winograd", "winograd4x4" or "taps" (see set_algorithm)

ALGORITHMS = ("auto", "im2col", "winograd", "winograd4x4", "taps")

# Winograd's algorithms by name, and the output tile size m of their F(m×m, 3×3)
WINOGRAD_TILES = {"winograd": 2, "winograd4x4": 4}


def set_algorithm(name):
    """Choose how conv2d computes 3×3 stride-1 and thin convolutions; return the previous choice.

    ``"auto"`` (the default): on the CPU, Winograd (``conv_winograd.py``)
    where the layer suits it, F(4×4, 3×3) (4x fewer multiplications than
    im2col) or else F(2×2, 3×3) (2.25x fewer), the direct loops
    (``conv_direct.py``) for thin layers, one dense product
    (``conv_dense.py``) on tiny maps and one product per kernel tap
    (``conv_taps.py``) on small maps with many channels (see
    ``choose_algorithm``); im2col elsewhere, and everywhere on a GPU.
    ``"im2col"``: im2col and one matrix product for every convolution but
    the 1×1 ones, the textbook way.
    ``"winograd"``: F(2×2, 3×3) for every convolution it can compute (3×3,
    stride 1, no dilation, one group), whose float32 rounding stays near
    im2col's; ``"winograd4x4"``: F(4×4, 3×3) for every one, with 5-28 times
    im2col's float32 rounding error (its transforms multiply by up to 8 and
    1/24; docs/conv.md).
    Both also run on a GPU, where they warn: their transforms there are the
    NumPy references run on CuPy, many small kernels, far slower than im2col.
    ``"taps"``: one product per kernel tap (``conv_taps.py``) for every
    convolution with one group (but the 1×1 ones), on either device.
    """
    global algorithm
    if name not in ALGORITHMS:
        raise ValueError(f"set_algorithm: expected one of {ALGORITHMS}, got {name!r}")
    previous, algorithm = algorithm, name
    return previous


def set_column_budget(nbytes):
    """Bound the im2col column buffer of every conv2d to ``nbytes``; return the old bound.

    A batch whose columns exceed the bound is processed in chunks of images
    (``kernels.geometry.batch_chunks``).  Smaller bounds save memory but make
    smaller, less efficient matrix products.  A chunk holds at least one
    image, even one whose columns alone exceed the bound.  ``None`` (the
    default): ``DEFAULT_COLUMN_BUDGET`` on the CPU, or ``WEIGHT_MULTIPLE``
    times a layer's weights where that is more; a share of the free memory
    on a GPU.
    """
    global column_budget
    if nbytes is not None and (isinstance(nbytes, bool) or not isinstance(nbytes, int)
                               or nbytes < 1):
        raise ValueError(f"set_column_budget: expected a positive int number of bytes, "
                         f"got {nbytes!r} (or None: the default)")
    previous, column_budget = column_budget, nbytes
    return previous


# The bound of one chunk's columns on the CPU.  It does not grow with the
# threads: each thread runs whole chunks of its own (kernels.map_chunks), and a
# batch gets a multiple of the thread count of them -- one that fits one chunk
# too, unless it is tiny (kernels.geometry.batch_chunks) -- so every thread has
# its own 4 MB at a time.
# Measured on 2 threads (benchmarks/results.md): 4 MB against 16 MB made
# DenseNet's step 14% faster, GoogLeNet's 9%, LeNet's 12%, ResNet-18's the same.
DEFAULT_COLUMN_BUDGET = 4 * 2**20

# ... but never less than this many times the weights' bytes as the products
# use them.  Every chunk reads all of the weights, and its backward writes a
# weight gradient of its own that is then summed into the total: a deep layer
# on small maps (ResNet-18's 512 channels on 3x3, 9.4 MB of weights) cut into
# 4 MB chunks spent more time on weight-sized arrays than on the columns.
# With twice the weights ResNet-18, AlexNet, NiN and VGG-11 trained 3-8% faster
# on 2 threads, and four times made ResNet-18 3% faster again, the others the
# same (benchmarks/results.md, "Chunks as large as the weights"); layers with
# small weights, all of DenseNet's and the LeNets', keep 4 MB chunks.
WEIGHT_MULTIPLE = 4


def current_column_budget(x=None, weight_bytes=0):
    """The budget conv2d uses now for input array ``x``: set_column_budget's;
    else, for a GPU array, a share of that GPU's free memory
    (``tinygrad_cnn.cuda.conv_column_budget``); else ``DEFAULT_COLUMN_BUDGET``,
    or ``WEIGHT_MULTIPLE`` times ``weight_bytes`` (the weights as the chosen
    algorithm's products use them) where that is more."""
    if column_budget is not None:
        return column_budget
    if x is not None and get_array_module(x) is not np:
        return cuda.conv_column_budget(x.device.id)
    return max(DEFAULT_COLUMN_BUDGET, WEIGHT_MULTIPLE * weight_bytes)


def run_in_chunks(run, x, bytes_per_image, budget):
    """``run(chunks)`` over the batch of ``x`` cut by ``batch_chunks``; returns
    (its result, the chunks, the budget they were cut by).

    On a GPU out-of-memory error (the GPU budget was measured when memory was
    freer, ``tinygrad_cnn.cuda.conv_column_budget``), the budget is measured
    again and ``run`` retried once, if that makes the chunks smaller; else
    the error stands."""
    batch = x.shape[0]
    shares = kernels.threads.shares_for(x)
    chunks = batch_chunks(batch, bytes_per_image, budget, shares)
    try:
        return run(chunks), chunks, budget
    except backend.out_of_memory_errors():
        if column_budget is not None:           # a bound the user set: not ours to change
            raise
        budget = cuda.conv_column_budget(x.device.id, refresh=True)
        smaller = batch_chunks(batch, bytes_per_image, budget, shares)
        if len(smaller) <= len(chunks):
            raise
        return run(smaller), smaller, budget


def choose_algorithm(x_shape, weight_shape, stride, padding, dilation, groups, out_hw,
                     xp=np):
    """'pointwise', 'dense', 'direct', 'taps', 'winograd4x4', 'winograd' or 'im2col': the
    algorithm ``conv2d`` runs on arrays of module ``xp`` (NumPy, or CuPy for a GPU).

    - "pointwise": a 1×1 kernel with stride 1 and no padding needs no im2col
      at all (dilation does not matter for a 1×1 kernel).
    - "dense": with ``set_algorithm("auto")``, maps no larger than the
      kernel's window, with one group and a small dense weight
      (``conv_dense.dense_suits``), on the CPU only (a GPU runs im2col's one
      product as well).
    - "direct": with ``set_algorithm("auto")``, thin stride-1 layers
      (``conv_direct.direct_suits``: few multiply-adds per output pixel) that
      Winograd does not suit, on the CPU only: the fast loops are CPU loops,
      and on a GPU the references would be KH·KW small CuPy kernels per pass
      against im2col's one product.
    - "taps": with ``set_algorithm("auto")``, one group, many channels and
      taps that skip much of the padding (``conv_taps.taps_suits``: ResNet-18's
      512-channel layers on 3×3 maps), on the CPU only (never run on a GPU);
      with ``set_algorithm("taps")``, every layer with one group, on either
      device.
    - "winograd4x4" or "winograd" (F(4×4, 3×3) or F(2×2, 3×3)): with
      ``set_algorithm("auto")`` (the default), 3×3 stride-1 layers where
      Winograd pays, with the tile size that suits the output
      (``conv_winograd.winograd_suits``), on the CPU only: on a GPU the
      transforms are the NumPy references, one small CuPy kernel per row of a
      tile (issue 12: 19,776 calls in 3 ResNet-18 steps), while im2col is one
      large matrix product.  With ``set_algorithm("winograd")`` or
      ``("winograd4x4")``, every layer it can compute
      (``conv_winograd.winograd_can_run``), on either device.
    - "im2col": everything else.
    """
    if tuple(weight_shape[2:]) == (1, 1) and stride == (1, 1) and not any(padding):
        return "pointwise"
    if algorithm == "auto" and xp is np and dense_suits(x_shape, weight_shape, groups, out_hw):
        return "dense"
    if (algorithm == "auto" and xp is np
            and direct_suits(x_shape, weight_shape, stride, dilation, groups)
            and winograd_suits(x_shape, weight_shape, stride, dilation, groups, out_hw) is None):
        return "direct"
    if algorithm == "taps" and groups == 1:
        return "taps"
    if algorithm == "auto" and xp is np and taps_suits(x_shape, weight_shape, stride, padding,
                                                       dilation, groups, out_hw):
        return "taps"
    if algorithm in WINOGRAD_TILES and winograd_can_run(weight_shape, stride, dilation, groups):
        return algorithm
    if algorithm == "auto" and xp is np:
        m = winograd_suits(x_shape, weight_shape, stride, dilation, groups, out_hw)
        if m is not None:
            return next(name for name, size in WINOGRAD_TILES.items() if size == m)
    return "im2col"


# ---------------------------------------------------------------- the general case
class Conv2dIm2col(Function):
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
    (``batch_chunks``, bounded by ``column_budget``; on a GPU usually the
    whole batch: one im2col, one product, one col2im per pass), and backward
    builds them again instead of keeping the forward's; it saves x, which is
    KH·KW/(SH·SW) times smaller (see ``forward``).
    """
    name = "Conv2d[im2col]"

    def __init__(self, stride, padding, dilation, groups, has_bias, column_budget):
        # stride, dilation: (H, W) pairs; padding: (top, bottom, left, right)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups, self.has_bias, self.column_budget = groups, has_bias, column_budget

    def forward(self, x, W, b=None):
        need_x, need_W = self.needs_input_grad[:2]
        # Keep x, not the columns, for dW: the columns of every conv layer of
        # a network would take several times its activations' memory (about
        # 600 MB more for ResNet-18 at batch 64, 96x96), and rebuilding them
        # costs one im2col per chunk next to three matrix products.  x is no
        # copy, and often kept alive anyway (ReLU saves its output).
        self.save_for_backward(x if need_W else None, W if need_x else None)
        self.x_shape, self.W_shape = x.shape, W.shape
        N, C = x.shape[:2]
        O, _, KH, KW = W.shape
        OH, OW = conv_output_hw(x.shape, W.shape[2:], self.stride, self.padding, self.dilation)
        self.column_bytes_per_image = C * KH * KW * OH * OW * x.dtype.itemsize
        with TF32(x, cudnn.allow_tf32):
            # (backward starts from the budget that worked)
            y, self.chunks, self.column_budget = run_in_chunks(
                lambda chunks: self._forward(x, W, b, OH * OW, chunks), x,
                self.column_bytes_per_image, self.column_budget)
        return y.reshape(N, O, OH, OW)

    def _forward(self, x, W, b, L, chunks):
        xp = get_array_module(x, W)
        N, O, G = x.shape[0], W.shape[0], self.groups
        Wg = W.reshape(G, O // G, -1)
        y = xp.empty((N, O, L), dtype=xp.result_type(x, W))

        def run(chunk):     # the chunks write disjoint parts of y: they may run side by side
            y_chunk = kernels.matmul(Wg, self._columns(x[chunk]))  # (G, O/G, n·L): the GEMM
            y_chunk = y_chunk.reshape(O, -1, L).transpose(1, 0, 2)   # -> (n, O, L)
            if b is None:
                y[chunk] = y_chunk
            else:       # the bias rides along the copy: no second pass over y
                xp.add(y_chunk, b.reshape(O, 1), out=y[chunk])
        kernels.map_chunks(x, run, chunks)
        return y

    def backward(self, gy):
        x, W = self.saved
        with TF32(gy, cudnn.allow_tf32):
            grads, self.chunks, self.column_budget = run_in_chunks(
                lambda chunks: self._backward(gy, x, W, chunks), gy,
                self.column_bytes_per_image, self.column_budget)
        return grads

    def _backward(self, gy, x, W, chunks):
        need_x, need_W = self.needs_input_grad[:2]
        need_b = self.has_bias and self.needs_input_grad[2]
        xp = get_array_module(gy)
        _, O, OH, OW = gy.shape
        G = self.groups
        WgT = W.reshape(G, O // G, -1).swapaxes(1, 2) if need_x else None     # (G, K, O/G)
        whole_batch = len(chunks) == 1
        gx = xp.empty(self.x_shape, dtype=gy.dtype) if need_x and not whole_batch else None

        def run(chunk):     # -> this chunk's (dW, db); its dx goes into its own part of gx
            n = len(gy[chunk])
            # (n, O, OH, OW) -> (G, O/G, n·L), the layout of the forward's product
            gy_chunk = xp.ascontiguousarray(gy[chunk].reshape(n, O, OH * OW).transpose(1, 0, 2))
            gy_chunk = gy_chunk.reshape(G, O // G, n * OH * OW)
            # db = Σ dy, summed while the chunk is in the cache
            gb_chunk = gy_chunk.sum(axis=2).reshape(O) if need_b else None
            col = gW_chunk = gx_chunk = None
            if need_W:
                col = self._columns(x[chunk])
                gW_chunk = kernels.matmul(gy_chunk, col.swapaxes(1, 2))     # (G, O/G, K)
            if need_x:
                # The columns are used up: Wᵀ @ dy may overwrite their buffer --
                # unless im2col returned a view of x itself (no padding, windows
                # that tile x exactly), which must survive for other consumers.
                reuse = col is not None and not xp.may_share_memory(col, x)
                gcol = kernels.matmul(WgT, gy_chunk, out=col if reuse else None)  # (G, K, n·L)
                gx_chunk = kernels.col2im(gcol.reshape(G * gcol.shape[1], -1),
                                          (n,) + self.x_shape[1:], self.W_shape[2:],
                                          self.stride, self.padding, self.dilation,
                                          merge_batch=True)
                if not whole_batch:
                    gx[chunk], gx_chunk = gx_chunk, None     # (not kept past its copy)
            return gW_chunk, gb_chunk, gx_chunk
        # summed in the chunks' order wherever they ran, each as it comes
        gW, gb, gx_whole = kernels.map_chunks(gy, run, chunks, combine=add_terms)
        if need_x and whole_batch:      # col2im's output is dx: no copy into a second buffer
            gx = gx_whole
        gW = gW.reshape(self.W_shape) if need_W else None
        if not self.has_bias:
            return gx, gW
        return gx, gW, gb if need_b else None

    def _columns(self, x):
        """im2col of a chunk of images, as (G, K, n·L)."""
        col = kernels.im2col(x, self.W_shape[2:], self.stride, self.padding, self.dilation,
                             merge_batch=True)
        rows, columns = col.shape
        return col.reshape(self.groups, rows // self.groups, columns)


# ---------------------------------------------------------------- 1×1, stride 1, no padding
# Up to this many pixels per image, a CPU pointwise layer multiplies a chunk's
# images side by side, one product, instead of one product per image: with a
# few columns per image, each per-image product reads the whole weight for a
# thin result (GoogLeNet's 832 -> 384 layer on 3x3 maps ran 2x faster merged;
# from 8x8 maps up the per-image products were as fast or faster:
# benchmarks/results.md, "Pointwise layers on small maps").
POINTWISE_MERGE_MAX_PIXELS = 36


def pointwise_merges(x):
    """Whether ``Conv2dPointwise`` runs input ``x``'s images side by side (one
    product per chunk): on the CPU, for maps of at most POINTWISE_MERGE_MAX_PIXELS
    pixels.  A GPU keeps one batched product (one launch, no reordering copies)."""
    return get_array_module(x) is np and x.shape[2] * x.shape[3] <= POINTWISE_MERGE_MAX_PIXELS


class Conv2dPointwise(Function):
    """A 1×1 kernel with stride 1 and no padding: each image x[n], viewed as
    (C, H·W), already is its column matrix, so there is no im2col at all.

    Per group g, with W viewed as (G, O/G, C/G) and x[n] as (G, C/G, H·W)::

        y[n] = W @ x[n] + b               (G, O/G, H·W)     one batched product
        dx[n] = Wᵀ @ dy[n]                                  one batched product
        dW = dy @ xᵀ                      dy as (G, O/G, N·H·W), x as (G, C/G, N·H·W)
        db = Σ_{n, h, w} dy

    dW is one product over the batch's pixels side by side (not N per-image
    products: on a GPU each would be a launch, on a CPU a thin product).  On
    small CPU maps (``pointwise_merges``) y and dx are too: x and dy laid out
    as (G, C/G, N·H·W) and (G, O/G, N·H·W), one product each, the result
    reordered back to (N, G, ·, H·W) -- on a 3×3 map the per-image products
    would have nine columns each, and each would read the whole weight.

    Every pass runs one chunk of the batch at a time (``batch_chunks``, at
    most ``column_budget`` bytes of a chunk's input and output; on a GPU
    usually the whole batch), the chunks side by side on the CPU's threads
    (``kernels.map_chunks``): each thread adds the bias to, or sums db and dW
    over, the images it has just multiplied, while they are in its cache,
    instead of one thread making a second pass over the whole batch.
    """
    name = "Conv2d[pointwise]"

    def __init__(self, groups, has_bias, column_budget):
        self.groups, self.has_bias, self.column_budget = groups, has_bias, column_budget

    def forward(self, x, W, b=None):
        need_x, need_W = self.needs_input_grad[:2]
        self.save_for_backward(x if need_W else None, W if need_x else None)
        self.x_shape, self.W_shape = x.shape, W.shape
        N, C, H, Wd = x.shape
        O = W.shape[0]
        self.bytes_per_image = (C + O) * H * Wd * x.dtype.itemsize
        self.merged = pointwise_merges(x)       # images side by side, or one product each
        with TF32(x, cudnn.allow_tf32):
            y, self.chunks, self.column_budget = run_in_chunks(
                lambda chunks: self._forward(x, W, b, chunks), x, self.bytes_per_image,
                self.column_budget)
        return y.reshape(N, O, H, Wd)

    def _forward(self, x, W, b, chunks):
        xp = get_array_module(x, W)
        N, C, H, Wd = x.shape
        O, G = W.shape[0], self.groups
        Wg = W.reshape(G, O // G, C // G)
        y = xp.empty((N, G, O // G, H * Wd), dtype=xp.result_type(x, W))

        def run(chunk):     # the chunks write disjoint parts of y: they may run side by side
            y_chunk = y[chunk]
            n = len(y_chunk)
            if self.merged:
                y_rows = kernels.matmul(Wg, _side_by_side(xp, x[chunk], G))  # (G, O/G, n·HW)
                y_rows = y_rows.reshape(G, O // G, n, H * Wd).transpose(2, 0, 1, 3)
                if b is None:
                    y_chunk[...] = y_rows
                else:       # the bias rides along the copy back to (n, G, O/G, HW)
                    xp.add(y_rows, b.reshape(G, O // G, 1), out=y_chunk)
                return
            kernels.matmul(Wg, x[chunk].reshape(n, G, C // G, H * Wd), out=y_chunk)
            if b is not None:
                y_chunk += b.reshape(G, O // G, 1)
        kernels.map_chunks(x, run, chunks)
        return y

    def backward(self, gy):
        with TF32(gy, cudnn.allow_tf32):
            grads, self.chunks, self.column_budget = run_in_chunks(
                lambda chunks: self._backward(gy, chunks), gy, self.bytes_per_image,
                self.column_budget)
        return grads

    def _backward(self, gy, chunks):
        x, W = self.saved
        need_x, need_W = self.needs_input_grad[:2]
        need_b = self.has_bias and self.needs_input_grad[2]
        xp = get_array_module(gy)
        N, C, H, Wd = self.x_shape
        O, G = gy.shape[1], self.groups
        WgT = W.reshape(G, O // G, C // G).swapaxes(1, 2) if need_x else None
        gx = xp.empty(self.x_shape, dtype=gy.dtype) if need_x else None
        merged = self.merged        # as the forward ran

        def run(chunk):     # -> this chunk's (dW, db); its dx goes into its own part of gx
            gy_chunk = gy[chunk]
            n = len(gy_chunk)
            # dy's images side by side: for dW, and for a merged dx
            gy_rows = _side_by_side(xp, gy_chunk, G) if need_W or (need_x and merged) else None
            if need_x:
                gx_chunk = gx[chunk].reshape(n, G, C // G, H * Wd)
                if merged:
                    gx_rows = kernels.matmul(WgT, gy_rows)        # (G, C/G, n·HW)
                    gx_chunk[...] = gx_rows.reshape(G, C // G, n, H * Wd).transpose(2, 0, 1, 3)
                else:
                    kernels.matmul(WgT, gy_chunk.reshape(n, G, O // G, H * Wd), out=gx_chunk)
            gb_chunk = gy_chunk.sum(axis=(0, 2, 3)) if need_b else None
            gW_chunk = None
            if need_W:
                x_rows = _side_by_side(xp, x[chunk], G)
                gW_chunk = kernels.matmul(gy_rows, x_rows.swapaxes(1, 2))  # (G, O/G, C/G)
            return gW_chunk, gb_chunk
        # summed in the chunks' order wherever they ran, each as it comes
        gW, gb = kernels.map_chunks(gy, run, chunks, combine=add_terms)
        gW = gW.reshape(self.W_shape) if need_W else None
        return (gx, gW, gb) if self.has_bias else (gx, gW)


def _side_by_side(xp, a, groups):
    """(n, C, H, W) -> (G, C/G, n·H·W): each group's channels as rows, the
    images' pixels side by side (one copy)."""
    n, C, H, W = a.shape
    a = a.reshape(n, groups, C // groups, H * W).transpose(1, 2, 0, 3)
    return xp.ascontiguousarray(a).reshape(groups, C // groups, n * H * W)


# ---------------------------------------------------------------- arguments
def conv2d_arguments(op, in_channels, out_channels, kernel_size, stride=1, padding=0,
                     dilation=1, groups=1):
    """Check a convolution's settings; return them normalised.

    The one check behind ``conv2d``, ``conv2d_simple`` and ``nn.Conv2d``:
    TypeError for a setting of the wrong type, ValueError for a wrong value
    (``arguments.py``), each message naming ``op``.  Returns ``(kernel_size,
    stride, padding, dilation, groups)`` with (H, W) pairs, and ``padding``
    a pair or the string 'valid' or 'same' as given.
    """
    kernel_pair = as_pair(kernel_size, "kernel_size", op, minimum=1)
    stride_pair = as_pair(stride, "stride", op, minimum=1)
    dilation_pair = as_pair(dilation, "dilation", op, minimum=1)
    groups = as_int(groups, "groups", op, minimum=1)
    for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
        if as_int(channels, name, op, minimum=1) % groups:
            raise ValueError(f"{op}: {name} ({channels}) must be divisible by groups ({groups})")
    if isinstance(padding, str):
        if padding not in ("valid", "same"):
            raise ValueError(f"{op}: padding must be an int, a pair, 'valid' or 'same', "
                             f"got {padding!r}")
        if padding == "same" and stride_pair != (1, 1):
            raise ValueError(f"{op}: padding='same' is not supported for strided "
                             f"convolutions (stride={stride!r}), as in PyTorch")
    else:
        padding = as_pair(padding, "padding", op, minimum=0)
    return kernel_pair, stride_pair, padding, dilation_pair, groups


def padding_sides(padding, kernel_size, dilation):
    """A checked padding (pair, 'valid' or 'same') as (top, bottom, left, right)."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        sides = []
        for k, d in zip(kernel_size, dilation):
            total = d * (k - 1)          # an odd total puts the extra pixel after
            sides += [total // 2, total - total // 2]
        return tuple(sides)
    ph, pw = padding
    return (ph, ph, pw, pw)


def conv2d_geometry(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1,
                    op="conv2d"):
    """Check a convolution's shapes and arguments; return its normalised geometry.

    Returns ``(stride, padding, dilation, (OH, OW))`` with ``stride`` and
    ``dilation`` as (H, W) pairs and ``padding`` as (top, bottom, left, right).
    Raises ValueError (TypeError for a setting of the wrong type) naming the
    op, the shapes and the offending values.
    """
    input_shape, weight_shape = tuple(input_shape), tuple(weight_shape)
    if len(input_shape) != 4:
        raise ValueError(f"{op}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, "
                         f"got shape {input_shape}")
    if len(weight_shape) != 4:
        raise ValueError(f"{op}: expected a 4-D weight (O, C/groups, KH, KW), got shape "
                         f"{weight_shape}")
    C, (O, C_per_group, KH, KW) = input_shape[1], weight_shape
    if KH < 1 or KW < 1:
        raise ValueError(f"{op}: kernel size must be positive, got weight shape {weight_shape}")
    kernel, stride, padding, dilation, groups = conv2d_arguments(
        op, C, O, (KH, KW), stride, padding, dilation, groups)
    if C != C_per_group * groups:
        raise ValueError(f"{op}: input has {C} channels but weight of shape {weight_shape} "
                         f"expects {C_per_group * groups} (groups={groups})")
    padding = padding_sides(padding, kernel, dilation)
    out_hw = conv_output_hw(input_shape, kernel, stride, padding, dilation, op)
    return stride, padding, dilation, out_hw


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
    Runs the algorithm ``choose_algorithm`` picks, as the Function of that
    name (``y.grad_fn.name``: ``Conv2d[im2col]``, ``Conv2d[pointwise]``,
    ``Conv2d[winograd]``, ``Conv2d[winograd4x4]``, ``Conv2d[direct]``,
    ``Conv2d[dense]`` or ``Conv2d[taps]``).
    """
    _check_float("conv2d", input=input, weight=weight, bias=bias)
    unbatched = input.ndim == 3         # one (C, H, W) image, as PyTorch accepts
    if unbatched:
        input = unsqueeze(input, 0)
    stride, padding, dilation, out_hw = conv2d_geometry(
        input.shape, weight.shape, stride, padding, dilation, groups)
    _check_bias("conv2d", bias, weight.shape)
    has_bias = bias is not None
    xp = get_array_module(input.data)
    chosen = choose_algorithm(input.shape, weight.shape, stride, padding, dilation, groups,
                              out_hw, xp)
    budget = current_column_budget(input.data, product_weight_bytes(chosen, weight.shape,
                                                                    weight.dtype.itemsize))
    if chosen == "pointwise":
        fn = Conv2dPointwise(groups, has_bias, budget)
    elif chosen == "direct":
        fn = Conv2dDirect(stride, padding, dilation, has_bias)
    elif chosen == "dense":
        fn = Conv2dDense(stride, padding, dilation, has_bias)
    elif chosen == "taps":
        fn = Conv2dTaps(stride, padding, dilation, has_bias, budget)
    elif chosen in WINOGRAD_TILES:
        if xp is not np:
            warnings.warn(f"conv2d: set_algorithm({chosen!r}) on a GPU runs Winograd's NumPy "
                          "reference transforms on CuPy, many small kernels per convolution: "
                          "far slower than im2col, which set_algorithm('auto') uses there",
                          stacklevel=2)
        fn = Conv2dWinograd(padding, has_bias, budget, WINOGRAD_TILES[chosen])
    else:
        fn = Conv2dIm2col(stride, padding, dilation, groups, has_bias, budget)
    y = fn(input, weight, bias) if has_bias else fn(input, weight)
    return squeeze(y, 0) if unbatched else y


def product_weight_bytes(algorithm, weight_shape, itemsize):
    """The bytes of a convolution's weights as ``algorithm``'s products use
    them: Winograd's α² = (m + 2)² transformed (O, C) matrices, else the
    weights as they are (im2col's and the 1×1 convolution's (O, C·KH·KW) matrix)."""
    O, C = weight_shape[:2]
    if algorithm in WINOGRAD_TILES:
        return (WINOGRAD_TILES[algorithm] + 2) ** 2 * O * C * itemsize
    return math.prod(weight_shape) * itemsize


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
