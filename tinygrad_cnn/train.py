"""Training and evaluation: ``fit`` is d2l's ``train_ch6`` on this engine.

    from tinygrad_cnn.train import fit
    history = fit(net, train_iter, test_iter, num_epochs=10, lr=0.9, device="cpu",
                  out_dir="runs/lenet")

As in d2l, ``fit`` re-initialises every Conv2d/Linear weight with Xavier-
uniform (biases keep theirs; ``init=`` chooses Kaiming or none instead), trains with plain SGD on the mean cross-entropy,
and reports per epoch the train loss and accuracy (running over the epoch),
the test accuracy (eval mode, no graph) and the examples per second of the
training steps.  Momentum, weight decay and a learning-rate schedule are there
for those who go beyond d2l.

With ``out_dir`` a run also leaves ``metrics.jsonl`` (one JSON row per epoch),
``curves.png`` and ``checkpoint.npz`` (after each epoch, and on Ctrl-C) there;
``resume=`` continues from a checkpoint so that the run ends with the same
weights as one that was never interrupted (on the CPU: the checkpoint holds the
engine's NumPy generator, not CuPy's).  The folder belongs to the run while it
lasts (``files.hold_folder``: a second run there is refused).

A run never keeps a bad state: every step is checked after the loss and before
the update (see ``DivergenceError``), and no checkpoint is written with a NaN
or infinite array, so the last checkpoint is always one to go back to.

``cuda_graph=True`` (device 'cuda') runs each training step as one replayed
CUDA graph (``tinygrad_cnn/cuda_graphs.py``): the first ``GRAPH_WARMUP_STEPS``
steps eagerly, then the step is captured and replayed per batch, captured again
when the learning rate changes; a batch of another shape (the last, partial
one) runs uncaptured.  The same loss curve as without the graph.  Nothing in a
graph can read the GPU on the host, so there the checks read the loss, the
gradient norm and the accuracy after the replayed step, update included: a
``DivergenceError`` names the same batch, but the weights in memory then hold
that step (a checkpoint never does).
"""
import contextlib
import json
import math
import signal
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from . import nn, optim
from .autograd import no_grad
from .backend import (device_of, explain_out_of_memory, get_array_module, get_rng_state,
                      manual_seed, require_device, set_rng_state, to_device)
from .checkpoint import NonFiniteStateError, load_checkpoint, save_checkpoint
from .files import atomic_write, hold_folder
from .nn import functional as F

CHECKPOINT_FILE = "checkpoint.npz"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


# Settings a resumed run may change: the new value is used, and said.  Any other
# key of ``fit(meta=...)`` that differs from the checkpoint's is refused.
RESUMABLE_CHANGES = ("lr", "momentum", "weight_decay", "epochs")

# fit(cuda_graph=True): steps run eagerly before the capture (torch's default).
GRAPH_WARMUP_STEPS = 3


class DivergenceError(FloatingPointError, ValueError):
    """Training diverged: a NaN or infinite loss, gradient or weight, a loss
    above ``max_loss_ratio`` times the first step's, or a NumPy floating-point
    warning (overflow, invalid value) during a step.  Raised before the bad
    step is taken or saved; the message names the epoch, the batch, the
    quantity and the last good checkpoint."""


class NonFiniteLossError(DivergenceError):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------- initialisation
def init_xavier(net):
    """d2l's ``init_weights``: Xavier-uniform for every Conv2d and Linear weight."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
    return net


def init_kaiming(net):
    """He (Kaiming) uniform for every Conv2d and Linear weight, for ReLU: weight
    variance 2 / fan_in keeps the activations' scale through a deep ReLU stack,
    where Xavier's 2 / (fan_in + fan_out) shrinks it layer after layer (NiN and
    GoogLeNet start on a plateau with it; see models/presets.py)."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
    return net


INITS = {"xavier": init_xavier, "kaiming": init_kaiming}


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
        out_dir=None, resume=None, progress=True, plot=True, verbose=True, meta=None,
        max_loss_ratio=1e3, force=False, distributed=False, cuda_graph=False):
    """Train ``net`` for ``num_epochs`` epochs; returns the history, a list of
    one dict per epoch (``epoch`` from 1, ``train_loss``, ``train_acc``,
    ``test_acc``, ``examples_per_sec``, ``lr``, ...).

    train_iter, test_iter: iterables of ``(X, y)`` batches (DataLoaders).
    lr_schedule: None (constant ``lr``) or a callable epoch (from 0) -> lr,
                 e.g. ``cosine_schedule(lr, num_epochs)``.
    optimizer:   used instead of ``SGD(lr, momentum, weight_decay)`` if given.
    init:        "xavier" (d2l), "kaiming" (He, for ReLU networks) or None to keep
                 the network's own weights (PyTorch's default init).
    seed:        ``manual_seed(seed)`` first, so a run can be repeated exactly.
    out_dir:     folder for metrics.jsonl, curves.png and checkpoint.npz.
    resume:      a checkpoint path (or True: ``out_dir/checkpoint.npz``) to go on from.
    meta:        JSON-serialisable facts about the run kept in the checkpoints and
                 as ``run`` in every history row (the CLI stores the model name and
                 its settings).  On resume they must equal the checkpoint's, else
                 ValueError (another run's checkpoint), except ``RESUMABLE_CHANGES``.
    max_loss_ratio: stop when a step's loss exceeds this times the run's first
                 loss (at least 1.0); None or 0 turns the check off.
    force:       resume even from a checkpoint whose ``meta`` differs.

    distributed: one process per rank under ``mpiexec -n N``: data-parallel training
                 on each rank's shard, rank 0 alone writing (see
                 ``tinygrad_cnn/distributed/training.py``).
    cuda_graph:  replay each step as a CUDA graph (device 'cuda'; see the module
                 docstring and ``tinygrad_cnn/cuda_graphs.py``).

    Every step is guarded: a NaN or infinite loss (``NonFiniteLossError``) or
    gradient norm, a loss above the ``max_loss_ratio`` threshold, or a NumPy
    RuntimeWarning raises ``DivergenceError`` before the step is taken, and a
    state with NaN or infinite arrays is never saved.  On resume, the optimizer
    options given here (lr, momentum, ...) replace the checkpoint's, with a
    note.  Ctrl-C (KeyboardInterrupt) saves a checkpoint into ``out_dir`` and
    is raised again.
    """
    if not isinstance(num_epochs, int) or num_epochs < 0:
        raise ValueError(f"fit: num_epochs must be an int >= 0, got {num_epochs!r}")
    if max_loss_ratio is not None and not max_loss_ratio >= 0:
        raise ValueError(f"fit: max_loss_ratio must be a number >= 0 or None, got "
                         f"{max_loss_ratio!r}")
    if cuda_graph and distributed:
        raise ValueError("fit: cuda_graph=True does not go with distributed=True (the "
                         "gradient all-reduce is not captured); use one of them")
    if cuda_graph and require_device(device) == "cpu":
        raise ValueError(f"fit: cuda_graph=True needs device 'cuda' (a CUDA graph replays "
                         f"GPU work), got device {device!r}")
    if seed is not None:
        manual_seed(seed)
    if init is not None and init not in INITS:
        raise ValueError(f"fit: init must be one of {', '.join(map(repr, INITS))} or None, "
                         f"got {init!r}")
    if init is not None:
        INITS[init](net)
    if distributed:      # before anything is placed: 'cuda' means this rank's GPU
        from .distributed import training as distributed_training
        device = distributed_training.device_for_rank(device)
    device = require_device(device)    # no GPU: say so before any work
    net.to(device)
    writes = True
    if distributed:
        net, writes, meta = distributed_training.prepare(net, train_iter, meta)
    written = out_dir if writes else None    # distributed: rank 0 alone writes
    if optimizer is None:
        optimizer = optim.SGD(net.parameters(), lr=lr, momentum=momentum,
                              weight_decay=weight_decay)
    run = _Run(net, optimizer, train_iter, test_iter, num_epochs, device, lr_schedule,
               written, progress and writes, plot, verbose and writes, meta or {},
               max_loss_ratio or None)
    run.cuda_graph = cuda_graph
    if distributed:
        run.reduce_sums = distributed_training.global_sums
        run.saves_on_interrupt = False   # the ranks stop at different steps
    if resume is True and out_dir is None:
        raise ValueError("fit: resume=True resumes from out_dir's checkpoint; give out_dir "
                         "or a checkpoint path")
    owning = hold_folder(written, say=run._say) if written is not None \
        else contextlib.nullcontext()
    with owning:
        if resume:
            path = Path(out_dir) / CHECKPOINT_FILE if resume is True else resume
            if distributed:
                distributed_training.check_resumable(path)
            run.resume(path, force)
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
    batch order from the first and skips the finished batches.  ``first_loss``
    (the run's first step's) sets the divergence threshold; ``last_good`` is
    the (path, epoch) of the last checkpoint written or resumed from; ``phase``
    says where a divergence is found outside a step.
    """

    def __init__(self, net, optimizer, train_iter, test_iter, num_epochs, device,
                 lr_schedule, out_dir, progress, plot, verbose, meta, max_loss_ratio):
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
        self.max_loss_ratio, self.first_loss = max_loss_ratio, None
        self.last_good = None
        self.phase = None         # "evaluation" or "saving" while not in a step
        self.reduce_sums = None   # distributed: the epoch's sums over every rank
        self.saves_on_interrupt = True
        self.cuda_graph = False
        self.graphed = None       # the GraphedStep, made at the first step
        self.uncaptured_steps = 0  # cuda_graph: batches of another shape, run eagerly
        self.num_classes = None   # the network's output width (checks labels on the host)

    # ------------------------------------------------------------ starting
    def start(self):
        self.epoch_start = self._snapshot()
        self._rewrite_metrics()

    def resume(self, path, force=False):
        checkpoint = load_checkpoint(path)
        self._check_same_run(checkpoint, force)
        if "position" not in checkpoint.meta:
            raise ValueError(f"{checkpoint.path}: key '__meta__' has no training position "
                             "(a weights-only file cannot resume training)")
        position = {name: checkpoint.field("position", name)
                    for name in ("epoch", "batch", "sums", "epoch_start", "rng_after_step")}
        history = checkpoint.field("history")
        wanted = _options(self.optimizer)
        checkpoint.load_into(self.net, self.optimizer)
        self._keep_options(wanted, checkpoint.path)
        self.epoch, self.batch = position["epoch"], position["batch"]
        self.sums = position["sums"]
        self.epoch_start = position["epoch_start"]
        self.rng_after_step = position["rng_after_step"]
        self.first_loss = checkpoint.meta["position"].get("first_loss")
        self.history = history
        self.last_good = (checkpoint.path, checkpoint.epoch)
        self.resuming = True
        self._rewrite_metrics()
        if self.epoch >= self.num_epochs:
            self._say(f"{checkpoint.path}: all {self.epoch} epochs already done")
        else:
            self._say(f"resuming from {checkpoint.path} in epoch {self.epoch + 1} after "
                      f"{self.batch} batches")

    def _check_same_run(self, checkpoint, force):
        """Refuse another run's checkpoint: another model always, other settings
        unless ``force``."""
        saved = checkpoint.meta.get("run", {})
        if saved.get("model") and self.meta.get("model") and \
                saved["model"] != self.meta["model"]:
            raise ValueError(f"{checkpoint.path}: key '__meta__' says the checkpoint is of "
                             f"model '{saved['model']}', not '{self.meta['model']}'")
        changed = [f"{key} {saved[key]!r} there, {value!r} here"
                   for key, value in self.meta.items()
                   if key in saved and saved[key] != value and key not in RESUMABLE_CHANGES]
        if changed and not force:
            raise ValueError(f"{checkpoint.path}: written by another run ({'; '.join(changed)}); "
                             "resume with its settings, start afresh in another output "
                             "folder, or force it (--force, fit(force=True))")
        if changed:
            self._say(f"resuming with changed settings, as forced: {'; '.join(changed)}")
        if "epochs" in saved and saved["epochs"] != self.num_epochs:
            self._say(f"resume: {self.num_epochs} epochs in all (the checkpoint's run had "
                      f"{saved['epochs']})")

    def _keep_options(self, wanted, path):
        """After loading the optimizer's state, put back the options this run was
        given (lr, momentum, ...), saying which ones differ from the checkpoint's.
        (Under a schedule, the schedule sets the lr.)"""
        for group, options in zip(self.optimizer.param_groups, wanted):
            for name, value in options.items():
                if _same(group.get(name), value) or (name == "lr" and self.lr_schedule):
                    continue
                self._say(f"resume: {name} {_show(value)} replaces {path}'s "
                          f"{_show(group.get(name))}")
                group[name] = value

    def _snapshot(self):
        """Generator and loader states: what decides the next epoch's batches."""
        return {"rng": get_rng_state(),
                "loaders": [_loader_state(self.train_iter), _loader_state(self.test_iter)]}

    def _restore(self, snapshot):
        set_rng_state(snapshot["rng"])
        for loader, state in zip((self.train_iter, self.test_iter), snapshot["loaders"]):
            if state is not None and loader is not None:
                loader.load_state_dict(state)

    # ------------------------------------------------------------ the loop
    def train(self):
        self._say(f"training on {self.device}")
        try:
            # NumPy's floating-point warnings (overflow, invalid value) mean the
            # numbers have left the range: they stop the run as DivergenceError.
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                while self.epoch < self.num_epochs:
                    self._train_epoch()
                    self._end_epoch()
        except RuntimeWarning as warning:
            raise DivergenceError(self._diverged(f"NumPy warned '{warning}'")) from None
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
        if self.cuda_graph:
            self._graph_step(X, y)
        else:
            self._eager_step(X, y)

    def _eager_step(self, X, y):
        start = time.perf_counter()
        X, y = X.to(self.device), y.to(self.device)
        y_hat = self.net(X)
        loss = F.cross_entropy(y_hat, y)
        value = float(loss.item())
        self._check_loss(value)
        self.optimizer.zero_grad()
        loss.backward()
        self._check_gradients()
        with _sigint_deferred():   # the step and the bookkeeping happen together or not at all
            self.optimizer.step()
            n = int(y.shape[0])
            self.sums[0] += value * n
            self.sums[1] += accuracy(y_hat, y)
            self.sums[2] += n
            self.sums[3] += time.perf_counter() - start
            self.batch += 1
            self.rng_after_step = get_rng_state()
            if self.first_loss is None:
                self.first_loss = value

    # ------------------------------------------------------------ the graphed step
    def _graph_step(self, X, y):
        """One step replayed as a CUDA graph; a batch of another shape runs eagerly."""
        from .cuda_graphs import make_graphed_step
        if self.graphed is not None and not self.graphed.accepts(X, y):
            self.uncaptured_steps += 1
            return self._eager_step(X, y)
        start = time.perf_counter()
        self._check_labels(y)
        if self.graphed is None:
            self.graphed = make_graphed_step(self._captured_step,
                                             (X.to(self.device), y.to(self.device)),
                                             GRAPH_WARMUP_STEPS, self.optimizer)
        # the update is inside the graph: it and the bookkeeping together or not at all
        with _sigint_deferred():
            stats = self.graphed(X, y)
            loss, squares, correct = (float(v) for v in to_device(stats, "cpu"))
            try:
                self._check_loss(loss)
                self._check_gradient_squares(squares)
            except DivergenceError as exc:
                raise type(exc)(f"{exc} (with cuda_graph=True the checks follow the "
                                "replayed step: the weights in memory include it; the "
                                "checkpoint does not)") from None
            n = int(y.shape[0])
            self.sums[0] += loss * n
            self.sums[1] += int(correct)
            self.sums[2] += n
            self.sums[3] += time.perf_counter() - start
            self.batch += 1
            self.rng_after_step = get_rng_state()
            if self.first_loss is None:
                self.first_loss = loss

    def _captured_step(self, X, y):
        """The whole step with no host read: loss, squared gradient norm and the
        number right come back as one small GPU array, read after the replay."""
        y_hat = self.net(X)
        loss = F.cross_entropy(y_hat, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.num_classes = y_hat.shape[1]
        xp = get_array_module(loss.data)
        squares = xp.zeros((), dtype=xp.float64)
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    g = p.grad.data.ravel()
                    squares += xp.vdot(g, g)
        correct = (y_hat.data.argmax(axis=1) == y.data).sum()
        return xp.stack([loss.data.astype(xp.float64), squares, correct.astype(xp.float64)])

    def _check_labels(self, y):
        """cross_entropy's target check, on the host: a captured step cannot read the GPU."""
        if self.num_classes is None or y.shape[0] == 0:
            return
        labels = to_device(y.data, "cpu") if device_of(y.data) != "cpu" else y.data
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.num_classes:
            raise ValueError(f"cross_entropy: target {low if low < 0 else high} is out of "
                             f"bounds for {self.num_classes} classes (valid: 0 … "
                             f"{self.num_classes - 1})")

    # ------------------------------------------------------------ guards
    def _check_loss(self, value):
        if not math.isfinite(value):
            raise NonFiniteLossError(self._diverged(f"loss is {value}"))
        threshold = self._loss_threshold()
        if threshold is not None and value > threshold:
            raise DivergenceError(self._diverged(
                f"loss {value:.4g} is above {self.max_loss_ratio:g} x the first loss "
                f"{self.first_loss:.4g} (max_loss_ratio, --max-loss-ratio)"))

    def _loss_threshold(self):
        # The run's first loss, not the first epoch's mean: a run that explodes
        # within its first epoch (lr 1e6 does, in a few batches) has a huge mean.
        # At least 1.0, so a network that starts almost perfect (a loss of 1e-4,
        # fine-tuning) is not stopped by ordinary noise.
        if self.max_loss_ratio is None or self.first_loss is None:
            return None
        return self.max_loss_ratio * max(self.first_loss, 1.0)

    def _check_gradients(self):
        grads = [p.grad.data for group in self.optimizer.param_groups
                 for p in group["params"] if p.grad is not None]
        # One BLAS pass per gradient, summed on the device: one sync per step.
        self._check_gradient_squares(
            float(sum(get_array_module(g).vdot(g.ravel(), g.ravel()) for g in grads)))

    def _check_gradient_squares(self, squares):
        """Raise if the sum of the gradients' squares is not finite."""
        if not math.isfinite(squares):
            grads = [p.grad.data for group in self.optimizer.param_groups
                     for p in group["params"] if p.grad is not None]
            # NaN/inf, or finite float32 gradients whose squares overflowed: float64 says.
            squares = sum(float(get_array_module(g).square(g, dtype="float64").sum())
                          for g in grads)
        if not math.isfinite(squares):
            raise DivergenceError(self._diverged(f"gradient norm is {math.sqrt(squares)}"))

    def _diverged(self, what):
        """The one-line divergence message: where, what, the last good checkpoint,
        the advice."""
        if self.phase == "saving":          # the position counts finished work
            where = (f"the end of epoch {self.epoch}" if self.batch == 0
                     else f"epoch {self.epoch + 1}, after batch {self.batch}")
        else:
            where = f"epoch {self.epoch + 1}, " + (
                "evaluation" if self.phase == "evaluation" else f"batch {self.batch + 1}")
        if self.last_good is not None:
            kept = f"last good checkpoint: {self.last_good[0]} (epoch {self.last_good[1]})"
        elif self.out_dir is not None:
            kept = "no checkpoint written yet"
        else:
            kept = "no out_dir, no checkpoint"
        lr = self.optimizer.param_groups[0]["lr"]
        return (f"training diverged at {where}: {what}; {kept}; try a lower learning rate "
                f"(lr is {lr:g})")

    def _end_epoch(self):
        loss_sum, correct, count, seconds = (self.sums if self.reduce_sums is None
                                             else self.reduce_sums(self.sums))
        if count == 0:
            raise ValueError("fit: the training iterator gave no batches")
        self.phase = "evaluation"
        test_acc = evaluate_accuracy(self.net, self.test_iter, self.device) \
            if self.test_iter is not None else None
        self.phase = None
        row = {"epoch": self.epoch + 1, "train_loss": loss_sum / count,
               "train_acc": correct / count, "test_acc": test_acc,
               "examples_per_sec": count / seconds if seconds > 0 else None,
               "train_examples": count, "lr": self.optimizer.param_groups[0]["lr"]}
        if self.meta:    # the run's settings on every row: metrics.jsonl hides nothing
            row["run"] = self.meta
        self.history.append(row)
        self.epoch, self.batch, self.sums = self.epoch + 1, 0, [0.0, 0, 0, 0.0]
        self.epoch_start = self._snapshot()
        self._rewrite_metrics()
        self._say(_epoch_line(row, self.num_epochs))
        if self.out_dir is not None:
            if self.plot:
                from .viz import plot_history
                plot_history(self.history, self.out_dir / CURVES_FILE, self.num_epochs)
            self._save(self.out_dir / CHECKPOINT_FILE)

    # ------------------------------------------------------------ output
    def _save(self, path):
        position = {"epoch": self.epoch, "batch": self.batch, "sums": self.sums,
                    "epoch_start": self.epoch_start, "rng_after_step": self.rng_after_step,
                    "first_loss": self.first_loss}
        try:
            save_checkpoint(path, self.net, self.optimizer, epoch=self.epoch,
                            position=position, history=self.history, run=self.meta)
        except NonFiniteStateError as exc:
            self.phase = "saving"
            raise DivergenceError(self._diverged(
                f"'{exc.keys[0]}' holds NaN or infinite values ({len(exc.keys)} array(s) "
                f"do), so {path.name} was not written")) from None
        self.last_good = (path, self.epoch)
        return path

    def _save_on_interrupt(self):
        if self.out_dir is None:
            self._say("interrupted (no out_dir, nothing saved)")
            return
        if not self.saves_on_interrupt:
            self._say(f"interrupted in epoch {self.epoch + 1}; the checkpoint of the last "
                      "finished epoch is kept")
            return
        try:
            path = self._save(self.out_dir / CHECKPOINT_FILE)
        except DivergenceError as exc:
            self._say(f"interrupted; no checkpoint saved: {exc}")
            return
        self._say(f"interrupted in epoch {self.epoch + 1} after {self.batch} batches; "
                  f"checkpoint saved to {path}")

    def _rewrite_metrics(self):
        """metrics.jsonl as the history says, replaced atomically (a resumed run
        drops rows written after its checkpoint; a kill never leaves half a row)."""
        if self.out_dir is not None:
            with atomic_write(self.out_dir / METRICS_FILE, "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in self.history)

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


def _options(optimizer):
    """Each parameter group's options (lr, momentum, ...), without the parameters."""
    return [{k: v for k, v in group.items() if k != "params"}
            for group in optimizer.param_groups]


def _same(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _show(value):
    return f"{value:g}" if isinstance(value, float) else repr(value)


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
