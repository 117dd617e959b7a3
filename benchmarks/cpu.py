"""Training-step throughput and peak memory on the CPU: our two kernel sets and PyTorch.

    python -m benchmarks.cpu [--networks lenet,resnet18] [--batch N] [--steps N]
                             [--rounds 2] [--threads 1,2] [--kernels numba,numpy]
                             [--protocol user|environment]

For each network (``models.names()``; default: the ones the speed issue sets
targets for) and each engine -- this engine with the Numba kernel set, with
the NumPy reference set, and PyTorch CPU when it is installed -- one training
step (forward, cross-entropy, zero_grad, backward, SGD step) is timed
``--steps`` times, after one step on a batch of 2 (Numba compiles) and
``--warmup`` full-batch steps.  Every measurement runs in a fresh subprocess,
so its peak resident memory is its own; engines alternate inside every
round, so machine noise (other jobs, thermal drift) hits all of them alike,
and the best round counts.

As users run it (``--protocol user``, the default): a worker imports NumPy
first, as most scripts do, then the engine, inherits the environment as it
is (no thread variable added) and sets its thread count through the
engine's API, ``tinygrad_cnn.set_num_threads`` or ``torch.set_num_threads``.
``--protocol environment`` sets ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``,
``MKL_NUM_THREADS`` and ``NUMBA_NUM_THREADS`` in every worker's environment
instead.  ``--threads 1,2`` sweeps thread counts and adds a table of each
engine's scaling.  An engine ``numba+torch`` is our Numba set in a process
that imported PyTorch first and ran one PyTorch product (a d2l reader
comparing the two in one notebook); ``numba+thread`` runs its steps in a
second Python thread, after the first made a threadpoolctl call (a GUI's or a
server's training, next to a library that sets BLAS's threads).

Same work for every engine: the weights are this engine's initialisation
(``manual_seed``) loaded into a PyTorch twin of the network, and every step
uses the same batch.  The twin is built from our module tree (standard layers
by their PyTorch names and arguments; a custom block's own ``forward`` run
with PyTorch's ``F``), and its eval-mode output is checked against ours
before anything is timed.

Writes ``benchmarks/results/cpu.json`` (all figures, git-ignored) and
``benchmarks/results.md`` (the table, committed); see benchmarks/README.md.
"""
import argparse
import datetime
import inspect
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
import types
from collections import OrderedDict
from pathlib import Path

# The environment as the user started us, before anything (our kernels) adds
# to it: PyTorch's workers get this one.
USER_ENVIRONMENT = dict(os.environ)

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# The speed issue's targets; --networks all runs every registered network.
DEFAULT_NETWORKS = ("lenet", "lenet_bn", "resnet18", "alexnet")
# d2l's input side comes from the registry; the batch from the issue: a training
# step of a big network at 224x224 takes seconds here, so those get small batches.
DEFAULT_BATCH = {"lenet": 256, "lenet_bn": 256, "lenet_bn_scratch": 256,
                 "alexnet": 32, "alexnet_cifar10": 64, "vgg11": 32, "vgg11_small": 32,
                 "nin": 32}
BATCH_96 = 64        # GoogLeNet, ResNet, DenseNet at 96x96
STEPS_SMALL, STEPS_BIG = 20, 3     # timed steps for 28x28 networks / the rest


def default_batch(name):
    """The batch network ``name`` is benchmarked at."""
    return DEFAULT_BATCH.get(name, BATCH_96)


def default_steps(spec):
    """Timed steps for a network of registry entry ``spec``: many for small inputs."""
    return STEPS_SMALL if spec.input_shape[1] <= 32 else STEPS_BIG


# ================================================================ the network
def training_step(net, functional, optimizer, X, y):
    """One training step on the batch (X, y) -- forward, cross-entropy,
    zero_grad, backward, SGD step -- as a function of no arguments; written
    once for every engine (``functional`` is ours or PyTorch's)."""
    def step():
        loss = functional.cross_entropy(net(X), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss
    return step


def inference_step(net, no_grad, X):
    """One evaluation pass on X -- the network in eval mode, forward under
    ``no_grad``, as d2l's ``evaluate_accuracy`` runs every epoch -- as a
    function of no arguments (``no_grad`` is ours or PyTorch's)."""
    net.eval()

    def step():
        with no_grad():
            return net(X)
    return step


def build_ours(name):
    """Our network ``name``, initialised from seed 0 (so every engine gets these weights)."""
    import tinygrad_cnn as tc
    import models
    tc.manual_seed(0)
    return models.get(name)


def batch_for(input_shape, batch):
    """The one batch every engine trains on: uniform pixels, classes 0-9."""
    rng = np.random.default_rng(0)
    return (rng.random((batch,) + tuple(input_shape), dtype=np.float32),
            rng.integers(0, 10, batch))


def torch_twin(module, torch):
    """The same network in PyTorch, built from our module tree.

    Standard layers map to the ``torch.nn`` class of the same name, with the
    constructor arguments read from our layer's attributes (they have
    PyTorch's names).  A custom block (ResNet's ``Residual``, GoogLeNet's
    ``Inception``) keeps its children's names and runs its own ``forward``
    source with ``F``/``tc``/``nn`` bound to PyTorch's.  State-dict keys then
    match, and ``load_state_dict(strict=True)`` checks the structure.
    """
    tnn = torch.nn
    kind = type(module)
    if kind.__name__ in ("Sequential", "ModuleList") and kind.__module__.startswith(
            "tinygrad_cnn."):
        children = OrderedDict((k, torch_twin(m, torch)) for k, m in module._modules.items())
        return tnn.Sequential(children) if kind.__name__ == "Sequential" else \
            tnn.ModuleList(children.values())
    if kind.__module__.startswith("tinygrad_cnn.") and hasattr(tnn, kind.__name__):
        torch_class = getattr(tnn, kind.__name__)
        kwargs = {}
        for arg in inspect.signature(torch_class.__init__).parameters:
            if arg == "bias":
                kwargs[arg] = module._parameters.get("bias") is not None
            elif arg in module.__dict__:
                kwargs[arg] = module.__dict__[arg]
        return torch_class(**kwargs)
    twin = _twin_block(torch, kind)
    for key, value in module.__dict__.items():     # plain settings (counts, flags)
        if not key.startswith("_") and key != "training":
            object.__setattr__(twin, key, value)
    for key, param in module._parameters.items():
        twin.register_parameter(key, None if param is None else
                                tnn.Parameter(torch.from_numpy(np.array(param.data))))
    for key, buf in module._buffers.items():
        twin.register_buffer(key, None if buf is None else torch.from_numpy(np.array(buf.data)))
    for key, child in module._modules.items():
        twin.add_module(key, None if child is None else torch_twin(child, torch))
    return twin


def _twin_block(torch, our_class):
    """A torch Module that runs ``our_class.forward``'s code on PyTorch tensors.

    The same function bodies, with the global names ``F``, ``tc`` and ``nn``
    rebound to PyTorch's, and so are the module-level helper functions the
    forward calls (d2l's from-scratch ``batch_norm``).
    """
    home = our_class.__module__
    torch_globals = dict(vars(sys.modules[home]), F=torch.nn.functional, tc=torch,
                         nn=torch.nn)

    def rebind(function):
        return types.FunctionType(function.__code__, torch_globals, function.__name__,
                                  function.__defaults__, function.__closure__)

    for key, value in list(torch_globals.items()):
        if isinstance(value, types.FunctionType) and value.__module__ == home:
            torch_globals[key] = rebind(value)
    forward = rebind(our_class.forward)
    return type(our_class.__name__, (torch.nn.Module,), {"forward": forward})()


def check_twin(ours, twin, X, torch):
    """Raise if the twin's eval-mode output differs from ours on a few examples."""
    import tinygrad_cnn as tc
    ours.eval(), twin.eval()
    with tc.no_grad(), torch.no_grad():
        a = ours(tc.tensor(X[:4])).data
        b = twin(torch.from_numpy(X[:4])).numpy()
    ours.train(), twin.train()
    scale = max(float(np.abs(b).max()), 1e-6)
    if not np.allclose(a, b, rtol=1e-3, atol=1e-4 * scale):
        raise RuntimeError(f"the PyTorch twin computes something else "
                           f"(max difference {float(np.abs(a - b).max()):.3g})")


# ================================================================ one measurement
def training_setup(engine, name, lr, check_input, device="cpu", mode="train"):
    """Build network ``name`` and an SGD optimizer for ``engine`` on ``device``.

    Returns ``on_batch(X, y)``, which gives a function running one training
    step on that batch (NumPy arrays, wrapped without a copy on the CPU), or
    with ``mode="eval"`` one evaluation pass on X (``inference_step``).
    """
    ours = build_ours(name)
    if engine == "torch":
        import torch
        twin = torch_twin(ours, torch)
        state = {k: torch.from_numpy(np.array(v.data)) for k, v in ours.state_dict().items()}
        twin.load_state_dict(state, strict=True)
        check_twin(ours, twin, check_input, torch)
        del ours
        net, F, no_grad = twin.to(device), torch.nn.functional, torch.no_grad
        wrap = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        opt = torch.optim.SGD(net.parameters(), lr=lr)
    else:
        import tinygrad_cnn as tc
        import tinygrad_cnn.nn.functional as F
        from tinygrad_cnn import optim
        net, no_grad = ours.to(device), tc.no_grad
        wrap = lambda a: tc.Tensor(a).to(device)  # noqa: E731
        opt = optim.SGD(net.parameters(), lr=lr)

    def on_batch(X, y):
        if mode == "eval":
            return inference_step(net, no_grad, wrap(X))
        return training_step(net, F, opt, wrap(X), wrap(y))
    return on_batch


def _status_mb(field):
    """A memory figure of this process from /proc/self/status, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024      # the file says kB
    raise KeyError(field)


def _rss_mb():
    """The current resident set size."""
    return _status_mb("VmRSS")


def _peak_rss_mb():
    """The peak resident set size of this process image (since the last reset).

    VmHWM, not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux keeps ru_maxrss
    across exec, so a worker would report at least its parent's size (the
    parent has imported PyTorch); VmHWM belongs to the new address space.
    """
    try:
        return _status_mb("VmHWM")
    except (OSError, KeyError):     # not Linux: the rusage figure, KiB on Linux/BSD
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss():
    """Start VmHWM again from the current size (Linux 4.0+); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _time_steps(on_batch, spec, X, y, steps, warmup):
    """Time ``steps`` steps on (X, y) after ``warmup`` ones; their median and
    mean, cores busy, memory, the loss (of a training step)."""
    # First a step on a batch of 2: Numba compiles (or loads its cache), the
    # gradients come to exist.  The resident size after it is the baseline:
    # weights, gradients, libraries, compiled kernels.  The peak is measured
    # from there (VmHWM reset), so the compiler's memory does not count.
    start = time.perf_counter()
    on_batch(*batch_for(spec.input_shape, 2))()
    first = time.perf_counter() - start
    baseline = _rss_mb()
    reset = _reset_peak_rss()
    step = on_batch(X, y)
    for _ in range(warmup):
        step()
    times = []
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for _ in range(steps):
        start = time.perf_counter()
        last = step()
        times.append(time.perf_counter() - start)
    # CPU time of all the process's threads over the timed steps' wall time: how
    # many cores the engine kept busy (threads that spin while waiting count)
    cores_busy = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
    result = dict(step_s=statistics.median(times), step_mean_s=statistics.fmean(times),
                  cores_busy=cores_busy,
                  first_step_s=first, peak_rss_mb=_peak_rss_mb(), baseline_rss_mb=baseline,
                  peak_includes_compiler=not reset,
                  loss=float(last.item()) if last.ndim == 0 else None)
    result["step_thread"] = threading.current_thread().name
    return result


def _in_another_thread(function, *args):
    """``function(*args)`` run in a new Python thread; its result, or its error raised here."""
    outcome = {}

    def run():
        try:
            outcome["result"] = function(*args)
        except BaseException as error:      # re-raised in the calling thread
            outcome["error"] = error
    thread = threading.Thread(target=run, name="training")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def measure(engine, name, batch, steps, warmup, threads, protocol="user", mode="train"):
    """Run in a fresh process (NumPy imported already, at the top of this
    file): time ``steps`` training steps (``mode="eval"``: evaluation
    passes), report memory."""
    kernel_set, _, alongside = engine.partition("+")
    if kernel_set == "torch" or alongside == "torch":
        import torch            # before our engine, as a notebook comparing the two would
        if protocol == "user":
            torch.set_num_threads(threads)
        if alongside == "torch":
            (torch.ones(256, 256) @ torch.ones(256, 256)).sum().item()   # a PyTorch call
    import models
    spec = models.spec(name)
    X, y = batch_for(spec.input_shape, batch)
    if kernel_set != "torch":
        import kernels
        import tinygrad_cnn as tc
        kernels.set_kernels(kernel_set)
        if protocol == "user":
            tc.set_num_threads(threads)
    on_batch = training_setup(kernel_set, name, spec.lr, check_input=X, mode=mode)
    if alongside == "thread":
        # A GUI's or a server's training: the steps run in a second Python
        # thread, after this one made a threadpoolctl call (as scikit-learn or
        # a user's script would, which makes it threadpoolctl's only thread
        # allowed to set OpenBLAS's threads; kernels/threads.py).
        import threadpoolctl
        for library in threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers:
            library.set_num_threads(library.num_threads)
        result = _in_another_thread(_time_steps, on_batch, spec, X, y, steps, warmup)
    else:
        result = _time_steps(on_batch, spec, X, y, steps, warmup)
    result["examples_per_s"] = batch / result["step_s"]
    if kernel_set != "torch":
        import kernels
        probe = np.zeros(1, np.float32)
        # the kernels this set replaces: those not run by their NumPy reference module
        reference = {k: module for module, names in kernels.REFERENCE.items() for k in names}
        result["numba_kernels"] = sorted(
            k for k in kernels.KERNELS
            if not kernels.which(k, probe).startswith(reference[k] + "."))
    return result


def run_worker(engine, name, batch, steps, warmup, threads, protocol="user", mode="train"):
    """``measure`` in a fresh subprocess with ``threads`` threads."""
    return run_module("benchmarks.cpu", ["--worker", engine, name, str(batch), str(steps),
                                         str(warmup), str(threads), protocol, mode],
                      worker_environment(engine, threads, protocol))


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS")


def worker_environment(engine, threads, protocol="user"):
    """The user's environment as it is (``user``: the worker sets its threads
    through the engine's API), or with ``threads`` in every thread-count
    variable (``environment``).  PyTorch's worker builds the network with
    our NumPy kernels (to copy its weights): Numba is not loaded there."""
    env = dict(USER_ENVIRONMENT)
    if engine == "torch":
        env["TINYGRAD_CNN_KERNELS"] = "numpy"
    if protocol == "environment":
        env.update((var, str(threads)) for var in THREAD_VARIABLES)
    return env


def run_module(module, args, env):
    """``python -m module args`` from the repository root in a fresh process;
    its last line of output as JSON, or ``{"error": its last line}`` if it fails."""
    env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ================================================================ the machine
# Variables that choose OpenBLAS's kernels or blocking, read when NumPy loads it:
# OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU halves its products' speed, so a
# table must say when one was set (benchmarks/results.md, "A fourth machine").
BLAS_KERNEL_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def blas_kernel_settings(environment=None):
    """The BLAS_KERNEL_VARIABLES set in ``environment`` (the user's), as 'NAME=value' strings."""
    environment = USER_ENVIRONMENT if environment is None else environment
    return [f"{name}={environment[name]}" for name in BLAS_KERNEL_VARIABLES
            if name in environment]


def machine():
    info = {"python": platform.python_version(), "numpy": np.__version__,
            "cpus": os.cpu_count(), "load_average": os.getloadavg(),
            "blas_settings": blas_kernel_settings()}
    try:
        with open("/proc/cpuinfo") as f:
            models_ = [line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name")]
        info["cpu"] = models_[0] if models_ else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    try:
        import threadpoolctl
        info["blas"] = [f"{p['internal_api']} {p['version']} ({p.get('architecture')}, "
                        f"{p['num_threads']} threads)"
                        for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    except ImportError:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = [f"{blas.get('name')} {blas.get('version')}"]
    for package in ("numba", "torch"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    return info


# ================================================================ report
def best(runs):
    """The fastest round's figures, and the smallest memory figures of all rounds."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1] if runs else None
    result = dict(max(ok, key=lambda r: r["examples_per_s"]))
    result["peak_rss_mb"] = min(r["peak_rss_mb"] for r in ok)
    result["step_memory_mb"] = min(r["peak_rss_mb"] - r["baseline_rss_mb"] for r in ok)
    return result


def round_ratios(runs, their_runs, key="examples_per_s"):
    """ours / theirs within each round where both ran without an error."""
    return [r[key] / t[key] for r, t in zip(runs, their_runs)
            if "error" not in r and "error" not in t and t[key] > 0]


def paired_ratio(runs, their_runs, key="examples_per_s"):
    """The median over rounds of ours / theirs within each round: both ran
    minutes apart, under the same load, so this ratio moves less than one of
    two best rounds, which may come from quiet and busy moments alike."""
    ratios = round_ratios(runs, their_runs, key)
    return statistics.median(ratios) if ratios else None


# results.md holds the latest run's table, then a hand-written run log (earlier runs,
# what changed between them): a new run replaces the table and keeps the log.
LOG_MARKER = "<!-- benchmarks.cpu replaces what is above this line and keeps what is below -->"


def write_markdown(path, table):
    """Write ``table`` to ``path``, keeping the file's run log (from LOG_MARKER on)."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    log = old[old.index(LOG_MARKER):] if LOG_MARKER in old else ""
    path.write_text(table.rstrip("\n") + "\n\n" + log if log else table)


PROTOCOLS = {
    "user": "as users run it: NumPy imported first, no thread variable set, the count set "
            "by tinygrad_cnn.set_num_threads / torch.set_num_threads",
    "environment": "OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS and "
                   "NUMBA_NUM_THREADS set in each worker's environment",
}


# What a "+..." engine adds to our kernel set's run (see measure)
ALONGSIDE = {"": "", "torch": ", PyTorch imported and called first",
             "thread": ", steps in a second Python thread"}


def engine_label(engine):
    kernel_set, _, alongside = engine.partition("+")
    if kernel_set == "torch":
        return "PyTorch"
    return f"ours, {kernel_set} kernels" + ALONGSIDE[alongside]


def scaling_efficiency(rate, threads, base_rate, base_threads):
    """Speed-up over the run with the fewest threads, divided by the growth in
    threads: 1.0 is perfect scaling (2 threads twice as fast as 1)."""
    return (rate / base_rate) / (threads / base_threads)


def paired_efficiency(runs, threads, base_runs, base_threads):
    """The median over rounds of the scaling efficiency within each round (round
    k's run on ``threads`` against round k's on ``base_threads``): the two ran
    minutes apart, under the same load, where the two best runs may come from a
    quiet and a busy moment.  None without a round where both ran."""
    efficiencies = round_efficiencies(runs, threads, base_runs, base_threads)
    return statistics.median(efficiencies) if efficiencies else None


def round_efficiencies(runs, threads, base_runs, base_threads):
    """The scaling efficiency within each round where both runs ran, sorted."""
    return sorted(ratio * base_threads / threads for ratio in round_ratios(runs, base_runs))


def efficiency_per_round_cell(runs, threads, base_runs, base_threads):
    """``paired_efficiency`` as a table cell, with the lowest and highest
    round's after it where two rounds or more ran: how far the rounds agree,
    which says whether two engines' efficiencies differ by more than the
    machine's noise.  Blank without a round where both ran."""
    median = paired_efficiency(runs, threads, base_runs, base_threads)
    if median is None:
        return ""
    cell = f"{median:.2f}"
    efficiencies = round_efficiencies(runs, threads, base_runs, base_threads)
    if len(efficiencies) > 1:
        cell += f" ({efficiencies[0]:.2f}–{efficiencies[-1]:.2f})"
    return cell


def scaling_table(report):
    """Markdown lines: per network and engine, examples/s at each thread count
    swept and the scaling efficiency against the fewest threads, from the best
    runs and per round (``paired_efficiency``); none if one count was run."""
    counts = sorted({net.get("threads") for net in report["networks"]} - {None})
    if len(counts) < 2:
        return []
    lines = ["", "Scaling with threads: best examples/s per thread count; efficiency = "
             f"speed-up over {counts[0]} thread(s) ÷ the growth in threads (1.00 is perfect), "
             "from the best runs, and per round: the median over rounds of the efficiency "
             "within each round (the lowest and highest round's in brackets); cores busy = "
             "the process's CPU time ÷ wall time over the timed steps of that best run "
             "(threads that spin while they wait for work count as busy).",
             "", "| network | engine | " + " | ".join(f"{t} threads" for t in counts)
             + " | " + " | ".join(f"efficiency {counts[0]}→{t}" for t in counts[1:])
             + " | " + " | ".join(f"per round {counts[0]}→{t}" for t in counts[1:])
             + " | " + " | ".join(f"cores busy, {t} threads" for t in counts) + " |",
             "|---|---|" + "---|" * (4 * len(counts) - 2)]
    names = list(dict.fromkeys(net["name"] for net in report["networks"]))
    for name in names:
        entries = {net["threads"]: net for net in report["networks"] if net["name"] == name}
        engines = list(dict.fromkeys(e for net in entries.values() for e in net["runs"]))
        for engine in engines:
            rates, busy = {}, {}
            runs = {t: net["runs"].get(engine, []) for t, net in entries.items()}
            for t in entries:
                r = best(runs[t])
                if r is not None and "error" not in r:
                    rates[t] = r["examples_per_s"]
                    busy[t] = r.get("cores_busy")      # (absent from older reports)
            cells = [f"{rates[t]:.1f}" if t in rates else "" for t in counts]
            base = rates.get(counts[0])
            cells += [f"{scaling_efficiency(rates[t], t, base, counts[0]):.2f}"
                      if base and t in rates else "" for t in counts[1:]]
            cells += [efficiency_per_round_cell(runs.get(t, []), t, runs.get(counts[0], []),
                                                counts[0]) for t in counts[1:]]
            cells += [f"{busy[t]:.2f}" if busy.get(t) is not None else "" for t in counts]
            lines.append(f"| {name} | {engine_label(engine)} | " + " | ".join(cells) + " |")
    return lines


def blas_description(machine_info):
    """The BLAS libraries, then the kernel variables the user set, if any."""
    settings = machine_info.get("blas_settings")
    return "; ".join(machine_info["blas"]) + (
        f"; set in the environment: {', '.join(settings)}" if settings else "")


def markdown(report):
    m, a = report["machine"], report["args"]
    evaluating = a.get("mode") == "eval"
    step = ("evaluation pass (eval mode, forward under no_grad)" if evaluating else
            "step (forward, cross-entropy, zero_grad, backward, SGD step)")
    memory = "evaluation memory" if evaluating else "training memory"
    lines = [
        "# CPU benchmark: " + ("evaluation" if evaluating else "training-step")
        + " throughput and memory",
        "",
        f"`{' '.join(['python -m benchmarks.cpu'] + report['argv'])}`, {report['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {a['threads']} threads per engine "
        f"({PROTOCOLS[a.get('protocol', 'environment')]}); "
        f"Python {m['python']}, NumPy {m['numpy']} ({blas_description(m)}), "
        f"Numba {m['numba']}, PyTorch {m['torch']}. "
        f"Load average at start: {', '.join(f'{x:.1f}' for x in m['load_average'])}.",
        "",
        f"examples/s: batch / median time of one {step}, best of the rounds. Peak RSS: the "
        "worker process's peak resident size while running on the full batch (VmHWM, "
        f"libraries included). {memory.capitalize()}: that peak minus the resident size "
        "after one step on a batch of 2 (activations, temporaries, allocator caches). First "
        "step: that batch-2 step, untimed, including Numba's compilation or cache loading. "
        "Ratios are ours / PyTorch's, measured in the same run; memory figures are the "
        "smallest of the rounds. Per round: the median over rounds of the ratio within each "
        "round.",
        "",
        "| network | batch | threads | engine | examples/s | × PyTorch | × PyTorch per round | "
        f"peak RSS MB | × PyTorch | {memory} MB | × PyTorch | first step s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for net in report["networks"]:
        theirs = best(net["runs"].get("torch", []))
        if theirs is not None and "error" in theirs:
            theirs = None
        for engine, runs in net["runs"].items():
            r = best(runs)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {net['name']} | {net['batch']} | {net.get('threads', '')} | "
                             f"{engine} | error: {r['error'][:80]} | | | | | | | |")
                continue
            label = engine_label(engine)

            def ratio(key):
                if theirs is None or engine == "torch" or theirs[key] <= 0:
                    return ""
                return f"{r[key] / theirs[key]:.2f}"
            per_round = (paired_ratio(runs, net["runs"]["torch"])
                         if theirs is not None and engine != "torch" else None)
            lines.append(
                f"| {net['name']} | {net['batch']} | {net.get('threads', '')} | {label} | "
                f"{r['examples_per_s']:.1f} | "
                f"{ratio('examples_per_s')} | "
                f"{'' if per_round is None else f'{per_round:.2f}'} | "
                f"{r['peak_rss_mb']:.0f} | {ratio('peak_rss_mb')} | "
                f"{r['step_memory_mb']:.0f} | {ratio('step_memory_mb')} | "
                f"{r['first_step_s']:.2f} |")
    lines += scaling_table(report)
    numba_runs = [r for net in report["networks"] for r in net["runs"].get("numba", [])]
    if numba_runs:
        provided = sorted({k for r in numba_runs for k in r.get("numba_kernels", [])})
        lines += ["", "Kernels the Numba set provides (the rest fall back to NumPy): "
                  + (", ".join(provided) if provided else "none yet") + "."]
    return "\n".join(lines) + "\n"


# ================================================================ main
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default=",".join(DEFAULT_NETWORKS),
                        help="comma-separated registry names, or 'all' "
                             f"(default: {','.join(DEFAULT_NETWORKS)})")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size for every network (default: per network, "
                             "256 for LeNet, 64 at 96x96, 32 at 224x224)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"timed steps per measurement (default: {STEPS_SMALL} for "
                             f"28x28 networks, {STEPS_BIG} for the rest)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed full-batch steps before the timed ones, after "
                             "the untimed batch-2 step (default 1)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="measurements per engine, alternating (default 2)")
    parser.add_argument("--threads", default=str(os.cpu_count()),
                        help="threads for BLAS, Numba and PyTorch; a comma-separated list "
                             "sweeps them (default: all CPUs)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="user",
                        help="user (default): workers import NumPy first, set no thread "
                             "variable and call set_num_threads; environment: the thread "
                             "counts go in OMP_NUM_THREADS and the like")
    parser.add_argument("--kernels", default="numba,numpy",
                        help="our kernel sets to run (default: numba,numpy); "
                             "numba+torch: the Numba set with PyTorch imported first; "
                             "numba+thread: the Numba set's steps in a second Python thread")
    parser.add_argument("--mode", choices=("train", "eval"), default="train",
                        help="train (default): training steps; eval: evaluation passes "
                             "(eval mode, forward under no_grad)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--out", default=None,
                        help="the JSON of all figures (default: benchmarks/results/cpu.json, "
                             "with --mode eval cpu_eval.json)")
    parser.add_argument("--markdown", default=None,
                        help="the table (default: benchmarks/results.md, whose run log is "
                             "kept; with --mode eval benchmarks/results/cpu_eval.md)")
    args = parser.parse_args(argv)
    evaluating = args.mode == "eval"
    if args.out is None:
        args.out = str(HERE / "results" / ("cpu_eval.json" if evaluating else "cpu.json"))
    if args.markdown is None:
        args.markdown = str(HERE / "results" / "cpu_eval.md" if evaluating
                            else HERE / "results.md")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        engine, name, batch, steps, warmup, threads, protocol, mode = argv[1:]
        print(json.dumps(measure(engine, name, int(batch), int(steps), int(warmup),
                                 int(threads), protocol, mode)))
        return
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import models
    names = models.names() if args.networks == "all" else args.networks.split(",")
    for name in names:
        models.spec(name)       # an unknown name fails now, not after minutes
    engines = [k for k in args.kernels.split(",") if k]
    if not args.no_torch:
        try:
            import torch  # noqa: F401
            engines.append("torch")
        except ImportError:
            print("PyTorch is not installed: measuring this engine alone")
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "argv": argv, "args": vars(args), "machine": machine(), "networks": []}
    thread_counts = [int(t) for t in args.threads.split(",") if t]
    for name in names:
        spec = models.spec(name)
        batch = args.batch or default_batch(name)
        steps = args.steps or default_steps(spec)
        entries = {t: {"name": name, "batch": batch, "threads": t,
                       "input_shape": spec.input_shape, "steps": steps,
                       "runs": {e: [] for e in engines}} for t in thread_counts}
        report["networks"] += entries.values()
        for round_ in range(args.rounds):
            for threads in thread_counts:
                for engine in engines:
                    r = run_worker(engine, name, batch, steps, args.warmup, threads,
                                   args.protocol, args.mode)
                    entries[threads]["runs"][engine].append(r)
                    shown = r.get("error") or (f"{r['examples_per_s']:9.1f} examples/s  "
                                               f"peak {r['peak_rss_mb']:6.0f} MB")
                    print(f"{name:10s} batch {batch:3d}  {threads:2d} threads  round "
                          f"{round_ + 1}  {engine:11s} {shown}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    table = markdown(report)
    write_markdown(args.markdown, table)
    print()
    print(table)


if __name__ == "__main__":
    main()
