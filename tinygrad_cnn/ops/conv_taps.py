"""Convolution on small maps as one matrix product per kernel tap, each over
only the outputs whose input pixel for that tap lies inside the map: no
multiply-adds on the padding.

On ResNet-18's last stage (3×3 maps, 3×3 kernel, padding 1) 32 of the 81
entries of each im2col column are padding zeros, and im2col multiplies by
them all; a 5×5 kernel on a 3×3 map wastes 144 of 225.  Tap t = (i, j) of
the kernel links output pixel (oh, ow) to input pixel
(oh·SH + i·DH - top, ow·SW + j·DW - left); the outputs whose input pixel is
inside the map form a rectangle R_t of the output, and the input pixels they
read a window X_t of the input (a rectangle, every SH-th row and SW-th
column), so with W_t = W[:, :, i, j] (O, C)::

    y[:, :, R_t]  +=  W_t @ x[:, :, X_t]          (O, C) @ (C, n·|R_t|)

Backward, each product's adjoint::

    dW[:, :, i, j]  =  dy[:, :, R_t] @ x[:, :, X_t]ᵀ
    dx[:, :, X_t]  +=  W_tᵀ @ dy[:, :, R_t]
    db              =  Σ_{n, oh, ow} dy

KH·KW products of Σ_t |R_t| columns in all, against im2col's one product of
KH·KW·OH·OW: ``conv2d`` runs this where the taps' share of that is at most
``TAPS_MAX_SHARE`` (``taps_suits``).  Layout: the images go last,
(C, H, W, n), so a window's rows are runs of n·|row| contiguous values and
its copy into a product's operand streams; each chunk of the batch
(``kernels.map_chunks``, at least one per thread) is transposed in and out
once.
"""
import kernels
from kernels.geometry import batch_chunks, conv_output_hw, taps_inside

from ..autograd import Function
from ..backend import get_array_module
from .conv_winograd import add_terms

# Where the taps' products do at most this share of im2col's multiply-adds:
# ResNet-18's 3x3 maps (49/81), a 5x5 kernel on a 3x3 map (81/225).  A 3x3
# kernel on a 6x6 map (256/324) keeps Winograd, which needs fewer still.
TAPS_MAX_SHARE = 2 / 3
# Thinner products run too far below the machine's speed for the saving to
# pay (KH·KW products of (O, C) @ (C, n·|R_t|) instead of one).
TAPS_MIN_CHANNELS = 64


def tap_windows(in_size, out_size, kernel, stride, pad_before, dilation):
    """Per kernel offset i along one axis: (out_lo, out_hi, in_lo), the outputs
    out_lo..out_hi-1 whose input pixel for offset i lies inside the map
    (``kernels.geometry.taps_inside``), and the first of those input pixels
    (the rest follow every ``stride``); out_lo == out_hi where there are none."""
    inside = taps_inside(kernel, dilation, pad_before, stride, in_size, out_size)
    return [(lo, hi, lo * stride + i * dilation - pad_before) for i, (lo, hi) in enumerate(inside)]


def taps_share(x_shape, weight_shape, stride, padding, dilation, out_hw):
    """The taps' multiply-adds as a share of im2col's: Σ_t |R_t| / (KH·KW·OH·OW)."""
    (KH, KW), (OH, OW) = weight_shape[2:], out_hw
    rows = tap_windows(x_shape[2], OH, KH, stride[0], padding[0], dilation[0])
    cols = tap_windows(x_shape[3], OW, KW, stride[1], padding[2], dilation[1])
    used = sum(hi - lo for lo, hi, _ in rows) * sum(hi - lo for lo, hi, _ in cols)
    return used / (KH * KW * OH * OW)


def taps_suits(x_shape, weight_shape, stride, padding, dilation, groups, out_hw):
    """Whether ``conv2d`` should run a CPU convolution as ``Conv2dTaps``: one
    group, at least ``TAPS_MIN_CHANNELS`` input and output channels, and taps
    that skip enough padding (``TAPS_MAX_SHARE``)."""
    return (groups == 1 and min(x_shape[1], weight_shape[0]) >= TAPS_MIN_CHANNELS
            and taps_share(x_shape, weight_shape, stride, padding, dilation, out_hw)
            <= TAPS_MAX_SHARE)


class Conv2dTaps(Function):
    """y = W ⋆ x + b as one product per kernel tap over its window (module docstring).

    Saved for backward: x (for dW) and the weights laid out tap by tap,
    (KH, KW, O, C) (for dx), each only when that gradient is wanted.
    """
    name = "Conv2d[taps]"

    def __init__(self, stride, padding, dilation, has_bias, column_budget):
        # stride, dilation: (H, W) pairs; padding: (top, bottom, left, right)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.has_bias, self.column_budget = has_bias, column_budget

    def forward(self, x, W, b=None):
        need_x, need_W = self.needs_input_grad[:2]
        xp = get_array_module(x, W)
        N, C, H, Wd = x.shape
        O, _, KH, KW = W.shape
        out_hw = conv_output_hw(x.shape, (KH, KW), self.stride, self.padding, self.dilation)
        self.taps = tap_list((H, Wd), out_hw, (KH, KW), self.stride, self.padding,
                             self.dilation)
        by_tap = kernels.transpose(W.reshape(O * C, KH * KW)).reshape(KH, KW, O, C)
        self.save_for_backward(x if need_W else None, by_tap if need_x else None)
        self.x_shape, self.kernel_hw = x.shape, (KH, KW)
        # per image: x and y in the images-last layout, and the largest window's copy;
        # one chunk per thread even where the batch fits one (batch_chunks): one chunk
        # would leave the products to BLAS's threads and the window copies and sums to one
        self.chunks = batch_chunks(N, (2 * C + O) * H * Wd * x.dtype.itemsize,
                                   self.column_budget, kernels.threads.shares_for(x))
        y = xp.empty((N, O) + out_hw, dtype=xp.result_type(x, W))

        def run(chunk):     # the chunks write disjoint parts of y: they may run side by side
            xc = xp.ascontiguousarray(x[chunk].transpose(1, 2, 3, 0))  # (C, H, W, n)
            yc = xp.empty((O,) + out_hw + (xc.shape[3],), dtype=y.dtype)
            _sum_over_taps(yc, self.taps, by_tap, xc)
            if b is None:
                y[chunk] = yc.transpose(3, 0, 1, 2)
            else:       # the bias rides along the copy: no second pass over y
                xp.add(yc.transpose(3, 0, 1, 2), b.reshape(1, O, 1, 1), out=y[chunk])
        kernels.map_chunks(x, run, self.chunks)
        return y

    def backward(self, gy):
        x, by_tap = self.saved
        need_x, need_W = self.needs_input_grad[:2]
        need_b = self.has_bias and self.needs_input_grad[2]
        xp = get_array_module(gy)
        N, C, H, Wd = self.x_shape
        O, (KH, KW) = gy.shape[1], self.kernel_hw
        gx = xp.empty(self.x_shape, dtype=gy.dtype) if need_x else None

        def run(chunk):     # -> this chunk's (dW tap by tap, db); its dx goes into its part of gx
            gyc = xp.ascontiguousarray(gy[chunk].transpose(1, 2, 3, 0))   # (O, OH, OW, n)
            gW_by_tap = None
            if need_W:
                xc = xp.ascontiguousarray(x[chunk].transpose(1, 2, 3, 0))
                gW_by_tap = xp.empty((KH, KW, O, C), dtype=gy.dtype)
                _zero_taps_missing(gW_by_tap, self.taps)
                for i, j, out_rows, out_cols, in_rows, in_cols in self.taps:
                    kernels.matmul(_window(gyc, out_rows, out_cols),
                                   _window(xc, in_rows, in_cols).T, out=gW_by_tap[i, j])
            if need_x:
                gxc = xp.empty((C, H, Wd, gyc.shape[3]), dtype=gy.dtype)
                _sum_over_taps(gxc, self.taps, by_tap, gyc, adjoint=True)
                gx[chunk] = gxc.transpose(3, 0, 1, 2)
            gb = gy[chunk].sum(axis=(0, 2, 3)) if need_b else None
            return gW_by_tap, gb
        gW_by_tap, gb = kernels.map_chunks(gy, run, self.chunks, combine=add_terms)
        gW = (kernels.transpose(gW_by_tap.reshape(KH * KW, O * C)).reshape(O, C, KH, KW)
              if need_W else None)
        return (gx, gW, gb) if self.has_bias else (gx, gW)


def tap_list(in_hw, out_hw, kernel_hw, stride, padding, dilation):
    """[(i, j, out_rows, out_cols, in_rows, in_cols), ...]: every tap (i, j)
    that reaches the map, with index slices for R_t (of the output) and X_t (of
    the input); ``padding`` is (top, bottom, left, right), the rest (H, W)
    pairs.  A tap whose R_t is the whole output comes first: it writes y
    rather than adding to it."""
    rows = tap_windows(in_hw[0], out_hw[0], kernel_hw[0], stride[0], padding[0], dilation[0])
    cols = tap_windows(in_hw[1], out_hw[1], kernel_hw[1], stride[1], padding[2], dilation[1])
    taps = [(i, j, slice(lo, hi), slice(c_lo, c_hi),
             slice(start, start + (hi - lo - 1) * stride[0] + 1, stride[0]),
             slice(c_start, c_start + (c_hi - c_lo - 1) * stride[1] + 1, stride[1]))
            for i, (lo, hi, start) in enumerate(rows) if hi > lo
            for j, (c_lo, c_hi, c_start) in enumerate(cols) if c_hi > c_lo]
    return sorted(taps, key=lambda tap: not _whole(tap[2:4], out_hw))


def _zero_taps_missing(by_tap, taps):
    """Zero the (O, C) blocks of taps that reach no pixel of the map (they get no product)."""
    reached = {tap[:2] for tap in taps}
    for i in range(by_tap.shape[0]):
        for j in range(by_tap.shape[1]):
            if (i, j) not in reached:
                by_tap[i, j] = 0


def _whole(rows_cols, hw):
    """Whether the (rows, cols) slices take every pixel of an ``hw`` map."""
    return all((s.start, s.stop, s.step or 1) == (0, size, 1) for s, size in zip(rows_cols, hw))


def _window(a, rows, cols):
    """(K, rows, cols, n) of the images-last ``a`` (K, H, W, n) as a contiguous
    (K, |rows|·|cols|·n) matrix: a copy unless the window is all of ``a``."""
    xp = get_array_module(a)
    return xp.ascontiguousarray(a[:, rows, cols, :]).reshape(a.shape[0], -1)


def _sum_over_taps(target, taps, by_tap, source, adjoint=False):
    """target (K, H, W, n), images last, = Σ_t W_t @ source[X_t] placed on R_t
    (y from x); with ``adjoint``, Σ_t W_tᵀ @ source[R_t] placed on X_t (dx
    from dy).  The first tap's product is written where its window is all of
    target; else target starts from zero."""
    K, *hw, _ = target.shape
    spans = [(tap[4:], tap[2:4]) if adjoint else (tap[2:4], tap[4:]) for tap in taps]
    whole = bool(spans) and _whole(spans[0][0], hw)
    if not whole:
        target[...] = 0
    for k, ((i, j, *_), (to, read)) in enumerate(zip(taps, spans)):
        weight = by_tap[i, j].T if adjoint else by_tap[i, j]
        operand = _window(source, *read)
        if k == 0 and whole:
            kernels.matmul(weight, operand, out=target.reshape(K, -1))
        else:
            block = target[:, to[0], to[1], :]
            block += kernels.matmul(weight, operand).reshape(block.shape)

