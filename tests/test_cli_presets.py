"""``tinygrad-cnn train MODEL --preset quick``: the preset's settings apply, options
given on the command line win, every setting reaches the output and metrics.jsonl,
and a tiny preset run learns (on generated images whose class can be seen)."""
import json

import numpy as np
import pytest

import models.presets
from tinygrad_cnn import cli
from tinygrad_cnn.checkpoint import load_checkpoint

from tests.data.make_files import write_idx

# the command's logic is the same under every kernel set: the first one only (tests/conftest.py)
pytestmark = pytest.mark.kernel_free


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)


def learnable_split(folder, prefix, n, seed):
    """Fashion-MNIST-format files whose class c is a bright band at rows 2c..2c+3
    over noise: learnt in a few steps, unlike random labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 90, (n, 28, 28))
    for image, label in zip(images, labels):
        image[2 * label + 2:2 * label + 6, 4:24] = 255
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fashion-learnable")
    learnable_split(folder, "train", 128, seed=0)
    learnable_split(folder, "t10k", 40, seed=1)
    return folder


def settings(*argv):
    args = cli.build_parser().parse_args(["train", *argv])
    return cli._train_settings(args, models.spec(args.model))


def test_preset_values_apply_and_options_override():
    preset = models.presets.get("alexnet", "quick")
    s = settings("alexnet", "--preset", "quick")
    assert (s["resize"], s["limit"], s["test_limit"], s["lr"], s["momentum"],
            s["batch_size"], s["epochs"]) == (preset.resize, preset.limit, preset.test_limit,
                                              preset.lr, preset.momentum, preset.batch_size,
                                              preset.num_epochs)
    s = settings("alexnet", "--preset", "quick", "--lr", "0.02", "--momentum", "0",
                 "--limit", "10", "--resize", "224", "--epochs", "3")
    assert (s["lr"], s["momentum"], s["limit"], s["test_limit"], s["resize"],
            s["epochs"]) == (0.02, 0.0, 10, 10, 224, 3)     # --limit bounds both splits
    assert settings("alexnet", "--preset", "quick", "--test-limit", "7")["test_limit"] == 7


def test_without_a_preset_d2l_settings_stay():
    spec = models.spec("alexnet")
    s = settings("alexnet")
    assert (s["preset"], s["resize"], s["lr"], s["batch_size"], s["epochs"], s["momentum"],
            s["limit"], s["test_limit"]) == (None, spec.resize, spec.lr, spec.batch_size,
                                             spec.num_epochs, 0.0, None, None)


def test_init_comes_from_the_preset_and_the_option_wins():
    assert settings("alexnet")["init"] == "xavier"                  # d2l's
    assert settings("alexnet", "--init", "kaiming")["init"] == "kaiming"
    for name in models.names():
        preset = models.presets.get(name, "quick")
        assert settings(name, "--preset", "quick")["init"] == preset.init
        assert settings(name, "--preset", "quick", "--init", "default")["init"] == "default"


@pytest.mark.parametrize("option, given_to_fit", [
    ([], "xavier"), (["--init", "kaiming"], "kaiming"), (["--init", "default"], None)])
def test_init_reaches_fit_and_is_recorded(monkeypatch, capsys, learnable, tmp_path, option,
                                          given_to_fit):
    import tinygrad_cnn.train
    seen = {}
    real_fit = tinygrad_cnn.train.fit

    def spy(*args, **kwargs):
        seen["init"] = kwargs["init"]
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(tinygrad_cnn.train, "fit", spy)
    out = tmp_path / "run"
    code = cli.main(["train", "lenet_bn", "--data-dir", str(learnable), "--limit", "16",
                     "--batch-size", "16", "--epochs", "1", "--no-progress", "--out", str(out),
                     *option])
    assert code == 0, capsys.readouterr().err
    assert seen["init"] == given_to_fit
    expected = given_to_fit or "default"
    assert f"init {expected}" in capsys.readouterr().out
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["run"]["init"] == expected


def test_quick_preset_learns_and_writes_its_settings(capsys, learnable, tmp_path):
    out = tmp_path / "run"
    # lenet_bn's preset (d2l's lr 1.0), with a small batch and 3 epochs of 128 images
    code = cli.main(["train", "lenet_bn", "--preset", "quick", "--data-dir", str(learnable),
                     "--batch-size", "16", "--epochs", "3", "--no-progress", "--out",
                     str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "settings: model lenet_bn, preset quick, dataset fashion_mnist" in stdout
    assert "lr 1.0, batch_size 16" in stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert row["run"]["preset"] == "quick" and row["run"]["batch_size"] == 16
        assert row["run"]["lr"] == models.spec("lenet_bn").lr
        assert row["run"]["train_examples"] == 128 and row["run"]["test_examples"] == 40
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]
    assert rows[-1]["train_acc"] > rows[0]["train_acc"]


def test_network_trained_on_another_data_set_evaluates(capsys, learnable, tmp_path):
    # alexnet_cifar10 is registered for 3-channel CIFAR-10; its preset trains it on
    # 1-channel Fashion-MNIST, and eval must rebuild it with one input channel.
    out = tmp_path / "run"
    code = cli.main(["train", "alexnet_cifar10", "--preset", "quick", "--data-dir",
                     str(learnable), "--limit", "8", "--batch-size", "8", "--no-progress",
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    run = load_checkpoint(out / "model.npz").meta["run"]
    assert (run["dataset"], run["in_channels"], run["resize"]) == ("fashion_mnist", 1, 31)
    capsys.readouterr()
    assert cli.main(["eval", str(out / "model.npz"), "--data-dir", str(learnable),
                     "--limit", "8"]) == 0
    assert "test acc" in capsys.readouterr().out
