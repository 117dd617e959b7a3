"""Fashion-MNIST from the four official IDX ``.gz`` files.

IDX format (big-endian): images are ``magic 2051, N, rows, cols`` then N*rows*cols
uint8 pixels; labels are ``magic 2049, N`` then N uint8 labels.  Every file is
validated as it is read (magic, dimensions, size, label range, image/label
count) with errors that name the file, since a folder the user points at is
not checksum-checked: only downloads are, against the official MD5s.
"""
import gzip
import struct
import zlib

import numpy as np

from . import transforms as T
from .download import (DownloadError, download_folder, download_url, not_found_message,
                       search_folders)
from .loader import DataLoader, ImageDataset

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
SIDE, NUM_CLASSES = 28, 10


class FashionMNIST(ImageDataset):
    """Fashion-MNIST's training (60,000) or test (10,000) split.

    root:      folder holding the files (or a folder with a ``fashion-mnist``
               subfolder); searched first, then ``$TINYGRAD_CNN_DATA``, then
               ``~/.cache/tinygrad_cnn/fashion-mnist``.
    download:  fetch missing files from the official mirrors into ``root`` (or
               the first default folder), checking the official MD5s.
    transform: applied to each uint8 (28, 28) image, e.g. ``ToTensor()``.

    ``data`` uint8 (N, 28, 28) and ``targets`` int64 (N,) hold the whole split.
    """

    name = "fashion-mnist"
    mirrors = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
               "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/"
               "data/fashion/"]
    files = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    md5s = {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

    def __init__(self, root=None, train=True, download=False, transform=None):
        self.train = train
        self.transform = transform
        names = self.files["train" if train else "test"]
        self.folder = self._locate(root, names, download)
        images_path, labels_path = (self.folder / name for name in names)
        self.data = read_idx_images(images_path)
        self.targets = read_idx_labels(labels_path)
        if len(self.data) != len(self.targets):
            raise ValueError(f"{images_path} holds {len(self.data)} images but {labels_path} "
                             f"holds {len(self.targets)} labels; the files do not belong together")

    def load_images(self, indices):
        return self.data[indices]

    def _locate(self, root, names, download):
        """The first folder holding both files, downloading them if asked."""
        folders = search_folders(root, self.name)
        for folder in folders:
            if all((folder / name).is_file() for name in names):
                return folder
        target = download_folder(root, self.name)
        if download:
            try:
                for name in names:
                    if not (target / name).is_file():
                        download_url([mirror + name for mirror in self.mirrors], target / name,
                                     md5=self.md5s[name])
                return target
            except DownloadError as exc:
                raise FileNotFoundError(self._not_found(folders, target, exc)) from exc
        raise FileNotFoundError(self._not_found(folders, target))

    def _not_found(self, folders, target, failure=None):
        wanted = "the four official files (" + ", ".join(self.md5s) + ")"
        return not_found_message("Fashion-MNIST", folders, wanted, target, failure)

    def __repr__(self):
        split = "train" if self.train else "test"
        return f"FashionMNIST({split}, {len(self)} images from {self.folder})"


def read_idx_images(path, side=SIDE):
    """uint8 (N, side, side) from an IDX images file (.gz), validated."""
    raw = _read_gz(path)
    _check_size(path, raw, 16, "the 16-byte header", exact=False)
    magic, count, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != IMAGES_MAGIC:
        raise ValueError(f"{path}: bad magic number {magic}, expected {IMAGES_MAGIC} for an "
                         f"IDX images file{_swapped_hint(magic)}")
    if (rows, cols) != (side, side):
        raise ValueError(f"{path}: images are {rows} x {cols}, expected {side} x {side}")
    _check_size(path, raw, 16 + count * rows * cols, f"{count} images of {rows} x {cols}")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows, cols)


def read_idx_labels(path, num_classes=NUM_CLASSES):
    """int64 (N,) from an IDX labels file (.gz), validated."""
    raw = _read_gz(path)
    _check_size(path, raw, 8, "the 8-byte header", exact=False)
    magic, count = struct.unpack(">II", raw[:8])
    if magic != LABELS_MAGIC:
        raise ValueError(f"{path}: bad magic number {magic}, expected {LABELS_MAGIC} for an "
                         f"IDX labels file{_swapped_hint(magic)}")
    _check_size(path, raw, 8 + count, f"{count} labels")
    labels = np.frombuffer(raw, np.uint8, offset=8).astype(np.int64)
    if count and labels.max() >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise ValueError(f"{path}: label {labels[bad]} at index {bad} is not a class "
                         f"(expected 0..{num_classes - 1})")
    return labels


def _read_gz(path):
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except PermissionError as exc:                   # unreadable is not corrupt
        raise PermissionError(f"{path}: permission denied reading it; check the file's "
                              "permissions (ls -l) or read it as its owner") from exc
    except (OSError, EOFError, zlib.error) as exc:   # BadGzipFile is an OSError
        raise ValueError(f"{path}: not a readable gzip file ({exc}); the file is corrupted "
                         "or truncated") from exc


def _check_size(path, raw, expected, what, exact=True):
    """At least (header) or exactly (whole file) ``expected`` bytes."""
    if len(raw) < expected:
        raise ValueError(f"{path}: truncated: {len(raw)} bytes after decompression, "
                         f"expected {expected} for {what}")
    if exact and len(raw) > expected:
        raise ValueError(f"{path}: {len(raw) - expected} unexpected bytes after {what} "
                         f"({len(raw)} bytes, expected {expected})")


def _swapped_hint(magic):
    """A little-endian writer gives 0x03080000 for 2051: say so."""
    swapped = int.from_bytes(magic.to_bytes(4, "big"), "little")
    return " (the header looks little-endian)" if swapped in (IMAGES_MAGIC, LABELS_MAGIC) else ""


def load_data_fashion_mnist(batch_size, resize=None, root=None, download=False, seed=None,
                            prefetch=2, device=None):
    """d2l's ``load_data_fashion_mnist``: (train_iter, test_iter) DataLoaders of
    float32 (N, 1, 28, 28) images in [0, 1] (or ``resize`` x ``resize``), the
    training one shuffled."""
    steps = [T.ToTensor()] + ([T.Resize(resize)] if resize else [])
    transform = T.Compose(steps)
    train = FashionMNIST(root, train=True, download=download, transform=transform)
    test = FashionMNIST(root, train=False, download=download, transform=transform)
    return (DataLoader(train, batch_size, shuffle=True, seed=seed, prefetch=prefetch,
                       device=device),
            DataLoader(test, batch_size, shuffle=False, prefetch=prefetch, device=device))
