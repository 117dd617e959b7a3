"""Writers of small data set files for the tests, independent of the readers:
they lay bytes out field by field as the format documents describe."""
import gzip
import io
import struct
import tarfile

import numpy as np


def write_idx(path, array, magic, count=None, dims=None, compress=True):
    """An IDX file: big-endian magic, count, dims, then the uint8 values.
    ``count``/``dims`` override the header to make inconsistent files."""
    array = np.asarray(array, dtype=np.uint8)
    count = len(array) if count is None else count
    dims = array.shape[1:] if dims is None else dims
    header = struct.pack(">I", magic) + struct.pack(">I", count)
    header += b"".join(struct.pack(">I", d) for d in dims)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def fashion_split(folder, split, n, seed=0):
    """The two IDX files of a split with n random images; returns (images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)
    return images, labels.astype(np.int64)


def cifar_records(images, labels):
    """CIFAR-10 binary records, written with explicit loops: the label byte,
    then the red plane row by row, then green, then blue."""
    out = bytearray()
    for image, label in zip(images, labels):
        out.append(int(label))
        for channel in range(3):
            for row in range(32):
                for col in range(32):
                    out.append(int(image[row, col, channel]))
    return bytes(out)


def cifar_batch(path, n, seed):
    """A binary batch file of n random (32, 32, 3) images; returns (images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cifar_records(images, labels))
    return images, labels


def add_bytes(tar, name, data, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
