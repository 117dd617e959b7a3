"""What splitting every op over threads costs: a step against replicas that never meet.

    python -m benchmarks.replicas [--networks resnet18,densenet,lenet] [--threads 2]
                                  [--rounds 3] [--batch N] [--steps S] [--no-torch]

A training step on t threads splits each op over the threads and waits for
all of them before the next op.  The bound without those meetings: t
replicas of the network in t Python threads of one process, each training
its own 1/t of the batch with one thread of kernels, all started together
and waited for at the end of the step.  The replicas share no gradient, so
this is a measurement, not a way to train: a data-parallel step would add
the gradients' sum and, with batch norm, its statistics' sums.

For each engine, in its own process (NumPy imported first, thread counts
set by ``tinygrad_cnn.set_num_threads`` or ``torch.set_num_threads``; the
engines alternate), each round times the full batch's step on 1 thread and
on t threads, the t replicas, and one replica alone (median of the timed
steps).  Per round, then the median over rounds:

- **efficiency**: the 1-thread time over t times the t-thread time;
- **replicas' efficiency**: the same with the replicas' time, the bound;
- **split**: the t-thread step's time over the replicas' (above 1: what
  splitting each op and meeting after it costs);
- **side by side**: the replicas' time over one replica's alone (what the
  threads cost each other: memory, caches, the GIL);
- **smaller batch**: one replica alone over 1/t of the 1-thread step (what
  a batch t times smaller costs: per-op overhead, smaller products).
"""
import argparse
import json
import statistics
import sys
import threading
import time

import numpy  # noqa: F401  (first, as users' scripts import it: before either engine)

COLUMNS = ("1 thread ms", "{t} threads ms", "{t} replicas ms", "1 replica alone ms",
           "efficiency 1→{t}", "replicas' efficiency", "split", "side by side", "smaller batch")


def _set_threads(engine, n):
    if engine == "ours":
        import tinygrad_cnn as tc
        tc.set_num_threads(n)
    else:
        import torch
        torch.set_num_threads(n)


def _timed(step, steps):
    """Median seconds of ``steps`` calls of ``step`` after an untimed one."""
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(engine, network, batch, threads, rounds, steps):
    """{"1": [...], "t": [...], "replicas": [...], "alone": [...]}: seconds per
    step, one entry per round, for ``engine`` ("ours" or "torch") in this process."""
    from benchmarks.op_scaling import _training_step
    full = _training_step(engine, network, batch)
    replicas = [_training_step(engine, network, batch // threads) for _ in range(threads)]
    result = {"1": [], "t": [], "replicas": [], "alone": []}
    for _ in range(rounds):
        _set_threads(engine, 1)
        result["1"].append(_timed(full, steps))
        _set_threads(engine, threads)
        result["t"].append(_timed(full, steps))
        _set_threads(engine, 1)
        result["replicas"].append(_replicas_timed(replicas, steps))
        result["alone"].append(_timed(replicas[0], steps))
    return result


def _replicas_timed(replicas, steps):
    """``_timed`` for the replicas' steps run side by side, one Python thread
    each.  A replica that raises breaks the barriers (BrokenBarrierError here,
    its own traceback on stderr) instead of leaving the others waiting."""
    go = [threading.Barrier(len(replicas) + 1) for _ in range(2)]
    stop = []

    def replica(step):
        try:
            while True:
                go[0].wait()
                if stop:
                    return
                step()
                go[1].wait()
        except BaseException:
            for barrier in go:
                barrier.abort()
            raise

    workers = [threading.Thread(target=replica, args=(step,)) for step in replicas]
    for worker in workers:
        worker.start()

    def together():
        go[0].wait()
        go[1].wait()
    try:
        return _timed(together, steps)
    finally:
        stop.append(True)
        try:
            go[0].wait()
        except threading.BrokenBarrierError:
            pass                            # a replica failed: the workers are done
        for worker in workers:
            worker.join()


def run_worker(engine, network, batch, threads, rounds, steps):
    """``measure`` in a fresh process (its own thread pools), as JSON."""
    from benchmarks.op_scaling import worker_json
    return worker_json("benchmarks.replicas",
                       ["--worker", engine, "--networks", network, "--batch", str(batch),
                        "--threads", str(threads), "--rounds", str(rounds), "--steps",
                        str(steps)],
                       f"replicas worker {engine} on {network}")


def ratios(times, threads):
    """The five ratios of the module docstring, each the median over rounds of
    the round's own ratio."""
    def per_round(f):
        return statistics.median(f(*r) for r in zip(times["1"], times["t"], times["replicas"],
                                                     times["alone"]))
    return [per_round(lambda one, t, rep, alone: one / (threads * t)),
            per_round(lambda one, t, rep, alone: one / (threads * rep)),
            per_round(lambda one, t, rep, alone: t / rep),
            per_round(lambda one, t, rep, alone: rep / alone),
            per_round(lambda one, t, rep, alone: alone / (one / threads))]


def table(results, threads):
    """Markdown: results[network][engine] as ``measure`` gives, one row each."""
    header = ["network", "engine"] + [c.format(t=threads) for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for network, engines in results.items():
        for engine, times in engines.items():
            ms = [f"{1e3 * statistics.median(times[k]):.1f}"
                  for k in ("1", "t", "replicas", "alone")]
            fractions = [f"{r:.3f}" for r in ratios(times, threads)]
            lines.append("| " + " | ".join([network, engine] + ms + fractions) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="resnet18,densenet,lenet")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None,
                        help="default: each network's benchmark batch (benchmarks.cpu)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per measurement (default 20 for 28x28 inputs, else 3)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import models
    from benchmarks.cpu import default_batch, default_steps
    if args.threads < 2:
        parser.error(f"--threads must be at least 2, got {args.threads}")
    networks = args.networks.split(",")
    for network in networks:
        models.spec(network)                # an unknown name fails here, before any worker
    if args.worker:
        network = networks[0]
        steps = args.steps or default_steps(models.spec(network))
        print(json.dumps(measure(args.worker, network, args.batch, args.threads, args.rounds,
                                 steps)))
        return
    from benchmarks.op_scaling import engines_to_run
    engines = engines_to_run(args.no_torch)
    results = {}
    for network in networks:
        batch = args.batch or default_batch(network)
        if batch % args.threads:
            parser.error(f"the batch ({batch}) must split evenly over {args.threads} replicas")
        steps = args.steps or default_steps(models.spec(network))
        results[network] = {engine: run_worker(engine, network, batch, args.threads,
                                               args.rounds, steps) for engine in engines}
    print(f"{args.threads} threads, {args.rounds} rounds; batch per network: "
          + ", ".join(f"{n} {args.batch or default_batch(n)}" for n in networks))
    print(table(results, args.threads))


if __name__ == "__main__":
    main()
