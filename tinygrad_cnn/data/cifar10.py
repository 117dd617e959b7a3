"""CIFAR-10 from the official binary archive (``cifar-10-binary.tar.gz``).

The binary version is a plain sequence of fixed-length records, 1 label byte
then 3072 pixel bytes (1024 red, 1024 green, 1024 blue, rows of 32), so reading
it is a reshape: unlike the Python version's pickles, no code in the file is
ever run.  The archive is unpacked member by member (``extract_members``), so
nothing lands outside the data folder.
"""
import numpy as np

from .download import (DownloadError, download_folder, download_url, extract_members,
                       not_found_message, search_folders)
from .loader import ImageDataset

SIDE, CHANNELS, NUM_CLASSES = 32, 3, 10
RECORD_BYTES = 1 + CHANNELS * SIDE * SIDE       # 3073


class CIFAR10(ImageDataset):
    """CIFAR-10's training (50,000) or test (10,000) split.

    root:      folder holding ``cifar-10-batches-bin/`` (or the ``.bin`` files,
               or the archive, which is then extracted there); searched first,
               then ``$TINYGRAD_CNN_DATA``, then ``~/.cache/tinygrad_cnn/cifar-10``.
    download:  fetch the archive (MD5-checked) and extract it.
    transform: applied to each uint8 (32, 32, 3) image, e.g. ``ToTensor()``.

    ``data`` uint8 (N, 32, 32, 3) and ``targets`` int64 (N,) hold the split.
    """

    name = "cifar-10"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    archive = "cifar-10-binary.tar.gz"
    md5 = "c32a1d4ab5d03f1284b67883e8d87530"
    batches_folder = "cifar-10-batches-bin"
    train_files = [f"data_batch_{i}.bin" for i in range(1, 6)]
    test_files = ["test_batch.bin"]
    classes = ["airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck"]

    def __init__(self, root=None, train=True, download=False, transform=None):
        self.train = train
        self.transform = transform
        names = self.train_files if train else self.test_files
        self.folder = self._locate(root, names, download)
        batches = [read_cifar_batch(self.folder / name) for name in names]
        self.data = np.concatenate([images for images, _ in batches])
        self.targets = np.concatenate([labels for _, labels in batches])

    def load_images(self, indices):
        return self.data[indices]

    def _locate(self, root, names, download):
        """The folder holding the ``.bin`` files; extracts a found or downloaded archive."""
        folders = search_folders(root, self.name)
        for folder in folders:
            for candidate in (folder / self.batches_folder, folder):
                if all((candidate / name).is_file() for name in names):
                    return candidate
        for folder in folders:
            if (folder / self.archive).is_file():
                return self.extract(folder / self.archive, folder)
        target = download_folder(root, self.name)
        wanted = f"{self.batches_folder}/{{{','.join(names)}}} or {self.archive}"
        if not download:
            raise FileNotFoundError(not_found_message("CIFAR-10", folders, wanted, target))
        try:
            download_url(self.url, target / self.archive, md5=self.md5)
        except DownloadError as exc:
            raise FileNotFoundError(
                not_found_message("CIFAR-10", folders, wanted, target, exc)) from exc
        return self.extract(target / self.archive, target)

    @classmethod
    def extract(cls, archive, target):
        """Extract the six ``.bin`` batches of ``archive`` into ``target``; returns
        the folder holding them.  Nothing else in the archive is written."""
        members = [f"{cls.batches_folder}/{name}" for name in cls.train_files + cls.test_files]
        extract_members(archive, target, members)
        return target / cls.batches_folder

    def __repr__(self):
        split = "train" if self.train else "test"
        return f"CIFAR10({split}, {len(self)} images from {self.folder})"


def read_cifar_batch(path):
    """``(images uint8 (N, 32, 32, 3), labels int64 (N,))`` from one binary batch file."""
    raw = path.read_bytes()
    if not raw or len(raw) % RECORD_BYTES:
        raise ValueError(f"{path}: {len(raw)} bytes is not a whole number of "
                         f"{RECORD_BYTES}-byte records (1 label byte + {RECORD_BYTES - 1} "
                         "pixel bytes): truncated, or not a CIFAR-10 binary batch")
    records = np.frombuffer(raw, np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise ValueError(f"{path}: record {bad} has label {labels[bad]}, expected "
                         f"0..{NUM_CLASSES - 1}")
    # Records store channel planes (C, H, W); keep images (H, W, C) as PNGs and
    # torchvision's .data do, so ToTensor treats every source alike.
    images = records[:, 1:].reshape(-1, CHANNELS, SIDE, SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels
