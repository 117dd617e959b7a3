"""CIFAR10 from binary records written by the tests, from archives (one with
hostile members), and from a file:// download."""
import tarfile

import numpy as np
import pytest

from tinygrad_cnn.data import CIFAR10, download
from tinygrad_cnn.data import transforms as T
from tinygrad_cnn.data.download import md5sum
from tests.data.make_files import add_bytes, cifar_batch, cifar_records

# data loading and transforms call no kernel: run under the first kernel set only
# (tests/conftest.py).
pytestmark = pytest.mark.kernel_free

BATCHES = CIFAR10.batches_folder
SIZES = {name: 2 + k for k, name in enumerate(CIFAR10.train_files + CIFAR10.test_files)}


def write_batches(folder):
    """All six batch files (2..7 images each); returns {file name: (images, labels)}."""
    return {name: cifar_batch(folder / name, n, seed=n) for name, n in SIZES.items()}


def split_arrays(batches, train):
    names = CIFAR10.train_files if train else CIFAR10.test_files
    return (np.concatenate([batches[n][0] for n in names]),
            np.concatenate([batches[n][1] for n in names]))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("layout", [BATCHES, "."])
def test_reads_the_batches(tmp_path, train, layout):
    batches = write_batches(tmp_path / layout)
    images, labels = split_arrays(batches, train)
    ds = CIFAR10(tmp_path, train=train)
    assert ds.data.shape == (len(labels), 32, 32, 3) and ds.data.dtype == np.uint8
    np.testing.assert_array_equal(ds.data, images)
    np.testing.assert_array_equal(ds.targets, labels)
    assert ds.targets.dtype == np.int64
    image, label = ds[len(ds) - 1]
    np.testing.assert_array_equal(image, images[-1])
    assert label == labels[-1]


def test_to_tensor_gives_the_channel_planes(tmp_path):
    batches = write_batches(tmp_path / BATCHES)
    images, _ = split_arrays(batches, train=False)
    image, _ = CIFAR10(tmp_path, train=False, transform=T.ToTensor())[1]
    assert image.shape == (3, 32, 32)
    for channel in range(3):
        np.testing.assert_allclose(image[channel], images[1][:, :, channel] / 255, rtol=1e-6)


@pytest.mark.parametrize("size, message", [
    (3073 * 2 - 1, "6145 bytes is not a whole number of 3073-byte records"),
    (0, "0 bytes is not a whole number"),
])
def test_truncated_batch_is_refused(tmp_path, size, message):
    write_batches(tmp_path)
    path = tmp_path / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:size])
    with pytest.raises(ValueError, match=f"test_batch.bin: {message}"):
        CIFAR10(tmp_path, train=False)


def test_label_out_of_range_is_refused(tmp_path):
    write_batches(tmp_path)
    image = np.zeros((1, 32, 32, 3), np.uint8)
    (tmp_path / "test_batch.bin").write_bytes(cifar_records(np.concatenate([image] * 3),
                                                            [1, 2, 10]))
    with pytest.raises(ValueError, match="test_batch.bin: record 2 has label 10"):
        CIFAR10(tmp_path, train=False)


def test_missing_data_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        CIFAR10(tmp_path / "root")
    message = str(info.value)
    for needed in ("CIFAR-10 not found", str(tmp_path / "root"), CIFAR10.archive,
                   "data_batch_5.bin", "download=True", str(download.cache_folder("cifar-10"))):
        assert needed in message


# ---------------------------------------------------------------- archives
def make_archive(path, source, hostile=()):
    """The official layout (``cifar-10-batches-bin/*.bin`` plus a meta file) from
    the batch files in ``source``, with ``hostile`` (name, kind, link) members."""
    with tarfile.open(path, "w:gz") as tar:
        for name in SIZES:
            tar.add(source / name, arcname=f"{BATCHES}/{name}")
        add_bytes(tar, f"{BATCHES}/batches.meta.txt", b"airplane\n")
        for name, kind, link in hostile:
            add_bytes(tar, name, b"evil", kind, link)
    return path


def test_archive_in_root_is_extracted_safely(tmp_path):
    batches = write_batches(tmp_path / "made")
    root = tmp_path / "root"
    root.mkdir()
    hostile = [("../escaped.bin", tarfile.REGTYPE, ""),
               (f"{BATCHES}/../../escaped2.bin", tarfile.REGTYPE, ""),
               (str(tmp_path / "absolute.bin"), tarfile.REGTYPE, ""),
               (f"{BATCHES}/link", tarfile.SYMTYPE, "/etc/passwd")]
    make_archive(root / CIFAR10.archive, tmp_path / "made", hostile)
    ds = CIFAR10(root, train=True)
    assert ds.folder == root / BATCHES
    np.testing.assert_array_equal(ds.data, split_arrays(batches, True)[0])
    assert sorted(p.name for p in (root / BATCHES).iterdir()) == sorted(SIZES)
    assert not any((tmp_path / name).exists()
                   for name in ("escaped.bin", "escaped2.bin", "absolute.bin"))


def test_archive_with_a_link_for_a_batch_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / CIFAR10.archive, "w:gz") as tar:
        add_bytes(tar, f"{BATCHES}/data_batch_1.bin", b"", tarfile.SYMTYPE, "/etc/passwd")
    with pytest.raises(ValueError, match="data_batch_1.bin' is not a regular file"):
        CIFAR10(root)


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A local URL serving an archive whose MD5 is the expected one."""
    batches = write_batches(tmp_path / "made")
    archive = make_archive(tmp_path / "served.tar.gz", tmp_path / "made")
    monkeypatch.setattr(CIFAR10, "url", archive.as_uri())
    monkeypatch.setattr(CIFAR10, "md5", md5sum(archive))
    return batches


def test_download_fetches_verifies_and_extracts(tmp_path, served):
    ds = CIFAR10(tmp_path / "data", train=False, download=True)
    np.testing.assert_array_equal(ds.targets, split_arrays(served, False)[1])
    assert (tmp_path / "data" / CIFAR10.archive).is_file()
    assert CIFAR10(tmp_path / "data", train=True).folder == tmp_path / "data" / BATCHES


def test_download_with_a_wrong_md5_leaves_nothing(tmp_path, served, monkeypatch):
    monkeypatch.setattr(CIFAR10, "md5", "0" * 32)
    with pytest.raises(FileNotFoundError, match="(?s)CIFAR-10 not found.*MD5 mismatch"):
        CIFAR10(tmp_path / "data", download=True)
    assert list((tmp_path / "data").iterdir()) == []
