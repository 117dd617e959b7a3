"""The Kaggle CIFAR-10 competition's folder layout (d2l's assignment)::

    <root>/train/1.png ... 50000.png      training images, 32 x 32 RGB
    <root>/trainLabels.csv                id,label   (label: a class name)
    <root>/test/1.png ... 300000.png      images to classify

``KaggleCIFAR10`` reads it as it is.  ``reorg_train_valid`` and ``reorg_test``
copy it into d2l's class-folder layout, which ``ImageFolder`` reads::

    <root>/train_valid_test/{train,valid,train_valid}/<label>/<id>.png
    <root>/train_valid_test/test/unknown/<id>.png

and ``write_submission`` writes predictions as Kaggle expects (``id,label``).
PNGs are read with Pillow.
"""
import collections
import csv
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import atomic_write
from .loader import ImageDataset

LABELS_FILE = "trainLabels.csv"
REORG_FOLDER = "train_valid_test"


def read_png(path):
    """uint8 (H, W, 3) RGB pixels of a PNG file (grey and palette images become RGB,
    alpha is dropped, 16-bit grey is scaled to 8 bits)."""
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise ValueError(f"a {image.format} image")
            if image.mode.startswith("I"):       # 16-bit grey: "I;16", "I;16B" or "I"
                grey = np.rint(np.asarray(image, dtype=np.float64) / 257).astype(np.uint8)
                return np.repeat(grey[:, :, None], 3, axis=2)
            return np.array(image.convert("RGB"))
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:   # what Pillow raises for a bad file
        raise ValueError(f"{path}: not a readable PNG image ({exc})") from exc


def read_csv_labels(path):
    """``{id: label}`` from a Kaggle labels file with the header ``id,label``."""
    labels = {}
    with open(path, newline="", encoding="utf-8-sig") as f:   # -sig: a BOM is no header
        rows = csv.reader(f)
        header = next(rows, None)
        if header != ["id", "label"]:
            raise ValueError(f"{path}: expected the header 'id,label', got {header!r}")
        for line, row in enumerate(rows, start=2):
            if len(row) != 2 or not all(row):
                raise ValueError(f"{path}, line {line}: expected 'id,label', got {row!r}")
            if row[0] in labels:
                raise ValueError(f"{path}, line {line}: id {row[0]!r} appears twice")
            labels[row[0]] = row[1]
    return labels


def _id_order(path):
    """Sort image files by their numeric id (2.png before 10.png), others after by name."""
    stem = path.stem
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def _png_files(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    return sorted(folder.glob("*.png"), key=_id_order)


class _PNGDataset(ImageDataset):
    """Images read from ``self.paths`` on demand (the 300,000 test images would
    need 0.9 GB in memory); subclasses set paths, ids, targets, classes."""

    def load_images(self, indices):
        images = [read_png(self.paths[i]) for i in indices]
        for i, image in zip(indices, images):
            if image.shape != images[0].shape:
                raise ValueError(f"{self.paths[i]}: image of shape {image.shape} in a batch of "
                                 f"{images[0].shape} images; all images must have one size")
        return np.stack(images)


class KaggleCIFAR10(_PNGDataset):
    """The images of ``root/train`` (labelled by ``trainLabels.csv``) or
    ``root/test`` (split='test': labels unknown, -1).

    ``ids``: the file names without ``.png``, in numeric order (also the order
    of the examples); ``classes``: sorted label names, or the ``classes`` given
    (pass the training set's to the test set).
    """

    def __init__(self, root, split="train", transform=None, classes=None):
        if split not in ("train", "test"):
            raise ValueError(f"KaggleCIFAR10: split must be 'train' or 'test', got {split!r}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.paths = _png_files(self.root / split)
        if not self.paths:
            raise FileNotFoundError(f"{self.root / split}: no .png images")
        self.ids = [path.stem for path in self.paths]
        if split == "test":
            self.classes = list(classes) if classes is not None else []
            self.targets = np.full(len(self.paths), -1, dtype=np.int64)
            return
        labels_file = self.root / LABELS_FILE
        labels = read_csv_labels(labels_file)
        missing = [i for i in self.ids if i not in labels]
        if missing:
            raise ValueError(f"{labels_file}: no label for {len(missing)} image(s) in "
                             f"{self.root / split}, e.g. ids {missing[:5]}")
        names = [labels[i] for i in self.ids]
        self.classes = sorted(set(names)) if classes is None else list(classes)
        unknown = sorted(set(names) - set(self.classes))
        if unknown:
            raise ValueError(f"{labels_file}: labels {unknown} are not among the classes "
                             f"{self.classes}")
        index = {name: k for k, name in enumerate(self.classes)}
        self.targets = np.array([index[name] for name in names], dtype=np.int64)

    def __repr__(self):
        return f"KaggleCIFAR10({self.split}, {len(self)} images from {self.root})"


class ImageFolder(_PNGDataset):
    """Images in class folders, ``root/<class>/<id>.png``, as torchvision's
    ImageFolder: ``classes`` are the sorted folder names, labels their indices."""

    def __init__(self, root, transform=None):
        self.root = Path(root)
        self.transform = transform
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such folder")
        self.classes = sorted(entry.name for entry in self.root.iterdir()
                              if entry.is_dir() and not entry.name.startswith("."))
        self.paths, targets = [], []
        for k, name in enumerate(self.classes):
            files = _png_files(self.root / name)
            self.paths += files
            targets += [k] * len(files)
        if not self.paths:
            raise FileNotFoundError(f"{self.root}: no .png images in class folders "
                                    "(expected <class>/<id>.png)")
        self.ids = [path.stem for path in self.paths]
        self.targets = np.array(targets, dtype=np.int64)

    def __repr__(self):
        return f"ImageFolder({len(self)} images in {len(self.classes)} classes from {self.root})"


def reorg_train_valid(data_dir, valid_ratio):
    """Copy ``train/*.png`` into ``train_valid_test/{train,valid,train_valid}/<label>/``.

    Per class, the first ``n`` images (by id) go to ``valid`` and the rest to
    ``train``; all go to ``train_valid`` (for the final training on all data).
    ``n = max(1, floor(size of the smallest class * valid_ratio))``, d2l's rule,
    which keeps the validation set balanced.  Returns ``n``.

    Each folder is built aside and renamed into place when complete; when the
    folders already hold this very split nothing is copied again.
    """
    if not 0 < valid_ratio < 1:
        raise ValueError(f"reorg_train_valid: valid_ratio must be in (0, 1), got {valid_ratio}")
    dataset = KaggleCIFAR10(data_dir, "train")
    for name in dataset.classes:     # labels become folder names: keep them inside
        if name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"{Path(data_dir) / LABELS_FILE}: label {name!r} cannot be a "
                             "folder name")
    names = [dataset.classes[k] for k in dataset.targets]
    n_valid = max(1, math.floor(min(collections.Counter(names).values()) * valid_ratio))
    counts = {"valid": n_valid * len(dataset.classes), "train_valid": len(dataset)}
    counts["train"] = counts["train_valid"] - counts["valid"]
    if _already_done(Path(data_dir) / REORG_FOLDER, counts, f"valid_ratio={valid_ratio}"):
        return n_valid

    taken = collections.Counter()
    copies = []
    for path, name in zip(dataset.paths, names):
        taken[name] += 1
        split = "valid" if taken[name] <= n_valid else "train"
        copies.append((path, [f"train_valid/{name}", f"{split}/{name}"]))
    _copy_into_place(Path(data_dir) / REORG_FOLDER, list(counts), copies)
    return n_valid


def reorg_test(data_dir):
    """Copy ``test/*.png`` into ``train_valid_test/test/unknown/`` for ImageFolder."""
    dataset = KaggleCIFAR10(data_dir, "test")
    out = Path(data_dir) / REORG_FOLDER
    if _already_done(out, {"test": len(dataset)}, "the test images"):
        return
    _copy_into_place(out, ["test"], [(path, ["test/unknown"]) for path in dataset.paths])


def _already_done(out, counts, what):
    """True when every folder ``out/<split>`` exists holding ``counts[split]``
    PNGs; False when none exists; an error when they hold something else."""
    present = {split: len(list((out / split).glob("*/*.png")))
               for split in counts if (out / split).exists()}
    if not present:
        return False
    if present == counts:
        return True
    raise FileExistsError(f"{out} already holds a different split ({present} images, "
                          f"expected {counts} for {what}); delete "
                          f"{', '.join(str(out / s) for s in present)} to reorganise")


def _copy_into_place(out, splits, copies):
    """Copy each ``(file, [folder, ...])`` under a temporary folder in ``out``,
    then rename the ``splits`` folders into place (so a half-done copy is never
    taken for a finished one)."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".partial-"))
    try:
        for split in splits:           # even a split that gets no file
            (staging / split).mkdir()
        for source, folders in copies:
            for folder in folders:
                (staging / folder).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, staging / folder / source.name)
        for split in splits:
            os.rename(staging / split, out / split)
    finally:
        shutil.rmtree(staging)


def write_submission(path, ids, predictions, classes):
    """Write Kaggle's ``id,label`` CSV: one row per id, the label the class name
    ``classes[prediction]``.  Written atomically; returns the path."""
    predictions = np.asarray(predictions).reshape(-1)
    ids = list(ids)
    if len(ids) != len(predictions):
        raise ValueError(f"write_submission: {len(ids)} ids but {len(predictions)} predictions")
    if predictions.dtype.kind not in "iu":
        raise TypeError(f"write_submission: predictions must be class indices (ints), got "
                        f"dtype {predictions.dtype}")
    if len(predictions) and not (0 <= predictions.min() and predictions.max() < len(classes)):
        raise ValueError(f"write_submission: predictions must lie in [0, {len(classes)}), got "
                         f"[{predictions.min()}, {predictions.max()}]")
    path = Path(path)
    with atomic_write(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "label"])
        writer.writerows((i, classes[k]) for i, k in zip(ids, predictions))
    return path
