"""The one-command check of a GPU machine (issue 12):

    python -m benchmarks.gpu --verify [--data-dir DIR] [--budget 450] [--dry-run]

Stages, each in its own subprocess with its own timeout, all within one total
budget (default 450 s, under 8 minutes); a stage that fails or runs out of
time is recorded and the rest still run:

1. ``environment``: Python, NumPy, Numba, numba-cuda, CuPy, the CUDA runtime
   and driver, the GPU, PyTorch (and its CUDA), the git commit;
2. ``probe``: whether the numba.cuda kernels run here (``kernels/cuda_probe.py``),
   and the fused CUDA C kernels (``kernels/fused_cupy.py``), and why not;
3. ``pytest``: ``pytest -m gpu``, its summary line parsed, failures named;
   ``launch_cost``: host µs per kernel launch of each GPU kernel technology
   (``benchmarks/gpu_launch.py``: the check of fused_cupy's choice of CuPy RawKernel);
4. ``bench:<network>``: one training step, batch 128 (LeNet 256), at d2l's
   input size, ours on the GPU against PyTorch CUDA (``benchmarks.gpu --worker``):
   examples/s, ratio, GPU peak memory (ours: CuPy's pool; PyTorch: its peak
   allocation), host time per step, kernel-interface calls per step, GPU kernel
   launches per step (CUPTI, through PyTorch's profiler: ``launches_per_step``); for
   ResNet-18 also ``ours-gpu-graph``, the step replayed as a CUDA graph;
5. ``cpu_scaling`` (issue 13), on a machine with 4 or more cores: ResNet-18's
   training step on the CPU, ours against PyTorch, at 1, 2, 4, ... threads up to
   the cores there (``benchmarks.cpu --threads``, one round, as users run it);
   its tables go to ``<out>/cpu-scaling.md`` and ``.json``.  Skipped when less
   than its timeout is left of the budget;
   ``cpu_bandwidth`` (issue 13), on 4 or more cores, budget permitting: the
   streaming GB/s of 1, 2, 4, ... threads up to the cores, from working sets
   that fit the caches to ones that come from main memory
   (``benchmarks.bandwidth``): the cap memory puts on the speed-up of the
   ops that only move memory there, to read cpu_scaling's figures against;
6. ``fashion_mnist``: ``tinygrad-cnn train lenet_bn --epochs 3 --device cuda``
   on ``--data-dir`` (skipped, with a note, when the files are not there);
   ``cpu_op_scaling`` (issue 13), on 4 or more cores, budget permitting:
   ResNet-18's step split by kind of op at 1 thread and all cores, ours
   against PyTorch's (``benchmarks.op_scaling``), its table in the report,
   with where our threads' time goes (what the step loses to serial work, to
   threads waiting inside the pool's work and to that work growing:
   ``kernels.pool_time``; the summary line gives the three) and our 15 layers
   that lose most against perfect scaling (``--by-op``);
   ``cpu_replicas`` (issue 13), on 4 or more cores, budget permitting:
   ResNet-18's step on all cores against as many replicas, each training 8
   images on one thread, in threads and in processes (``benchmarks.replicas``):
   how much of the loss is the meetings after each split op, how much the
   cores slowing each other, how much sharing one interpreter (the GIL);
7. ``d2l:<network>``, only with ``--d2l NAME…``: ``tinygrad-cnn train NAME
   --device cuda`` at d2l's own settings (the registry's input size, lr,
   epochs, batch), for the README's d2l-settings table.  A run whose time,
   estimated from its ``bench`` stage's examples/s, exceeds what is left of
   the budget is skipped with that reason (raise ``--budget``) instead of
   being cut off; one without a benchmark figure gets the rest of the budget.

Works without numba-cuda (or with a broken one): the probe says why, and the
reference kernels are what gets benchmarked.  Writes one JSON report,
``benchmarks/results/gpu-verify-<date>-<host>.json``, and prints a summary.
``--dry-run`` runs the environment and probe stages only and lists the rest
(a check of the report on a machine without a GPU).
"""
import argparse
import datetime
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NETWORKS = ("lenet", "resnet18", "densenet", "googlenet", "alexnet")
BATCH = {"lenet": 256}                  # the rest: 128, as the targets
DEFAULT_BATCH = 128
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "datasets" / "fashion-mnist"
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

ENVIRONMENT = r"""
import json, platform, subprocess, importlib.metadata as md
def version(dist):
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None
env = {"python": platform.python_version(), "platform": platform.platform(),
       "numpy": version("numpy"), "numba": version("numba"),
       "numba-cuda": version("numba-cuda"),
       "cupy": next((f"{d}=={version(d)}" for d in ("cupy-cuda13x", "cupy-cuda12x", "cupy")
                     if version(d)), None),
       "torch": version("torch")}
try:
    env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                       text=True).stdout.strip() or None
except OSError:
    env["git_commit"] = None
try:
    import cupy
    rt = cupy.cuda.runtime
    env["cuda_runtime"] = rt.runtimeGetVersion()
    env["cuda_driver"] = rt.driverGetVersion()
    env["gpu"] = rt.getDeviceProperties(0)["name"].decode()
    env["gpu_memory_gib"] = round(rt.getDeviceProperties(0)["totalGlobalMem"] / 2**30, 1)
except Exception as exc:
    env["cupy_error"] = f"{type(exc).__name__}: {exc}"
try:
    import torch
    env["torch_cuda"] = torch.version.cuda
    env["torch_sees_gpu"] = torch.cuda.is_available()
except Exception as exc:
    env["torch_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(env))
"""

PROBE = r"""
import json, kernels
why = kernels.cuda_probe.why_not()
fused_why = kernels.fused_cupy.why_not()
print(json.dumps({"numba_cuda_kernels": why is None, "why_not": why,
                  "fused_kernels": fused_why is None, "fused_why_not": fused_why}))
"""


# ================================================================ stages
class Stage:
    """One subprocess: ``argv`` run from the repository root within ``timeout``
    seconds; ``parse(stdout)`` turns its output into the stage's result."""

    def __init__(self, name, argv, timeout, parse=None, skip=None, plan=None):
        self.name, self.argv, self.timeout = name, argv, timeout
        self.parse = parse or last_json_line
        self.skip = skip            # a reason not to run it, or None
        # plan(records so far, seconds left) -> a reason to skip, or None
        self.plan = plan


def last_json_line(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def run_stage(stage, seconds_left):
    """Run ``stage``; always returns a record (status ok / failed / timeout / skipped)."""
    record = {"name": stage.name, "command": " ".join(stage.argv)}
    if stage.skip:
        return dict(record, status="skipped", note=stage.skip)
    timeout = min(stage.timeout, seconds_left)
    if timeout < 5:
        return dict(record, status="skipped", note="the total time budget is spent")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    start = time.monotonic()
    try:
        proc = subprocess.run(stage.argv, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) \
            else (exc.stdout or "")
        return dict(record, status="timeout", seconds=round(time.monotonic() - start, 1),
                    note=f"stopped after {timeout:.0f} s", output_tail=out[-2000:])
    record["seconds"] = round(time.monotonic() - start, 1)
    try:
        result = stage.parse(proc.stdout)
    except Exception as exc:        # no parsable output: the stage failed
        result, parse_error = None, f"{type(exc).__name__}: {exc}"
    else:
        parse_error = None
    if proc.returncode != 0 or parse_error:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return dict(record, status="failed", returncode=proc.returncode, result=result,
                    error=tail[-1] if tail else parse_error or f"exit status {proc.returncode}",
                    output_tail="\n".join(tail[-30:]))
    return dict(record, status="ok", result=result)


SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def parse_pytest(stdout):
    """pytest's closing line as counts, and the failing tests' ids."""
    lines = stdout.strip().splitlines()
    summary = next((line for line in reversed(lines) if SUMMARY.search(line)), None)
    if summary is None:
        raise ValueError("no pytest summary line in the output")
    counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n)
              for n, kind in SUMMARY.findall(summary)}
    failed = [line.split()[1] for line in lines if line.startswith(("FAILED ", "ERROR "))]
    return {"summary": summary.strip("= "), "counts": counts, "failed": failed[:50]}


def parse_training(stdout):
    """d2l's closing lines of ``tinygrad-cnn train``: loss, accuracies, examples/s."""
    text = stdout
    found = re.search(r"loss ([\d.]+), train acc ([\d.]+), test acc ([\d.]+)", text)
    speed = re.search(r"([\d.]+) examples/sec on (\S+)", text)
    if not found:
        raise ValueError("no 'loss …, train acc …, test acc …' line in the output")
    return {"train_loss": float(found[1]), "train_acc": float(found[2]),
            "test_acc": float(found[3]),
            "examples_per_s": float(speed[1]) if speed else None,
            "device": speed[2] if speed else None}


def fashion_skip(data_dir):
    if data_dir is None:
        return "no --data-dir given and no Fashion-MNIST at the default place"
    missing = [f for f in FASHION_FILES if not (Path(data_dir) / f).exists()]
    return f"Fashion-MNIST files missing in {data_dir}: {missing}" if missing else None


def stages(data_dir, out_dir, steps=10):
    python = sys.executable
    found = [
        Stage("environment", [python, "-c", ENVIRONMENT], 60),
        Stage("probe", [python, "-c", PROBE], 120),
        Stage("pytest", [python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                         "--kernels", "numba", "tests"], 200, parse=parse_pytest),
        Stage("launch_cost", [python, "-m", "benchmarks.gpu_launch"], 45),
    ]
    for name in NETWORKS:
        batch = str(BATCH.get(name, DEFAULT_BATCH))
        graph = ("ours-gpu-graph",) if name == "resnet18" else ()   # CUDA Graphs' target
        for engine in ("ours-gpu",) + graph + ("torch-cuda",):
            found.append(Stage(f"bench:{name}:{engine}",
                               [python, "-m", "benchmarks.gpu", "--worker", engine, name, batch,
                                str(steps), "2"], 75))
    found.append(cpu_scaling_stage(out_dir))
    found.append(cpu_bandwidth_stage())
    found.append(Stage("fashion_mnist",
                       [python, "-m", "tinygrad_cnn", "train", "lenet_bn", "--data-dir",
                        str(data_dir), "--epochs", "3", "--device", "cuda", "--no-progress",
                        "--out", str(Path(out_dir) / "gpu-verify-lenet_bn")],
                       150, parse=parse_training, skip=fashion_skip(data_dir)))
    found.append(cpu_op_scaling_stage())
    found.append(cpu_replicas_stage())
    return found


CPU_SCALING_NETWORK = "resnet18"          # the network issue 13 sets the 16-core target for
CPU_SCALING_TIMEOUT = 150


def cpu_thread_counts(cores):
    """1, 2, 4, ... up to ``cores``, and ``cores`` itself: the sweep's thread counts."""
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    return counts + [cores]


def cpu_scaling_stage(out_dir, cores=None):
    """``benchmarks.cpu`` sweeping the threads of this machine's cores for
    ResNet-18 (skipped below 4 cores: the 2-core sweep is in benchmarks/results.md)."""
    cores = cores or os.cpu_count() or 1
    out = Path(out_dir) / "cpu-scaling.json"
    argv = [sys.executable, "-m", "benchmarks.cpu", "--networks", CPU_SCALING_NETWORK,
            "--threads", ",".join(map(str, cpu_thread_counts(cores))), "--rounds", "1",
            "--kernels", "numba", "--out", str(out),
            "--markdown", str(out.with_suffix(".md"))]
    skip = (f"{cores} cores: the CPU scaling stage needs 4 or more" if cores < 4 else None)
    return Stage("cpu_scaling", argv, CPU_SCALING_TIMEOUT,
                 parse=lambda stdout: parse_cpu_scaling(json.loads(out.read_text())),
                 skip=skip, plan=whole_or_skipped(CPU_SCALING_TIMEOUT))


CPU_BANDWIDTH_TIMEOUT = 60
CPU_BANDWIDTH_SIZES_MB = "1,4,16,64,256"    # within the caches, to well past a server's L3


def cpu_bandwidth_stage(cores=None):
    """``benchmarks.bandwidth`` at the sweep's thread counts (skipped below 4
    cores, and when less than its timeout is left of the budget)."""
    cores = cores or os.cpu_count() or 1
    argv = [sys.executable, "-m", "benchmarks.bandwidth",
            "--threads", ",".join(map(str, cpu_thread_counts(cores))),
            "--sizes", CPU_BANDWIDTH_SIZES_MB, "--seconds", "0.1"]
    skip = (f"{cores} cores: the bandwidth stage needs 4 or more" if cores < 4 else None)
    return Stage("cpu_bandwidth", argv, CPU_BANDWIDTH_TIMEOUT, parse=parse_bandwidth,
                 skip=skip, plan=whole_or_skipped(CPU_BANDWIDTH_TIMEOUT))


def parse_bandwidth(stdout):
    """{"caches": the line naming them, "table": [the Markdown lines],
    "speed_up": {working set: speed-up from 1 thread to all}} from
    ``benchmarks.bandwidth``'s output."""
    lines = stdout.splitlines()
    table = [line for line in lines if line.startswith("|")]
    if len(table) < 3:
        raise ValueError("no table in benchmarks.bandwidth's output")
    result = {"caches": next((line for line in lines if "caches:" in line), ""),
              "table": table}
    if _cells(table[0])[-1].startswith("speed-up"):
        result["speed_up"] = {cells[0]: float(cells[-1]) for cells in map(_cells, table[2:])}
    return result


def _cells(row):
    """The stripped cells of a Markdown table row."""
    return [cell.strip() for cell in row.strip("|").split("|")]


def whole_or_skipped(timeout):
    """A stage's ``plan``: skip it (saying why) when less than its ``timeout``
    is left of the budget, rather than cut it off."""
    def plan(records, seconds_left):
        if seconds_left < timeout:
            return f"{seconds_left:.0f} s left of the budget, {timeout} s needed: raise --budget"
        return None
    return plan


CPU_OP_SCALING_TIMEOUT = 120
CPU_OP_SCALING_LAYERS = 15      # our layers listed that lose most against perfect scaling


def cpu_op_scaling_stage(cores=None):
    """``benchmarks.op_scaling`` for ResNet-18 at 1 thread and all cores: its
    step split by kind of op, ours against PyTorch's, so that a first many-core
    run says where the speed-up is lost, not only how much (skipped below 4
    cores, and when less than its timeout is left of the budget)."""
    cores = cores or os.cpu_count() or 1
    argv = [sys.executable, "-m", "benchmarks.op_scaling", "--network", CPU_SCALING_NETWORK,
            "--threads", f"1,{cores}", "--steps", "2", "--by-op", str(CPU_OP_SCALING_LAYERS)]
    skip = (f"{cores} cores: the per-op split needs 4 or more" if cores < 4 else None)
    return Stage("cpu_op_scaling", argv, CPU_OP_SCALING_TIMEOUT, parse=parse_op_scaling,
                 skip=skip, plan=whole_or_skipped(CPU_OP_SCALING_TIMEOUT))


CPU_REPLICAS_TIMEOUT = 150       # each engine also starts one replica process per core
CPU_REPLICAS_IMAGES = 8         # per replica: the batch is 8 x the cores (128 on 16)


def cpu_replicas_stage(cores=None):
    """``benchmarks.replicas`` for ResNet-18 on all cores, one round, both
    engines (skipped below 4 cores, and when less than its timeout is left)."""
    cores = cores or os.cpu_count() or 1
    argv = [sys.executable, "-m", "benchmarks.replicas", "--networks", CPU_SCALING_NETWORK,
            "--threads", str(cores), "--batch", str(CPU_REPLICAS_IMAGES * cores),
            "--rounds", "1", "--steps", "2"]
    skip = (f"{cores} cores: the replicas' bound needs 4 or more" if cores < 4 else None)
    return Stage("cpu_replicas", argv, CPU_REPLICAS_TIMEOUT, parse=parse_replicas,
                 skip=skip, plan=whole_or_skipped(CPU_REPLICAS_TIMEOUT))


def parse_replicas(stdout):
    """{"table": [the Markdown lines]} from ``benchmarks.replicas``'s output."""
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    if not table:
        raise ValueError("no table in benchmarks.replicas's output")
    return {"table": table}


def parse_op_scaling(stdout):
    """{"table": [the kinds' Markdown lines]} from ``benchmarks.op_scaling``'s
    output, with "pool": [the lines of where our threads' time goes] and
    "layers": [the layers' lines] where it printed them (``--by-op``), the
    pool's table known by the line above it."""
    tables, title, in_table = [], "", False
    for line in stdout.splitlines():
        if line.startswith("|"):
            if not in_table:
                tables.append((title, []))
            tables[-1][1].append(line)
        elif line.strip():
            title = line
        in_table = line.startswith("|")
    if not tables:
        raise ValueError("no table in benchmarks.op_scaling's output")
    from benchmarks.op_scaling import POOL_TITLE
    result = {"table": tables[0][1]}
    for title, lines in tables[1:]:
        result["pool" if title.startswith(POOL_TITLE) else "layers"] = lines
    return result


def pool_losses(lines):
    """"serial X, waiting Y, extra work Z ms on N threads" from the last row of
    ``benchmarks.op_scaling``'s table of where the threads' time goes."""
    from benchmarks.op_scaling import LOSSES
    row = dict(zip(_cells(lines[0]), _cells(lines[-1])))
    return (", ".join(f"{part} {row[f'lost: {part} ms']}" for part in LOSSES)
            + f" ms on {row['threads']} threads")


def parse_cpu_scaling(report):
    """{network: {threads: {ours, torch, ratio, ours_cores_busy, torch_cores_busy}}}
    from a benchmarks.cpu report (its ``--out`` file): examples/s of each
    engine's best run, their ratio, and the cores each of those runs kept busy."""
    from benchmarks.cpu import best
    table = {}
    for net in report["networks"]:
        runs = {engine: best(rounds) or {} for engine, rounds in net["runs"].items()}
        ours, torch = runs.get("numba", {}), runs.get("torch", {})
        row = {"ours": ours.get("examples_per_s"), "torch": torch.get("examples_per_s"),
               "ours_cores_busy": ours.get("cores_busy"),
               "torch_cores_busy": torch.get("cores_busy")}
        if row["ours"] and row["torch"]:
            row["ratio"] = round(row["ours"] / row["torch"], 3)
        table.setdefault(net["name"], {})[str(net["threads"])] = row
    return table


# d2l's Fashion-MNIST: 60,000 training and 10,000 test images; a test pass costs
# about a third of a training pass over as many images (forward only).
D2L_TRAIN_IMAGES, D2L_TEST_IMAGES = 60_000, 10_000
D2L_START_S = 60            # start-up, loading (and resizing) the images, first compiles


def d2l_stages(names, data_dir, out_dir):
    """One ``d2l:NAME`` stage per network: ``tinygrad-cnn train NAME --device cuda``
    at the registry's (d2l's) settings, written out on the command line."""
    import models
    found = []
    for name in names:
        spec = models.spec(name)
        argv = [sys.executable, "-m", "tinygrad_cnn", "train", name, "--device", "cuda",
                "--data-dir", str(data_dir), "--epochs", str(spec.num_epochs),
                "--lr", str(spec.lr), "--batch-size", str(spec.batch_size),
                *(["--resize", str(spec.resize)] if spec.resize else []),
                "--no-progress", "--out", str(Path(out_dir) / f"gpu-verify-d2l-{name}")]
        skip = (f"d2l trains it on {spec.dataset}; --d2l runs Fashion-MNIST networks only"
                if spec.dataset != "fashion_mnist" else fashion_skip(data_dir))
        settings = {"lr": spec.lr, "epochs": spec.num_epochs, "batch_size": spec.batch_size,
                    "resize": spec.resize, "source": spec.source}

        def parse(stdout, settings=settings):
            return dict(parse_training(stdout), settings=settings)

        found.append(Stage(f"d2l:{name}", argv, 10 ** 6, parse=parse, skip=skip,
                           plan=_d2l_plan(name, spec.num_epochs)))
    return found


def _d2l_plan(name, epochs):
    """Skip the run when its estimated time does not fit in what is left."""
    def plan(records, seconds_left):
        estimate = d2l_estimate_s(name, epochs, records)
        if estimate is None:
            return None         # no speed measured: it gets the rest of the budget
        if estimate > seconds_left:
            return (f"needs about {estimate:.0f} s (from bench:{name}'s examples/s), "
                    f"{seconds_left:.0f} s left of the budget: raise --budget")
        return None
    return plan


def d2l_estimate_s(name, epochs, records):
    """Seconds a d2l-settings run of ``name`` should take, from the examples/s of
    its ``bench:NAME:ours-gpu`` stage; None without that figure."""
    bench = next((r for r in records if r["name"] == f"bench:{name}:ours-gpu"), None)
    speed = ((bench or {}).get("result") or {}).get("examples_per_s") \
        if (bench or {}).get("status") == "ok" else None
    if not speed:
        return None
    return D2L_START_S + epochs * (D2L_TRAIN_IMAGES + D2L_TEST_IMAGES / 3) / speed


# ================================================================ the report
def benchmark_table(records):
    """{network: {ours, torch, ratio}} from the bench stages."""
    table = {}
    for record in records:
        if not record["name"].startswith("bench:"):
            continue
        _, network, engine = record["name"].split(":")
        row = table.setdefault(network, {})
        row[engine] = record.get("result") if record["status"] == "ok" else \
            {"error": record.get("error") or record.get("note") or record["status"]}
    for row in table.values():
        ours, torch = row.get("ours-gpu") or {}, row.get("torch-cuda") or {}
        if "examples_per_s" in ours and "examples_per_s" in torch:
            row["ratio"] = round(ours["examples_per_s"] / torch["examples_per_s"], 4)
            row["memory_ratio"] = round(ours["memory_mb"] / max(torch["memory_mb"], 1e-9), 3)
        graphed = row.get("ours-gpu-graph") or {}
        if "examples_per_s" in graphed and "examples_per_s" in torch:
            row["graph_ratio"] = round(graphed["examples_per_s"] / torch["examples_per_s"], 4)
    return table


def summary_lines(report):
    env = (report["stages"]["environment"].get("result") or {})
    probe = report["stages"]["probe"]
    lines = [f"GPU verification, {report['date']}, {report['host']}: "
             f"{env.get('gpu', 'no GPU seen')}",
             f"  versions: Python {env.get('python')}, NumPy {env.get('numpy')}, "
             f"Numba {env.get('numba')}, numba-cuda {env.get('numba-cuda')}, "
             f"CuPy {env.get('cupy')}, CUDA runtime {env.get('cuda_runtime')} / driver "
             f"{env.get('cuda_driver')}, PyTorch {env.get('torch')}"]
    if probe["status"] == "ok":
        verdict = probe["result"]
        lines.append("  numba.cuda kernels: " + ("used" if verdict["numba_cuda_kernels"]
                                                 else f"NOT used ({verdict['why_not']})"))
    for name, record in report["stages"].items():
        if name in ("environment", "probe") or name.startswith("bench:"):
            continue
        what = record.get("result") or {}
        if name == "cpu_scaling" and what:
            what = {f"{network} {t} threads":
                    f"ours {r['ours']} / PyTorch {r['torch']} examples/s"
                    + (f" = {r['ratio']:.2f}x" if "ratio" in r else "")
                    + (f" (cores busy {r['ours_cores_busy']:.1f} / {r['torch_cores_busy']:.1f})"
                       if r.get("ours_cores_busy") and r.get("torch_cores_busy") else "")
                    for network, rows in what.items() for t, r in rows.items()}
        if name == "cpu_op_scaling" and what:
            what = {"table": f"of {len(what['table']) - 2} kinds of op in the report"
                     + (f", and of the {len(what['layers']) - 2} layers that lose most"
                        if "layers" in what else ""),
                    **({"lost": pool_losses(what["pool"])} if "pool" in what else {})}
        if name == "cpu_bandwidth" and what:
            what = {"speed-up from 1 thread to all": ", ".join(
                f"{size} {x:.2f}x" for size, x in what.get("speed_up", {}).items())}
        if name == "cpu_replicas" and what:
            what = {"table": f"of {len(what['table']) - 2} engines in the report"}
        shown = (what.get("summary") if name == "pytest" else
                 ", ".join(f"{k} {v}" for k, v in what.items()) if what else "")
        lines.append(f"  {name}: {record['status']} {shown or record.get('note') or record.get('error') or ''}".rstrip())
    for network, row in report["benchmark"].items():
        ours, torch = row.get("ours-gpu", {}), row.get("torch-cuda", {})

        def speed(r):
            return f"{r['examples_per_s']:.1f} ex/s" if "examples_per_s" in r else \
                f"error: {str(r.get('error'))[:60]}"
        extra = (f", host {ours['host_step_s'] * 1e3:.1f} ms/step, "
                 f"{ours['kernel_calls_per_step']} kernel calls/step"
                 if "host_step_s" in ours else "")
        if ours.get("launches_per_step") is not None:
            extra += f", {ours['launches_per_step']} launches/step"
        ratio = f", ratio {row['ratio']:.3f}, memory ratio {row['memory_ratio']:.2f}" \
            if "ratio" in row else ""
        lines.append(f"  {network}: ours {speed(ours)}, PyTorch {speed(torch)}{ratio}{extra}")
        if "ours-gpu-graph" in row:
            graphed = row["ours-gpu-graph"]
            ratio = f", ratio {row['graph_ratio']:.3f}" if "graph_ratio" in row else ""
            lines.append(f"  {network} with a CUDA graph: ours {speed(graphed)}{ratio}")
    lines.append(f"  total {report['seconds']:.0f} s of a {report['budget_s']:.0f} s budget")
    return lines


def write_atomically(path, text):
    from tinygrad_cnn.files import atomic_write      # the package's one way to write a file
    with atomic_write(path, "w") as f:
        f.write(text)


def verify(data_dir, out_dir, budget_s, dry_run=False, stage_list=None, steps=10):
    """Run the stages within ``budget_s``; write and return the report."""
    start = time.monotonic()
    now = datetime.datetime.now(datetime.timezone.utc)
    host = socket.gethostname().split(".")[0]
    records = []
    for stage in stage_list if stage_list is not None else stages(data_dir, out_dir, steps):
        if dry_run and stage.name not in ("environment", "probe"):
            stage.skip = stage.skip or "dry run"
        if stage.plan and not stage.skip:
            stage.skip = stage.plan(records, budget_s - (time.monotonic() - start))
        record = run_stage(stage, budget_s - (time.monotonic() - start))
        records.append(record)
        print(f"[{time.monotonic() - start:6.1f} s] {stage.name}: {record['status']}",
              flush=True)
    report = {"date": now.isoformat(timespec="seconds"), "host": host,
              "command": "python -m benchmarks.gpu --verify", "dry_run": dry_run,
              "budget_s": budget_s, "data_dir": None if data_dir is None else str(data_dir),
              "stages": {r["name"]: r for r in records},
              "benchmark": benchmark_table(records)}
    report["seconds"] = round(time.monotonic() - start, 1)
    path = Path(out_dir) / f"gpu-verify-{now:%Y%m%d-%H%M%S}-{host}.json"
    write_atomically(path, json.dumps(report, indent=1) + "\n")
    report["path"] = str(path)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu --verify",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None,
                        help=f"Fashion-MNIST files (default: {DEFAULT_DATA_DIR} if there)")
    parser.add_argument("--budget", type=float, default=450.0,
                        help="total seconds for all stages (default 450)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per benchmark")
    parser.add_argument("--out-dir", default=str(HERE / "results"))
    parser.add_argument("--dry-run", action="store_true",
                        help="run the environment and probe stages only; list the rest")
    parser.add_argument("--d2l", nargs="+", default=[], metavar="NAME",
                        help="also train these networks at d2l's settings on the GPU "
                        "(models.names(); each skipped, with the reason, when it does not "
                        "fit in --budget)")
    args = parser.parse_args(argv)
    import models
    unknown = [name for name in args.d2l if name not in models.names()]
    if unknown:
        parser.error(f"--d2l: unknown networks {', '.join(unknown)}; available: "
                     f"{', '.join(models.names())}")
    data_dir = args.data_dir or (DEFAULT_DATA_DIR if DEFAULT_DATA_DIR.exists() else None)
    stage_list = stages(data_dir, args.out_dir, args.steps) + \
        d2l_stages(args.d2l, data_dir, args.out_dir)
    report = verify(data_dir, args.out_dir, args.budget, args.dry_run, stage_list=stage_list,
                    steps=args.steps)
    print()
    print("\n".join(summary_lines(report)))
    if args.dry_run:
        for name, record in report["stages"].items():
            if record.get("note") == "dry run":
                print(f"  would run {name}: {record['command']}")
    print(f"wrote {report['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
