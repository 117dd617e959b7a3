"""im2col / col2im: the reference NumPy kernels behind 2-D convolution.

Convolution is a matrix product in disguise.  ``im2col`` copies every
receptive field (one per output pixel) into a column of a matrix; the
convolution is then the weights, flattened to rows, times that matrix.
``col2im`` is im2col's adjoint (its transpose as a linear map): it sums each
column back onto the input pixels it was read from, which is exactly the
gradient of im2col.

Geometry arguments are pairs in (height, width) order, except ``padding``,
which is a 4-tuple (top, bottom, left, right): PyTorch's ``padding='same'``
with an even effective kernel pads one pixel more at the bottom/right.

Both kernels take their array module from the input, so they run unchanged
on NumPy and CuPy arrays.
"""
from .arrays import get_array_module

from .geometry import conv_output_hw


def im2col(x, kernel_size, stride, padding, dilation, merge_batch=False):
    """Unfold every receptive field of ``x`` into one column.

    Shapes::

        x    (N, C, H, W)
        col  (N, C*KH*KW, OH*OW)          (torch.nn.functional.unfold's layout)

        col[n, (c*KH + i)*KW + j, oh*OW + ow]
            = x_padded[n, c, oh*SH + i*DH, ow*SW + j*DW]

    Why this layout: rows follow the weight's own flattening, so with
    ``W`` of shape (O, C, KH, KW) the convolution is ONE (batched) matmul::

        y = W.reshape(O, C*KH*KW) @ col   ->  (N, O, OH*OW)  ->  (N, O, OH, OW)

    and the result is already in NCHW order, with no transpose.  The
    backward products need none either: ``dcol = Wᵀ @ dy`` (Wᵀ is a
    strided view BLAS reads directly), ``dW = Σ_n dy[n] @ col[n]ᵀ``.
    DeZero's (N, C, KH, KW, OH, OW) layout instead needs ``tensordot``, which
    copies the whole column matrix into a transposed order first.

    ``merge_batch=True`` puts the images' columns side by side instead::

        col  (C*KH*KW, N*OH*OW),   col[(c*KH + i)*KW + j, n*OH*OW + oh*OW + ow]

    so the whole batch is ONE matrix and each convolution product is ONE
    GEMM (``W @ col``, ``dy @ colᵀ``, ``Wᵀ @ dy``) instead of N small ones.
    That is what ``conv2d`` uses: in deep layers OH*OW is tiny (3x3 = 9
    columns per image), and BLAS is slow on such thin matrices -- the
    ``dW`` sum above becomes N rank-9 updates.  The price is transposing
    the output (O, N, OH*OW) -> (N, O, OH*OW), which is C*KH*KW/O times
    smaller than the columns (about 9x for a 3x3 conv).

    How: a 6-D strided *view* of the zero-padded input holds every window
    without copying (the kernel offset (i, j) steps by the dilation, the
    output pixel (oh, ow) by the stride); the final reshape makes the one
    copy.  No Python loop over output pixels.
    """
    xp = get_array_module(x)
    N, C = x.shape[:2]
    (KH, KW), (SH, SW), (DH, DW) = kernel_size, stride, dilation
    top, bottom, left, right = padding
    OH, OW = conv_output_hw(x.shape, kernel_size, stride, padding, dilation)
    # (no padding: window straight into x, whatever its strides; saves a copy)
    x_pad = xp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))) if any(padding) else x
    sN, sC, sH, sW = x_pad.strides          # bytes per step along each axis
    windows = xp.lib.stride_tricks.as_strided(
        x_pad, shape=(N, C, KH, KW, OH, OW),
        strides=(sN, sC, DH * sH, DW * sW, SH * sH, SW * sW))
    if merge_batch:                         # (C, KH, KW, N, OH, OW) -> one matrix
        return windows.transpose(1, 2, 3, 0, 4, 5).reshape(C * KH * KW, N * OH * OW)
    return windows.reshape(N, C * KH * KW, OH * OW)


def col2im(col, x_shape, kernel_size, stride, padding, dilation, merge_batch=False):
    """The adjoint of ``im2col``: add every column entry back onto its pixel.

    Shapes::

        col  (N, C*KH*KW, OH*OW)          (im2col's layout)
             or (C*KH*KW, N*OH*OW)        (with merge_batch, as im2col's)
        out  x_shape = (N, C, H, W)

    Overlapping windows read a pixel several times, so its gradient is the
    sum of those reads.  One strided slice per kernel offset (i, j) covers
    all output pixels at once: KH*KW vectorised ``+=`` into a zero-padded
    buffer, then the padding is cropped (gradients that landed on padding
    belong to no input pixel).  Plain ``+=`` is safe because within one
    offset the slice hits distinct pixels; ``np.add.at`` would handle
    repeats we never have, and is much slower (benchmarks/results.md).
    """
    xp = get_array_module(col)
    N, C, H, W = x_shape
    (KH, KW), (SH, SW), (DH, DW) = kernel_size, stride, dilation
    top, bottom, left, right = padding
    OH, OW = conv_output_hw(x_shape, kernel_size, stride, padding, dilation, "col2im")
    if merge_batch:     # a view in the unmerged order: the loop below serves both
        col = col.reshape(C, KH, KW, N, OH, OW).transpose(3, 0, 1, 2, 4, 5)
    else:
        col = col.reshape(N, C, KH, KW, OH, OW)
    x_pad = xp.zeros((N, C, H + top + bottom, W + left + right), dtype=col.dtype)
    for i in range(KH):
        rows = slice(i * DH, i * DH + SH * (OH - 1) + 1, SH)
        for j in range(KW):
            cols = slice(j * DW, j * DW + SW * (OW - 1) + 1, SW)
            x_pad[:, :, rows, cols] += col[:, :, i, j]
    return xp.ascontiguousarray(x_pad[:, :, top:top + H, left:left + W])
