"""Where the threads' time goes: the work handed to the thread pool, timed.

On N threads a training step is not N times faster than on one for three
reasons, and each needs a different cure::

    step on N threads = outside the pool's work + inside it (wall)
    the pool's jobs' summed time ("busy")  <=  N × inside

- *serial*: time outside the pool's work, where the calling thread runs
  alone (Python between the ops, small ops not worth a hand-over; also the
  few products BLAS splits over its own threads and Numba's parallel loops
  outside a share, which this does not see inside);
- *waiting*: inside the pool's work, threads with no job -- the hand-overs,
  the slowest share's tail, the calling thread folding results;
- *extra work*: the jobs take longer in all than the same work on one
  thread, as threads contend for caches and memory.

``with timing() as pool:`` times every ``threads.run_all`` and
``threads.map_in_shares`` call inside the block that hands out two or more
jobs: ``pool.regions`` (calls), ``pool.wall`` (seconds from hand-out to the
last job's end, summed), ``pool.busy`` (seconds inside the jobs, every
thread's summed).  The two functions are replaced by timing twins for the
block and put back after it, as ``kernels.counting()`` does, so nothing is
paid outside one.  ``lost_time`` splits a step's loss against a perfect
speed-up into the three parts (``benchmarks/op_scaling.py`` prints it).
"""
import contextlib
import threading
import time

from . import threads

_timing = threading.local()     # .active: this thread is inside a timed region or job


class PoolTime:
    """What ``timing()`` measured (seconds summed over the block)."""

    def __init__(self):
        self.regions = 0
        self.wall = 0.0
        self.busy = 0.0


def _active():
    return getattr(_timing, "active", False)


@contextlib.contextmanager
def timing():
    """Time the pool's work inside the block (module docstring)."""
    pool = PoolTime()
    run_all, map_in_shares = threads.run_all, threads.map_in_shares
    busy = []                   # each job's seconds (list.append is atomic)

    def timed(work):
        def run(*args):
            was, _timing.active = _active(), True
            start = time.perf_counter()
            try:
                return work(*args)
            finally:
                busy.append(time.perf_counter() - start)
                _timing.active = was
        return run

    def region(hand_out, *args):
        was, _timing.active = _active(), True
        start = time.perf_counter()
        try:
            return hand_out(*args)
        finally:
            pool.wall += time.perf_counter() - start
            pool.regions += 1
            _timing.active = was

    def timed_run_all(jobs):
        if len(jobs) < 2 or _active():          # inline, or inside a region already
            return run_all(jobs)
        return region(run_all, [timed(job) for job in jobs])

    def timed_map_in_shares(work, items, collect=list):
        items = list(items)
        if len(items) < 2 or _active():
            return map_in_shares(work, items, collect)
        return region(map_in_shares, timed(work), items, collect)

    threads.run_all, threads.map_in_shares = timed_run_all, timed_map_in_shares
    try:
        yield pool
    finally:
        threads.run_all, threads.map_in_shares = run_all, map_in_shares
        pool.busy = sum(busy)


def work(measured):
    """The CPU seconds of a step: its jobs' time plus what ran outside them
    (``measured``: {"step", "inside", "busy"} in seconds, as ``PoolTime``
    gives them per step).  On one thread, the step time itself."""
    return measured["busy"] + measured["step"] - measured["inside"]


def lost_time(baseline, measured, threads_used):
    """{"serial", "waiting", "extra work"}: the seconds the step ``measured``
    on ``threads_used`` threads loses against ``work(baseline)`` / N, the
    step a perfect speed-up of the baseline's work would take (``baseline``
    and ``measured`` as ``work`` takes them).  The three parts sum to the
    step minus that::

        serial     = outside · (1 - 1/N)         outside = step - inside
        waiting    = inside - busy / N
        extra work = (busy + outside - work(baseline)) / N
    """
    n = threads_used
    outside = measured["step"] - measured["inside"]
    return {"serial": outside * (1 - 1 / n),
            "waiting": measured["inside"] - measured["busy"] / n,
            "extra work": (measured["busy"] + outside - work(baseline)) / n}
