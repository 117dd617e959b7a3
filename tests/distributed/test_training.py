"""fit(..., distributed=True) and ``tinygrad-cnn train --distributed``."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tinygrad_cnn as tc
from models.lenet import lenet
from tinygrad_cnn.data import DataLoader
from tinygrad_cnn.train import fit

from .conftest import HAVE_MPI4PY, MPIEXEC, UNDER_MPIEXEC, on_every_rank

# the distributed machinery is the same under every kernel set: run under the first set
# only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free


class Images:
    """32 random 28×28 images with labels, the same on every rank."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((32, 1, 28, 28)).astype(np.float32)
        self.y = rng.integers(0, 10, 32)

    def __len__(self):
        return len(self.y)

    def get_batch(self, indices):
        return self.x[indices], self.y[indices]


@pytest.mark.mpi
def test_fit_on_two_ranks_equals_one_process_with_the_global_batch(dist, tmp_path):
    out = dist.broadcast_object(str(tmp_path))           # rank 0's folder for everyone
    tc.manual_seed(0)
    net = lenet()
    history = fit(net, DataLoader(Images(), 4), DataLoader(Images(1), 8), 2, 0.5,
                  out_dir=out, plot=False, progress=False, verbose=False, distributed=True)
    tc.manual_seed(0)
    alone = lenet()
    expected = fit(alone, DataLoader(Images(), 8), DataLoader(Images(1), 8), 2, 0.5,
                   plot=False, progress=False, verbose=False)

    def same_run():
        for ours, theirs in zip(history, expected):
            for key in ("train_loss", "train_acc", "test_acc", "train_examples"):
                assert ours[key] == pytest.approx(theirs[key], rel=1e-5), key
        for key, value in alone.state_dict().items():
            np.testing.assert_allclose(net.state_dict()[key].numpy(), value.numpy(),
                                       rtol=1e-4, atol=1e-6, err_msg=key)
    on_every_rank(dist, same_run)
    dist.barrier()
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [row["train_examples"] for row in rows] == [32, 32]        # one writer, global


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train(ranks, data, out, *extra):
    env = dict(os.environ, TINYGRAD_CNN_KERNELS="numpy",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    job = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, "-m", "tinygrad_cnn",
                          "train", "lenet", "--data-dir", str(data), "--out", str(out),
                          "--no-progress", "--distributed", *map(str, extra)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr
    return job.stdout


@pytest.mark.skipif(not HAVE_MPI4PY or MPIEXEC is None or UNDER_MPIEXEC,
                    reason="needs mpi4py and mpiexec (pip install -e '.[mpi]'), outside "
                    "mpiexec")
def test_cli_checkpoint_of_two_ranks_resumes_on_one(tmp_path):
    from tests.data.make_files import fashion_split
    data = tmp_path / "fashion-mnist"
    data.mkdir()
    fashion_split(data, "train", 64, seed=0)
    fashion_split(data, "test", 16, seed=1)
    stdout = train(2, data, tmp_path / "straight", "--batch-size", 8, "--epochs", 2)
    assert stdout.count("weights saved") == 1                  # rank 0 alone writes
    train(2, data, tmp_path / "resumed", "--batch-size", 8, "--epochs", 1)
    # one process goes on with the checkpoint's global batch: the same 16 examples a
    # step as the 2 ranks of 8 took together
    stdout = train(1, data, tmp_path / "resumed", "--epochs", 2, "--resume")
    assert "batch size 16," in stdout
    assert "resuming from" in stdout
    straight = np.load(tmp_path / "straight" / "model.npz")
    resumed = np.load(tmp_path / "resumed" / "model.npz")
    weights = [k for k in straight.files if k.startswith("model")]
    assert weights
    for key in weights:
        np.testing.assert_allclose(resumed[key], straight[key], rtol=1e-4, atol=1e-6,
                                   err_msg=key)
    rows = [json.loads(line) for line in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert [row["epoch"] for row in rows] == [1, 2]


class InterruptedImages(Images):
    """Ctrl-C after the second epoch's first step (4 batches an epoch)."""
    calls = 0

    def get_batch(self, indices):
        self.calls += 1
        if self.calls == 6:
            raise KeyboardInterrupt
        return super().get_batch(indices)


@pytest.mark.mpi
def test_ctrl_c_keeps_the_last_finished_epochs_checkpoint(dist, tmp_path):
    from tinygrad_cnn.checkpoint import load_checkpoint
    out = dist.broadcast_object(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        fit(lenet(), DataLoader(InterruptedImages(), 4, prefetch=0), None, 2, 0.5,
            out_dir=out, plot=False, progress=False, verbose=False, distributed=True)
    dist.barrier()
    position = load_checkpoint(os.path.join(out, "checkpoint.npz")).meta["position"]
    assert (position["epoch"], position["batch"]) == (1, 0)


def test_a_mid_epoch_checkpoint_is_refused_by_a_distributed_run(tmp_path):
    from tinygrad_cnn.checkpoint import save_checkpoint
    from tinygrad_cnn.distributed.training import check_resumable
    path = save_checkpoint(tmp_path / "c.npz", lenet(), position={"epoch": 1, "batch": 3})
    with pytest.raises(ValueError, match=r"middle of epoch 2 \(after 3 batches\)"):
        check_resumable(path)
    check_resumable(save_checkpoint(tmp_path / "d.npz", lenet(),
                                    position={"epoch": 1, "batch": 0}))
