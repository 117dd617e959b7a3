"""Shape arithmetic shared by the kernels and the ops: how many outputs a
sliding window gives, how adaptive pooling cuts an axis into bins, how many
Winograd tiles cover an output, how a batch splits into chunks.

Plain integers in, plain integers out: no arrays, so every kernel set (NumPy,
Numba, CUDA) and every op (``tinygrad_cnn/ops``) imports these at module top
and counts the same way.  Pairs are in (height, width) order; a convolution's
``padding`` is (top, bottom, left, right), a pool's (PH, PW) pads both sides.
"""


# ---------------------------------------------------------------- convolution
def conv_output_size(size, kernel, stride, pad_total, dilation):
    """Output length of one spatial axis (PyTorch's formula).

    A kernel of ``kernel`` taps spaced ``dilation`` apart spans
    ``dilation * (kernel - 1) + 1`` input pixels; it slides over the padded
    axis ``size + pad_total`` in steps of ``stride``.  The result is < 1 when
    the kernel does not fit.
    """
    span = dilation * (kernel - 1) + 1
    return (size + pad_total - span) // stride + 1


def conv_output_hw(x_shape, kernel_size, stride, padding, dilation, op="im2col"):
    """(OH, OW) of a convolution of an (N, C, H, W) input.

    ``kernel_size``, ``stride``, ``dilation``: (H, W) pairs; ``padding``:
    (top, bottom, left, right).  Raises ValueError, naming ``op``, when the
    kernel does not fit the padded input (an output size below 1).
    """
    H, W = x_shape[2:]
    (KH, KW), (SH, SW), (DH, DW) = kernel_size, stride, dilation
    top, bottom, left, right = padding
    OH = conv_output_size(H, KH, SH, top + bottom, DH)
    OW = conv_output_size(W, KW, SW, left + right, DW)
    if OH < 1 or OW < 1:
        raise ValueError(
            f"{op}: kernel {KH}x{KW} (dilation {tuple(dilation)}, so it spans "
            f"{DH * (KH - 1) + 1}x{DW * (KW - 1) + 1}) is larger than the padded input "
            f"{H + top + bottom}x{W + left + right} (input shape {tuple(x_shape)}, padding "
            f"(top, bottom, left, right) = {tuple(padding)}): output would be {OH}x{OW}")
    return OH, OW


def taps_inside(taps, dilation, pad, stride, size, out_size):
    """Per kernel tap t along one axis: (lo, hi), the output positions
    lo..hi-1 whose input position o·stride + t·dilation - pad lies inside
    [0, size) (lo == hi where none does).  im2col's loops skip the padding with
    these ranges, and the products per tap (``tinygrad_cnn/ops/conv_taps.py``)
    take their windows from them."""
    ranges = []
    for t in range(taps):
        offset = t * dilation - pad
        lo = max(0, -(offset // stride))                    # ceil(-offset / stride)
        hi = min(out_size, -((offset - size) // stride))    # ceil((size - offset) / stride)
        ranges.append((lo, max(lo, hi)))
    return ranges


# ---------------------------------------------------------------- pooling
def pool_output_size(size, kernel, stride, padding, dilation=1, ceil_mode=False):
    """Number of windows along one axis, exactly as PyTorch counts them.

        out = floor_or_ceil((size + 2p - d(k-1) - 1) / s) + 1

    With ``ceil_mode`` a last, partial window is added when the stride
    leaves cells uncovered -- but only if it starts inside the input or the
    left padding (a window starting in the right padding would see nothing
    but padding).  May return <= 0: callers report that as an error.
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1          # ceil division (span may be < 0)
        if (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = span // stride + 1
    return out


def pool_output_hw(x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    """(OH, OW) of a pool over an (N, C, H, W) input; (H, W) pairs for the rest."""
    return tuple(pool_output_size(n, k, s, p, d, ceil_mode) for n, k, s, p, d in
                 zip(x_shape[2:], kernel_size, stride, padding, dilation))


def adaptive_bins(size, out):
    """PyTorch's bins along one axis: bin i covers [floor(i*size/out), ceil((i+1)*size/out)).

    Bins cover the axis, may overlap by a cell, and repeat cells when out > size.
    """
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


# ---------------------------------------------------------------- Winograd F(m×m, 3×3)
def winograd_tiles(out_size, m=2):
    """Tiles along an axis of ``out_size`` outputs: each tile gives m of them."""
    return -(-out_size // m)


# ---------------------------------------------------------------- batches
# From this many bytes of buffers a batch that fits one slice is still cut into
# one slice per thread (``batch_chunks``): a whole batch in one slice runs its
# copies and transforms on one core, and its products below BLAS's threading
# bound too, while the other core waits.  Below it a layer is too small for the
# split to pay for its hand-overs.
SPLIT_MIN_BYTES = 2**20


def batch_chunks(batch, bytes_per_image, budget, multiple_of=1):
    """Split a batch of ``batch`` images into as few slices as keep each slice's
    buffers within ``budget`` bytes (at least one image per slice), their
    sizes differing by at most one: 64 images at 49 per chunk go as 32 + 32,
    not 49 + 15, which would make the second product a thin one.

    The slice count is then rounded up to a multiple of ``multiple_of`` (the
    threads that run slices side by side, ``kernels.map_chunks``; at most one
    slice per image), so no thread is left idle while another runs the last
    slice: 3 slices on 2 threads become 4, and a batch that fits one slice
    becomes one slice per thread -- unless its buffers come to less than
    ``SPLIT_MIN_BYTES``, when it stays whole."""
    images_per_chunk = max(1, budget // max(1, bytes_per_image))
    count = max(1, -(-batch // images_per_chunk))           # ceil(batch / images_per_chunk)
    if count > 1 or batch * bytes_per_image >= SPLIT_MIN_BYTES:
        count = min(batch, -(-count // multiple_of) * multiple_of)
    bounds = [batch * k // count for k in range(count + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]
