"""The pool threads that take split work (``threads.run_all``,
``threads.map_in_shares``): between jobs each one waits spinning for a
while, then asleep.

Why spin.  A job handed to a thread asleep waits for the thread to wake, and
a core left idle may take long to wake: on the 2-core virtual machines a
pool thread idle for a millisecond took longer to start a job than a small
loop took to run, and such a loop cut in two ran slower than whole
(benchmarks/results.md, "A pool that spins between jobs").  Every split loop
of a training step paid that, twice (the start, then the caller's wait for
the end).  OpenMP runtimes, PyTorch's among them, spin between parallel
regions for the same reason.  So a pool thread, once its job is done,
watches for the next one for SPIN_SECONDS -- in compiled code, with the GIL
released, yielding its core on every turn (``sched_yield``) so that any
other thread ready to run there runs first -- and only then sleeps until a
job wakes it.  The calling thread waits for the pool's job the same way
(``Task.result``).

Why park.  A spinning thread still looks busy to the OS, which then puts a
thread it wakes on another core: OpenBLAS's and Numba's threads, which sleep
as soon as their part is done (kernels/threads.py), were woken beside the
training step's own thread, and ResNet-18's, DenseNet's and GoogLeNet's
steps ran slower.  So before those pools run -- a parallel loop launched
(``threads.loops_for_this_thread``), a product on several BLAS threads
(``shares_threads.matmul``) -- ``park()`` sends the spinning threads to
sleep at once.

Where the OS has no ``sched_yield`` (Windows) the threads sleep at once, as
a plain pool's do.

Hand-overs without a sleep for the GIL.  A pool thread's job is Python until
its loop releases the GIL, and a thread that asks for the GIL while another
holds it sleeps (CPython's GIL does not spin) and wakes as slowly as from any
sleep.  At both ends of a job a thread would ask while the other still holds
it, so each end cost a wake-up, on the VMs as long as a small job itself
(benchmarks/results.md, "Hand-overs without a sleep for the GIL"):

- the start: the thread that posts a job keeps the GIL until its own share of
  the work releases it, a few µs later; a pool thread that saw the job waits
  SETTLE_SECONDS more, spinning, before it asks;
- the end: the pool thread tells the job's end (``Task._done``, what the
  waiter spins on) only from its compiled spin loop, with the GIL already
  released, not from Python while it still holds it.
"""
import collections
import functools
import os
import threading
import time

import numpy as np

from .jit import compile_loops

# How long a pool thread watches for the next job before it sleeps.  Most of a
# training step's split loops follow one another within a millisecond or two;
# the pause between two steps (the next batch, the loss) is longer.
SPIN_SECONDS = 10e-3
# How long a pool thread that saw a job posted keeps spinning before it asks
# for the GIL (module docstring): the poster's way from posting to its own
# compiled loop or BLAS call.
SETTLE_SECONDS = 10e-6

sched_yield = getattr(os, "sched_yield", None)   # Numba's external one once the loop compiles


def _spin_while_loop(watched, value, parked, turns, settle, ended):
    """Set ended[0] = 1, then spin while watched[0] == value and parked[0] ==
    0, at most ``turns`` turns, each one giving the core to any thread ready
    to run on it, and ``settle`` turns more once watched[0] changed.
    Returns whether watched[0] changed.  (Compiled with the GIL released,
    which ``ended`` tells a waiter; the call to sched_yield also makes the
    compiled loop read both arrays again on every turn.)"""
    ended[0] = 1
    for _ in range(turns):
        if watched[0] != value:
            for _ in range(settle):
                sched_yield()
            return True
        if parked[0] != 0:
            return False
        sched_yield()
    return watched[0] != value


@functools.cache
def _compiled():
    """The spin loop, compiled at the first pool's start (and cached on disk)."""
    global sched_yield
    from numba.core import types
    sched_yield = types.ExternalFunction("sched_yield", types.intc())
    return compile_loops(_spin_while_loop, nogil=True)


_NEVER_PARKED = np.zeros(1, dtype=np.int64)
_NOTHING_ENDED = np.zeros(1, dtype=np.int64)    # set where no job's end is to be told


@functools.cache
def _turn_seconds():
    """What one turn of the spin loop takes here (the OS's ``sched_yield``),
    measured once over 1,000 turns; None where the OS has none."""
    if not hasattr(os, "sched_yield"):
        return None
    spin = _compiled().spin_while
    unchanged = np.zeros(1, dtype=np.int64)
    spin(unchanged, 0, _NEVER_PARKED, 1, 0, _NOTHING_ENDED)     # loaded before the clock starts
    start = time.perf_counter()
    spin(unchanged, 0, _NEVER_PARKED, 1000, 0, _NOTHING_ENDED)
    return (time.perf_counter() - start) / 1000


@functools.cache
def spin_turns():
    """How many turns of the spin loop last SPIN_SECONDS here; 0 where the OS
    has no ``sched_yield``: the threads then sleep at once."""
    turn = _turn_seconds()
    return 0 if turn is None else max(1, round(SPIN_SECONDS / turn))


@functools.cache
def settle_turns():
    """How many turns last SETTLE_SECONDS here (0 without ``sched_yield``)."""
    turn = _turn_seconds()
    return 0 if turn is None else max(1, round(SETTLE_SECONDS / turn))


def _spin_while(watched, value, parked=_NEVER_PARKED, settle=0, ended=_NOTHING_ENDED):
    """``_spin_while_loop`` for SPIN_SECONDS; where there is no spinning,
    ``ended`` set and False at once."""
    turns = spin_turns()
    if turns == 0:
        ended[0] = 1
        return False
    return _compiled().spin_while(watched, value, parked, turns, settle, ended)


def held_lock():
    """A lock, already acquired, to be released when what it stands for is
    done: a waiter sleeps on it (``with lock: pass``).  Far cheaper to make
    than a ``threading.Event`` (benchmarks/results.md, "What a hand-over to
    the pool costs")."""
    lock = threading.Lock()
    lock.acquire()
    return lock


class Task:
    """A job handed to the pool: ``cancel()`` and ``result()`` as a
    ``concurrent.futures.Future``'s."""

    def __init__(self, job, pool):
        self._job, self._pool = job, pool
        self._taken = False                         # by a pool thread, or cancelled
        self._done = np.zeros(1, dtype=np.int64)    # 1 once the job ended: what a waiter spins on
        self._finished = held_lock()                # released at the end: what a waiter sleeps on
        self._error = None

    def cancel(self):
        """Take the job back if no thread has started it: True; else False."""
        with self._pool.lock:
            if self._taken:
                return False
            self._taken = True
            return True

    def result(self):
        """Wait until the job has ended (spinning first); re-raise its error."""
        if not _spin_while(self._done, 0):
            with self._finished:
                pass
        if self._error is not None:
            raise self._error

    def run(self):
        """Run the job; its end is told here to a waiter asleep, and to one
        spinning by the pool thread, once it released the GIL (_work)."""
        try:
            self._job()
        except BaseException as error:      # re-raised by result()
            self._error = error
        finally:
            self._finished.release()


class SpinningPool:
    """``workers`` threads named ``tinygrad_cnn_<i>`` that run the jobs
    handed to ``submit(job)`` in turn, each taking the oldest one not taken."""

    def __init__(self, workers):
        spin_turns()            # the spin loop compiled, its turns measured, before threads start
        self.lock = threading.Lock()
        self._posted = threading.Condition(self.lock)   # notified on every job
        self._tasks = collections.deque()
        self._count = np.zeros(1, dtype=np.int64)       # jobs posted so far: spinners watch it
        self._parked = np.zeros(1, dtype=np.int64)      # 1: spinners sleep now
        self.asleep = 0                                 # threads waiting on _posted
        for i in range(workers):
            threading.Thread(target=self._work, name=f"tinygrad_cnn_{i}", daemon=True).start()

    def submit(self, job):
        """Hand the argument-less callable ``job`` to the pool -> its Task."""
        task = Task(job, self)
        with self.lock:
            self._tasks.append(task)
            self._parked[0] = 0
            self._count[0] += 1
            self._posted.notify()
        return task

    def park(self):
        """Send the threads spinning for a job to sleep now: other threads
        (BLAS's, Numba's) are about to run.  The next job wakes them."""
        self._parked[0] = 1

    def _next_task(self):
        """The oldest task no thread took, now taken; None if none (lock held)."""
        while self._tasks:
            task = self._tasks.popleft()
            if not task._taken:
                task._taken = True
                return task
        return None

    def _work(self):
        ended = _NOTHING_ENDED          # the last job's _done, until told
        while True:
            with self.lock:
                task = self._next_task()
                posted = int(self._count[0])
            if task is not None:
                ended[0] = 1            # the next job keeps the GIL: no better time to tell
                task.run()
                ended = task._done
                continue
            spun = _spin_while(self._count, posted, self._parked, settle_turns(), ended)
            ended = _NOTHING_ENDED
            if not spun:
                with self.lock:
                    self.asleep += 1
                    while not self._tasks:
                        self._posted.wait()
                    self.asleep -= 1
