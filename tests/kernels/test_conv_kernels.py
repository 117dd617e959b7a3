"""im2col / col2im reference kernels against explicit loops, their adjoint
identity, and (when torch is importable) torch.nn.functional.unfold/fold."""
import numpy as np
import pytest

from kernels.conv_numpy import col2im, im2col
from kernels.geometry import conv_output_size
from tinygrad_cnn.backend import to_device

# (x shape, kernel, stride, padding (top, bottom, left, right), dilation)
GEOMETRIES = {
    "3x3": ((2, 3, 5, 6), (3, 3), (1, 1), (0, 0, 0, 0), (1, 1)),
    "pad1": ((1, 2, 4, 4), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    "asymmetric-pad": ((2, 2, 5, 4), (2, 4), (1, 1), (0, 1, 1, 2), (1, 1)),
    "stride2": ((2, 1, 7, 8), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    "stride-mixed": ((1, 2, 9, 7), (3, 2), (3, 2), (2, 2, 0, 0), (1, 1)),
    "dilation2": ((1, 2, 8, 9), (3, 3), (1, 1), (1, 1, 2, 2), (2, 2)),
    "dilation-stride": ((2, 2, 9, 10), (2, 3), (2, 3), (1, 0, 0, 2), (3, 2)),
    "1x1": ((3, 4, 3, 5), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    "kernel=input": ((1, 2, 4, 5), (4, 5), (1, 1), (0, 0, 0, 0), (1, 1)),
    "non-square": ((2, 3, 3, 11), (1, 5), (1, 2), (0, 0, 2, 2), (1, 1)),
}


def im2col_loops(x, kernel_size, stride, padding, dilation):
    """im2col by its definition, one element at a time."""
    N, C, H, W = x.shape
    (KH, KW), (SH, SW), (DH, DW) = kernel_size, stride, dilation
    top, bottom, left, right = padding
    OH = (H + top + bottom - DH * (KH - 1) - 1) // SH + 1
    OW = (W + left + right - DW * (KW - 1) - 1) // SW + 1
    col = np.zeros((N, C * KH * KW, OH * OW))
    for n in range(N):
        for c in range(C):
            for i in range(KH):
                for j in range(KW):
                    for oh in range(OH):
                        for ow in range(OW):
                            h = oh * SH + i * DH - top     # row in the unpadded input
                            w = ow * SW + j * DW - left
                            if 0 <= h < H and 0 <= w < W:
                                col[n, (c * KH + i) * KW + j, oh * OW + ow] = x[n, c, h, w]
    return col


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_im2col_matches_loops(geometry, device):
    x_shape, *args = geometry
    x = np.random.default_rng(0).standard_normal(x_shape)
    col = to_device(im2col(to_device(x, device), *args), "cpu")
    np.testing.assert_array_equal(col, im2col_loops(x, *args))


@pytest.mark.parametrize("layout", ["transposed", "reversed", "sliced"])
@pytest.mark.parametrize("padding", [(0, 0, 0, 0), (1, 0, 2, 1)], ids=["no-pad", "pad"])
def test_im2col_reads_non_contiguous_input(layout, padding):
    # as_strided builds its view from the input's strides: any layout must work.
    base = np.random.default_rng(1).standard_normal((2, 3, 6, 7))
    x = {"transposed": base.transpose(1, 0, 3, 2).copy().transpose(1, 0, 3, 2),
         "reversed": base[:, :, ::-1, ::-1],
         "sliced": np.random.default_rng(1).standard_normal((4, 3, 12, 7))[::2, :, ::2]}[layout]
    args = ((3, 2), (1, 2), padding, (1, 1))
    np.testing.assert_array_equal(im2col(x, *args), im2col_loops(x, *args))


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_col2im_is_the_adjoint_of_im2col(geometry, device):
    # <im2col(x), y> == <x, col2im(y)> for all x, y: col2im is im2col's transpose.
    x_shape, *args = geometry
    rng = np.random.default_rng(2)
    x = rng.standard_normal(x_shape)
    col_shape = im2col(x, *args).shape
    y = rng.standard_normal(col_shape)
    back = to_device(col2im(to_device(y, device), x_shape, *args), "cpu")
    assert back.shape == x_shape
    np.testing.assert_allclose(np.vdot(im2col(x, *args), y), np.vdot(x, back), rtol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_adjoint_on_random_geometries(seed):
    rng = np.random.default_rng(seed)
    kernel = tuple(int(k) for k in rng.integers(1, 4, 2))
    stride = tuple(int(s) for s in rng.integers(1, 4, 2))
    dilation = tuple(int(d) for d in rng.integers(1, 3, 2))
    padding = tuple(int(p) for p in rng.integers(0, 3, 4))
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    x_shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4)),
               span[0] + int(rng.integers(0, 5)), span[1] + int(rng.integers(0, 5)))
    x = rng.standard_normal(x_shape)
    col = im2col(x, kernel, stride, padding, dilation)
    np.testing.assert_array_equal(col, im2col_loops(x, kernel, stride, padding, dilation))
    y = rng.standard_normal(col.shape)
    np.testing.assert_allclose(np.vdot(col, y),
                               np.vdot(x, col2im(y, x_shape, kernel, stride, padding, dilation)),
                               rtol=1e-12)


def test_col2im_sums_overlapping_windows():
    # All-ones columns: each pixel receives the number of windows that read it.
    x_shape, kernel, stride, padding, dilation = (1, 1, 4, 5), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)
    ones = np.ones(im2col(np.zeros(x_shape), kernel, stride, padding, dilation).shape)
    counts = np.zeros(x_shape)
    for h in range(4):
        for w in range(5):    # 3x3 windows centred on each pixel of the unpadded 4x5 grid
            counts[0, 0, max(h - 1, 0):h + 2, max(w - 1, 0):w + 2] += 1
    np.testing.assert_array_equal(col2im(ones, x_shape, kernel, stride, padding, dilation),
                                  counts)


def test_kernels_keep_dtype():
    x = np.ones((1, 2, 4, 4), dtype=np.float32)
    args = ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    col = im2col(x, *args)
    assert col.dtype == np.float32
    assert col2im(col, x.shape, *args).dtype == np.float32


@pytest.mark.parametrize("size, kernel, stride, pad_total, dilation, expected", [
    (5, 3, 1, 0, 1, 3), (5, 3, 1, 2, 1, 5), (7, 3, 2, 2, 1, 4), (8, 3, 1, 0, 2, 4),
    (4, 5, 1, 0, 1, 0)])
def test_conv_output_size(size, kernel, stride, pad_total, dilation, expected):
    # expected: counted by sliding the window over the padded axis
    starts = range(0, size + pad_total - dilation * (kernel - 1), stride)
    assert len(starts) == expected
    assert conv_output_size(size, kernel, stride, pad_total, dilation) == expected


def test_im2col_rejects_a_kernel_larger_than_the_input():
    with pytest.raises(ValueError, match=r"im2col: kernel 5x5 .* output would be 0x0"):
        im2col(np.zeros((1, 1, 4, 4)), (5, 5), (1, 1), (0, 0, 0, 0), (1, 1))


@pytest.mark.parametrize("name", ["stride2", "dilation-stride", "3x3", "non-square"])
def test_matches_torch_unfold_and_fold(name):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x_shape, kernel, stride, padding, dilation = GEOMETRIES[name]
    rng = np.random.default_rng(3)
    x = rng.standard_normal(x_shape)
    # torch pads symmetrically: pad first, then unfold/fold without padding
    x_pad = np.pad(x, ((0, 0), (0, 0), padding[:2], padding[2:]))
    ours = im2col(x, kernel, stride, padding, dilation)
    theirs = F.unfold(torch.from_numpy(x_pad), kernel, dilation=dilation, stride=stride)
    np.testing.assert_array_equal(ours, theirs.numpy())
    y = rng.standard_normal(ours.shape)
    folded = F.fold(torch.from_numpy(y), x_pad.shape[2:], kernel, dilation=dilation,
                    stride=stride).numpy()
    top, left = padding[0], padding[2]
    np.testing.assert_allclose(col2im(y, x_shape, kernel, stride, padding, dilation),
                               folded[:, :, top:top + x_shape[2], left:left + x_shape[3]],
                               rtol=1e-12, atol=1e-12)
