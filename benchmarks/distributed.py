"""Data-parallel scaling: examples/s of 1, 2, ... ranks, each rank with the same threads.

    python -m benchmarks.distributed [--networks lenet,resnet18] [--ranks 1,2]
                                     [--threads 1] [--steps N] [--rounds 2]

Weak scaling: every rank trains on its own batch of the size ``benchmarks.cpu``
uses for the network (LeNet 256 at 28x28, ResNet-18 64 at 96x96), so R ranks
process R times the examples of one per step.  Each configuration runs as
``mpiexec -n R python -m benchmarks.distributed --worker ...`` with
``--threads`` threads for every library in every rank (NUMBA_NUM_THREADS,
OPENBLAS_NUM_THREADS, OMP_NUM_THREADS; with ``--threads 0`` none of them set,
as users run it, so ``distributed.init()`` shares each machine's cores among
its ranks), after one step on a batch of 2 (Numba
compiles or loads its cache) and ``--warmup`` full steps.  One rank is the plain
network (no DistributedDataParallel: the baseline a user would compare with);
more ranks wrap it in DistributedDataParallel.  Configurations alternate
inside every round and the best round counts (the machine is shared).

Reported per configuration: the median step time, examples/s over all ranks,
the speed-up and scaling efficiency against one rank (speed-up / R), and the
share of a step spent communicating (averaging gradients -- packing buckets,
Allreduce, unpacking -- and broadcasting the buffers), timed on rank 0.

Writes ``benchmarks/results/distributed.json`` (all figures, git-ignored) and
``benchmarks/results_distributed.md`` (the table and the machine's state, committed).
"""
import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from benchmarks.cpu import ROOT, USER_ENVIRONMENT, batch_for, build_ours, machine, training_step

DEFAULT_BATCH = {"lenet": 256, "lenet_bn": 256, "resnet18": 64}


# ================================================================ one configuration
def measure(name, batch, steps, warmup):
    """In each rank under mpiexec: time ``steps`` training steps; rank 0 returns the
    figures (None elsewhere)."""
    import models
    import tinygrad_cnn.nn.functional as F
    from tinygrad_cnn import Tensor, optim
    from tinygrad_cnn import distributed as dist
    from tinygrad_cnn.distributed import parallel, process_group

    dist.init()
    world = dist.world_size()
    spec = models.spec(name)
    net = build_ours(name)
    comm = [0.0]
    if world > 1:
        net = dist.DistributedDataParallel(net)
        _time_calls(parallel._Bucket, "reduce", comm)
        _time_calls(process_group, "broadcast", comm)
    optimizer = optim.SGD(net.parameters(), lr=spec.lr)

    def step_on(X, y):
        return training_step(net, F, optimizer, Tensor(X), Tensor(y))

    step_on(*batch_for(spec.input_shape, 2))()
    step = step_on(*batch_for(spec.input_shape, batch))
    for _ in range(warmup):
        step()
    times, comm_times = [], []
    for _ in range(steps):
        comm[0] = 0.0
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        comm_times.append(comm[0])
    if dist.rank() != 0:
        return None
    step_s = statistics.median(times)
    return {"ranks": world, "batch_per_rank": batch, "step_s": step_s,
            "step_times_s": times, "examples_per_s": world * batch / step_s,
            "comm_s": statistics.median(comm_times),
            "comm_share": statistics.median(c / t for c, t in zip(comm_times, times))}


def _time_calls(owner, attribute, total):
    """Add the wall time of every call of ``owner.attribute`` to ``total[0]``."""
    original = getattr(owner, attribute)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - start
    setattr(owner, attribute, timed)


def run_configuration(name, ranks, batch, steps, warmup, threads):
    env = dict(USER_ENVIRONMENT, TINYGRAD_CNN_KERNELS="numba",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                        USER_ENVIRONMENT.get("PYTHONPATH")])))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        if threads:             # 0: none set, as users run it (init() shares the cores)
            env[var] = str(threads)
    command = [shutil.which("mpiexec") or "mpiexec", "-n", str(ranks), sys.executable, "-m",
               "benchmarks.distributed", "--worker", name, str(batch), str(steps), str(warmup)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ================================================================ report
def table(results, ranks):
    lines = ["| network | batch per rank | ranks × threads | examples/s | speed-up | "
             "efficiency | communication share of a step |",
             "|---|---|---|---|---|---|---|"]
    for name, by_ranks in results.items():
        base = by_ranks[ranks[0]].get("examples_per_s")
        for r in ranks:
            run = by_ranks[r]
            if "error" in run:
                lines.append(f"| {name} | | {r} | error: {run['error']} | | | |")
                continue
            speedup = run["examples_per_s"] / base if base else float("nan")
            lines.append(f"| {name} | {run['batch_per_rank']} | {r} × "
                         f"{run['threads'] or 'default'} | "
                         f"{run['examples_per_s']:,.1f} | {speedup:.2f}× | "
                         f"{speedup / (r / ranks[0]):.0%} | {run['comm_share']:.1%} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="lenet,resnet18")
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of every rank, through the thread variables; 0: none "
                             "set, as users run it (distributed.init() shares the cores)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", nargs=4, metavar=("NAME", "BATCH", "STEPS", "WARMUP"))
    args = parser.parse_args(argv)
    if args.worker:
        name, batch, steps, warmup = args.worker
        result = measure(name, int(batch), int(steps), int(warmup))
        if result is not None:
            print(json.dumps(result))
        return
    ranks = [int(r) for r in args.ranks.split(",")]
    networks = args.networks.split(",")
    results = {}
    for name in networks:
        batch = DEFAULT_BATCH.get(name, 64)
        steps = args.steps or (20 if name.startswith("lenet") else 4)
        rounds = []
        for _ in range(args.rounds):          # configurations alternate inside a round
            rounds.append({r: run_configuration(name, r, batch, steps, args.warmup,
                                                args.threads) for r in ranks})
        results[name] = {}
        for r in ranks:
            runs = [rnd[r] for rnd in rounds if "error" not in rnd[r]]
            chosen = max(runs, key=lambda run: run["examples_per_s"]) if runs else rounds[0][r]
            chosen["threads"] = args.threads
            chosen["rounds_examples_per_s"] = [rnd[r].get("examples_per_s") for rnd in rounds]
            results[name][r] = chosen
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    info = machine()
    (out / "distributed.json").write_text(json.dumps({"machine": info, "results": results},
                                                     indent=1))
    text = table(results, ranks)
    print(text)
    (ROOT / "benchmarks" / "results_distributed.md").write_text(
        "# Data-parallel scaling (`python -m benchmarks.distributed "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`)\n\n"
        f"{info['cpu']}, {info['cpus']} CPUs, load average "
        f"{', '.join(f'{x:.1f}' for x in info['load_average'])} at the end (1, 5, 15 min); "
        f"{datetime.date.today()}.\n\n{text}\n\nExamples/s per round: "
        + "; ".join(f"{name} {r} rank(s): "
                    + ", ".join(f"{x:,.1f}" for x in run["rounds_examples_per_s"] if x)
                    for name, by_ranks in results.items() for r, run in by_ranks.items())
        + "\n")


if __name__ == "__main__":
    main()
