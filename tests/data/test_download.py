"""Atomic, MD5-checked downloads and safe tar extraction, on local files only."""
import hashlib
import io
import os
import tarfile

import pytest

from tinygrad_cnn.data import download
from tinygrad_cnn.data.download import DownloadError, download_url, extract_members, md5sum
from tests.data.make_files import add_bytes

# data loading and transforms call no kernel: run under the first kernel set only
# (tests/conftest.py).
pytestmark = pytest.mark.kernel_free

PAYLOAD = bytes(range(256)) * 1000          # 256 kB: several chunks


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "served" / "file.bin"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_md5sum_matches_hashlib(source):
    assert md5sum(source, chunk_size=1000) == hashlib.md5(PAYLOAD).hexdigest()


@pytest.mark.parametrize("progress", [False, True])
def test_download_writes_the_file_and_no_part(tmp_path, source, progress, capsys):
    destination = tmp_path / "out" / "file.bin"
    got = download_url(source.as_uri(), destination, md5=hashlib.md5(PAYLOAD).hexdigest(),
                       progress=progress)
    assert got == destination and destination.read_bytes() == PAYLOAD
    assert leftovers(destination.parent) == ["file.bin"]
    if progress:
        assert "file.bin" in capsys.readouterr().err      # the tqdm bar names the file


def test_mirrors_are_tried_in_turn(tmp_path, source):
    destination = tmp_path / "out" / "file.bin"
    missing = (tmp_path / "nowhere" / "file.bin").as_uri()
    download_url([missing, source.as_uri()], destination, progress=False)
    assert destination.read_bytes() == PAYLOAD


def test_md5_mismatch_leaves_no_file(tmp_path, source):
    destination = tmp_path / "out" / "file.bin"
    wrong = hashlib.md5(b"something else").hexdigest()
    with pytest.raises(DownloadError, match=r"file\.bin[\s\S]*MD5 mismatch") as info:
        download_url([source.as_uri(), source.as_uri()], destination, md5=wrong,
                     progress=False)
    assert str(info.value).count(source.as_uri()) == 2         # every mirror reported
    assert leftovers(destination.parent) == []


class _BrokenResponse(io.BytesIO):
    """A response that delivers one chunk, then fails with ``error``."""
    headers = {"Content-Length": str(len(PAYLOAD))}

    def __init__(self, error):
        super().__init__(PAYLOAD)
        self.error, self.calls = error, 0

    def read(self, size=-1):
        self.calls += 1
        if self.calls > 1:
            raise self.error
        return super().read(size)


@pytest.mark.parametrize("error, raised", [
    (ConnectionResetError("connection reset"), DownloadError),
    (KeyboardInterrupt(), KeyboardInterrupt),          # Ctrl-C mid-download
])
def test_interrupted_download_leaves_no_file(tmp_path, monkeypatch, error, raised):
    monkeypatch.setattr(download, "urlopen", lambda url, timeout: _BrokenResponse(error))
    destination = tmp_path / "out" / "file.bin"
    with pytest.raises(raised):
        download_url("http://example.invalid/file.bin", destination, progress=False)
    assert leftovers(destination.parent) == []


# ---------------------------------------------------------------- extraction
WANTED = ["data/a.bin", "data/b.bin"]


def make_archive(path, extra=()):
    with tarfile.open(path, "w:gz") as tar:
        for name in WANTED:
            add_bytes(tar, name, name.encode())
        for name, data, kind, link in extra:
            add_bytes(tar, name, data, kind, link)
    return path


def test_extract_writes_only_the_wanted_members(tmp_path):
    target = tmp_path / "target" / "inner"
    escape = tmp_path / "target" / "escaped.txt"
    absolute = tmp_path / "absolute.txt"
    archive = make_archive(tmp_path / "a.tar.gz", extra=[
        ("../escaped.txt", b"evil", tarfile.REGTYPE, ""),
        (str(absolute), b"evil", tarfile.REGTYPE, ""),
        ("data/../../escaped.txt", b"evil", tarfile.REGTYPE, ""),
        ("data/extra.bin", b"not wanted", tarfile.REGTYPE, ""),
    ])
    extract_members(archive, target, WANTED)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == [
        "data", "data/a.bin", "data/b.bin"]
    assert (target / "data" / "a.bin").read_bytes() == b"data/a.bin"
    assert not escape.exists() and not absolute.exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_extract_refuses_a_link_in_place_of_a_member(tmp_path, kind):
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tar:
        add_bytes(tar, "data/a.bin", b"", kind, "/etc/passwd")
    with pytest.raises(ValueError, match=r"a\.tar\.gz.*'data/a\.bin' is not a regular file"):
        extract_members(tmp_path / "a.tar.gz", tmp_path / "target", ["data/a.bin"])
    assert not (tmp_path / "target" / "data" / "a.bin").exists()


def test_extract_names_a_missing_member(tmp_path):
    archive = make_archive(tmp_path / "a.tar.gz")
    with pytest.raises(ValueError, match=r"a\.tar\.gz: member 'data/c\.bin' is missing"):
        extract_members(archive, tmp_path / "target", WANTED + ["data/c.bin"])


@pytest.mark.parametrize("name", ["../x.bin", "/x.bin", "data/../../x.bin"])
def test_extract_refuses_to_ask_for_a_path_outside(tmp_path, name):
    archive = make_archive(tmp_path / "a.tar.gz", extra=[(name, b"x", tarfile.REGTYPE, "")])
    with pytest.raises(ValueError, match="outside the target folder"):
        extract_members(archive, tmp_path / "target", [name])
    assert not (tmp_path / "x.bin").exists()


def test_data_folders_follow_root_then_env_then_cache(tmp_path, monkeypatch):
    assert download.search_folders(None, "ds") == [download.cache_folder("ds")]
    assert download.cache_folder("ds") == tmp_path / "home" / ".cache" / "tinygrad_cnn" / "ds"
    monkeypatch.setenv(download.DATA_ENV, str(tmp_path / "env"))
    assert download.search_folders(tmp_path / "root", "ds") == [
        tmp_path / "root", tmp_path / "root" / "ds", tmp_path / "env", tmp_path / "env" / "ds",
        download.cache_folder("ds")]
    assert download.download_folder(tmp_path / "root", "ds") == tmp_path / "root"
    assert download.download_folder(None, "ds") == tmp_path / "env" / "ds"
    monkeypatch.delenv(download.DATA_ENV)
    assert download.download_folder(None, "ds") == download.cache_folder("ds")
    assert os.environ["HOME"] == str(tmp_path / "home")
