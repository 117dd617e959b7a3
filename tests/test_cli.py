"""The tinygrad-cnn command, run in-process through ``cli.main`` on tiny
generated data sets (one subprocess test checks ``python -m tinygrad_cnn``)."""
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

import models
from tinygrad_cnn import cli, nn
from tinygrad_cnn import train as train_module
from tinygrad_cnn.checkpoint import load_checkpoint
from tinygrad_cnn.data import download

from tests.data.make_files import fashion_split

# the loop's logic is the same under every kernel set: run under the first kernel set only
# (tests/conftest.py).
pytestmark = pytest.mark.kernel_free

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No data set found by accident: an empty home (cache), no $TINYGRAD_CNN_DATA,
    and a fresh working directory for the default runs/ folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(download.DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fashion-mnist")
    fashion_split(folder, "train", 48, seed=0)
    fashion_split(folder, "test", 24, seed=1)
    return folder


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def train_lenet(capsys, fashion, out, *extra):
    return run(capsys, "train", "lenet", "--data-dir", fashion, "--batch-size", 16,
               "--limit", 32, "--no-progress", "--out", out, *extra)


# ---------------------------------------------------------------- the process
def test_python_dash_m_help():
    result = subprocess.run([sys.executable, "-m", "tinygrad_cnn", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for command in ("train", "eval", "summary", "gradcheck", "kaggle-cifar10"):
        assert command in result.stdout


def test_engine_imports_neither_models_nor_matplotlib():
    # Layering: models depend on the engine, never the reverse; plotting is lazy
    # (viz imports matplotlib only inside the functions that draw).
    code = ("import sys, tinygrad_cnn, tinygrad_cnn.train, tinygrad_cnn.cli, tinygrad_cnn.viz; "
            "print(sorted(m for m in ('models', 'matplotlib', 'tinygrad_cnn.data') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["train", "eval", "summary", "gradcheck", "kaggle-cifar10"])
def test_every_command_has_help(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and out.startswith(f"usage: tinygrad-cnn {command}")


# ---------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("argv, code, message", [
    (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    (["train", "nosuchnet"], 2, "unknown network 'nosuchnet'"),
    (["train", "lenet", "--epochs", "-3"], 2, "--epochs: expected a positive integer, got -3"),
    (["train", "lenet", "--lr", "fast"], 2, "--lr: expected a number, got 'fast'"),
    (["train", "lenet", "--data-dir", "{tmp}/nowhere"], 2, "--data-dir .*nowhere: no such folder"),
    (["train", "lenet", "--data-dir", "{tmp}", "--resume"], 2, "--resume: .*no such checkpoint"),
    (["train", "lenet", "--data-dir", "{tmp}"], 1, "Fashion-MNIST not found"),
    (["eval", "{tmp}/missing.npz"], 2, "missing.npz: no such checkpoint file"),
    (["summary", "lenet", "--input-shape", "1,a,28"], 2, "expected positive integers"),
    (["gradcheck", "nosuchop"], 2, "'nosuchop' is neither a model .* nor an op"),
    (["kaggle-cifar10"], 2, "the following arguments are required: --data-dir"),
])
def test_bad_arguments_give_one_line(capsys, tmp_path, argv, code, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    got, out, err = run(capsys, *argv)
    assert got == code
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("tinygrad-cnn") and re.search(message, err), err
    assert "Traceback" not in err


# ---------------------------------------------------------------- train / eval
def test_train_writes_the_run_and_eval_agrees(capsys, fashion, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = train_lenet(capsys, fashion, out, "--epochs", 2)
    assert code == 0
    assert re.search(r"^loss \d\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}$", stdout, re.M)
    assert re.search(r"^\d+\.\d examples/sec on cpu$", stdout, re.M)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["train_examples"] == 32 for r in rows)            # --limit
    assert all(r["lr"] == models.spec("lenet").lr for r in rows)     # the registry's default
    assert (out / "curves.png").read_bytes().startswith(PNG_MAGIC)
    assert load_checkpoint(out / "checkpoint.npz").epoch == 2
    assert load_checkpoint(out / "model.npz").meta["run"]["model"] == "lenet"

    code, stdout, _ = run(capsys, "eval", out / "model.npz", "--data-dir", fashion,
                          "--limit", 32)
    assert code == 0
    test_acc = float(re.search(r"test acc (\d\.\d{3}) on 24 images", stdout).group(1))
    assert test_acc == round(rows[-1]["test_acc"], 3)


def test_resume_continues_to_the_same_weights(capsys, fashion, tmp_path):
    assert train_lenet(capsys, fashion, tmp_path / "a", "--epochs", 2)[0] == 0
    assert train_lenet(capsys, fashion, tmp_path / "b", "--epochs", 1)[0] == 0
    code, stdout, _ = train_lenet(capsys, fashion, tmp_path / "b", "--epochs", 2, "--resume")
    assert code == 0 and "resuming from" in stdout
    a = load_checkpoint(tmp_path / "a" / "model.npz").model_state
    b = load_checkpoint(tmp_path / "b" / "model.npz").model_state
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_eval_of_a_corrupt_checkpoint(capsys, tmp_path, fashion):
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really")
    code, _, err = run(capsys, "eval", tmp_path / "broken.npz", "--data-dir", fashion)
    assert code == 1 and "broken.npz: not a readable checkpoint" in err
    assert len(err.strip().splitlines()) == 1


def test_debug_variable_shows_the_traceback(capsys, tmp_path, fashion, monkeypatch):
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really")
    monkeypatch.setenv("TINYGRAD_CNN_DEBUG", "1")
    with pytest.raises(ValueError, match="broken.npz: not a readable checkpoint"):
        run(capsys, "eval", tmp_path / "broken.npz", "--data-dir", fashion)


def test_ctrl_c_and_divergence_end_without_traceback(capsys, fashion, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "fit", interrupted)
    code, _, err = train_lenet(capsys, fashion, tmp_path)
    assert code == 130
    assert err.strip() == "tinygrad-cnn train: interrupted (continue with --resume)"

    def diverged(*args, **kwargs):
        raise train_module.NonFiniteLossError("loss is nan at epoch 1, batch 3: ...")

    monkeypatch.setattr(train_module, "fit", diverged)
    code, _, err = train_lenet(capsys, fashion, tmp_path)
    assert code == 1
    assert err.strip() == "tinygrad-cnn train: error: loss is nan at epoch 1, batch 3: ..."


# ---------------------------------------------------------------- summary / gradcheck
def test_summary(capsys):
    code, out, _ = run(capsys, "summary", "lenet")
    total = sum(p.numel() for p in models.get("lenet").parameters())
    assert code == 0 and f"Total params: {total:,}" in out
    assert "0 (Conv2d)     (1, 6, 28, 28)" in out
    code, out, _ = run(capsys, "summary", "lenet", "--input-shape", "4x1x28x28")
    assert code == 0 and "(4, 6, 28, 28)" in out


def test_gradcheck_model_and_op(capsys):
    code, out, _ = run(capsys, "gradcheck", "lenet", "--input-shape", "2,1,28,28")
    assert code == 0, out
    names = [name for name, _ in models.get("lenet").named_parameters()]
    for name in names:
        assert re.search(rf"parameter '{re.escape(name)}' .* directions +2 ", out), name
    assert "gradcheck passed" in out
    code, out, _ = run(capsys, "gradcheck", "conv2d")
    assert code == 0 and out.count("elements") == 3 and "gradcheck passed" in out


def test_gradcheck_reports_a_wrong_backward(capsys, monkeypatch):
    from tinygrad_cnn.ops import elementwise

    def wrong_backward(self, gy):
        return gy * 2.0
    monkeypatch.setattr(elementwise.ReLU, "backward", wrong_backward)
    code, out, _ = run(capsys, "gradcheck", "relu")
    assert code == 1 and "MISMATCH" in out and "gradcheck FAILED" in out


# ---------------------------------------------------------------- Kaggle CIFAR-10
LABELS = {1: "frog", 2: "cat", 3: "frog", 4: "dog", 5: "cat", 6: "frog", 7: "cat", 8: "frog",
          9: "dog", 10: "cat", 11: "frog", 12: "dog"}


@pytest.fixture
def kaggle_folder(tmp_path):
    """The competition's layout: train/<id>.png, test/<id>.png, trainLabels.csv."""
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10"
    for split, ids in (("train", LABELS), ("test", range(1, 6))):
        (root / split).mkdir(parents=True)
        for i in ids:
            matplotlib.image.imsave(root / split / f"{i}.png",
                                    rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    (root / "trainLabels.csv").write_text(
        "id,label\n" + "".join(f"{i},{name}\n" for i, name in LABELS.items()))
    return root


def tiny_cifar_net(in_channels=3, num_classes=10):
    return nn.Sequential(nn.Conv2d(in_channels, 4, kernel_size=3, stride=2, padding=1),
                         nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


def test_kaggle_cifar10_writes_a_submission(capsys, kaggle_folder, tmp_path, monkeypatch):
    # The pipeline is under test, not ResNet-18: a tiny network keeps it fast.
    built = {}

    def get(name, **kwargs):
        built.update(kwargs, name=name)
        return tiny_cifar_net(**kwargs)
    monkeypatch.setattr(models, "get", get)
    out = tmp_path / "kaggle"
    code, stdout, err = run(capsys, "kaggle-cifar10", "--data-dir", kaggle_folder, "--epochs", 2,
                            "--batch-size", 4, "--no-progress", "--out", out)
    assert code == 0, err
    assert built == {"name": "resnet18", "in_channels": 3, "num_classes": 3}
    with open(out / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "label"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]
    assert {r[1] for r in rows[1:]} <= {"cat", "dog", "frog"}
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert "5 of 5 test images classified" in stdout
