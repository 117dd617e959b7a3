"""fit under faults (issue 17): every step guarded against divergence, no
checkpoint with NaN/inf, resuming with changed settings said out loud or
refused, one run per folder (two real processes), stale part files cleared,
metadata errors as one-line ValueErrors."""
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import tinygrad_cnn as tc
from tinygrad_cnn import optim
from tinygrad_cnn.checkpoint import (META_KEY, NonFiniteStateError, load_checkpoint,
                                     save_checkpoint, write_npz_atomically)
from tinygrad_cnn.data import DataLoader
from tinygrad_cnn.files import LOCK_FILE, FolderBusyError, hold_folder
from tinygrad_cnn.train import CHECKPOINT_FILE, DivergenceError, fit

from tests.tiny_training import TinyImages, tiny_net, weights

# Writing files and guarding the loop do not depend on the kernels: run under the
# first kernel set only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free

ROOT = Path(__file__).resolve().parents[1]


def loaders(n_train=40, batch_size=16):
    return (DataLoader(TinyImages(n_train, seed=0), batch_size, shuffle=True, seed=0),
            DataLoader(TinyImages(20, seed=1), batch_size))


def quiet_fit(net, num_epochs, lr, **kwargs):
    kwargs.setdefault("verbose", False)
    return fit(net, *loaders(), num_epochs, lr, progress=False, **kwargs)


def one_line(exc):
    text = str(exc)
    assert "\n" not in text, text
    return text


# ---------------------------------------------------------------- divergence
def test_a_finite_blow_up_stops_with_the_last_good_checkpoint(tmp_path):
    # lr 1e6 makes the loss explode to ~1e11 while every number stays finite:
    # only the ratio check can see it.
    tc.manual_seed(0)
    quiet_fit(tiny_net(), 1, lr=0.5, out_dir=tmp_path)
    good = weights_in(tmp_path / CHECKPOINT_FILE)
    with pytest.raises(DivergenceError) as info:
        quiet_fit(tiny_net(), 3, lr=1e6, out_dir=tmp_path, resume=True)
    message = one_line(info.value)
    assert message.startswith("training diverged at epoch 2, batch ")
    assert "is above 1000 x the first loss" in message
    assert f"last good checkpoint: {tmp_path / CHECKPOINT_FILE} (epoch 1)" in message
    assert message.endswith("try a lower learning rate (lr is 1e+06)")
    # The checkpoint is still epoch 1's, untouched.
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE).epoch == 1
    for key, value in weights_in(tmp_path / CHECKPOINT_FILE).items():
        np.testing.assert_array_equal(value, good[key])


def test_the_ratio_check_can_be_changed_or_turned_off():
    tc.manual_seed(0)
    history = quiet_fit(tiny_net(), 2, lr=1e6, max_loss_ratio=None)
    assert history[0]["train_loss"] > 1e6             # the blow-up the check catches
    tc.manual_seed(0)
    assert len(quiet_fit(tiny_net(), 2, lr=1e6, max_loss_ratio=0)) == 2
    tc.manual_seed(0)
    with pytest.raises(DivergenceError, match="is above 10 x the first loss"):
        quiet_fit(tiny_net(), 2, lr=1e6, max_loss_ratio=10)
    with pytest.raises(ValueError, match="max_loss_ratio must be a number >= 0"):
        quiet_fit(tiny_net(), 1, lr=0.5, max_loss_ratio=-1)


def weights_in(path):
    return {k: v.copy() for k, v in load_checkpoint(path).model_state.items()}


def test_numpy_warnings_become_the_divergence_error(tmp_path):
    # lr inf: the first update turns weights into inf and NaN, which NumPy warns
    # about (invalid value) before any loss is NaN.  As a user runs it (warnings
    # printed, not pytest.ini's errors): no warning comes out, the error does.
    # The convolution as im2col: its bias add warns on every NumPy release, where the
    # direct convolution's inf path (einsum) warns on NumPy 2 but not on 1.x.
    tc.manual_seed(0)
    previous = tc.ops.conv.set_algorithm("im2col")
    try:
        with warnings.catch_warnings(record=True) as printed:
            warnings.simplefilter("always")
            with pytest.raises(DivergenceError) as info:
                quiet_fit(tiny_net(), 2, lr=float("inf"), out_dir=tmp_path)
    finally:
        tc.ops.conv.set_algorithm(previous)
    assert [str(w.message) for w in printed] == []
    message = one_line(info.value)
    assert message.startswith("training diverged at epoch 1, batch ")
    assert "NumPy warned 'invalid value encountered" in message
    assert "no checkpoint written yet" in message and "(lr is inf)" in message
    assert not (tmp_path / CHECKPOINT_FILE).exists()


def test_a_non_finite_gradient_stops_before_the_step():
    net = tiny_net()
    net[0].weight.register_hook(lambda grad: grad * float("inf"))
    before = weights(net)
    with pytest.raises(DivergenceError, match=r"at epoch 1, batch 1: gradient norm is inf"):
        quiet_fit(net, 1, lr=0.5, init=None)
    for key, value in weights(net).items():       # no step was taken
        np.testing.assert_array_equal(value, before[key])


def poisoning_sgd(net):
    """SGD whose step leaves an infinite weight, as lr 1e30 left running_var."""
    optimizer = optim.SGD(net.parameters(), lr=0.5)
    real_step = optimizer.step

    def step():
        real_step()
        optimizer.param_groups[0]["params"][0].data[0] = np.inf
    optimizer.step = step
    return optimizer


def test_no_checkpoint_is_written_with_non_finite_weights(tmp_path):
    net = tiny_net()
    quiet_fit(net, 1, lr=0.5, out_dir=tmp_path)
    saved = weights_in(tmp_path / CHECKPOINT_FILE)
    optimizer = poisoning_sgd(net)
    train_iter = DataLoader(TinyImages(16), 16)              # one step per epoch
    with pytest.raises(DivergenceError) as info:
        fit(net, train_iter, None, 2, lr=0.5, optimizer=optimizer, out_dir=tmp_path,
            resume=True, progress=False, verbose=False)
    message = one_line(info.value)
    assert message.startswith("training diverged at the end of epoch 2: 'model.0.weight' "
                              "holds NaN or infinite values")
    assert "checkpoint.npz was not written" in message and "(epoch 1)" in message
    for key, value in weights_in(tmp_path / CHECKPOINT_FILE).items():
        np.testing.assert_array_equal(value, saved[key])
    with pytest.raises(NonFiniteStateError, match=r"model.npz: not written: 'model.0.weight'"):
        save_checkpoint(tmp_path / "model.npz", net)
    assert not (tmp_path / "model.npz").exists()


# ---------------------------------------------------------------- resuming
def test_resume_uses_the_new_lr_and_says_so(tmp_path, capsys):
    quiet_fit(tiny_net(), 1, lr=0.5, momentum=0.9, out_dir=tmp_path)
    history = quiet_fit(tiny_net(), 2, lr=0.1, momentum=0.5, out_dir=tmp_path, resume=True,
                        verbose=True)
    assert [row["lr"] for row in history] == [0.5, 0.1]
    out = capsys.readouterr().out
    assert f"resume: lr 0.1 replaces {tmp_path / CHECKPOINT_FILE}'s 0.5" in out
    assert "resume: momentum 0.5 replaces" in out
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE).meta["optimizer"]["param_groups"][0][
        "momentum"] == 0.5


def test_resume_refuses_another_runs_checkpoint_unless_forced(tmp_path, capsys):
    quiet_fit(tiny_net(), 1, lr=0.5, out_dir=tmp_path, meta={"model": "tiny", "seed": 0})
    with pytest.raises(ValueError) as info:
        quiet_fit(tiny_net(), 2, lr=0.5, out_dir=tmp_path, resume=True,
                  meta={"model": "tiny", "seed": 1, "epochs": 2})
    assert one_line(info.value) == (
        f"{tmp_path / CHECKPOINT_FILE}: written by another run (seed 0 there, 1 here); resume "
        "with its settings, start afresh in another output folder, or force it (--force, "
        "fit(force=True))")
    history = quiet_fit(tiny_net(), 2, lr=0.5, out_dir=tmp_path, resume=True, force=True,
                        meta={"model": "tiny", "seed": 1}, verbose=True)
    assert len(history) == 2
    assert "resuming with changed settings, as forced: seed 0 there, 1 here" in \
        capsys.readouterr().out


@pytest.mark.parametrize("drop", [("position",), ("position", "sums"), ("history",),
                                  ("optimizer", "type"), ("optimizer", "param_groups")])
def test_metadata_missing_a_key_is_a_one_line_value_error(tmp_path, drop):
    quiet_fit(tiny_net(), 1, lr=0.5, out_dir=tmp_path)
    path = tmp_path / CHECKPOINT_FILE
    with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files}
    meta = json.loads(arrays[META_KEY].tobytes())
    parent = meta
    for name in drop[:-1]:
        parent = parent[name]
    del parent[drop[-1]]
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    write_npz_atomically(path, arrays)
    with pytest.raises(ValueError) as info:
        quiet_fit(tiny_net(), 2, lr=0.5, out_dir=tmp_path, resume=True)
    assert not isinstance(info.value, KeyError)
    assert one_line(info.value).startswith(f"{path}: key '__meta__' has")


# ---------------------------------------------------------------- one run per folder
HOLDER = textwrap.dedent("""
    import sys, time
    from tinygrad_cnn.files import hold_folder, part_path
    with hold_folder(sys.argv[1]):
        part_path(sys.argv[1] + "/curves.png").write_bytes(b"half a picture")
        print("holding", flush=True)
        sys.stdin.readline()          # until the test closes stdin (or kills us)
""")


def start_holder(folder):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_a_folder_held_by_a_live_run_is_refused_and_a_dead_ones_taken_over(tmp_path, capsys):
    quiet_fit(tiny_net(), 1, lr=0.5, out_dir=tmp_path)
    metrics = (tmp_path / "metrics.jsonl").read_text()
    holder = start_holder(tmp_path)                       # another process: a live run
    try:
        with pytest.raises(FolderBusyError) as info:
            quiet_fit(tiny_net(), 2, lr=0.5, out_dir=tmp_path, resume=True)
        assert one_line(info.value) == (
            f"{tmp_path} is in use by another run (pid {holder.pid} on host "
            f"{os.uname().nodename}; lock file {tmp_path / LOCK_FILE}); wait for it to end, "
            "stop it, or choose another output folder")
        assert (tmp_path / "metrics.jsonl").read_text() == metrics      # nothing mixed in
    finally:
        holder.kill()                                     # kill -9: lock and part file stay
        holder.wait()
    assert f"pid {holder.pid}" in (tmp_path / LOCK_FILE).read_text()
    assert len(list(tmp_path.glob(".curves.png.*.part"))) == 1
    history = quiet_fit(tiny_net(), 2, lr=0.5, out_dir=tmp_path, resume=True, verbose=True)
    assert len(history) == 2
    out = capsys.readouterr().out
    assert f"took over the lock of a run that is gone (pid {holder.pid} on host" in out
    assert "removed 1 unfinished file(s) left by killed runs (.curves.png." in out
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / LOCK_FILE).exists()


def test_a_run_holds_its_folder_while_it_lasts(tmp_path):
    seen = []

    class Watching(DataLoader):
        def __iter__(self):
            seen.append((tmp_path / LOCK_FILE).read_text())
            return super().__iter__()

    fit(tiny_net(), Watching(TinyImages(16), 16), None, 1, 0.5, out_dir=tmp_path,
        progress=False, verbose=False)
    assert seen == [f"pid {os.getpid()} on host {os.uname().nodename}\n"]
    with hold_folder(tmp_path):                  # re-entrant within the process
        with hold_folder(tmp_path):
            pass
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()
