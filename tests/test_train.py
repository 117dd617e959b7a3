"""fit (d2l's train_ch6): its metrics against independent counts, the files a
run writes, seeded reproducibility, exact resumption after an epoch and after
Ctrl-C mid-epoch, the NaN stop, schedules."""
import json
import math
import os
import signal

import numpy as np
import pytest

import tinygrad_cnn as tc
from tinygrad_cnn import optim
from tinygrad_cnn.checkpoint import load_checkpoint
from tinygrad_cnn.data import DataLoader
from tinygrad_cnn.train import (CHECKPOINT_FILE, NonFiniteLossError, cosine_schedule,
                                evaluate, fit, init_kaiming, init_xavier,
                                step_schedule)

from tests.tiny_training import TinyImages, tiny_net, weights

# the loop's logic is the same under every kernel set: run under the first kernel set only
# (tests/conftest.py).
pytestmark = pytest.mark.kernel_free

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def loaders(n_train=40, n_test=20, batch_size=16, seed=None):
    """Batches of 16 leave a last batch of 8: the epoch means must weight by size."""
    return (DataLoader(TinyImages(n_train, seed=0), batch_size, shuffle=True, seed=seed),
            DataLoader(TinyImages(n_test, seed=1), batch_size))


def quiet_fit(net, train_iter, test_iter, num_epochs, lr, **kwargs):
    return fit(net, train_iter, test_iter, num_epochs, lr, progress=False, verbose=False,
               **kwargs)


def numpy_loss_and_correct(net, dataset):
    """Mean cross-entropy and correct count from the logits, computed in NumPy."""
    with tc.no_grad():
        logits = net(tc.Tensor(dataset.images)).numpy().astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(logits)), dataset.targets].mean()
    return loss, int((logits.argmax(axis=1) == dataset.targets).sum())


def test_metrics_match_an_independent_count():
    # With lr=0 the weights never move, so the running train metrics of the
    # epoch are those of the whole training set under the initial weights.
    train_iter, test_iter = loaders()
    net = tiny_net()
    [row] = quiet_fit(net, train_iter, test_iter, 1, lr=0.0)
    train_loss, train_correct = numpy_loss_and_correct(net, train_iter.dataset)
    _, test_correct = numpy_loss_and_correct(net, test_iter.dataset)
    assert row["epoch"] == 1 and row["train_examples"] == 40
    assert row["train_loss"] == pytest.approx(train_loss, rel=1e-5)
    assert row["train_acc"] == train_correct / 40
    assert row["test_acc"] == test_correct / 20
    assert row["examples_per_sec"] > 0


def test_test_accuracy_is_that_of_the_final_weights():
    train_iter, test_iter = loaders()
    net = tiny_net()
    history = quiet_fit(net, train_iter, test_iter, 3, lr=0.5)
    loss, correct = numpy_loss_and_correct(net, test_iter.dataset)
    assert history[-1]["test_acc"] == correct / 20
    assert evaluate(net, test_iter) == (pytest.approx(loss, rel=1e-5), correct / 20, 20)
    assert net.training      # evaluation put every module back in training mode


def test_xavier_reinitialises_weights_and_keeps_biases():
    net = tiny_net()
    biases = [net[0].bias.detach().numpy().copy(), net[-1].bias.detach().numpy().copy()]
    init_xavier(net)
    for layer, fan_in, fan_out in ((net[0], 9, 36), (net[-1], 36, 3)):
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert np.abs(layer.weight.detach().numpy()).max() <= bound
        assert np.abs(layer.weight.detach().numpy()).max() > 0.8 * bound   # really spread
    np.testing.assert_array_equal(net[0].bias.detach().numpy(), biases[0])
    np.testing.assert_array_equal(net[-1].bias.detach().numpy(), biases[1])


def test_kaiming_reinitialises_weights_with_he_bound_and_keeps_biases():
    net = tiny_net()
    biases = [net[0].bias.detach().numpy().copy(), net[-1].bias.detach().numpy().copy()]
    init_kaiming(net)
    for layer, fan_in in ((net[0], 9), (net[-1], 36)):
        bound = math.sqrt(6 / fan_in)       # gain sqrt(2) for ReLU: sqrt(3) * sqrt(2 / fan_in)
        weight = layer.weight.detach().numpy()
        assert np.abs(weight).max() <= bound
        assert np.abs(weight).max() > 0.8 * bound        # really spread to He's bound
    np.testing.assert_array_equal(net[0].bias.detach().numpy(), biases[0])
    np.testing.assert_array_equal(net[-1].bias.detach().numpy(), biases[1])


def test_fit_init_chooses_the_initialiser():
    weights = {}
    for init in ("xavier", "kaiming", None):
        tc.manual_seed(0)
        net = tiny_net()
        own = net[-1].weight.detach().numpy().copy()
        quiet_fit(net, *loaders(), 0, lr=0.1, init=init)
        weights[init] = (own, net[-1].weight.detach().numpy())
    np.testing.assert_array_equal(*weights[None])          # None keeps the layer's own
    bound = {"xavier": math.sqrt(6 / (36 + 3)), "kaiming": math.sqrt(6 / 36)}
    for init in ("xavier", "kaiming"):
        own, after = weights[init]
        assert not np.array_equal(own, after)
        assert 0.8 * bound[init] < np.abs(after).max() <= bound[init]


def test_run_files(tmp_path, capsys):
    train_iter, test_iter = loaders()
    history = fit(tiny_net(), train_iter, test_iter, 2, lr=0.5, out_dir=tmp_path,
                  progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == history and [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert {"epoch", "train_loss", "train_acc", "test_acc", "examples_per_sec"} <= set(row)
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / CHECKPOINT_FILE).is_file()
    assert not list(tmp_path.glob(".*part"))
    lines = capsys.readouterr().out.splitlines()
    last = history[-1]
    assert lines[-2] == (f"loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, "
                         f"test acc {last['test_acc']:.3f}")
    assert lines[-1].endswith(" examples/sec on cpu")


def test_progress_bar_goes_to_stderr(capsys):
    quiet = dict(verbose=False)
    fit(tiny_net(), *loaders(), 1, lr=0.5, progress=True, **quiet)
    assert "epoch 1/1" in capsys.readouterr().err


def test_same_seed_same_result():
    def run(seed):
        tc.manual_seed(seed)
        net = tiny_net(dropout=0.3)
        history = quiet_fit(net, *loaders(), 2, lr=0.5, seed=seed)
        return weights(net), [(r["train_loss"], r["test_acc"]) for r in history]

    first, again, other = run(3), run(3), run(4)
    assert first[1] == again[1]
    for key in first[0]:
        np.testing.assert_array_equal(first[0][key], again[0][key])
    assert any(not np.array_equal(first[0][k], other[0][k]) for k in first[0])


def straight_run(num_epochs, **kwargs):
    tc.manual_seed(0)
    net = tiny_net(dropout=0.3)
    history = quiet_fit(net, *loaders(), num_epochs, lr=0.5, momentum=0.9, **kwargs)
    return net, history


def resumed_run(out_dir, num_epochs):
    """A fresh process's view: new network, new loaders, another seed; all of
    it must come from the checkpoint."""
    tc.manual_seed(123)
    net = tiny_net(dropout=0.3)
    history = quiet_fit(net, *loaders(), num_epochs, lr=0.5, momentum=0.9, out_dir=out_dir,
                        resume=True)
    return net, history


def assert_same_run(a, b):
    (net_a, history_a), (net_b, history_b) = a, b
    wa, wb = weights(net_a), weights(net_b)
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)

    def strip(history):
        return [{k: v for k, v in row.items() if k != "examples_per_sec"} for row in history]
    assert strip(history_a) == strip(history_b)


def test_resume_after_an_epoch_ends_with_the_same_weights(tmp_path):
    straight = straight_run(3)
    straight_run(1, out_dir=tmp_path)
    assert_same_run(straight, resumed_run(tmp_path, 3))


class InterruptingLoader:
    """A DataLoader that raises KeyboardInterrupt (as Ctrl-C would) before
    batch ``batch`` of epoch ``epoch`` (both from 0)."""

    def __init__(self, loader, epoch, batch):
        self.loader, self.at = loader, (epoch, batch)
        self.epochs_started = 0

    def __len__(self):
        return len(self.loader)

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)

    def __iter__(self):
        epoch, self.epochs_started = self.epochs_started, self.epochs_started + 1
        batches = iter(self.loader)

        def interrupted():
            for i, batch in enumerate(batches):
                if (epoch, i) == self.at:
                    raise KeyboardInterrupt
                yield batch
        return interrupted()


def test_ctrl_c_saves_a_checkpoint_and_resuming_ends_the_same(tmp_path, capsys):
    straight = straight_run(3)
    tc.manual_seed(0)
    net = tiny_net(dropout=0.3)
    train_iter, test_iter = loaders()
    with pytest.raises(KeyboardInterrupt):
        fit(net, InterruptingLoader(train_iter, epoch=1, batch=2), test_iter, 3, lr=0.5,
            momentum=0.9, out_dir=tmp_path, progress=False)
    assert "interrupted in epoch 2 after 2 batches; checkpoint saved" in capsys.readouterr().out
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1                  # epoch 1 finished, epoch 2 did not
    assert_same_run(straight, resumed_run(tmp_path, 3))
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_ctrl_c_inside_a_step_waits_for_the_step_to_finish(tmp_path):
    net = tiny_net()
    optimizer = optim.SGD(net.parameters(), lr=0.5)
    real_step, steps = optimizer.step, []

    def step_hit_by_ctrl_c():
        if len(steps) == 1:
            os.kill(os.getpid(), signal.SIGINT)     # arrives half-way through step 2
        steps.append(weights(net))
        real_step()

    optimizer.step = step_hit_by_ctrl_c
    with pytest.raises(KeyboardInterrupt):
        quiet_fit(net, *loaders(), 2, lr=0.5, optimizer=optimizer, out_dir=tmp_path)
    checkpoint = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert len(steps) == 2 and checkpoint.meta["position"]["batch"] == 2
    now = weights(net)               # after the whole second step, not half of it
    for key, value in now.items():
        np.testing.assert_array_equal(checkpoint.model_state[key], value)
    assert all(not np.array_equal(steps[1][key], now[key]) for key in now)


def test_resume_refuses_another_model(tmp_path):
    quiet_fit(tiny_net(), *loaders(), 1, lr=0.5, out_dir=tmp_path, meta={"model": "tiny"})
    with pytest.raises(ValueError, match=r"checkpoint.npz: key '__meta__' .*'tiny', not 'big'"):
        quiet_fit(tiny_net(), *loaders(), 2, lr=0.5, out_dir=tmp_path, resume=True,
                  meta={"model": "big"})


class NaNImages(TinyImages):
    def __init__(self, n):
        super().__init__(n)
        self.images[20] = np.nan          # in the second batch of 16


def test_nan_loss_stops_with_epoch_batch_and_advice():
    train_iter = DataLoader(NaNImages(40), 16)
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, batch 2: loss is nan; .*lower "
                                                  r"learning rate \(lr is 0.5\)") as info:
        quiet_fit(tiny_net(), train_iter, loaders()[1], 1, lr=0.5)
    assert isinstance(info.value, FloatingPointError) and isinstance(info.value, ValueError)


def test_schedules():
    cosine = cosine_schedule(0.1, 10)
    assert cosine(0) == pytest.approx(0.1) and cosine(5) == pytest.approx(0.05)
    step = step_schedule(0.2, period=4, decay=0.5)
    assert [step(e) for e in (0, 3, 4, 8)] == [0.2, 0.2, 0.1, 0.05]
    history = quiet_fit(tiny_net(), *loaders(), 3, lr=0.3, lr_schedule=step_schedule(0.3, 1, 0.5))
    assert [row["lr"] for row in history] == [0.3, 0.15, 0.075]


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_epochs must be an int >= 0"):
        quiet_fit(tiny_net(), *loaders(), -1, lr=0.1)
    with pytest.raises(ValueError, match="init must be one of 'xavier', 'kaiming' or None"):
        quiet_fit(tiny_net(), *loaders(), 1, lr=0.1, init="he")
    with pytest.raises(ValueError, match="no batches"):
        quiet_fit(tiny_net(), [], loaders()[1], 1, lr=0.1)
