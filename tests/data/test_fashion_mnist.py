"""FashionMNIST on IDX files written by the tests (valid and corrupted), the
search order, downloads from file:// mirrors, and the offline copy if present."""
import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from tinygrad_cnn.data import FashionMNIST, download, load_data_fashion_mnist
from tinygrad_cnn.data import transforms as T
from tinygrad_cnn.data.download import md5sum
from tests.data.make_files import fashion_split, write_idx

# data loading and transforms call no kernel: run under the first kernel set only
# (tests/conftest.py).
pytestmark = pytest.mark.kernel_free

OFFLINE_COPY = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "fashion-mnist"
TRAIN_IMAGES, TRAIN_LABELS = FashionMNIST.files["train"]
TEST_IMAGES, TEST_LABELS = FashionMNIST.files["test"]


@pytest.mark.parametrize("train, n", [(True, 7), (False, 3)])
def test_reads_the_split(tmp_path, train, n):
    images, labels = fashion_split(tmp_path, "train" if train else "test", n, seed=n)
    fashion_split(tmp_path, "test" if train else "train", 2, seed=99)   # the other split
    ds = FashionMNIST(tmp_path, train=train)
    assert len(ds) == n and ds.data.dtype == np.uint8 and ds.targets.dtype == np.int64
    np.testing.assert_array_equal(ds.data, images)
    np.testing.assert_array_equal(ds.targets, labels)
    for i in (0, n - 1, -1):
        image, label = ds[i]
        np.testing.assert_array_equal(image, images[i])
        assert label == labels[i] and isinstance(label, int)


def test_transform_applies_per_item_and_per_batch(tmp_path):
    images, labels = fashion_split(tmp_path, "train", 5)
    ds = FashionMNIST(tmp_path, transform=T.ToTensor())
    image, _ = ds[2]
    assert image.shape == (1, 28, 28) and image.dtype == np.float32
    np.testing.assert_allclose(image[0], images[2] / 255, rtol=1e-6)
    batch, batch_labels = ds.get_batch([4, 0, 2])
    assert batch.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(batch[2], image)
    np.testing.assert_array_equal(batch_labels, labels[[4, 0, 2]])


@pytest.mark.parametrize("index, error", [(5, IndexError), (-6, IndexError), (1.0, TypeError)])
def test_bad_index(tmp_path, index, error):
    fashion_split(tmp_path, "train", 5)
    with pytest.raises(error, match="FashionMNIST"):
        FashionMNIST(tmp_path)[index]


# ---------------------------------------------------------------- where the files are
@pytest.mark.parametrize("place", ["root", "root/fashion-mnist", "env", "env/fashion-mnist",
                                   "cache"])
def test_search_order_finds_the_files(tmp_path, monkeypatch, place):
    monkeypatch.setenv(download.DATA_ENV, str(tmp_path / "env"))
    folder = (download.cache_folder("fashion-mnist") if place == "cache"
              else tmp_path / place)
    images, _ = fashion_split(folder, "train", 4)
    ds = FashionMNIST(tmp_path / "root")
    assert ds.folder == folder
    np.testing.assert_array_equal(ds.data, images)


def test_root_comes_before_env_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(download.DATA_ENV, str(tmp_path / "env"))
    fashion_split(tmp_path / "env", "train", 4, seed=1)
    fashion_split(download.cache_folder("fashion-mnist"), "train", 4, seed=2)
    images, _ = fashion_split(tmp_path / "root", "train", 4, seed=3)
    np.testing.assert_array_equal(FashionMNIST(tmp_path / "root").data, images)
    assert FashionMNIST().folder == tmp_path / "env"           # no root: env next


def test_user_files_are_not_checksum_checked(tmp_path):
    fashion_split(tmp_path, "train", 4)
    assert md5sum(tmp_path / TRAIN_IMAGES) != FashionMNIST.md5s[TRAIN_IMAGES]
    assert len(FashionMNIST(tmp_path)) == 4


def test_offline_without_data_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv(download.DATA_ENV, str(tmp_path / "env"))

    def no_network(*args, **kwargs):
        raise AssertionError("download attempted without download=True")

    monkeypatch.setattr(download, "urlopen", no_network)
    with pytest.raises(FileNotFoundError) as info:
        FashionMNIST(tmp_path / "root")
    message = str(info.value)
    for folder in download.search_folders(tmp_path / "root", "fashion-mnist"):
        assert str(folder) in message
    for needed in ("Fashion-MNIST not found", TRAIN_IMAGES, "root=", "download=True"):
        assert needed in message


# ---------------------------------------------------------------- downloads
@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local mirror serving all four files, after a dead one; the expected MD5s
    are those of the served files.  Returns the served arrays per split."""
    served = tmp_path / "mirror"
    arrays = {split: fashion_split(served, split, n, seed=n)
              for split, n in (("train", 6), ("test", 2))}
    monkeypatch.setattr(FashionMNIST, "mirrors", [(tmp_path / "dead").as_uri() + "/",
                                                  served.as_uri() + "/"])
    monkeypatch.setattr(FashionMNIST, "md5s", {p.name: md5sum(p) for p in served.iterdir()})
    return arrays


@pytest.mark.parametrize("root", ["given", None])
def test_download_fetches_verifies_and_loads(tmp_path, mirror, root):
    root = tmp_path / "data" if root else None
    target = root or download.cache_folder("fashion-mnist")
    for train, split in ((True, "train"), (False, "test")):
        ds = FashionMNIST(root, train=train, download=True)
        assert ds.folder == target
        np.testing.assert_array_equal(ds.data, mirror[split][0])
        np.testing.assert_array_equal(ds.targets, mirror[split][1])
    assert sorted(p.name for p in target.iterdir()) == sorted(FashionMNIST.md5s)


def test_download_with_a_wrong_md5_leaves_nothing(tmp_path, mirror, monkeypatch):
    md5s = dict(FashionMNIST.md5s, **{TRAIN_LABELS: "0" * 32})
    monkeypatch.setattr(FashionMNIST, "md5s", md5s)
    with pytest.raises(FileNotFoundError, match=r"(?s)download into .* failed.*MD5 mismatch"):
        FashionMNIST(tmp_path / "data", download=True)
    assert not (tmp_path / "data" / TRAIN_LABELS).exists()
    assert not list((tmp_path / "data").glob("*.part"))


# ---------------------------------------------------------------- validation
def corrupt(folder, name, writer):
    """The train split of 4 images, with ``name`` rewritten by ``writer(path)``."""
    fashion_split(folder, "train", 4)
    writer(folder / name)


def truncate_gzip(path):
    path.write_bytes(path.read_bytes()[:-20])


def truncate_payload(path):
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-2]))   # the last 2 values


def append_bytes(path):
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + b"\0\0\0"))


images4 = np.zeros((4, 28, 28), np.uint8)
labels4 = np.zeros(4, np.uint8)

CORRUPTIONS = {
    "images magic": (TRAIN_IMAGES, lambda p: write_idx(p, images4, 2049),
                     "bad magic number 2049, expected 2051"),
    "labels magic": (TRAIN_LABELS, lambda p: write_idx(p, labels4, 2051),
                     "bad magic number 2051, expected 2049"),
    "little-endian": (TRAIN_IMAGES, lambda p: write_idx(p, images4, 0x03080000),
                      "header looks little-endian"),
    "image size": (TRAIN_IMAGES, lambda p: write_idx(p, np.zeros((4, 27, 28)), 2051),
                   "images are 27 x 28, expected 28 x 28"),
    "short header": (TRAIN_LABELS, lambda p: p.write_bytes(gzip.compress(b"\0\0\x08\x01")),
                     "truncated: 4 bytes.*expected 8 for the 8-byte header"),
    "truncated images": (TRAIN_IMAGES, truncate_payload, "truncated.*4 images of 28 x 28"),
    "truncated labels": (TRAIN_LABELS, truncate_payload, "truncated.*4 labels"),
    "count above data": (TRAIN_LABELS, lambda p: write_idx(p, labels4, 2049, count=9),
                         "truncated.*9 labels"),
    "trailing bytes": (TRAIN_IMAGES, append_bytes, "3 unexpected bytes after 4 images"),
    "not gzip": (TRAIN_IMAGES, lambda p: p.write_bytes(b"plain bytes"),
                 "not a readable gzip file"),
    "truncated gzip": (TRAIN_IMAGES, truncate_gzip, "not a readable gzip file"),
    "label range": (TRAIN_LABELS, lambda p: write_idx(p, [0, 3, 10, 1], 2049),
                    "label 10 at index 2 is not a class"),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_corrupted_file_gives_an_error_naming_it(tmp_path, case):
    name, writer, message = CORRUPTIONS[case]
    corrupt(tmp_path, name, writer)
    with pytest.raises(ValueError, match=re.escape(name) + ".*" + message):
        FashionMNIST(tmp_path)


def test_image_and_label_counts_must_agree(tmp_path):
    corrupt(tmp_path, TRAIN_LABELS, lambda p: write_idx(p, labels4[:3], 2049))
    with pytest.raises(ValueError, match=f"{TRAIN_IMAGES} holds 4 images but .*{TRAIN_LABELS} "
                                         "holds 3 labels"):
        FashionMNIST(tmp_path)


# ---------------------------------------------------------------- d2l's helper
def test_load_data_fashion_mnist(tmp_path):
    images, labels = fashion_split(tmp_path, "train", 10)
    fashion_split(tmp_path, "test", 5)
    train_iter, test_iter = load_data_fashion_mnist(4, resize=32, root=tmp_path, seed=0)
    batches = list(train_iter)
    assert [tuple(X.shape) for X, _ in batches] == [(4, 1, 32, 32)] * 2 + [(2, 1, 32, 32)]
    seen = np.concatenate([y.numpy() for _, y in batches])
    assert sorted(seen) == sorted(labels)                # every example once, shuffled
    X, y = next(iter(test_iter))
    assert X.dtype == np.float32 and y.dtype == np.int64 and len(test_iter) == 2


# ---------------------------------------------------------------- the offline copy
@pytest.mark.skipif(not OFFLINE_COPY.is_dir(), reason="no offline Fashion-MNIST copy here")
@pytest.mark.parametrize("train, per_class", [(True, 6000), (False, 1000)])
def test_offline_copy_smoke(train, per_class):
    ds = FashionMNIST(OFFLINE_COPY, train=train, transform=T.ToTensor())
    assert ds.data.shape == (10 * per_class, 28, 28)
    assert np.bincount(ds.targets, minlength=10).tolist() == [per_class] * 10
    image, label = ds[0]
    assert image.shape == (1, 28, 28) and 0 <= image.min() <= image.max() <= 1
