"""Training and evaluation: ``fit`` is d2l's ``train_ch6`` on this engine.

    from tinygrad_cnn.train import fit
    history = fit(net, train_iter, test_iter, num_epochs=10, lr=0.9, device="cpu",
                  out_dir="runs/lenet")

As in d2l, ``fit`` re-initialises every Conv2d/Linear weight with Xavier-
uniform (biases keep theirs), trains with plain SGD on the mean cross-entropy,
and reports per epoch the train loss and accuracy (running over the epoch),
the test accuracy (eval mode, no graph) and the examples per second of the
training steps.  Momentum, weight decay and a learning-rate schedule are there
for those who go beyond d2l.

With ``out_dir`` a run also leaves ``metrics.jsonl`` (one JSON row per epoch),
``curves.png`` and ``checkpoint.npz`` (after each epoch, and on Ctrl-C) there;
``resume=`` continues from a checkpoint so that the run ends with the same
weights as one that was never interrupted (on the CPU: the checkpoint holds the
engine's NumPy generator, not CuPy's).
"""
import contextlib
import json
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np

from . import nn, optim
from .autograd import no_grad
from .backend import (explain_out_of_memory, get_rng_state, manual_seed, require_device,
                      set_rng_state, to_device)
from .checkpoint import load_checkpoint, save_checkpoint
from .files import atomic_write
from .nn import functional as F

CHECKPOINT_FILE = "checkpoint.npz"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


class NonFiniteLossError(FloatingPointError, ValueError):
    """The loss became NaN or infinite: training diverged."""


# ---------------------------------------------------------------- initialisation
def init_xavier(net):
    """d2l's ``init_weights``: Xavier-uniform for every Conv2d and Linear weight."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
    return net


# ---------------------------------------------------------------- learning-rate schedules
def cosine_schedule(lr, num_epochs, min_lr=0.0):
    """epoch -> lr falling from ``lr`` to ``min_lr`` along half a cosine."""
    def schedule(epoch):
        return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * epoch / num_epochs)) / 2
    return schedule


def step_schedule(lr, period, decay):
    """epoch -> lr · decay^(epoch // period), as ``torch.optim.lr_scheduler.StepLR``."""
    def schedule(epoch):
        return lr * decay ** (epoch // period)
    return schedule


# ---------------------------------------------------------------- evaluation
def accuracy(y_hat, y):
    """How many rows of the logits ``y_hat`` have their maximum at the label ``y``."""
    return int((y_hat.data.argmax(axis=1) == y.data).sum())


@contextlib.contextmanager
def _eval_mode(net):
    """Eval mode and no graph inside the block; every module's mode restored after."""
    modes = {module: module.training for module in net.modules()}
    net.eval()
    try:
        with no_grad():
            yield
    finally:
        for module, training in modes.items():
            module.training = training


def evaluate(net, data_iter, device=None):
    """``(mean cross-entropy, accuracy, number of examples)`` of ``net`` on ``data_iter``."""
    loss_sum, correct, count = 0.0, 0, 0
    with _eval_mode(net), explain_out_of_memory("evaluate"):
        for X, y in data_iter:
            if device is not None:
                X, y = X.to(device), y.to(device)
            y_hat = net(X)
            loss_sum += float(F.cross_entropy(y_hat, y, reduction="sum").item())
            correct += accuracy(y_hat, y)
            count += y.shape[0]
    if count == 0:
        raise ValueError("evaluate: the data iterator gave no examples")
    return loss_sum / count, correct / count, count


def evaluate_accuracy(net, data_iter, device=None):
    """d2l's ``evaluate_accuracy_gpu``: the fraction of ``data_iter`` classified right."""
    return evaluate(net, data_iter, device)[1]


def predict(net, data_iter, device=None):
    """The predicted class of every example of ``data_iter`` (labels are ignored),
    as a NumPy int64 array."""
    predictions = []
    with _eval_mode(net), explain_out_of_memory("predict"):
        for X, _ in data_iter:
            if device is not None:
                X = X.to(device)
            predictions.append(to_device(net(X).data.argmax(axis=1), "cpu"))
    return np.concatenate(predictions).astype(np.int64) if predictions else np.zeros(0, np.int64)


# ---------------------------------------------------------------- fit
def fit(net, train_iter, test_iter, num_epochs, lr, device="cpu", *, momentum=0.0,
        weight_decay=0.0, lr_schedule=None, optimizer=None, init="xavier", seed=None,
        out_dir=None, resume=None, progress=True, plot=True, verbose=True, meta=None):
    """Train ``net`` for ``num_epochs`` epochs; returns the history, a list of
    one dict per epoch (``epoch`` from 1, ``train_loss``, ``train_acc``,
    ``test_acc``, ``examples_per_sec``, ``lr``, ...).

    train_iter, test_iter: iterables of ``(X, y)`` batches (DataLoaders).
    lr_schedule: None (constant ``lr``) or a callable epoch (from 0) -> lr,
                 e.g. ``cosine_schedule(lr, num_epochs)``.
    optimizer:   used instead of ``SGD(lr, momentum, weight_decay)`` if given.
    init:        "xavier" (d2l) or None to keep the network's own weights.
    seed:        ``manual_seed(seed)`` first, so a run can be repeated exactly.
    out_dir:     folder for metrics.jsonl, curves.png and checkpoint.npz.
    resume:      a checkpoint path (or True: ``out_dir/checkpoint.npz``) to go on from.
    meta:        JSON-serialisable facts about the run kept in the checkpoints
                 (the CLI stores the model name, checked on resume).

    A NaN or infinite loss raises ``NonFiniteLossError`` before the step is
    taken.  Ctrl-C (KeyboardInterrupt) saves a checkpoint into ``out_dir`` and
    is raised again.
    """
    if not isinstance(num_epochs, int) or num_epochs < 0:
        raise ValueError(f"fit: num_epochs must be an int >= 0, got {num_epochs!r}")
    if seed is not None:
        manual_seed(seed)
    if init == "xavier":
        init_xavier(net)
    elif init is not None:
        raise ValueError(f"fit: init must be 'xavier' or None, got {init!r}")
    device = require_device(device)    # no GPU: say so before any work
    net.to(device)
    if optimizer is None:
        optimizer = optim.SGD(net.parameters(), lr=lr, momentum=momentum,
                              weight_decay=weight_decay)
    run = _Run(net, optimizer, train_iter, test_iter, num_epochs, device, lr_schedule,
               out_dir, progress, plot, verbose, meta or {})
    if resume is True and out_dir is None:
        raise ValueError("fit: resume=True resumes from out_dir's checkpoint; give out_dir "
                         "or a checkpoint path")
    if resume:
        run.resume(Path(out_dir) / CHECKPOINT_FILE if resume is True else resume)
    else:
        run.start()
    return run.train()


class _Run:
    """One training run's position and running sums, so that it can be saved at
    any batch boundary and continued exactly.

    ``epoch`` counts finished epochs, ``batch`` the finished steps of the
    current one; ``sums`` are that epoch's loss·n, correct, n and step seconds.
    ``epoch_start`` is the generator and loader state before the current
    epoch's ``iter(train_iter)``; ``rng_after_step`` the generator after the
    last step (dropout draws from it).  Resuming mid-epoch replays the epoch's
    batch order from the first and skips the finished batches.
    """

    def __init__(self, net, optimizer, train_iter, test_iter, num_epochs, device,
                 lr_schedule, out_dir, progress, plot, verbose, meta):
        self.net, self.optimizer = net, optimizer
        self.train_iter, self.test_iter = train_iter, test_iter
        self.num_epochs, self.device, self.lr_schedule = num_epochs, device, lr_schedule
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress, self.plot, self.verbose, self.meta = progress, plot, verbose, meta
        self.history = []
        self.epoch, self.batch = 0, 0
        self.sums = [0.0, 0, 0, 0.0]
        self.epoch_start = self.rng_after_step = None
        self.resuming = False     # the first epoch must replay the checkpoint's state

    # ------------------------------------------------------------ starting
    def start(self):
        self.epoch_start = self._snapshot()
        self._rewrite_metrics()

    def resume(self, path):
        checkpoint = load_checkpoint(path)
        saved_model = checkpoint.meta.get("run", {}).get("model")
        wanted = self.meta.get("model")
        if saved_model and wanted and saved_model != wanted:
            raise ValueError(f"{checkpoint.path}: key '__meta__' says the checkpoint is of "
                             f"model '{saved_model}', not '{wanted}'")
        if "position" not in checkpoint.meta:
            raise ValueError(f"{checkpoint.path}: key '__meta__' has no training position "
                             "(a weights-only file cannot resume training)")
        checkpoint.load_into(self.net, self.optimizer)
        position = checkpoint.meta["position"]
        self.epoch, self.batch = position["epoch"], position["batch"]
        self.sums = position["sums"]
        self.epoch_start = position["epoch_start"]
        self.rng_after_step = position["rng_after_step"]
        self.history = checkpoint.meta["history"]
        self.resuming = True
        self._rewrite_metrics()
        if self.epoch >= self.num_epochs:
            self._say(f"{checkpoint.path}: all {self.epoch} epochs already done")
        else:
            self._say(f"resuming from {checkpoint.path} in epoch {self.epoch + 1} after "
                      f"{self.batch} batches")

    def _snapshot(self):
        """Generator and loader states: what decides the next epoch's batches."""
        return {"rng": get_rng_state(),
                "loaders": [_loader_state(self.train_iter), _loader_state(self.test_iter)]}

    def _restore(self, snapshot):
        set_rng_state(snapshot["rng"])
        for loader, state in zip((self.train_iter, self.test_iter), snapshot["loaders"]):
            if state is not None:
                loader.load_state_dict(state)

    # ------------------------------------------------------------ the loop
    def train(self):
        self._say(f"training on {self.device}")
        try:
            while self.epoch < self.num_epochs:
                self._train_epoch()
                self._end_epoch()
        except KeyboardInterrupt:
            self._save_on_interrupt()
            raise
        self._report()
        return self.history

    def _train_epoch(self):
        if self.lr_schedule is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = float(self.lr_schedule(self.epoch))
        self.net.train()
        if self.resuming:
            self._restore(self.epoch_start)
        batches = iter(self.train_iter)
        try:
            if self.resuming and self.batch:
                set_rng_state(self.rng_after_step)
                for _ in range(self.batch):   # replay the finished part of the epoch
                    next(batches)
            self.resuming = False
            bar = _progress_bar(batches, self.train_iter, self.batch, self.progress,
                                f"epoch {self.epoch + 1}/{self.num_epochs}")
            # (once per epoch, not per step: the guard costs nothing while no error comes)
            with explain_out_of_memory(f"fit: training in epoch {self.epoch + 1}"):
                for X, y in bar:
                    self._step(X, y)
                    if self.progress:
                        bar.set_postfix(loss=f"{self.sums[0] / self.sums[2]:.3f}",
                                        acc=f"{self.sums[1] / self.sums[2]:.3f}",
                                        refresh=False)
        finally:
            if hasattr(batches, "close"):    # stops a DataLoader's prefetch thread
                batches.close()

    def _step(self, X, y):
        start = time.perf_counter()
        X, y = X.to(self.device), y.to(self.device)
        y_hat = self.net(X)
        loss = F.cross_entropy(y_hat, y)
        value = float(loss.item())
        if not math.isfinite(value):
            lr = self.optimizer.param_groups[0]["lr"]
            raise NonFiniteLossError(
                f"loss is {value} at epoch {self.epoch + 1}, batch {self.batch + 1}: training "
                f"diverged; try a lower learning rate (lr is {lr:g})")
        self.optimizer.zero_grad()
        loss.backward()
        with _sigint_deferred():   # the step and the bookkeeping happen together or not at all
            self.optimizer.step()
            n = int(y.shape[0])
            self.sums[0] += value * n
            self.sums[1] += accuracy(y_hat, y)
            self.sums[2] += n
            self.sums[3] += time.perf_counter() - start
            self.batch += 1
            self.rng_after_step = get_rng_state()

    def _end_epoch(self):
        loss_sum, correct, count, seconds = self.sums
        if count == 0:
            raise ValueError("fit: the training iterator gave no batches")
        test_acc = evaluate_accuracy(self.net, self.test_iter, self.device) \
            if self.test_iter is not None else None
        row = {"epoch": self.epoch + 1, "train_loss": loss_sum / count,
               "train_acc": correct / count, "test_acc": test_acc,
               "examples_per_sec": count / seconds if seconds > 0 else None,
               "train_examples": count, "lr": self.optimizer.param_groups[0]["lr"]}
        self.history.append(row)
        self.epoch, self.batch, self.sums = self.epoch + 1, 0, [0.0, 0, 0, 0.0]
        self.epoch_start = self._snapshot()
        self._append_metrics(row)
        self._say(_epoch_line(row, self.num_epochs))
        if self.out_dir is not None:
            if self.plot:
                from .viz import plot_history
                plot_history(self.history, self.out_dir / CURVES_FILE, self.num_epochs)
            self._save(self.out_dir / CHECKPOINT_FILE)

    # ------------------------------------------------------------ output
    def _save(self, path):
        position = {"epoch": self.epoch, "batch": self.batch, "sums": self.sums,
                    "epoch_start": self.epoch_start, "rng_after_step": self.rng_after_step}
        return save_checkpoint(path, self.net, self.optimizer, epoch=self.epoch,
                               position=position, history=self.history, run=self.meta)

    def _save_on_interrupt(self):
        if self.out_dir is None:
            self._say("interrupted (no out_dir, nothing saved)")
            return
        path = self._save(self.out_dir / CHECKPOINT_FILE)
        self._say(f"interrupted in epoch {self.epoch + 1} after {self.batch} batches; "
                  f"checkpoint saved to {path}")

    def _rewrite_metrics(self):
        """metrics.jsonl as the history says (a resumed run drops rows written
        after its checkpoint)."""
        if self.out_dir is not None:
            with atomic_write(self.out_dir / METRICS_FILE, "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in self.history)

    def _append_metrics(self, row):
        if self.out_dir is not None:
            with open(self.out_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()

    def _report(self):
        """d2l's closing lines: the last epoch's metrics and the overall speed."""
        if not self.history:
            return
        last = self.history[-1]
        self._say(f"loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, "
                  f"test acc {_fmt(last['test_acc'])}")
        rows = [r for r in self.history if r["examples_per_sec"]]
        if rows:
            examples = sum(r["train_examples"] for r in rows)
            seconds = sum(r["train_examples"] / r["examples_per_sec"] for r in rows)
            self._say(f"{examples / seconds:.1f} examples/sec on {self.device}")

    def _say(self, line):
        if self.verbose:
            print(line, flush=True)


def _fmt(value):
    return "n/a" if value is None else f"{value:.3f}"


def _epoch_line(row, num_epochs):
    speed = row["examples_per_sec"]
    return (f"epoch {row['epoch']}/{num_epochs}: loss {row['train_loss']:.3f}, "
            f"train acc {row['train_acc']:.3f}, test acc {_fmt(row['test_acc'])}"
            + (f", {speed:.1f} examples/sec" if speed else ""))


def _loader_state(loader):
    return loader.state_dict() if hasattr(loader, "state_dict") else None


def _progress_bar(batches, loader, done, enabled, description):
    if not enabled:
        return batches
    from tqdm import tqdm
    try:
        total = len(loader)
    except TypeError:
        total = None
    return tqdm(batches, total=total, initial=done, desc=description, unit="batch",
                leave=False, dynamic_ncols=True)


@contextlib.contextmanager
def _sigint_deferred():
    """Hold a Ctrl-C that arrives inside the block until its end, so that an
    interrupt never falls between two parameters' updates (a checkpoint then
    always holds the weights after a whole number of steps)."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield                   # only the main thread may set handlers
        return
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(signal.SIGINT, None)   # Python's default handler raises KeyboardInterrupt
