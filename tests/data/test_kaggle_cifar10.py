"""The Kaggle CIFAR-10 layout on a tiny folder of PNGs written by the tests:
reading, d2l's train/valid reorganisation, ImageFolder, and submission.csv."""
import csv
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from PIL import Image

from tinygrad_cnn.data import (DataLoader, ImageFolder, KaggleCIFAR10, read_csv_labels,
                               reorg_test, reorg_train_valid, write_submission)
from tinygrad_cnn.data import transforms as T
from tinygrad_cnn.data.kaggle_cifar10 import read_png

# data loading and transforms call no kernel: run under the first kernel set only
# (tests/conftest.py).
pytestmark = pytest.mark.kernel_free

# 15 training images (ids 1..15, so that numeric and text order differ) in 3
# classes of 6, 5 and 4 images; 4 test images.
TRAIN_LABELS = {1: "frog", 2: "cat", 3: "frog", 4: "dog", 5: "cat", 6: "frog", 7: "cat",
                8: "frog", 9: "dog", 10: "cat", 11: "frog", 12: "dog", 13: "cat",
                14: "frog", 15: "dog"}
NUM_TEST = 4


@pytest.fixture
def kaggle(tmp_path):
    """The folder, plus the written pixels: {'train': {id: image}, 'test': {...}}."""
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10"
    written = {}
    for split, ids in (("train", TRAIN_LABELS), ("test", range(1, NUM_TEST + 1))):
        (root / split).mkdir(parents=True)
        written[split] = {}
        for i in ids:
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            matplotlib.image.imsave(root / split / f"{i}.png", image)
            written[split][i] = image
    with open(root / "trainLabels.csv", "w") as f:
        f.write("id,label\n" + "".join(f"{i},{name}\n" for i, name in TRAIN_LABELS.items()))
    return root, written


def test_read_png_round_trips(kaggle):
    root, written = kaggle
    image = read_png(root / "train" / "3.png")
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
    np.testing.assert_array_equal(image, written["train"][3])


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA"])
def test_read_png_converts_other_modes_to_rgb(tmp_path, mode):
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    image.save(tmp_path / "x.png")
    expected = np.asarray(image.convert("RGB"))        # alpha dropped, palette looked up
    pixels = read_png(tmp_path / "x.png")
    assert pixels.dtype == np.uint8 and pixels.shape == (5, 7, 3)
    np.testing.assert_array_equal(pixels, expected)
    if mode in ("L", "LA"):                            # grey repeated in R, G and B
        assert (pixels == pixels[:, :, :1]).all()


def test_read_png_scales_16_bit_grey_to_8_bits(tmp_path):
    grey = np.array([[0, 257, 1000], [32896, 65280, 65535]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "x.png")
    pixels = read_png(tmp_path / "x.png")
    assert pixels.dtype == np.uint8
    expected = np.array([[0, 1, 4], [128, 254, 255]], dtype=np.uint8)   # x * 255 / 65535
    np.testing.assert_array_equal(pixels, np.repeat(expected[:, :, None], 3, axis=2))


def test_read_png_refuses_another_format(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "x.png", format="BMP")
    with pytest.raises(ValueError, match="x.png: not a readable PNG image .a BMP image"):
        read_png(tmp_path / "x.png")


@pytest.mark.parametrize("module", ["tinygrad_cnn", "tinygrad_cnn.data"])
def test_importing_the_data_code_does_not_load_matplotlib(module):
    # Reading data needs Pillow only; matplotlib (slow to import) is for pictures.
    code = f"import sys, {module}; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_read_png_refuses_a_broken_file(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="x.png: not a readable PNG"):
        read_png(tmp_path / "x.png")


def test_read_csv_labels(kaggle):
    root, _ = kaggle
    assert read_csv_labels(root / "trainLabels.csv") == {
        str(i): name for i, name in TRAIN_LABELS.items()}


@pytest.mark.parametrize("text, message", [
    ("name,class\n1,cat\n", "expected the header 'id,label'"),
    ("id,label\n1,cat\n2,dog,extra\n", "line 3: expected 'id,label'"),
    ("id,label\n1,cat\n2,\n", "line 3: expected 'id,label'"),
    ("id,label\n1,cat\n1,dog\n", "line 3: id '1' appears twice"),
])
def test_read_csv_labels_refuses_bad_rows(tmp_path, text, message):
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(ValueError, match=f"labels.csv.*{message}"):
        read_csv_labels(tmp_path / "labels.csv")


def test_train_split(kaggle):
    root, written = kaggle
    ds = KaggleCIFAR10(root, "train")
    assert ds.ids == [str(i) for i in range(1, 16)]              # numeric order
    assert ds.classes == ["cat", "dog", "frog"]
    assert [ds.classes[k] for k in ds.targets] == [TRAIN_LABELS[i] for i in range(1, 16)]
    image, label = ds[9]
    np.testing.assert_array_equal(image, written["train"][10])
    assert ds.classes[label] == "cat"


def test_test_split_has_unknown_labels(kaggle):
    root, written = kaggle
    ds = KaggleCIFAR10(root, "test", transform=T.ToTensor(), classes=["cat", "dog", "frog"])
    assert len(ds) == NUM_TEST and ds.targets.tolist() == [-1] * NUM_TEST
    images, _ = ds.get_batch([0, 3])
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.float32
    np.testing.assert_allclose(images[1], written["test"][4].transpose(2, 0, 1) / 255,
                               rtol=1e-6)


def test_image_without_label_is_reported(kaggle):
    root, _ = kaggle
    matplotlib.image.imsave(root / "train" / "16.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"trainLabels.csv: no label for 1 image.*\['16'\]"):
        KaggleCIFAR10(root, "train")


def test_images_of_another_size_are_reported(kaggle):
    root, _ = kaggle
    matplotlib.image.imsave(root / "test" / "2.png", np.zeros((16, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"2.png: image of shape \(16, 32, 3\)"):
        KaggleCIFAR10(root, "test").get_batch([0, 1])


# ---------------------------------------------------------------- reorganisation
@pytest.mark.parametrize("valid_ratio", [0.1, 0.5, 0.9])    # 1, 2 and 3 per class
def test_reorg_train_valid(kaggle, valid_ratio):
    root, _ = kaggle
    n = reorg_train_valid(root, valid_ratio)
    smallest = min(list(TRAIN_LABELS.values()).count(c) for c in ("cat", "dog", "frog"))
    assert n == max(1, math.floor(smallest * valid_ratio))
    out = root / "train_valid_test"
    assert sorted(p.name for p in out.iterdir()) == ["train", "train_valid", "valid"]

    def files(split):
        return {(p.parent.name, int(p.stem)) for p in (out / split).glob("*/*.png")}

    for name in ("cat", "dog", "frog"):
        ids = sorted(i for i, label in TRAIN_LABELS.items() if label == name)
        assert {i for c, i in files("valid") if c == name} == set(ids[:n])   # first n by id
        assert {i for c, i in files("train") if c == name} == set(ids[n:])
    assert files("train_valid") == {(name, i) for i, name in TRAIN_LABELS.items()}
    assert ((out / "valid" / "dog" / "4.png").read_bytes() ==
            (root / "train" / "4.png").read_bytes())


def test_reorg_again_is_a_no_op_and_a_different_ratio_is_refused(kaggle):
    root, _ = kaggle
    n = reorg_train_valid(root, 0.5)
    marker = root / "train_valid_test" / "train" / "frog" / "8.png"
    stamp = marker.stat().st_mtime_ns
    assert reorg_train_valid(root, 0.5) == n and marker.stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="already holds a different split.*delete"):
        reorg_train_valid(root, 0.9)


@pytest.mark.parametrize("ratio", [0, 1, -0.1])
def test_reorg_valid_ratio_must_be_a_fraction(kaggle, ratio):
    with pytest.raises(ValueError, match="reorg_train_valid: valid_ratio must be in"):
        reorg_train_valid(kaggle[0], ratio)


def test_reorg_refuses_a_label_that_is_a_path(kaggle):
    root, _ = kaggle
    text = (root / "trainLabels.csv").read_text().replace("1,frog", "1,..")
    (root / "trainLabels.csv").write_text(text)
    with pytest.raises(ValueError, match=r"label '\.\.' cannot be a folder name"):
        reorg_train_valid(root, 0.5)
    assert not (root / "train_valid_test" / "valid").exists()


def test_image_folder_reads_the_reorganised_layout(kaggle):
    root, written = kaggle
    reorg_train_valid(root, 0.5)
    reorg_test(root)
    train = ImageFolder(root / "train_valid_test" / "train_valid", transform=T.ToTensor())
    assert train.classes == ["cat", "dog", "frog"] and len(train) == len(TRAIN_LABELS)
    for i, target in zip(train.ids, train.targets):
        assert train.classes[target] == TRAIN_LABELS[int(i)]
    image, _ = train[0]
    np.testing.assert_allclose(image, written["train"][int(train.ids[0])].transpose(2, 0, 1)
                               / 255, rtol=1e-6)
    test = ImageFolder(root / "train_valid_test" / "test")
    assert test.classes == ["unknown"] and test.ids == [str(i) for i in range(1, NUM_TEST + 1)]


# ---------------------------------------------------------------- submission
def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_predict_the_test_folder_and_write_the_submission(kaggle, tmp_path):
    root, _ = kaggle
    classes = KaggleCIFAR10(root, "train").classes
    test = KaggleCIFAR10(root, "test", transform=T.ToTensor(), classes=classes)
    predictions = []
    for X, _ in DataLoader(test, batch_size=3):
        # a stand-in for a network: the class from the mean brightness
        predictions += (X.numpy().mean(axis=(1, 2, 3)) * 3).astype(int).clip(0, 2).tolist()
    path = write_submission(tmp_path / "submission.csv", test.ids, predictions, classes)
    rows = read_rows(path)
    assert rows[0] == ["id", "label"]
    assert rows[1:] == [[i, classes[p]] for i, p in zip(test.ids, predictions)]
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("ids, predictions, error, message", [
    (["1", "2"], [0], ValueError, "2 ids but 1 predictions"),
    (["1"], [3], ValueError, r"predictions must lie in \[0, 3\), got \[3, 3\]"),
    (["1"], [-1], ValueError, r"predictions must lie in \[0, 3\), got \[-1, -1\]"),
    (["1"], [0.5], TypeError, r"predictions must be class indices \(ints\), got dtype float64"),
])
def test_write_submission_refuses_bad_predictions(tmp_path, ids, predictions, error, message):
    with pytest.raises(error, match=f"write_submission: {message}"):
        write_submission(tmp_path / "s.csv", ids, predictions, ["cat", "dog", "frog"])
    assert list(tmp_path.iterdir()) == []
