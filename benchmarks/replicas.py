"""What splitting every op over threads costs: a step against replicas that never meet.

    python -m benchmarks.replicas [--networks resnet18,densenet,lenet] [--threads 2]
                                  [--rounds 3] [--batch N] [--steps S] [--no-torch]

A training step on t threads splits each op over the threads and waits for
all of them before the next op.  The bound without those meetings: t
replicas of the network in t Python threads of one process, each training
its own 1/t of the batch with one thread of kernels, all started together
and waited for at the end of the step.  The replicas share no gradient, so
this is a measurement, not a way to train: a data-parallel step would add
the gradients' sum and, with batch norm, its statistics' sums.  The same
replicas also run as t processes, each with its own interpreter and memory:
the bound once the threads share neither the GIL nor the allocator (the
cores' caches and memory they still share).

For each engine, in its own process (NumPy imported first, thread counts
set by ``tinygrad_cnn.set_num_threads`` or ``torch.set_num_threads``; the
engines alternate), each round times the full batch's step on 1 thread and
on t threads, the t replicas, one replica alone, and the t replicas as
processes (median of the timed steps).  Per round, then the median over
rounds:

- **efficiency**: the 1-thread time over t times the t-thread time;
- **replicas' efficiency**: the same with the replicas' time, the bound;
- **split**: the t-thread step's time over the replicas' (above 1: what
  splitting each op and meeting after it costs);
- **side by side**: the replicas' time over one replica's alone (what the
  threads cost each other: memory, caches, the GIL);
- **smaller batch**: one replica alone over 1/t of the 1-thread step (what
  a batch t times smaller costs: per-op overhead, smaller products);
- **processes' efficiency**: the replicas' efficiency with the replicas in
  processes, the bound without the GIL and the shared allocator;
- **one process**: the replicas in threads over the replicas in processes
  (what sharing one interpreter and one address space costs them: waits for
  the GIL, and a thread's freed memory handed back to the system and
  faulted in again).
"""
import argparse
import functools
import json
import multiprocessing
import statistics
import sys
import threading
import time

import numpy  # noqa: F401  (first, as users' scripts import it: before either engine)

COLUMNS = ("1 thread ms", "{t} threads ms", "{t} replicas ms", "1 replica alone ms",
           "{t} processes ms", "efficiency 1→{t}", "replicas' efficiency", "split",
           "side by side", "smaller batch", "processes' efficiency", "one process")
TIMES = ("1", "t", "replicas", "alone", "processes")

# How long the replicas' processes may take to start, build their network and
# train its first step, or to finish one step, before the measurement gives up.
PROCESS_TIMEOUT = 600


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
    """{"1": [...], "t": [...], "replicas": [...], "alone": [...], "processes":
    [...]}: seconds per step, one entry per round, for ``engine`` ("ours" or
    "torch") in this process and ``threads`` replica processes of its own."""
    from benchmarks.op_scaling import _training_step
    with _replica_processes(engine, network, batch // threads, threads) as processes:
        full = _training_step(engine, network, batch)
        replicas = [_training_step(engine, network, batch // threads) for _ in range(threads)]
        processes.wait_until_ready()        # built, and idle from now on between steps
        result = {key: [] for key in TIMES}
        for _ in range(rounds):
            _set_threads(engine, 1)
            result["1"].append(_timed(full, steps))
            _set_threads(engine, threads)
            result["t"].append(_timed(full, steps))
            _set_threads(engine, 1)
            result["replicas"].append(_replicas_timed(replicas, steps))
            result["alone"].append(_timed(replicas[0], steps))
            result["processes"].append(_timed(processes.step, steps))
    return result


def _replicas_timed(replicas, steps):
    """``_timed`` for the replicas' steps run side by side, one Python thread
    each.  A replica that raises breaks the barriers (BrokenBarrierError here,
    its own traceback on stderr) instead of leaving the others waiting."""
    barriers = [threading.Barrier(len(replicas) + 1) for _ in range(3)]     # ready; go; done
    stop = threading.Event()
    workers = [threading.Thread(target=_serve_steps, args=(lambda step=step: step, barriers, stop))
               for step in replicas]
    with _SideBySide(workers, barriers, stop) as side_by_side:
        side_by_side.wait_until_ready()
        return _timed(side_by_side.step, steps)


def _replica_processes(engine, network, batch, count):
    """``count`` replicas of the network, each in a process of its own (spawned:
    a fresh interpreter that imports NumPy first) training ``batch`` examples
    per step on one thread, side by side (``_SideBySide``).  A replica that
    raises breaks the barriers, and so does one that takes longer than
    PROCESS_TIMEOUT."""
    context = multiprocessing.get_context("spawn")
    barriers = [context.Barrier(count + 1, timeout=PROCESS_TIMEOUT) for _ in range(3)]
    stop = context.Event()
    build = functools.partial(_replica_step, engine, network, batch)
    workers = [context.Process(target=_serve_steps, args=(build, barriers, stop), daemon=True)
               for _ in range(count)]
    return _SideBySide(workers, barriers, stop)


class _SideBySide:
    """Replicas, each in a thread or a process of its own (``workers``, not yet
    started) running ``_serve_steps`` on the barriers (ready; go; done) and the
    event ``stop``: ``step()`` runs one step of all of them side by side and
    returns when the last is done; leaving the ``with`` block stops them."""

    def __init__(self, workers, barriers, stop):
        self._workers, self._barriers, self._stop = workers, barriers, stop

    def __enter__(self):
        for worker in self._workers:
            worker.start()
        return self

    def wait_until_ready(self):
        self._barriers[0].wait()

    def step(self):
        self._barriers[1].wait()
        self._barriers[2].wait()

    def __exit__(self, *exc_info):
        self._stop.set()
        for barrier in self._barriers:
            barrier.abort()                 # every replica waiting on one returns
        for worker in self._workers:
            worker.join(PROCESS_TIMEOUT)
            if worker.is_alive() and hasattr(worker, "kill"):     # a process
                worker.kill()


def _serve_steps(build, barriers, stop):
    """A replica's life, in a thread or a process: ``build()`` its step, then
    one step per opening of the barriers (ready; go; done), until ``stop``.
    One that raises, building or stepping, breaks the barriers, so that
    neither the others nor the measurement wait for it."""
    ready, go, done = barriers
    try:
        step = build()
        ready.wait()
        while True:
            go.wait()
            step()
            done.wait()
    except threading.BrokenBarrierError:
        if not stop.is_set():
            raise
    except BaseException:
        for barrier in barriers:
            barrier.abort()
        raise


def _replica_step(engine, network, batch):
    """A replica process's training step, its kernels on one thread."""
    from benchmarks.op_scaling import _training_step
    _set_threads(engine, 1)
    return _training_step(engine, network, batch)


def run_worker(engine, network, batch, threads, rounds, steps):
    """``measure`` in a fresh process (its own thread pools), as JSON."""
    from benchmarks.op_scaling import worker_json
    return worker_json("benchmarks.replicas",
                       ["--worker", engine, "--networks", network, "--batch", str(batch),
                        "--threads", str(threads), "--rounds", str(rounds), "--steps",
                        str(steps)],
                       f"replicas worker {engine} on {network}")


def ratios(times, threads):
    """The seven ratios of the module docstring, each the median over rounds of
    the round's own ratio."""
    def per_round(f):
        return statistics.median(f(*r) for r in zip(*(times[key] for key in TIMES)))
    return [per_round(lambda one, t, rep, alone, procs: one / (threads * t)),
            per_round(lambda one, t, rep, alone, procs: one / (threads * rep)),
            per_round(lambda one, t, rep, alone, procs: t / rep),
            per_round(lambda one, t, rep, alone, procs: rep / alone),
            per_round(lambda one, t, rep, alone, procs: alone / (one / threads)),
            per_round(lambda one, t, rep, alone, procs: one / (threads * procs)),
            per_round(lambda one, t, rep, alone, procs: rep / procs)]


def table(results, threads):
    """Markdown: results[network][engine] as ``measure`` gives, one row each."""
    header = ["network", "engine"] + [c.format(t=threads) for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for network, engines in results.items():
        for engine, times in engines.items():
            ms = [f"{1e3 * statistics.median(times[k]):.1f}" for k in TIMES]
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
