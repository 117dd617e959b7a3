"""How each kind of op speeds up with threads: ours against PyTorch's.

    python -m benchmarks.op_scaling [--network densenet] [--batch 64]
                                    [--threads 1,2] [--steps 4] [--no-torch]
                                    [--by-op 20]

A network's speed-up from 1 to 2 threads is the average of its ops'
speed-ups, weighted by their time.  ``benchmarks.cpu`` measures the whole
step; this script splits it: for one chapter network it runs training steps
with each engine at each thread count, each in its own process (NumPy
imported first, the count set by ``tinygrad_cnn.set_num_threads`` or
``torch.set_num_threads``), and sums the time per kind of op --
convolution, batch norm, pooling, activation, ... -- ours with
``tinygrad_cnn.profile``, PyTorch's with ``torch.profiler`` (the self CPU
time of its ``aten::`` ops).  "other" is the rest of the step: Python
between the ops, bookkeeping, the optimizer's update.  Both profilers add a
little time per op, alike for both engines.

Prints a Markdown table: milliseconds per step for each kind, engine and
thread count, and each engine's speed-up from the first thread count to
the last.  ``--by-op N`` adds a second one, ours only: the N layers that
lose the most time against perfect scaling from the first thread count to
the last -- each op and pass split by the shape of its first output
(``tinygrad_cnn.profile``'s ``rows_by_shape``), so the losses are layers,
not kinds.

Between the two, always: where our threads' time goes on each thread count,
over as many more steps without the profile (``kernels.pool_time``): the
time outside the thread pool's work (the calling thread alone) and inside
it, the jobs' summed time, and what the step loses against a perfect
speed-up of the first thread count's work, split three ways -- serial,
waiting (threads without a job inside the pool's work), extra work (the
jobs taking longer in all than on fewer threads).
"""
import argparse
import json
import re
import subprocess
import sys
import time

import numpy  # noqa: F401  (first, as users' scripts import it: before either engine)

# (kind, pattern on our Function names and PyTorch's aten op names), first match wins
KINDS = (
    ("convolution", r"^Conv2d|convolution"),
    ("batch norm", r"^BatchNorm|batch_norm"),
    ("pooling", r"Pool|pool2d"),
    ("activation", r"^(ReLU|Sigmoid)$|relu|clamp_min|threshold_backward|sigmoid"),
    ("linear", r"^(Linear|MatMul)$|^aten::(addmm|mm|matmul)$"),
    ("concatenation", r"^Cat$|^aten::cat$"),
    ("loss", r"^CrossEntropy$|log_softmax|nll_loss"),
)
OTHER = "other"
WARMUP_STEPS = 2
# the title above ``pool_table`` and its three losses, as gpu_verify reads them back
POOL_TITLE = "ours, where the threads' time goes"
LOSSES = ("serial", "waiting", "extra work")


def kind_of(op_name):
    """The kind of op (a ``KINDS`` name) a Function or aten op name belongs to,
    or None for ops left to "other" (PyTorch's fills and copies, reshapes)."""
    for kind, pattern in KINDS:
        if re.search(pattern, op_name):
            return kind
    return None


def by_kind(op_seconds, step_seconds):
    """{kind: seconds} from {op name: seconds}, "other" being the step's rest."""
    kinds = dict.fromkeys([kind for kind, _ in KINDS], 0.0)
    for name, seconds in op_seconds.items():
        kind = kind_of(name)
        if kind is not None:
            kinds[kind] += seconds
    kinds[OTHER] = step_seconds - sum(kinds.values())
    return kinds


def _training_step(engine, network, batch):
    from benchmarks.cpu import batch_for, training_setup
    import models
    spec = models.spec(network)
    X, y = batch_for(spec.input_shape, batch)
    return training_setup("numba" if engine == "ours" else "torch", network, spec.lr,
                          check_input=X)(X, y)


def measure(engine, network, batch, threads, steps):
    """{"step": seconds per step, "kinds": {kind: seconds per step}} for one
    engine ("ours" or "torch") on ``threads`` threads, in this process; ours
    also gives "layers": [[op name, pass, shape, seconds per step], ...]."""
    if engine == "ours":
        import tinygrad_cnn as tc
        tc.set_num_threads(threads)
    else:
        import torch
        torch.set_num_threads(threads)
    step = _training_step(engine, network, batch)
    for _ in range(WARMUP_STEPS):
        step()
    if engine == "torch":
        ops, wall = _profile_torch(step, steps)
        return _per_step(ops, wall, steps)
    prof = _profile_ours(step, steps)
    ops = {}
    for name, _, _, seconds in prof.rows():         # forward and backward together
        ops[name] = ops.get(name, 0.0) + seconds
    result = _per_step(ops, prof.seconds, steps)
    result["layers"] = [[name, event, shape, seconds / steps]
                        for name, event, shape, _, seconds in prof.rows_by_shape()]
    result["pool"] = _pool_time(step, steps)
    return result


def _pool_time(step, steps):
    """{"step", "inside", "busy", "regions"} per step, over ``steps`` more steps
    without the profile: the step's wall time, the time inside the thread
    pool's work and its jobs' summed time (``kernels.pool_time``)."""
    from kernels import pool_time
    with pool_time.timing() as pool:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - start
    return {"step": wall / steps, "inside": pool.wall / steps, "busy": pool.busy / steps,
            "regions": pool.regions / steps}


def _per_step(ops, wall, steps):
    kinds = by_kind(ops, wall)
    return {"step": wall / steps, "kinds": {k: v / steps for k, v in kinds.items()}}


def _profile_ours(step, steps):
    """The ``tinygrad_cnn.profile`` of ``steps`` steps."""
    import tinygrad_cnn as tc
    with tc.profile() as prof:
        for _ in range(steps):
            step()
    return prof


def _profile_torch(step, steps):
    """({aten op: self CPU seconds}, wall seconds) over ``steps`` steps (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - start
    ops = {event.key: event.self_cpu_time_total * 1e-6 for event in prof.key_averages()
           if event.key.startswith("aten::")}
    return ops, wall


def run_worker(engine, network, batch, threads, steps):
    """``measure`` in a fresh process (its own thread pools), as JSON."""
    return worker_json("benchmarks.op_scaling",
                       ["--worker", engine, "--network", network, "--batch", str(batch),
                        "--threads", str(threads), "--steps", str(steps)],
                       f"op_scaling worker {engine} on {threads} threads")


def engines_to_run(no_torch):
    """["ours"], and "torch" unless ``no_torch`` or PyTorch is not installed."""
    if no_torch:
        return ["ours"]
    try:
        import torch  # noqa: F401
    except ImportError:
        print("PyTorch is not installed: ours only", file=sys.stderr)
        return ["ours"]
    return ["ours", "torch"]


def worker_json(module, argv, what):
    """Run ``python -m module *argv`` and return the JSON of its last line of
    output; a RuntimeError naming ``what`` with the end of its stderr if it fails."""
    done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results, thread_counts):
    """Markdown: ms per step per kind; results[engine][threads] as ``measure`` gives.

    With both engines, a last column: what each kind of ours loses against
    PyTorch's speed-up for that kind -- our time on the last thread count
    minus our time on the first divided by PyTorch's speed-up -- and, on the
    whole step's row, the sum of those: where the two engines' scaling
    efficiencies part."""
    engines = list(results)
    names = {"ours": "ours", "torch": "PyTorch"}
    first, last = thread_counts[0], thread_counts[-1]
    compared = set(engines) == {"ours", "torch"}
    header = ["kind"]
    for engine in engines:
        header += [f"{names[engine]} {t}t ms" for t in thread_counts]
        header.append(f"{names[engine]} speed-up {first}→{last}")
    if compared:
        header.append("ours ms lost against PyTorch's speed-up")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    losses = []
    for kind in [kind for kind, _ in KINDS] + [OTHER]:
        row, loss = _kind_row(results, engines, thread_counts, kind)
        if compared:
            row.append("" if loss is None else f"{loss:.2f}")
            losses += [loss] if loss is not None else []
        lines.append("| " + " | ".join(row) + " |")
    row, _ = _kind_row(results, engines, thread_counts, "whole step")
    if compared:
        row.append(f"{sum(losses):.2f}")
    lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _kind_row(results, engines, thread_counts, kind):
    """(the kind's cells: ms per thread count and the speed-up, engine by
    engine; ours' ms lost against PyTorch's speed-up, or None where either
    engine spent no time on the kind)."""
    row, speed_ups, ms_by_engine = [kind], {}, {}
    for engine in engines:
        ms = [1e3 * (results[engine][t]["step"] if kind == "whole step"
                     else results[engine][t]["kinds"][kind]) for t in thread_counts]
        row += [f"{v:.2f}" for v in ms]
        speed_ups[engine] = _speed_up(ms)
        row.append("" if speed_ups[engine] is None else f"{speed_ups[engine]:.2f}")
        ms_by_engine[engine] = ms
    theirs = speed_ups.get("torch")
    if "ours" not in ms_by_engine or theirs is None or speed_ups["ours"] is None:
        return row, None
    ours = ms_by_engine["ours"]
    return row, ours[-1] - ours[0] / theirs


def _speed_up(times):
    """times[0] / times[-1] (first thread count's time over the last's), or None
    where either is no time at all."""
    return times[0] / times[-1] if times[0] > 0 and times[-1] > 0 else None


def pool_table(ours, thread_counts):
    """Markdown: where our threads' time goes on each thread count (ours[threads]
    as ``measure`` gives it): the step, the time outside and inside the thread
    pool's work, the jobs' summed time and how busy they kept the threads
    inside it, and what the step loses against a perfect speed-up of the first
    thread count's work, split into serial, waiting and extra work
    (``kernels.pool_time``)."""
    from kernels import pool_time
    header = ["threads", "step ms", "outside the pool ms", "inside the pool ms",
              "jobs' time ms", "threads busy inside"] + [f"lost: {part} ms" for part in LOSSES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    baseline = ours[thread_counts[0]]["pool"]
    for threads in thread_counts:
        measured = ours[threads]["pool"]
        lost = pool_time.lost_time(baseline, measured, threads)
        inside = measured["inside"]
        busy = f"{measured['busy'] / (threads * inside):.2f}" if inside > 0 else ""
        cells = [str(threads)] + [f"{1e3 * v:.2f}" for v in (
            measured["step"], measured["step"] - inside, inside, measured["busy"])]
        cells += [busy] + [f"{1e3 * lost[part]:.2f}" for part in LOSSES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layer_table(ours, thread_counts, top):
    """Markdown: our ``top`` layers (op, pass, shape of the first output) that
    lose the most against perfect scaling, ours[threads] as ``measure`` gives.
    A layer's loss is its time on the last thread count minus its time on the
    first scaled by first / last: what it costs beyond a perfect speed-up."""
    first, last = thread_counts[0], thread_counts[-1]
    ms = {}
    for column, threads in enumerate(thread_counts):
        for name, event, shape, seconds in ours[threads]["layers"]:
            key = (name, event, tuple(shape) if shape is not None else None)
            ms.setdefault(key, [0.0] * len(thread_counts))[column] += 1e3 * seconds

    def lost(times):
        return times[-1] - times[0] * first / last
    header = (["op", "pass", "shape"] + [f"ours {t}t ms" for t in thread_counts]
              + [f"speed-up {first}→{last}", f"ms lost against {last / first:g}×"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (name, event, shape), times in sorted(ms.items(), key=lambda item: -lost(item[1]))[:top]:
        speed_up = "" if _speed_up(times) is None else f"{_speed_up(times):.2f}"
        shape_text = "" if shape is None else "×".join(map(str, shape)) or "scalar"
        lines.append("| " + " | ".join([name, event, shape_text]
                                       + [f"{t:.2f}" for t in times]
                                       + [speed_up, f"{lost(times):.2f}"]) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="densenet")
    parser.add_argument("--batch", type=int, default=None,
                        help="default: the network's benchmark batch (benchmarks.cpu)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--steps", type=int, default=None,
                        help="profiled steps (default 20 for 28x28 inputs, else 3)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--by-op", type=int, default=0, metavar="N",
                        help="also our N layers that lose most against perfect scaling")
    parser.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import models
    from benchmarks.cpu import default_batch, default_steps
    spec = models.spec(args.network)
    batch = args.batch or default_batch(args.network)
    steps = args.steps or default_steps(spec)
    if args.worker:
        result = measure(args.worker, args.network, batch, int(args.threads), steps)
        print(json.dumps(result))
        return
    thread_counts = [int(t) for t in args.threads.split(",")]
    engines = engines_to_run(args.no_torch)
    results = {engine: {} for engine in engines}
    for threads in thread_counts:           # the engines alternate
        for engine in engines:
            results[engine][threads] = run_worker(engine, args.network, batch, threads, steps)
    print(f"{args.network}, batch {batch}, {steps} profiled steps per measurement")
    print(table(results, thread_counts))
    print(f"\n{POOL_TITLE} (ms per step; lost: against a perfect speed-up of the "
          f"{thread_counts[0]}-thread work)")
    print(pool_table(results["ours"], thread_counts))
    if args.by_op:
        print(f"\nours, the {args.by_op} layers that lose most against perfect scaling")
        print(layer_table(results["ours"], thread_counts, args.by_op))


if __name__ == "__main__":
    main()
