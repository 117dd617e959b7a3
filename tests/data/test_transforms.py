"""Transforms against loop references and torch; single image vs batch; randomness."""
import threading

import numpy as np
import pytest

import tinygrad_cnn as tc
from tinygrad_cnn import backend
from tinygrad_cnn.data import transforms as T

# data loading and transforms call no kernel: run under the first kernel set only
# (tests/conftest.py).
pytestmark = pytest.mark.kernel_free


def uint8_images(*shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def floats(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).random(shape).astype(dtype)


# ---------------------------------------------------------------- ToTensor
@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 3), (3, 2, 1)])
def test_to_tensor_matches_a_loop(shape):
    image = uint8_images(*shape)
    out = T.ToTensor()(image)
    hwc = image if image.ndim == 3 else image[:, :, None]
    height, width, channels = hwc.shape
    assert out.shape == (channels, height, width) and out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    for c in range(channels):
        for y in range(height):
            for x in range(width):
                assert out[c, y, x] == np.float32(hwc[y, x, c]) / np.float32(255)


@pytest.mark.parametrize("shape", [(5, 4, 6), (5, 4, 6, 3)])
def test_to_tensor_batch_is_the_stack_of_singles(shape):
    images = uint8_images(*shape)
    batch = T.ToTensor().batch(images)
    np.testing.assert_array_equal(batch, np.stack([T.ToTensor()(im) for im in images]))


def test_to_tensor_keeps_float_values():
    image = floats(4, 5, 3, dtype=np.float64)
    np.testing.assert_array_equal(T.ToTensor()(image), image.transpose(2, 0, 1))


@pytest.mark.parametrize("image, error, message", [
    (np.zeros((4, 5), np.int16), TypeError, "ToTensor expects uint8 or float images, got dtype "
                                            "int16"),
    (np.zeros(5, np.uint8), ValueError, r"ToTensor expects an image \(H, W\) or \(H, W, C\), "
                                        r"got shape \(5,\)"),
])
def test_to_tensor_bad_input(image, error, message):
    with pytest.raises(error, match=message):
        T.ToTensor()(image)


# ---------------------------------------------------------------- Normalize
@pytest.mark.parametrize("mean, std", [([0.5, 0.25, 0.1], [0.2, 0.5, 2.0]), (0.5, 0.25)])
def test_normalize_matches_a_loop(mean, std):
    image = floats(3, 4, 5)
    out = T.Normalize(mean, std)(image)
    means, stds = np.broadcast_to(mean, 3), np.broadcast_to(std, 3)
    for c in range(3):
        for y in range(4):
            for x in range(5):
                expected = (image[c, y, x] - np.float32(means[c])) / np.float32(stds[c])
                assert out[c, y, x] == pytest.approx(expected, rel=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(T.Normalize(mean, std).batch(image[None])[0], out)


@pytest.mark.parametrize("make, message", [
    (lambda: T.Normalize([0.5, 0.5], [1, 1])(floats(3, 2, 2)),
     r"Normalize: mean has 2 values but the image has 3 channels \(shape \(3, 2, 2\)\)"),
    (lambda: T.Normalize(0.5, [1, 0]), r"Normalize: std must not contain 0, got std=\[1, 0\]"),
])
def test_normalize_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("transform", [T.Normalize(0, 1), T.Resize(4), T.RandomCrop(2),
                                       T.RandomHorizontalFlip()],
                         ids=lambda t: type(t).__name__)
@pytest.mark.parametrize("image, what", [
    (np.zeros((8, 8, 3), np.uint8), r"uint8 array of shape \(8, 8, 3\)"),
    (np.zeros((8, 8), np.float32), r"float32 array of shape \(8, 8\)"),
])
def test_spatial_transforms_want_to_tensor_first(transform, image, what):
    name = type(transform).__name__
    with pytest.raises(TypeError, match=fr"{name} expects a float array \(C, H, W\) from "
                                        fr"ToTensor\(\), got {what}; put ToTensor\(\) before it"):
        transform(image)


# ---------------------------------------------------------------- Resize
def bilinear_by_loops(image, out_h, out_w):
    """torch's bilinear rule (align_corners=False), one output pixel at a time."""
    channels, height, width = image.shape
    out = np.zeros((channels, out_h, out_w))

    def source(o, size_in, size_out):
        s = max((o + 0.5) * size_in / size_out - 0.5, 0.0)
        low = int(s)
        return low, min(low + 1, size_in - 1), s - low

    for oy in range(out_h):
        y0, y1, fy = source(oy, height, out_h)
        for ox in range(out_w):
            x0, x1, fx = source(ox, width, out_w)
            top = (1 - fx) * image[:, y0, x0] + fx * image[:, y0, x1]
            bottom = (1 - fx) * image[:, y1, x0] + fx * image[:, y1, x1]
            out[:, oy, ox] = (1 - fy) * top + fy * bottom
    return out


GEOMETRIES = [((3, 5, 7), (9, 4)), ((1, 6, 6), (3, 3)), ((2, 4, 4), (4, 4)),
              ((1, 3, 8), (7, 2)), ((1, 28, 28), (50, 50)), ((2, 9, 5), (1, 1))]


@pytest.mark.parametrize("shape, size", GEOMETRIES)
def test_resize_matches_a_loop(shape, size):
    image = floats(*shape, dtype=np.float64)
    np.testing.assert_allclose(T.Resize(size)(image), bilinear_by_loops(image, *size),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
@pytest.mark.parametrize("shape, size", GEOMETRIES)
def test_resize_matches_torch(shape, size, dtype, tol):
    torch = pytest.importorskip("torch")
    images = floats(3, *shape, dtype=dtype)
    expected = torch.nn.functional.interpolate(torch.from_numpy(images), size=size,
                                               mode="bilinear", align_corners=False,
                                               antialias=False).numpy()
    out = T.Resize(size).batch(images)
    assert out.dtype == dtype and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
    # one image against its row of the batch: the same products over fewer rows, which
    # OpenBLAS may run with another kernel (its AVX2 ones round some sums differently by an
    # ulp or two): equal to a few ulps, not bit for bit
    ulps = 4 * np.finfo(dtype).eps
    np.testing.assert_allclose(T.Resize(size)(images[1]), out[1], rtol=ulps, atol=ulps)


@pytest.mark.parametrize("size, in_hw, out_hw", [
    (224, (28, 28), (224, 224)),
    (10, (20, 40), (10, 20)),        # an int sets the smaller edge...
    (10, (40, 20), (20, 10)),
    (20, (30, 45), (20, 30)),        # ...the other keeps the aspect ratio, rounded down
    ((5, 7), (30, 45), (5, 7)),
])
def test_resize_output_size_follows_torchvision(size, in_hw, out_hw):
    assert T.Resize(size).output_size(*in_hw) == out_hw
    assert T.Resize(size)(floats(1, *in_hw)).shape == (1, *out_hw)


@pytest.mark.parametrize("size, error", [(0, ValueError), (-3, ValueError), ((4, 0), ValueError),
                                         ((1, 2, 3), ValueError), (2.5, TypeError),
                                         ("224", TypeError)])
def test_resize_bad_size(size, error):
    with pytest.raises(error, match="Resize: size must be"):
        T.Resize(size)


# ---------------------------------------------------------------- RandomCrop
def pad_by_loops(image, left, top, right, bottom):
    channels, height, width = image.shape
    out = np.zeros((channels, height + top + bottom, width + left + right), image.dtype)
    for y in range(height):
        for x in range(width):
            out[:, y + top, x + left] = image[:, y, x]
    return out


def crop_offsets(padded, crop, size):
    """All (top, left) at which ``crop`` is found in ``padded``."""
    h, w = size
    return [(i, j) for i in range(padded.shape[1] - h + 1) for j in range(padded.shape[2] - w + 1)
            if np.array_equal(padded[:, i:i + h, j:j + w], crop)]


@pytest.mark.parametrize("size, padding, sides", [
    (3, None, (0, 0, 0, 0)),
    (5, 1, (1, 1, 1, 1)),
    ((4, 6), (2, 1), (2, 1, 2, 1)),
    ((5, 3), (0, 1, 2, 3), (0, 1, 2, 3)),
])
def test_random_crop_takes_windows_of_the_padded_image(size, padding, sides):
    images = floats(20, 2, 5, 5, seed=1) + 1      # no zeros, so the padding is visible
    out = T.RandomCrop(size, padding).batch(images)
    size = (size, size) if isinstance(size, int) else size
    assert out.shape == (20, 2, *size)
    offsets = set()
    for image, crop in zip(images, out):
        found = crop_offsets(pad_by_loops(image, *sides), crop, size)
        assert len(found) == 1
        offsets |= set(found)
    assert len(offsets) > 1                        # the crops differ from image to image


def test_random_crop_reaches_every_offset():
    image = floats(1, 3, 3) + 1
    crop = T.RandomCrop(3, padding=1)
    seen = {crop_offsets(pad_by_loops(image, 1, 1, 1, 1), crop(image), (3, 3))[0]
            for _ in range(200)}
    assert seen == {(i, j) for i in range(3) for j in range(3)}


@pytest.mark.parametrize("make, message", [
    (lambda: T.RandomCrop(7)(floats(1, 5, 5)),
     r"RandomCrop: crop size \(7, 7\) is larger than the padded image \(5, 5\)"),
    (lambda: T.RandomCrop(3, padding=(1, 2, 3)), "RandomCrop: padding must be"),
    (lambda: T.RandomCrop(3, padding=-1), "RandomCrop: padding must be"),
    (lambda: T.RandomCrop(0), "RandomCrop: size must be"),
])
def test_random_crop_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("make, message", [
    (lambda: T.RandomCrop(3, padding=1.5), "RandomCrop: padding must be an int, got 1.5"),
    (lambda: T.RandomCrop(2.5), "RandomCrop: size must be an int or a pair of ints, got 2.5"),
])
def test_random_crop_settings_of_the_wrong_type(make, message):
    with pytest.raises(TypeError, match=message):
        make()


# ---------------------------------------------------------------- RandomHorizontalFlip
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_flip_mirrors_each_image_or_keeps_it(p):
    images = floats(40, 2, 3, 4)
    out = T.RandomHorizontalFlip(p).batch(images)
    flipped = [np.array_equal(o, i[:, :, ::-1]) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept))          # exactly one of the two
    if p == 0:
        assert not any(flipped)
    elif p == 1:
        assert all(flipped)
    else:
        assert 0 < sum(flipped) < 40


def test_flip_bad_probability():
    with pytest.raises(ValueError, match=r"RandomHorizontalFlip: p must be in \[0, 1\], got 1.5"):
        T.RandomHorizontalFlip(1.5)


# ---------------------------------------------------------------- Compose, randomness
def test_compose_batch_matches_single_images_for_a_deterministic_pipeline():
    pipeline = T.Compose([T.ToTensor(), T.Resize(12), T.Normalize([0.5, 0.4, 0.3], 0.2),
                          lambda x: x * 2])            # a plain function works too
    images = uint8_images(4, 8, 6, 3)
    batch = pipeline.batch(images)
    assert batch.shape == (4, 3, 16, 12)
    # float32 values up to ~3: the batch may round differently by a few ulps (NumPy 1.23's
    # SIMD loops do), so the tolerance is absolute too
    np.testing.assert_allclose(batch, np.stack([pipeline(im) for im in images]),
                               rtol=1e-6, atol=2e-6)


def augment():
    return T.Compose([T.ToTensor(), T.RandomCrop(6, padding=2), T.RandomHorizontalFlip()])


def test_random_transforms_use_the_engine_generator_by_default():
    images = uint8_images(8, 6, 6, 3)
    tc.manual_seed(3)
    first = augment().batch(images)
    tc.manual_seed(3)
    np.testing.assert_array_equal(augment().batch(images), first)
    assert not np.array_equal(augment().batch(images), first)


def test_use_generator_overrides_it_in_this_thread_only():
    images = uint8_images(8, 6, 6, 3)
    with T.use_generator(np.random.default_rng(7)) as g:
        assert T.generator() is g
        elsewhere = []
        thread = threading.Thread(target=lambda: elsewhere.append(T.generator()))
        thread.start()
        thread.join()
        assert elsewhere == [backend.rng()]
        first = augment().batch(images)
    assert T.generator() is backend.rng()
    with T.use_generator(np.random.default_rng(7)):
        np.testing.assert_array_equal(augment().batch(images), first)
