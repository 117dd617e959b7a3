"""Training-step throughput on the GPU against the CPU: our engine and PyTorch.

    python -m benchmarks.gpu [--networks all] [--batch 32,128] [--steps 10]
                             [--cpu-steps 2] [--no-torch] [--cpu-only]

For each chapter network at its d2l input size (``models.spec(name).input_shape``)
and each batch size, one training step (forward, cross-entropy, zero_grad,
backward, SGD step) is timed with

- ``ours-cpu``:   this engine on the CPU, Numba kernel set,
- ``ours-gpu``:   this engine on CuPy arrays (the numba.cuda kernels),
- ``ours-gpu-graph``: the same step captured once as a CUDA graph and replayed
                  (``tinygrad_cnn.cuda.make_graphed_step``; the batch copied
                  into its static buffers each step, as PyTorch's graphed loops do),
- ``torch-cpu``, ``torch-cuda``: PyTorch, when it is installed (CUDA when it sees a GPU).

Each measurement runs in a fresh subprocess (its memory, and an out-of-memory
error, are its own), after one untimed step (compilation, CuPy's memory pool
filling up, cuDNN's autotuning) and ``--warmup`` more.  GPU work is
asynchronous, so every timed step ends with a synchronize.  The weights are
this engine's initialisation, loaded into PyTorch's twin of the network (as in
benchmarks/cpu.py, whose twin and batch this reuses).

Without a usable GPU it stops with a message; ``--cpu-only`` runs the CPU
engines alone (a smoke test: ``--cpu-only --networks lenet --batch 8 --steps 1``).

``python -m benchmarks.gpu --verify [--data-dir DIR]`` is the one-command
check of a GPU machine instead (``benchmarks/gpu_verify.py``).

Writes ``benchmarks/results/gpu.json`` (all figures), ``gpu.md`` (the table)
and ``gpu.png`` (examples/s, log scale) into ``--out-dir``.
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.cpu import _peak_rss_mb, batch_for, machine, run_module, training_setup  # noqa: E402

ENGINES = ("ours-cpu", "ours-gpu", "ours-gpu-graph", "torch-cpu", "torch-cuda")
CPU_ENGINES = ("ours-cpu", "torch-cpu")
DEFAULT_BATCHES = "32,128"


# ================================================================ one measurement
def _synchronize_and_memory(engine, device):
    """(wait for the device's queued work, peak memory in MiB) for ``engine`` on ``device``."""
    if device == "cpu":
        return (lambda: None), _peak_rss_mb
    if engine.startswith("torch"):
        import torch
        return torch.cuda.synchronize, lambda: torch.cuda.max_memory_allocated() / 2**20
    import tinygrad_cnn as tc
    # CuPy's pool keeps every block it was given, so its size after the steps is their peak.
    return tc.cuda.synchronize, lambda: tc.cuda.memory_reserved() / 2**20


def measure(engine, name, batch, steps, warmup):
    """Run in a fresh process: time ``steps`` training steps of ``engine``."""
    import models
    spec = models.spec(name)
    X, y = batch_for(spec.input_shape, batch)
    device = "cpu" if engine in CPU_ENGINES else "cuda"
    library = "torch" if engine.startswith("torch") else "ours"
    step = (graphed_training_step(name, spec.lr, X, y) if engine == "ours-gpu-graph"
            else training_setup(library, name, spec.lr, X, device)(X, y))
    synchronize, memory_mb = _synchronize_and_memory(engine, device)
    start = time.perf_counter()
    step()
    synchronize()
    first = time.perf_counter() - start
    for _ in range(warmup):
        step()
    synchronize()
    times, host_times = [], []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        host_times.append(time.perf_counter() - start)  # Python's share: until step() returns
        synchronize()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    kernel_calls = None
    if library == "ours":       # one more step, counted through the kernel interface
        import kernels
        with kernels.counting() as calls:
            step()
        synchronize()
        kernel_calls = sum(calls.values())
    launches = None
    if device != "cpu":         # one more step, its GPU kernels counted by CUPTI
        from benchmarks.launches import profile_launches
        launches = profile_launches(step, synchronize)
    return dict(step_s=step_s, examples_per_s=batch / step_s, first_step_s=first,
                host_step_s=statistics.median(host_times), kernel_calls_per_step=kernel_calls,
                launches_per_step=(launches or {}).get("kernels"), launches=launches,
                memory_mb=memory_mb(), device=device)


def graphed_training_step(name, lr, X, y):
    """``step()``: our training step on (X, y) replayed as a CUDA graph (its
    first three calls run eagerly, the fourth captures)."""
    import tinygrad_cnn as tc
    import tinygrad_cnn.nn.functional as F
    from benchmarks.cpu import build_ours, training_step
    from tinygrad_cnn import optim
    net = build_ours(name).to("cuda")
    opt = optim.SGD(net.parameters(), lr=lr)
    X, y = tc.Tensor(X).to("cuda"), tc.Tensor(y).to("cuda")
    graphed = tc.cuda.make_graphed_step(
        lambda X, y: training_step(net, F, opt, X, y)(), (X, y), optimizer=opt)
    for _ in range(graphed.num_warmup_iters + 1):      # warm-up and capture, untimed
        graphed(X, y)
    return lambda: graphed(X, y)


def run_worker(engine, name, batch, steps, warmup):
    """``measure`` in a fresh subprocess; ``{"error": last line}`` if it fails."""
    return run_module("benchmarks.gpu", ["--worker", engine, name, str(batch), str(steps),
                                         str(warmup)], dict(os.environ, TINYGRAD_CNN_KERNELS="numba"))


# ================================================================ what can run here
def gpu_problem():
    """Why this machine cannot run the GPU engines (None when it can)."""
    from tinygrad_cnn import backend
    try:
        backend.require_device("cuda")
    except RuntimeError as exc:
        return str(exc)
    return None


def torch_engines(cpu_only):
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: measuring this engine alone")
        return []
    if cpu_only or not torch.cuda.is_available():
        return ["torch-cpu"]
    return ["torch-cpu", "torch-cuda"]


# ================================================================ report
def markdown(report):
    m = report["machine"]
    lines = [
        "# GPU benchmark: training-step throughput, CPU and GPU",
        "",
        f"`{' '.join(['python -m benchmarks.gpu'] + report['argv'])}`, {report['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs; GPU: {report['gpu'] or 'none used'}. "
        f"Python {m['python']}, NumPy {m['numpy']}, Numba {m['numba']}, "
        f"CuPy {report['cupy']}, PyTorch {m['torch']}.",
        "",
        "examples/s: batch / median step time (forward, cross-entropy, zero_grad, backward, "
        "SGD step; GPU steps end with a synchronize). × ours CPU: examples/s over our CPU "
        "engine's. Memory: the peak resident size for CPU engines; CuPy's memory pool "
        "(ours) or PyTorch's peak allocation on the GPU. launches/step: the GPU kernels one "
        "step ran, as CUPTI counts them (through PyTorch's profiler; blank without it). "
        "host ms/step: median time until step() returned, before the synchronize: "
        "Python's share of a GPU step.",
        "",
        "| network | input | batch | engine | examples/s | × ours CPU | step ms | memory MB "
        "| launches/step | host ms/step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["results"]:
        shape = "×".join(map(str, entry["input_shape"]))
        base = entry["runs"].get("ours-cpu", {})
        for engine, r in entry["runs"].items():
            head = f"| {entry['name']} | {shape} | {entry['batch']} | {engine} |"
            if "error" in r:
                lines.append(f"{head} error: {r['error'][:80]} | | | | | |")
                continue
            ratio = (f"{r['examples_per_s'] / base['examples_per_s']:.2f}"
                     if "examples_per_s" in base else "")
            gpu = r.get("device", "cpu") != "cpu"
            launches = r.get("launches_per_step")
            host = f"{r['host_step_s'] * 1e3:.1f}" if gpu and "host_step_s" in r else ""
            lines.append(f"{head} {r['examples_per_s']:.1f} | {ratio} | "
                         f"{r['step_s'] * 1e3:.1f} | {r['memory_mb']:.0f} | "
                         f"{'' if launches is None else launches} | {host} |")
    return "\n".join(lines) + "\n"


def bar_chart(report, path):
    """Examples/s per network and batch, one bar per engine, log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    entries = report["results"]
    engines = [e for e in ENGINES if any(e in x["runs"] for x in entries)]
    width = 0.8 / max(len(engines), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(entries)), 4.5))
    for k, engine in enumerate(engines):
        heights = [x["runs"].get(engine, {}).get("examples_per_s", float("nan"))
                   for x in entries]       # NaN: no bar (0 has no place on a log scale)
        ax.bar([i + (k - (len(engines) - 1) / 2) * width for i in range(len(entries))],
               heights, width, label=engine)
    ax.set_yscale("log")
    ax.set_xticks(range(len(entries)))
    ax.set_xticklabels([f"{x['name']}\nbatch {x['batch']}" for x in entries], fontsize=8)
    ax.set_ylabel("training examples / s (log scale)")
    ax.set_title("Training-step throughput (missing bar: not run, or failed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ================================================================ main
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="all",
                        help="comma-separated registry names, or 'all' (default)")
    parser.add_argument("--batch", default=DEFAULT_BATCHES,
                        help=f"comma-separated batch sizes (default {DEFAULT_BATCHES})")
    parser.add_argument("--steps", type=int, default=10, help="timed GPU steps (default 10)")
    parser.add_argument("--cpu-steps", type=int, default=None,
                        help="timed CPU steps (default: --steps, at most 2: a CPU step "
                             "of a big network takes seconds)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps after the first (default 1)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--cpu-only", action="store_true",
                        help="only the CPU engines (runs without a GPU)")
    parser.add_argument("--out-dir", default=str(HERE / "results"))
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        engine, name, batch, steps, warmup = argv[1:]
        print(json.dumps(measure(engine, name, int(batch), int(steps), int(warmup))))
        return 0
    if argv and argv[0] == "--verify":
        from benchmarks.gpu_verify import main as verify
        return verify(argv[1:])
    args = parse_args(argv)
    problem = None if args.cpu_only else gpu_problem()
    if problem:
        print(f"benchmarks.gpu: cannot measure the GPU here: {problem}.\n"
              "Run it on a machine with an NVIDIA GPU and CuPy, or pass --cpu-only "
              "for the CPU engines alone.", file=sys.stderr)
        return 2
    import models
    names = models.names() if args.networks == "all" else args.networks.split(",")
    for name in names:
        models.spec(name)       # an unknown name fails now, not after minutes
    batches = [int(b) for b in args.batch.split(",")]
    engines = ["ours-cpu"] + ([] if args.cpu_only else ["ours-gpu", "ours-gpu-graph"])
    engines += [] if args.no_torch else torch_engines(args.cpu_only)
    cpu_steps = args.cpu_steps or min(args.steps, 2)
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "argv": argv,
              "args": vars(args), "machine": machine(), "gpu": None, "cupy": None,
              "results": []}
    if not args.cpu_only:
        import cupy
        report["cupy"] = cupy.__version__
        report["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    for name in names:
        for batch in batches:
            entry = {"name": name, "batch": batch,
                     "input_shape": list(models.spec(name).input_shape), "runs": {}}
            report["results"].append(entry)
            for engine in engines:
                steps = cpu_steps if engine in CPU_ENGINES else args.steps
                r = run_worker(engine, name, batch, steps, args.warmup)
                entry["runs"][engine] = r
                shown = r.get("error") or f"{r['examples_per_s']:10.1f} examples/s"
                print(f"{name:16s} batch {batch:4d}  {engine:10s} {shown}", flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (out / "gpu.md").write_text(table)
    bar_chart(report, out / "gpu.png")
    print()
    print(table)
    print(f"wrote {out / 'gpu.json'}, {out / 'gpu.md'}, {out / 'gpu.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
