"""The tinygrad-cnn command under faults (issue 17): divergence, non-finite and
unreadable checkpoints, resuming with changed settings, two runs in one
folder (two real processes), disk full; each ends in one line."""
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinygrad_cnn import checkpoint as checkpoint_module
from tinygrad_cnn import files
from tinygrad_cnn.checkpoint import load_checkpoint, write_npz_atomically

from tests.test_cli import fashion, isolated, run, train_lenet  # noqa: F401 (fixtures)

# Writing files and guarding the loop do not depend on the kernels: run under the
# first kernel set only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free

ROOT = Path(__file__).resolve().parents[1]


def error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv, message", [
    (["--lr", "-1"], "argument --lr: expected a number > 0, got -1"),
    (["--lr", "0"], "argument --lr: expected a number > 0, got 0"),
    (["--momentum", "-1"], "argument --momentum: expected a number >= 0, got -1"),
    (["--max-loss-ratio", "-5"], "argument --max-loss-ratio: expected a number >= 0, got -5"),
    (["--force"], "--force goes with --resume"),
])
def test_bad_numbers_say_the_right_bound(capsys, tmp_path, argv, message):
    code, _, err = run(capsys, "train", "lenet", "--data-dir", tmp_path, *argv)
    assert code == 2 and message in error_line(err)


def test_a_finite_blow_up_fails_and_leaves_no_weights(capsys, fashion, tmp_path):
    out = tmp_path / "run"
    code, _, err = train_lenet(capsys, fashion, out, "--epochs", 2, "--lr", "1e6")
    assert code == 1
    line = error_line(err)
    assert line.startswith("tinygrad-cnn train: error: training diverged at epoch 1, batch 2:")
    assert "try a lower learning rate (lr is 1e+06)" in line
    assert not (out / "model.npz").exists() and not (out / "checkpoint.npz").exists()
    assert not list(out.glob("*.part")) and not (out / files.LOCK_FILE).exists()


def test_resume_with_a_new_lr_uses_it_and_says_so(capsys, fashion, tmp_path):
    out = tmp_path / "run"
    assert train_lenet(capsys, fashion, out, "--epochs", 1, "--lr", 0.5)[0] == 0
    code, stdout, _ = train_lenet(capsys, fashion, out, "--epochs", 2, "--lr", 0.1, "--resume")
    assert code == 0
    assert f"resume: lr 0.1 replaces {out / 'checkpoint.npz'}'s 0.5" in stdout
    assert "resume: 2 epochs in all (the checkpoint's run had 1)" in stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["lr"] for row in rows] == [0.5, 0.1]


def test_resume_without_flags_goes_on_as_the_run_was(capsys, fashion, tmp_path):
    out = tmp_path / "run"
    assert train_lenet(capsys, fashion, out, "--epochs", 2, "--lr", 0.5, "--momentum", 0.9,
                       "--seed", 3)[0] == 0
    (out / "model.npz").unlink()
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    assert checkpoint.meta["run"]["limit"] == 32
    # Continue a finished run to 3 epochs giving only what changes.
    code, stdout, err = run(capsys, "train", "lenet", "--data-dir", fashion, "--no-progress",
                            "--out", out, "--resume", "--epochs", 3)
    assert code == 0, err
    assert "replaces" not in stdout and "another run" not in err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["lr"] for row in rows] == [0.5, 0.5, 0.5]
    assert rows[-1]["train_examples"] == 32                  # the checkpoint's --limit
    meta = load_checkpoint(out / "model.npz").meta["run"]
    assert (meta["momentum"], meta["seed"], meta["epochs"]) == (0.9, 3, 3)


def test_resume_refuses_another_runs_checkpoint_unless_forced(capsys, fashion, tmp_path):
    out = tmp_path / "run"
    assert train_lenet(capsys, fashion, out, "--epochs", 1)[0] == 0
    code, _, err = train_lenet(capsys, fashion, out, "--epochs", 2, "--seed", 1, "--resume")
    assert code == 1
    assert "written by another run (seed 0 there, 1 here)" in error_line(err)
    code, stdout, _ = train_lenet(capsys, fashion, out, "--epochs", 2, "--seed", 1,
                                  "--resume", "--force")
    assert code == 0 and "as forced: seed 0 there, 1 here" in stdout


def poisoned_copy(source, target, key):
    with np.load(source) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays[key] = np.full_like(arrays[key], np.inf)
    write_npz_atomically(target, arrays)


def test_eval_of_a_non_finite_model_fails(capsys, fashion, tmp_path):
    out = tmp_path / "run"
    assert train_lenet(capsys, fashion, out, "--epochs", 1)[0] == 0
    poisoned_copy(out / "model.npz", tmp_path / "bad.npz", "model.0.weight")
    code, stdout, err = run(capsys, "eval", tmp_path / "bad.npz", "--data-dir", fashion)
    assert code == 1 and stdout == ""
    assert error_line(err) == (
        f"tinygrad-cnn eval: error: {tmp_path / 'bad.npz'}: key 'model.0.weight' holds NaN or "
        "infinite values (1 array(s) do): the run that wrote it diverged; use an earlier "
        "checkpoint or train again with a lower learning rate")


def test_an_unreadable_checkpoint_is_not_called_corrupt(capsys, fashion, tmp_path, monkeypatch):
    # (chmod 000 would not stop root, who runs these tests in CI containers.)
    path = tmp_path / "private.npz"
    path.write_bytes(b"PK\x03\x04")

    def denied(file, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(file))

    monkeypatch.setattr(checkpoint_module.np, "load", denied)
    code, _, err = run(capsys, "eval", path, "--data-dir", fashion)
    line = error_line(err)
    assert code == 1 and "corrupt" not in line and "truncated" not in line
    assert line == (f"tinygrad-cnn eval: error: {path}: permission denied reading the "
                    "checkpoint; check the file's permissions (ls -l) or read it as its owner")


def test_unreadable_data_is_not_called_corrupt(capsys, fashion, tmp_path, monkeypatch):
    from tinygrad_cnn.data import fashion_mnist

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(fashion_mnist.gzip, "open", denied)
    code, _, err = train_lenet(capsys, fashion, tmp_path / "run")
    line = error_line(err)
    assert code == 1 and "corrupt" not in line and "truncated" not in line
    assert line.startswith("tinygrad-cnn train: error: ") and line.endswith(
        "-ubyte.gz: permission denied reading it; check the file's permissions (ls -l) or "
        "read it as its owner")


def test_disk_full_names_the_file(capsys, fashion, tmp_path, monkeypatch):
    real_open = open

    class DiskFull:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

    def full_for_checkpoints(path, *args, **kwargs):
        file = real_open(path, *args, **kwargs)
        return DiskFull(file) if ".checkpoint.npz." in str(path) else file

    monkeypatch.setattr(files, "open", full_for_checkpoints, raising=False)
    out = tmp_path / "run"
    code, _, err = train_lenet(capsys, fashion, out, "--epochs", 1)
    assert code == 1
    assert error_line(err) == (
        f"tinygrad-cnn train: error: {out / 'checkpoint.npz'}: no space left on the device "
        "while writing it; free some space there or write to another folder")
    assert not list(out.glob("*.part"))


def test_a_second_run_in_the_same_folder_is_refused(fashion, tmp_path):
    """Two real processes: a long run, then a second one in its folder."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TINYGRAD_CNN_KERNELS="numpy")
    argv = [sys.executable, "-m", "tinygrad_cnn", "train", "lenet", "--data-dir", str(fashion),
            "--batch-size", "16", "--limit", "32", "--no-progress", "--out", str(out)]
    first = subprocess.Popen(argv + ["--epochs", "10000"], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists():        # written once the lock is held
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        second = subprocess.run(argv + ["--epochs", "2", "--seed", "1"], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=120)
        assert first.poll() is None                       # the first one still runs
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 1
    assert error_line(second.stderr).startswith(
        f"tinygrad-cnn train: error: {out} is in use by another run (pid {first.pid} on host ")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == list(range(1, len(rows) + 1))   # one run's rows


@pytest.mark.filterwarnings("ignore::RuntimeWarning")     # the overflow is the point
def test_eval_fails_when_finite_weights_overflow(capsys, fashion, tmp_path):
    out = tmp_path / "run"
    assert train_lenet(capsys, fashion, out, "--epochs", 1)[0] == 0
    with np.load(out / "model.npz") as npz:
        arrays = {name: npz[name] for name in npz.files}
    last = max((k for k in arrays if k.endswith(".weight")), key=lambda k: int(k.split(".")[1]))
    arrays[last] = np.full_like(arrays[last], 3e38)        # finite, but the logits are not
    write_npz_atomically(tmp_path / "huge.npz", arrays)
    code, stdout, err = run(capsys, "eval", tmp_path / "huge.npz", "--data-dir", fashion)
    assert code == 1 and stdout == ""
    assert "the test loss is nan (the network's outputs overflow)" in error_line(err)
