"""files.atomic_write, the one way the package writes a file: the rename,
no partial file on an error, the usual permissions, errors that name the file;
remove_stale_parts for the part files of killed writers."""
import errno
import io
import os
import stat
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from tinygrad_cnn import files
from tinygrad_cnn.checkpoint import save_checkpoint
from tinygrad_cnn.data import write_submission
from tinygrad_cnn.data.download import extract_members
from tinygrad_cnn.viz import plot_history

from tests.tiny_training import tiny_net

# Writing files and guarding the loop do not depend on the kernels: run under the
# first kernel set only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def parts(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_the_file_appears_under_its_name_only_at_the_end(tmp_path):
    path = tmp_path / "sub" / "out.bin"          # a missing folder is created
    with files.atomic_write(path) as f:
        f.write(b"first half ")
        assert not path.exists()                # not yet renamed
        assert len(parts(path.parent)) == 1
        f.write(b"second half")
    assert path.read_bytes() == b"first half second half"
    assert parts(path.parent) == []


def test_text_mode_passes_open_arguments(tmp_path):
    path = tmp_path / "rows.csv"
    with files.atomic_write(path, "w", newline="", encoding="utf-8") as f:
        f.write("a,b\r\nç\n")
    assert path.read_bytes() == "a,b\r\nç\n".encode()
    with pytest.raises(ValueError, match="atomic_write: mode must be 'w' or 'wb', got 'a'"):
        with files.atomic_write(path, "a"):
            pass


def test_an_error_leaves_the_old_file_and_no_part(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"old and complete")
    with pytest.raises(RuntimeError, match="boom"):
        with files.atomic_write(path) as f:
            f.write(b"new but half")
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old and complete"
    assert parts(tmp_path) == []


def test_usual_permissions_not_mkstemps_0600(tmp_path, umask_022):
    with files.atomic_write(tmp_path / "a.bin") as f:
        f.write(b"x")
    assert mode_of(tmp_path / "a.bin") == 0o644
    os.umask(0o027)
    with files.atomic_write(tmp_path / "b.bin") as f:
        f.write(b"x")
    assert mode_of(tmp_path / "b.bin") == 0o640         # the umask is honoured


def test_every_writer_of_the_package_gives_usual_permissions(tmp_path, umask_022):
    # The four writers that used to have their own copy (three with mkstemp's 0600).
    written = [save_checkpoint(tmp_path / "checkpoint.npz", tiny_net()),
               write_submission(tmp_path / "submission.csv", [1, 2], np.array([0, 1]),
                                ["cat", "dog"]),
               plot_history([{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5,
                              "test_acc": 0.5}], tmp_path / "curves.png")]
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        info = tarfile.TarInfo("member.bin")
        info.size, info.mode = 3, 0o600
        tar.addfile(info, io.BytesIO(b"abc"))
    extract_members(tmp_path / "a.tar", tmp_path / "x", ["member.bin"])
    written.append(tmp_path / "x" / "member.bin")
    for path in written:
        assert mode_of(path) == 0o644, path
    assert parts(tmp_path) == []


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "no space left on the device while writing it; free some space"),
    (errno.EACCES, "permission denied while writing it"),
])
def test_disk_full_and_permission_denied_name_the_file(tmp_path, monkeypatch, code, words):
    path = tmp_path / "checkpoint.npz"

    class FailingFile:            # a file object whose write fails as the disk would
        def __init__(self, real):
            self.real = real

        def write(self, data):
            raise OSError(code, os.strerror(code))

        def __getattr__(self, name):
            return getattr(self.real, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.real.__exit__(*exc)

    real_open = open
    monkeypatch.setattr(files, "open", lambda *a, **k: FailingFile(real_open(*a, **k)),
                        raising=False)
    with pytest.raises(OSError) as info:
        save_checkpoint(path, tiny_net())
    message = str(info.value)
    assert message.startswith(f"{path}: {words}") and "another folder" in message
    assert info.value.errno == code and isinstance(info.value, type(OSError(code, "")))
    assert not path.exists() and parts(tmp_path) == []


def test_other_errors_are_unchanged(tmp_path):
    with pytest.raises(IsADirectoryError):
        with files.atomic_write(tmp_path) as f:      # renaming a file over a folder
            f.write(b"x")


def test_stale_parts_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = [tmp_path / f".curves.png.{dead_pid}.0123abcd.part",
             tmp_path / ".checkpoint.npz.deadbeef.part"]        # an earlier version's name
    live = [files.part_path(tmp_path / "model.npz"),            # this process's
            tmp_path / "notes.part", tmp_path / "model.npz"]    # not part files at all
    for path in stale + live:
        path.write_bytes(b"")
    assert sorted(files.remove_stale_parts(tmp_path)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(live)
    assert files.remove_stale_parts(tmp_path / "missing") == []
