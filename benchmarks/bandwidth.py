"""How much memory bandwidth more threads add: streaming GB/s by working set.

    python -m benchmarks.bandwidth [--threads 1,2] [--sizes 1,4,16,64]
                                   [--seconds 0.2] [--out FILE]

An op that only moves memory -- batch norm, ReLU, a pooling pass, a
concatenation, a Winograd transform -- runs faster on more threads only as
far as the memory it streams from delivers more bytes to more cores.  On
the 2-core development VM two threads streaming arrays that fit the caches
together move 1.7-2.0x the bytes of one, but arrays past the last-level
cache come from main memory, which gives two threads only 1.4-1.5x what it
gives one (benchmarks/results.md, "What memory gives a second thread").  Such an op's
speed-up is then capped whatever the engine does, and the faster an engine
runs the rest of a step on one thread, the larger its share of the step:
this script measures the cap on the machine at hand, so that a scaling
sweep there (``benchmarks.cpu --threads``) can be read against it.

For each working set (MB read plus written, split evenly over the threads)
and thread count, every thread runs ``y = 1.5 x`` over its own slice of two
arrays for as many passes as make the one-thread measurement last
``--seconds``, all passes in one compiled call (Numba, without the GIL: a
Python loop of NumPy calls would measure the GIL on small slices, not the
memory); the threads start together and the wall time until the last ends
counts.  Best of ``--repeats``.
Prints a Markdown table -- GB/s per thread count, the speed-up from the
fewest threads to the most -- and the caches the OS reports.
"""
import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

DEFAULT_SIZES_MB = (1, 4, 16, 64)
SCALE = np.float32(1.5)


def _stream(x, y, passes):
    """``passes`` times y = 1.5 x, in one call."""
    for _ in range(passes):
        for i in range(x.size):
            y[i] = x[i] * SCALE


_compiled = None


def compiled_stream():
    """``_stream`` compiled by Numba without the GIL (at the first call)."""
    global _compiled
    if _compiled is None:
        import numba
        _compiled = numba.njit(nogil=True)(_stream)
    return _compiled


def positive_list(text, kind, what):
    """The comma-separated positive ``kind`` values of ``text``; ValueError naming ``what``."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"bandwidth: {what} must be comma-separated numbers, got {text!r}") \
            from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"bandwidth: {what} must be positive, got {text!r}")
    return values


def caches():
    """{"L1d": "32K", "L2": "512K", "L3": "32768K", ...} of the first CPU, as
    Linux's /sys reports them; {} where it does not."""
    found = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind != "Instruction":
            found[f"L{level}" + ("d" if kind == "Data" else "")] = size
    return found


def stream_seconds(x, y, threads, passes):
    """Wall seconds for ``threads`` threads to run ``passes`` passes of
    y = 1.5 x each over its own contiguous slice of x and y."""
    bounds = [len(x) * t // threads for t in range(threads + 1)]
    start = threading.Barrier(threads + 1)
    stream = compiled_stream()

    def work(lo, hi):
        source, target = x[lo:hi], y[lo:hi]
        start.wait()
        stream(source, target, passes)

    workers = [threading.Thread(target=work, args=(lo, hi))
               for lo, hi in zip(bounds, bounds[1:])]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    return time.perf_counter() - began


def measure(size_bytes, thread_counts, seconds=0.2, repeats=3):
    """{threads: GB/s} for a working set of ``size_bytes`` (x and y together),
    best of ``repeats``; the pass count is set once, from one thread."""
    n = max(1, size_bytes // 8)                     # two float32 arrays
    x = np.random.default_rng(0).random(n, dtype=np.float32)
    y = np.empty_like(x)
    compiled_stream()(x[:1], y[:1], 1)               # compiled before anything is timed
    once = min(stream_seconds(x, y, 1, 1) for _ in range(3))
    passes = max(1, int(seconds / max(once, 1e-9)))
    moved = passes * 8 * n / 1e9
    return {threads: moved / min(stream_seconds(x, y, threads, passes) for _ in range(repeats))
            for threads in thread_counts}


def table(results, thread_counts):
    """Markdown: GB/s per working set and thread count, and the speed-up from
    the fewest threads to the most; ``results`` {MB: {threads: GB/s}}."""
    first, last = thread_counts[0], thread_counts[-1]
    header = ["working set"] + [f"{t} thread{'s' * (t > 1)} GB/s" for t in thread_counts]
    if last != first:
        header.append(f"speed-up {first}→{last}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mb, rates in results.items():
        row = [f"{mb:g} MB"] + [f"{rates[t]:.1f}" for t in thread_counts]
        if last != first:
            row.append(f"{rates[last] / rates[first]:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2",
                        help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES_MB)),
                        help="working sets in MB, read plus written (default "
                             f"{','.join(map(str, DEFAULT_SIZES_MB))})")
    parser.add_argument("--seconds", type=float, default=0.2,
                        help="length of one one-thread measurement (default 0.2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="measurements per cell, the best counts (default 3)")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    try:
        args.threads = sorted(set(positive_list(args.threads, int, "--threads")))
        args.sizes = positive_list(args.sizes, float, "--sizes")
    except ValueError as error:
        parser.error(str(error))
    if not args.seconds > 0 or args.repeats < 1:
        parser.error(f"bandwidth: --seconds must be positive and --repeats at least 1, "
                     f"got {args.seconds} and {args.repeats}")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    results = {mb: measure(int(mb * 2**20), args.threads, args.seconds, args.repeats)
               for mb in args.sizes}
    found = caches()
    print(f"{os.cpu_count()} CPUs; caches: "
          + (", ".join(f"{k} {v}" for k, v in found.items()) or "not reported"))
    print(table(results, args.threads))
    if args.out:
        report = {"cpus": os.cpu_count(), "caches": found, "threads": args.threads,
                  "gb_per_s": {str(mb): {str(t): round(r, 2) for t, r in rates.items()}
                               for mb, rates in results.items()}}
        from tinygrad_cnn.files import atomic_write
        with atomic_write(args.out, "w") as f:
            f.write(json.dumps(report, indent=1))
    return results


if __name__ == "__main__":
    main()
