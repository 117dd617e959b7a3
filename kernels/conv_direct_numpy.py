"""Direct convolution: the reference NumPy kernels for thin layers.

No column matrix.  Each output is a sum over the input channels and the
kernel offsets of the weight times the input pixel it lands on::

    y[n, o, oh, ow] = Σ_c Σ_i Σ_j W[o, c, i, j] · x_pad[n, c, oh·SH + i·DH, ow·SW + j·DW]

For one kernel offset (i, j), the pixels x_pad[n, c, oh·SH + i·DH, ow·SW + j·DW]
over all (n, c, oh, ow) are one strided *view* of the padded input,
``window(i, j)`` of shape (N, C, OH, OW), so the convolution is a loop of
KH·KW small products, one per offset::

    x      (N, C, H, W)          W   (O, C, KH, KW)        y  (N, O, OH, OW)
    y  = Σ_{i, j}  W[:, :, i, j] (O, C)  applied to  window(i, j)  over C
    dx = the adjoint: Σ_{i, j} W[:, :, i, j]ᵀ dy added back onto window(i, j)
    dW[:, :, i, j] = Σ_{n, oh, ow} dy[n, :, oh, ow] ⊗ window(i, j)[n, :, oh, ow]

im2col (``conv_numpy.py``) copies the KH·KW windows into one matrix KH·KW
times the input's size, then makes one large product; here each window is
used where it lies, which is cheaper when the products are thin (few input
and output channels, as in LeNet).  ``conv_direct_numba.py`` computes the
same sums as compiled loops.

Geometry as the other conv kernels: (height, width) pairs, except
``padding``, (top, bottom, left, right).  The array module comes from the
inputs: these run unchanged on NumPy and CuPy arrays.
"""
from .arrays import get_array_module
from .geometry import conv_output_hw


def _window(x_pad, i, j, out_hw, stride, dilation):
    """window(i, j): x_pad[:, :, oh·SH + i·DH, ow·SW + j·DW] over (oh, ow), a view."""
    (OH, OW), (SH, SW), (DH, DW) = out_hw, stride, dilation
    rows = slice(i * DH, i * DH + SH * (OH - 1) + 1, SH)
    cols = slice(j * DW, j * DW + SW * (OW - 1) + 1, SW)
    return x_pad[:, :, rows, cols]


def _pad(xp, x, padding):
    top, bottom, left, right = padding
    return xp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))) if any(padding) else x


def conv_direct_forward(x, W, stride, padding, dilation, b=None):
    """x (N, C, H, W), W (O, C, KH, KW), b (O,) or None -> y (N, O, OH, OW):
    the sums, then + b per output channel."""
    xp = get_array_module(x, W)
    KH, KW = W.shape[2:]
    out_hw = conv_output_hw(x.shape, (KH, KW), stride, padding, dilation)
    x_pad = _pad(xp, x, padding)
    y = xp.zeros((x.shape[0], W.shape[0]) + out_hw, dtype=xp.result_type(x, W))
    for i in range(KH):
        for j in range(KW):
            window = _window(x_pad, i, j, out_hw, stride, dilation)     # (N, C, OH, OW)
            y += xp.einsum("oc,nchw->nohw", W[:, :, i, j], window)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def conv_direct_backward_input(gy, W, x_shape, stride, padding, dilation):
    """gy (N, O, OH, OW), W (O, C, KH, KW) -> gx of shape x_shape (N, C, H, W)."""
    xp = get_array_module(gy, W)
    N, C, H, Wd = x_shape
    KH, KW = W.shape[2:]
    top, bottom, left, right = padding
    out_hw = gy.shape[2:]
    gx_pad = xp.zeros((N, C, H + top + bottom, Wd + left + right),
                      dtype=xp.result_type(gy, W))
    for i in range(KH):
        for j in range(KW):
            # within one offset the window's pixels are distinct: plain += is exact
            _window(gx_pad, i, j, out_hw, stride, dilation)[...] += xp.einsum(
                "oc,nohw->nchw", W[:, :, i, j], gy)
    return xp.ascontiguousarray(gx_pad[:, :, top:top + H, left:left + Wd])


def conv_direct_backward_weight(gy, x, kernel_size, stride, padding, dilation, with_bias=False):
    """gy (N, O, OH, OW), x (N, C, H, W) -> gW (O, C, KH, KW); with ``with_bias``,
    (gW, gb): also the bias's gradient gb = Σ_{n, oh, ow} gy (O,), which the
    compiled loops sum as they read gy for gW."""
    xp = get_array_module(gy, x)
    KH, KW = kernel_size
    out_hw = gy.shape[2:]
    x_pad = _pad(xp, x, padding)
    gW = xp.empty((gy.shape[1], x.shape[1], KH, KW), dtype=xp.result_type(gy, x))
    for i in range(KH):
        for j in range(KW):
            window = _window(x_pad, i, j, out_hw, stride, dilation)
            gW[:, :, i, j] = xp.einsum("nohw,nchw->oc", gy, window)
    return (gW, gy.sum(axis=(0, 2, 3))) if with_bias else gW
