"""Reference pooling kernels: readable, vectorised NumPy (CuPy works too).

Every kernel takes 4-D (N, C, H, W) arrays and (height, width) pairs for
``kernel_size``, ``stride``, ``padding`` and ``dilation``; the ops in
``tinygrad_cnn/ops/pooling.py`` validate arguments and turn ints into
pairs before calling.  The array module comes from the inputs, so the same
code runs on NumPy and CuPy arrays.

The trick used throughout: a pooling window has only KH*KW cells, so we
loop over the kernel offset (i, j) and, for each one, take the strided
slice of the padded input that holds cell (i, j) of *every* window at once
-- an (N, C, OH, OW) array.  Forward reduces over those KH*KW slices;
backward adds the gradient back into the same slices with ``+=``.  Within
one slice every output lands on a different input cell, and the loop over
offsets adds up the contributions of overlapping windows (stride < kernel),
so a cell shared by several windows receives all of them.

Signatures
----------
maxpool2d_forward(x, kernel_size, stride, padding, ceil_mode=False, dilation=(1, 1))
    -> (y, argmax)       y: (N, C, OH, OW); argmax: int64 (N, C, OH, OW), the
                         row-major offset i*KW + j of the winner inside its window
maxpool2d_backward(gy, argmax, x_shape, kernel_size, stride, padding, dilation=(1, 1))
    -> gx                (N, C, H, W)
avgpool2d_forward(x, kernel_size, stride, padding, ceil_mode=False,
                  count_include_pad=True, divisor_override=None) -> y
avgpool2d_backward(gy, x_shape, kernel_size, stride, padding,
                   count_include_pad=True, divisor_override=None) -> gx
adaptive_avgpool2d_forward(x, output_size) -> y          (N, C, OH, OW)
adaptive_avgpool2d_backward(gy, x_shape) -> gx            (N, C, H, W)
adaptive_maxpool2d_forward(x, output_size)
    -> (y, indices)      indices: int64 (N, C, OH, OW), row * W + col of each
                         bin's max in its (H, W) plane (PyTorch's format)
adaptive_maxpool2d_backward(gy, indices, x_shape) -> gx

Backward kernels read the output size (OH, OW) from ``gy``, so they need no
``ceil_mode``.
"""
import math

from .arrays import get_array_module

from .geometry import adaptive_bins, pool_output_hw


def _padded_extent(size, kernel, stride, padding, dilation, out):
    """Length of the padded axis: the input plus ``padding`` on both sides,
    stretched on the far side if the last (ceil_mode) window reaches beyond."""
    last_window_end = (out - 1) * stride + dilation * (kernel - 1) + 1
    return max(size + 2 * padding, last_window_end)


def _pad(x, padding, out_shape, kernel_size, stride, dilation, value):
    """Pad H and W of ``x`` with ``value``: ``padding`` before, enough after for every window."""
    xp = get_array_module(x)
    widths = [(0, 0), (0, 0)]
    for size, k, s, p, d, out in zip(x.shape[2:], kernel_size, stride, padding, dilation,
                                     out_shape):
        widths.append((p, _padded_extent(size, k, s, p, d, out) - size - p))
    return xp.pad(x, widths, mode="constant", constant_values=value)


def _window_cell(offset, stride, dilation, out_shape):
    """Slices of the padded input holding cell ``offset`` = (i, j) of every window:
    rows i*dh, i*dh + sh, ..., one per output row (likewise for columns)."""
    return (Ellipsis,) + tuple(
        slice(o * d, o * d + (n - 1) * s + 1, s)
        for o, s, d, n in zip(offset, stride, dilation, out_shape))


def _offsets(kernel_size):
    """Kernel offsets (i, j) in row-major order, numbered 0 .. KH*KW - 1."""
    kh, kw = kernel_size
    return [(i, j) for i in range(kh) for j in range(kw)]


def _unpad(gx_padded, x_shape, padding):
    (h, w), (ph, pw) = x_shape[2:], padding
    return gx_padded[..., ph:ph + h, pw:pw + w]


# ---------------------------------------------------------------- max pooling
def maxpool2d_forward(x, kernel_size, stride, padding, ceil_mode=False, dilation=(1, 1)):
    """y[n, c, oh, ow] = max of x over window (oh, ow); also where the max sits.

    The padding is -inf, never 0: a window hanging over the border of an
    all-negative input must still return a real input value.  Ties go to
    the FIRST winner in row-major window order (PyTorch's CPU rule), because
    a later offset replaces the running max only when strictly greater.
    NaN propagates: a NaN cell always wins (the last NaN in the window, as
    in PyTorch).

    Returns y (N, C, OH, OW) and argmax (N, C, OH, OW) int64: the row-major
    offset i*KW + j of the winning cell inside its window.
    """
    xp = get_array_module(x)
    out_shape = pool_output_hw(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    padded = _pad(x, padding, out_shape, kernel_size, stride, dilation, -math.inf)
    y = xp.full(x.shape[:2] + out_shape, -math.inf, dtype=x.dtype)
    argmax = xp.zeros(y.shape, dtype=xp.int64)
    for number, offset in enumerate(_offsets(kernel_size)):
        candidate = padded[_window_cell(offset, stride, dilation, out_shape)]
        better = (candidate > y) | xp.isnan(candidate)
        y = xp.where(better, candidate, y)
        argmax[better] = number
    return y, argmax


def maxpool2d_backward(gy, argmax, x_shape, kernel_size, stride, padding, dilation=(1, 1)):
    """gx[n, c, h, w] = sum of gy over the windows whose max was x[n, c, h, w].

    For offset number k, the windows won by their cell k send their gradient
    to that cell; the loop over k accumulates every window's contribution.
    """
    xp = get_array_module(gy)
    out_shape = gy.shape[2:]
    padded_shape = tuple(x_shape[:2]) + tuple(
        _padded_extent(n, k, s, p, d, out) for n, k, s, p, d, out in
        zip(x_shape[2:], kernel_size, stride, padding, dilation, out_shape))
    gx = xp.zeros(padded_shape, dtype=gy.dtype)
    zero = gy.dtype.type(0)
    for number, offset in enumerate(_offsets(kernel_size)):
        gx[_window_cell(offset, stride, dilation, out_shape)] += \
            xp.where(argmax == number, gy, zero)
    return _unpad(gx, x_shape, padding)


# ---------------------------------------------------------------- average pooling
def _window_counts(size, kernel, stride, padding, out, count_include_pad, xp):
    """Cells each window counts along one axis (PyTorch's divisor rule).

    A window starts at o*s - p (input coordinates).  It is first clipped to
    the padded input [-p, size + p) -- a ceil_mode window may run past it --
    and that length is the count when padding counts; otherwise it is
    clipped again to the real input [0, size).
    """
    start = xp.arange(out) * stride - padding
    end = xp.minimum(start + kernel, size + padding)
    if not count_include_pad:
        start, end = xp.maximum(start, 0), xp.minimum(end, size)
    return end - start


def avgpool_divisors(x_shape, out_shape, kernel_size, stride, padding, count_include_pad,
                     divisor_override, dtype, xp):
    """(OH, OW) array of what each window's sum is divided by."""
    if divisor_override is not None:
        return xp.full(out_shape, divisor_override, dtype=dtype)
    rows, cols = (_window_counts(n, k, s, p, out, count_include_pad, xp) for n, k, s, p, out in
                  zip(x_shape[2:], kernel_size, stride, padding, out_shape))
    # The window is a rectangle, so its count is (rows it covers) * (columns it covers).
    return (rows[:, None] * cols[None, :]).astype(dtype)


def avgpool2d_forward(x, kernel_size, stride, padding, ceil_mode=False,
                      count_include_pad=True, divisor_override=None):
    """y[n, c, oh, ow] = (sum of x over window (oh, ow), zero padding) / divisor.

    divisor: ``divisor_override`` if given; else the window's cells inside
    input + padding when ``count_include_pad``, or inside the input only.
    """
    xp = get_array_module(x)
    no_dilation = (1, 1)
    out_shape = pool_output_hw(x.shape, kernel_size, stride, padding, no_dilation, ceil_mode)
    padded = _pad(x, padding, out_shape, kernel_size, stride, no_dilation, 0)
    total = xp.zeros(x.shape[:2] + out_shape, dtype=x.dtype)
    for offset in _offsets(kernel_size):
        total += padded[_window_cell(offset, stride, no_dilation, out_shape)]
    return total / avgpool_divisors(x.shape, out_shape, kernel_size, stride, padding,
                                    count_include_pad, divisor_override, x.dtype, xp)


def avgpool2d_backward(gy, x_shape, kernel_size, stride, padding, count_include_pad=True,
                       divisor_override=None):
    """gx[n, c, h, w] = sum over the windows containing (h, w) of gy / divisor."""
    xp = get_array_module(gy)
    no_dilation = (1, 1)
    out_shape = gy.shape[2:]
    share = gy / avgpool_divisors(x_shape, out_shape, kernel_size, stride, padding,
                                  count_include_pad, divisor_override, gy.dtype, xp)
    padded_shape = tuple(x_shape[:2]) + tuple(
        _padded_extent(n, k, s, p, 1, out) for n, k, s, p, out in
        zip(x_shape[2:], kernel_size, stride, padding, out_shape))
    gx = xp.zeros(padded_shape, dtype=gy.dtype)
    for offset in _offsets(kernel_size):
        gx[_window_cell(offset, stride, no_dilation, out_shape)] += share
    return _unpad(gx, x_shape, padding)


# ---------------------------------------------------------------- adaptive pooling
def _averaging_matrix(size, out, dtype, xp):
    """A (out, size): A[i, h] = 1/len(bin i) for h in bin i, else 0, so A @ v averages v per bin."""
    matrix = xp.zeros((out, size), dtype=dtype)
    for i, (start, end) in enumerate(adaptive_bins(size, out)):
        matrix[i, start:end] = 1 / (end - start)
    return matrix


def adaptive_avgpool2d_forward(x, output_size):
    """y[n, c, i, j] = mean of x over row bin i x column bin j.

    The mean over a rectangle is a mean over rows then over columns: with the
    averaging matrices A_H (OH, H) and A_W (OW, W), y = A_H x A_Wᵀ (a batched
    matrix product over the (n, c) planes).  The global pool, output (1, 1),
    that ends NiN, GoogLeNet, ResNet and DenseNet is a plain mean instead:
    same numbers, without N·C tiny matrix products.
    """
    if tuple(output_size) == (1, 1):
        return x.mean(axis=(2, 3), keepdims=True)
    xp = get_array_module(x)
    rows, cols = (_averaging_matrix(n, out, x.dtype, xp)
                  for n, out in zip(x.shape[2:], output_size))
    return rows @ x @ cols.T


def adaptive_avgpool2d_backward(gy, x_shape):
    """gx = A_Hᵀ gy A_W (the gradient of A X B is Aᵀ dY Bᵀ); for the global
    pool every cell of a plane gets gy / (H·W)."""
    xp = get_array_module(gy)
    if gy.shape[2:] == (1, 1):
        gx = xp.empty(x_shape, dtype=gy.dtype)
        gx[...] = gy / (x_shape[2] * x_shape[3])      # broadcast over H, W
        return gx                                      # an ordinary array, not a view
    rows, cols = (_averaging_matrix(n, out, gy.dtype, xp)
                  for n, out in zip(x_shape[2:], gy.shape[2:]))
    return rows.T @ gy @ cols


def adaptive_maxpool2d_forward(x, output_size):
    """y[n, c, i, j] = max of x over row bin i x column bin j, and where it sits.

    One vectorised argmax per bin (OH·OW of them, each over the whole batch):
    ties go to the first cell in row-major bin order, as ``argmax`` returns
    the first maximum (a NaN counts as the maximum; the first NaN wins).

    Returns y and indices (N, C, OH, OW) int64: row * W + col of the max in
    its plane, PyTorch's format, which backward and ``return_indices`` use.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    row_bins, col_bins = (adaptive_bins(size, out) for size, out in zip((h, w), output_size))
    indices = xp.empty((n, c) + tuple(output_size), dtype=xp.int64)
    for i, (top, bottom) in enumerate(row_bins):
        for j, (left, right) in enumerate(col_bins):
            window = x[:, :, top:bottom, left:right].reshape(n, c, -1)
            first_max = window.argmax(axis=-1)
            width = right - left
            indices[:, :, i, j] = (top + first_max // width) * w + left + first_max % width
    planes = x.reshape(n, c, h * w)
    y = xp.take_along_axis(planes, indices.reshape(n, c, -1), axis=-1)
    return y.reshape(indices.shape), indices


def adaptive_maxpool2d_backward(gy, indices, x_shape):
    """gx[n, c, h, w] = Σ gy over the bins whose max is x[n, c, h, w].

    A scatter-add: bincount sums the weights of repeated indices, so a cell
    that wins several (overlapping or repeated) bins gets every contribution.
    """
    xp = get_array_module(gy)
    n, c, h, w = x_shape
    plane_start = (xp.arange(n * c) * (h * w)).reshape(n, c, 1, 1)
    flat = (plane_start + indices).ravel()
    gx = xp.bincount(flat, weights=gy.ravel(), minlength=n * c * h * w)
    return gx.astype(gy.dtype, copy=False).reshape(x_shape)
