"""Image transforms on NumPy arrays, named and ordered as in torchvision.

``ToTensor`` comes first: it turns a uint8 image (H, W) or (H, W, C) into a
float32 (C, H, W) array in [0, 1].  Every other transform expects that float,
channels-first layout (so ``Resize`` interpolates floats, never rounded bytes),
and says so if it gets anything else.

Each transform works on one image, ``t(image)``, and on a whole batch,
``t.batch(images)`` with images (N, C, H, W), in one vectorised step: the
DataLoader uses the batch form, which is what makes resizing Fashion-MNIST to
224 x 224 affordable.  A plain function can be used as a transform too; it is
then applied image by image (``apply_batch``).

Random transforms draw from ``generator()``: inside a DataLoader that is the
loader's own seeded generator (see ``use_generator``), elsewhere the engine's
(``tinygrad_cnn.manual_seed``).  Data pipelines run on the host, so the arrays
here are NumPy; batches move to the model's device in the DataLoader.
"""
import contextlib
import functools
import threading

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import backend
from ..ops.arguments import as_int, as_pair

_local = threading.local()


def generator():
    """The generator random transforms draw from in this thread."""
    g = getattr(_local, "generator", None)
    return g if g is not None else backend.rng()


@contextlib.contextmanager
def use_generator(g):
    """Make random transforms in this thread draw from ``g`` inside the block.

    The DataLoader's worker thread runs beside the training loop; if both drew
    from the engine's generator, the order of their draws (and so every crop
    and flip) would depend on thread timing.  A generator per thread keeps a
    seeded run reproducible."""
    previous = getattr(_local, "generator", None)
    _local.generator = g
    try:
        yield g
    finally:
        _local.generator = previous


def apply_batch(transform, images):
    """``transform`` applied to each of ``images`` (N, ...): its vectorised
    ``batch`` method when it has one, else image by image.  None: unchanged."""
    if transform is None:
        return images
    if hasattr(transform, "batch"):
        return transform.batch(images)
    return np.stack([transform(image) for image in images])


class Compose:
    """Apply ``transforms`` in order: ``Compose([ToTensor(), Resize(224)])``."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image):
        for t in self.transforms:
            image = t(image)
        return image

    def batch(self, images):
        for t in self.transforms:
            images = apply_batch(t, images)
        return images

    def __repr__(self):
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


class ToTensor:
    """uint8 (H, W) or (H, W, C) in 0..255  ->  float32 (C, H, W) in [0, 1].

    Float input is only transposed, not scaled (as torchvision)."""

    def __call__(self, image):
        image = np.asarray(image)
        if image.ndim not in (2, 3):
            raise ValueError(f"ToTensor expects an image (H, W) or (H, W, C), got shape "
                             f"{image.shape}")
        return self.batch(image[None])[0]

    def batch(self, images):
        """(N, H, W) or (N, H, W, C)  ->  (N, C, H, W)."""
        images = np.asarray(images)
        if images.ndim not in (3, 4):
            raise ValueError(f"ToTensor.batch expects images (N, H, W) or (N, H, W, C), got "
                             f"shape {images.shape}")
        chw = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        if images.dtype == np.uint8:
            out = chw.astype(np.float32, order="C")
            out /= 255
            return out
        if images.dtype.kind == "f":
            return np.ascontiguousarray(chw)
        raise TypeError(f"ToTensor expects uint8 or float images, got dtype {images.dtype}")

    def __repr__(self):
        return "ToTensor()"


def _check_image(name, x, batch):
    """Float (C, H, W), or (N, C, H, W) for a batch, as ToTensor makes."""
    ndim, layout = (4, "(N, C, H, W)") if batch else (3, "(C, H, W)")
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f" or x.ndim != ndim:
        what = (f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray)
                else type(x).__name__)
        raise TypeError(f"{name} expects a float array {layout} from ToTensor(), got {what}; "
                        "put ToTensor() before it")


class Normalize:
    """(x - mean[c]) / std[c] per channel c of a float (C, H, W) image."""

    def __init__(self, mean, std):
        self.mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        self.std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if self.mean.ndim != 1 or self.std.ndim != 1:
            raise ValueError(f"Normalize: mean and std must be numbers or sequences, got "
                             f"mean={mean!r}, std={std!r}")
        if np.any(self.std == 0):
            raise ValueError(f"Normalize: std must not contain 0, got std={std!r}")

    def __call__(self, image):
        _check_image("Normalize", image, batch=False)
        return self._normalize(image)

    def batch(self, images):
        _check_image("Normalize", images, batch=True)
        return self._normalize(images)

    def _normalize(self, x):
        channels = x.shape[-3]
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values.size not in (1, channels):
                raise ValueError(f"Normalize: {name} has {values.size} values but the image "
                                 f"has {channels} channels (shape {x.shape})")
        mean = self.mean.astype(x.dtype)[:, None, None]
        std = self.std.astype(x.dtype)[:, None, None]
        return (x - mean) / std

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class Resize:
    """Bilinear resize of a float (C, H, W) image, as torchvision's on tensors
    (``interpolate(mode='bilinear', align_corners=False, antialias=False)``).

    ``size`` (h, w) gives the output size; an int gives the smaller edge, the
    other keeping the aspect ratio (28 x 28 -> ``Resize(224)`` -> 224 x 224).
    """

    def __init__(self, size):
        self.size = as_pair(size, "size", "Resize", minimum=1)
        if not isinstance(size, (tuple, list)):
            self.size = self.size[0]        # one int: the smaller edge

    def output_size(self, height, width):
        """(OH, OW) for an input (height, width), by torchvision's rule."""
        if not isinstance(self.size, int):
            return self.size
        short, long = sorted((height, width))
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)

    def __call__(self, image):
        _check_image("Resize", image, batch=False)
        return self._resize(image)

    def batch(self, images):
        _check_image("Resize", images, batch=True)
        return self._resize(images)

    def _resize(self, x):
        """(..., H, W) -> (..., OH, OW): bilinear is separable, one matrix per axis.

        Each axis is one 2-D matrix product over all images at once (NumPy's
        stacked matmul is far slower here), the height first while the images
        are still small."""
        *lead, height, width = x.shape
        out_h, out_w = self.output_size(height, width)
        rows = bilinear_matrix(height, out_h, x.dtype)      # (OH, H)
        cols = bilinear_matrix(width, out_w, x.dtype)       # (OW, W)
        tall = x.swapaxes(-1, -2).reshape(-1, height) @ rows.T          # (.. * W, OH)
        tall = tall.reshape(*lead, width, out_h).swapaxes(-1, -2)       # (..., OH, W)
        return (tall.reshape(-1, width) @ cols.T).reshape(*lead, out_h, out_w)

    def __repr__(self):
        return f"Resize({self.size})"


@functools.lru_cache(maxsize=64)
def bilinear_matrix(in_size, out_size, dtype):
    """(out_size, in_size) matrix M with ``resized = M @ x`` along one axis.

    Output pixel o samples the source coordinate ``(o + 0.5) * in/out - 0.5``
    (pixel centres line up: align_corners=False), clamped at 0, as a mix of its
    two neighbours.  Weights are computed in ``dtype`` as torch does.
    """
    dtype = np.dtype(dtype).type
    scale = dtype(in_size) / dtype(out_size)
    source = np.maximum((np.arange(out_size, dtype=dtype) + dtype(0.5)) * scale - dtype(0.5), 0)
    low = source.astype(np.int64)                      # floor, as source >= 0
    high = np.minimum(low + 1, in_size - 1)           # the last pixel repeats at the edge
    frac = source - low.astype(dtype)
    matrix = np.zeros((out_size, in_size), dtype)
    np.add.at(matrix, (np.arange(out_size), low), 1 - frac)
    np.add.at(matrix, (np.arange(out_size), high), frac)
    matrix.setflags(write=False)                        # shared through the cache
    return matrix


class RandomCrop:
    """A random ``size`` crop of a float (C, H, W) image, after zero padding.

    ``padding``: an int for all sides, (left/right, top/bottom) or (left, top,
    right, bottom), as torchvision.  Each image of a batch gets its own crop.
    """

    def __init__(self, size, padding=None, fill=0):
        self.size = as_pair(size, "size", "RandomCrop", minimum=1)
        self.padding = self._four_sides(padding)
        self.fill = fill

    @staticmethod
    def _four_sides(padding):
        if padding is None:
            return (0, 0, 0, 0)
        if isinstance(padding, (tuple, list)):
            sides = tuple(as_int(p, "padding", "RandomCrop", minimum=0) for p in padding)
        else:
            sides = (as_int(padding, "padding", "RandomCrop", minimum=0),) * 4
        if len(sides) == 2:
            sides = sides * 2
        if len(sides) != 4:
            raise ValueError("RandomCrop: padding must be a non-negative int or a sequence of "
                             f"2 or 4 of them, got {padding!r}")
        return sides

    def __call__(self, image):
        _check_image("RandomCrop", image, batch=False)
        return self.batch(image[None])[0]

    def batch(self, images):
        _check_image("RandomCrop", images, batch=True)
        left, top, right, bottom = self.padding
        padded = np.pad(images, ((0, 0), (0, 0), (top, bottom), (left, right)),
                        constant_values=self.fill)
        n, _, height, width = padded.shape
        crop_h, crop_w = self.size
        if crop_h > height or crop_w > width:
            raise ValueError(f"RandomCrop: crop size {self.size} is larger than the padded "
                             f"image {(height, width)}")
        g = generator()
        tops = g.integers(0, height - crop_h + 1, size=n)
        lefts = g.integers(0, width - crop_w + 1, size=n)
        # Every possible crop as a view (N, C, H-h+1, W-w+1, h, w); pick one per image.
        windows = sliding_window_view(padded, (crop_h, crop_w), axis=(2, 3))
        return windows[np.arange(n), :, tops, lefts]          # (N, C, h, w)

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror a float (C, H, W) image left-right with probability ``p``;
    in a batch, each image decides for itself."""

    def __init__(self, p=0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image):
        _check_image("RandomHorizontalFlip", image, batch=False)
        return self.batch(image[None])[0]

    def batch(self, images):
        _check_image("RandomHorizontalFlip", images, batch=True)
        flip = generator().random(len(images)) < self.p
        out = images.copy()
        out[flip] = images[flip, ..., ::-1]
        return out

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"
