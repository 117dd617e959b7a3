"""How many threads, and how they share the cores: OpenBLAS's and Numba's.

Two pools of threads do a training step's work on the CPU, taking turns:
OpenBLAS's run NumPy's matrix products, Numba's run the parallel loops
(im2col and the Winograd transforms).  A thread that
busy-waits after its part keeps a core from the other pool's next part, so
both pools are made to sleep as soon as their part is done (a third pool,
ours, spins, and is parked before those run) -- at run time,
whatever was imported first, and without writing the user's environment
(the measurements behind this are in benchmarks/results.md).

- **OpenBLAS** threads spin for 2^28 CPU cycles (about 0.1 s) after every
  product before they sleep.  The library reads that timeout
  (``OPENBLAS_THREAD_TIMEOUT``) when it starts its thread pool, which is
  when NumPy is imported -- in most scripts before this package.
  ``quiet_openblas()`` (run when ``kernels`` is imported) restarts the pool
  with the smallest timeout OpenBLAS accepts, 2^4 cycles: it has OpenBLAS
  read its settings again (``openblas_read_env``) while the variable is set,
  stops its threads (``blas_thread_shutdown_``, what OpenBLAS itself does
  at a fork) and starts them again (``blas_thread_init``), now with the new
  timeout, then removes the variable.  Opt out by setting
  ``OPENBLAS_THREAD_TIMEOUT`` yourself (OpenBLAS's own default is 28): a
  value you set is never touched.
- **Numba** runs its parallel loops on the ``workqueue`` threading layer,
  whose threads wait on a lock, instead of OpenMP's, which spin after each
  loop -- and which, as a second OpenMP runtime in a process that has
  imported PyTorch (whose OpenMP has read its settings already), would
  fight PyTorch's threads.  ``choose_numba_layer()`` makes that choice
  before Numba starts its threads, unless you chose a layer
  (``NUMBA_THREADING_LAYER`` or ``numba.config.THREADING_LAYER``; with
  ``omp``, also set ``OMP_WAIT_POLICY=PASSIVE``).  ``workqueue`` runs one
  parallel loop at a time and ends the whole process (an abort, no
  exception) when a second Python thread launches one meanwhile -- two
  threads each training or evaluating a network do that -- so a loop is
  launched only by the thread holding ``_numba_pool``; a thread that finds
  it taken runs the loop's one-thread version (``loops_for_this_thread``).
- **The third pool**, ours (``thread_pool()``: pooling's slices of the
  batch, a stack's products, a convolution's chunks), does the opposite: a
  handover to a thread asleep cost more than the small loops it split
  (kernels/spinning_pool.py), so its threads spin for the next job a while,
  yielding their core on every turn -- and are parked (sent to sleep)
  before either of the two others runs: ``park_thread_pool()`` where a
  parallel loop is launched or a product goes to several BLAS threads.
- **How many threads**: ``set_num_threads(n)``/``get_num_threads()``, the
  way ``torch.set_num_threads`` works: one number for the matrix products
  (every BLAS library loaded) and the compiled loops (Numba), whichever
  Python thread trains.  Until it is called, the number is what OpenBLAS
  chose from the environment (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``,
  else all cores), at most the CPUs a container's CPU quota allows
  (``fit_cpu_quota``, at import), and Numba uses the same.  An OpenBLAS with
  its own thread pool is set through its own function
  (``blas_thread_setters``), not through threadpoolctl, which obeys only the
  first Python thread that set it; Numba, whose count is per Python thread,
  is given it by each thread that launches a parallel loop
  (``loops_for_this_thread``).
"""
import contextlib
import ctypes
import functools
import itertools
import math
import os
import sys
import threading
from pathlib import Path

import numpy as np
import threadpoolctl

from . import spinning_pool
from .arrays import get_array_module

# OpenBLAS reads the first of these that is set; the smallest value it accepts
# is 4 (2^4 cycles: sleep at once).
TIMEOUT_VARIABLES = ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT")
QUIET_TIMEOUT = 4

# The OpenBLAS functions quiet_openblas needs: builds without them (or with
# OpenMP threads instead of its own pool) are left as they are.
_OPENBLAS_SYMBOLS = ("openblas_read_env", "blas_thread_shutdown_", "blas_thread_init",
                     "openblas_thread_timeout")

NUMBA_LAYER = "workqueue"

_requested = None       # set_num_threads's number, None until it is called


def blas_libraries():
    """threadpoolctl's controllers of the BLAS libraries loaded in this process."""
    return threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers


def _quietable(library):
    return (library.internal_api == "openblas" and library.threading_layer == "pthreads"
            and all(hasattr(library.dynlib, name) for name in _OPENBLAS_SYMBOLS))


def openblas_timeouts():
    """{library path: thread timeout (log2 of CPU cycles)} of every OpenBLAS
    with its own thread pool: what its threads do after a product."""
    return {lib.filepath: int(lib.dynlib.openblas_thread_timeout())
            for lib in blas_libraries() if _quietable(lib)}


def quiet_openblas():
    """Make every loaded OpenBLAS's threads sleep right after a product (see
    the module docstring); returns the paths of the libraries changed.  Does
    nothing when ``OPENBLAS_THREAD_TIMEOUT`` (or ``GOTO_THREAD_TIMEOUT``) is
    set: that is the user's choice."""
    if any(name in os.environ for name in TIMEOUT_VARIABLES):
        return []
    changed = []
    for library in blas_libraries():
        if not _quietable(library):
            continue
        dll = library.dynlib
        if dll.openblas_thread_timeout() != QUIET_TIMEOUT:
            # Set only while OpenBLAS reads it (into its settings, and when the
            # pool starts again): the environment is left as it was.
            os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(QUIET_TIMEOUT)
            try:
                dll.openblas_read_env()
                dll.blas_thread_shutdown_()
                dll.blas_thread_init()
            finally:
                del os.environ["OPENBLAS_THREAD_TIMEOUT"]
        changed.append(library.filepath)
    return changed


def choose_numba_layer():
    """Before Numba starts its threads: choose ``workqueue`` unless the user
    chose a layer.  Returns the layer Numba will use (or is using)."""
    import numba
    from numba.np.ufunc import parallel
    if parallel._is_initialized:
        return numba.threading_layer()      # started already: too late to choose
    if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = NUMBA_LAYER
    return numba.config.THREADING_LAYER


# OpenBLAS's thread-count setter, as builds name it (scipy-openblas, as
# NumPy's wheels ship it, adds a prefix and a suffix for 64-bit integers).
_OPENBLAS_SETTERS = tuple(f"{prefix}openblas_set_num_threads{suffix}"
                          for prefix in ("", "scipy_") for suffix in ("", "64_", "_64"))


def _thread_setter(library):
    """``set(n)`` for one BLAS library (a threadpoolctl controller), callable
    from any Python thread.

    threadpoolctl (from 3.8) lets only the first Python thread that set an
    OpenBLAS with its own thread pool set it again, and silently ignores the
    others.  A training step run in a thread other than that one (a GUI's,
    a server's, a notebook's background job) then kept BLAS on all its
    threads inside ``single_threaded_blas``, and the shares' products ran side
    by side on every thread: steps several times slower (benchmarks/results.md,
    "Training in another thread").  OpenBLAS's own setter has no such rule,
    so it is called directly; other libraries (MKL, BLIS, an OpenMP OpenBLAS,
    whose limits are per thread anyway) go through threadpoolctl."""
    if library.internal_api == "openblas" and library.threading_layer == "pthreads":
        for name in _OPENBLAS_SETTERS:
            setter = getattr(library.dynlib, name, None)
            if setter is not None:
                return lambda n: setter(ctypes.c_int(n))
    return library.set_num_threads


def blas_thread_setters(libraries=None):
    """``_thread_setter`` of every BLAS library loaded (or of ``libraries``)."""
    return [_thread_setter(library) for library in (libraries or blas_libraries())]


# The variables that choose a thread count before start-up (OpenBLAS's, OpenMP's,
# MKL's, Numba's): one set means the user chose.
THREAD_COUNT_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                          "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def chosen_by_user():
    """Whether the thread count is the user's choice: ``set_num_threads`` was
    called, or a thread-count variable is in the environment."""
    return _requested is not None or any(v in os.environ for v in THREAD_COUNT_VARIABLES)


def usable_cores():
    """The cores this process may run on: its affinity mask (as ``taskset`` or
    a batch system set it), else all of the machine's, and at most what its
    CPU quota allows (``cpu_quota``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:              # not Linux
        cores = os.cpu_count() or 1
    return _within_cpu_quota(cores)


def _within_cpu_quota(threads):
    """``threads``, at most the CPU quota's CPUs where there is a quota."""
    quota = cpu_quota()
    return min(threads, quota) if quota else threads


def cpu_quota(root="/sys/fs/cgroup", membership="/proc/self/cgroup"):
    """How many CPUs the process's cgroups allow it, rounded up, or None
    without a quota (or without cgroups).

    A container started with ``docker --cpus=2``, or a Kubernetes pod with a
    CPU limit, sees every core of its host (``os.cpu_count``, the affinity
    mask) but runs only 2 CPUs' worth of time; OpenBLAS and Numba start a
    thread per core anyway, and threads beyond the quota only wait for each
    other (benchmarks/results.md, "CPU quotas").  Read from cgroup v2's
    ``cpu.max`` or v1's ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, the
    smallest along the process's cgroup and its parents."""
    try:
        lines = Path(membership).read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:            # not a cgroup line: nothing to read (this runs at import)
            continue
        _, controllers, path = fields
        if controllers == "":                                   # cgroup v2
            folders, read = [Path(root)], _v2_quota
        elif "cpu" in controllers.split(","):                   # cgroup v1
            folders, read = [Path(root) / controllers, Path(root) / "cpu"], _v1_quota
        else:
            continue
        for folder in folders:
            for depth in range(len(Path(path).parts), 0, -1):   # the cgroup, then its parents
                limit = read(folder.joinpath(*Path(path).parts[1:depth]))
                if limit:
                    limits.append(limit)
    return math.ceil(min(limits)) if limits else None


def _v2_quota(folder):
    try:
        quota, period = (folder / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(folder):
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


@functools.cache
def _initial_blas_threads():
    """What BLAS chose when it started, at most the CPU quota's CPUs."""
    threads = [lib.num_threads for lib in blas_libraries()]
    return _within_cpu_quota(threads[0] if threads else (os.cpu_count() or 1))


def fit_cpu_quota():
    """Unless the user chose a thread count: BLAS on no more threads than the
    CPU quota allows (run when ``kernels`` is imported; Numba follows
    get_num_threads() when its loops compile).  Returns the count set, or None."""
    if chosen_by_user():
        return None
    quota = cpu_quota()
    if not quota:
        return None
    libraries = blas_libraries()            # one scan of the loaded libraries, at import
    if all(lib.num_threads <= quota for lib in libraries):
        return None
    for set_blas_threads in blas_thread_setters(libraries):
        set_blas_threads(quota)
    return quota


def get_num_threads():
    """The number of threads the matrix products and compiled loops use
    (``torch.get_num_threads``): set_num_threads's number, else what BLAS
    chose when it started (``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``, else
    all cores)."""
    return _requested if _requested is not None else _initial_blas_threads()


def set_num_threads(n):
    """Use ``n`` threads for the matrix products (every BLAS library loaded)
    and Numba's compiled loops, from now on (``torch.set_num_threads``).

    Numba's pool has ``NUMBA_NUM_THREADS`` threads (all cores by default) and
    never uses more.  The number holds for every Python thread: Numba's own
    count is per thread, so each thread that launches a parallel loop is
    given it first (``loops_for_this_thread``)."""
    global _requested
    # the ops' rule (tinygrad_cnn/ops/arguments.py): a wrong type is a TypeError,
    # a wrong value a ValueError, as torch.set_num_threads does
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: expected a positive int, got {n!r}")
    if n < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {n!r}")
    _requested = n
    for set_blas_threads in blas_thread_setters():
        set_blas_threads(n)
    if "numba" in sys.modules:
        apply_to_numba()


def numba_threads():
    """How many threads Numba's loops should use: get_num_threads(), at most
    the size of Numba's pool."""
    import numba
    return max(1, min(get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def apply_to_numba():
    """Choose Numba's layer and give it get_num_threads() threads (called
    before every compilation, and by set_num_threads)."""
    import numba
    choose_numba_layer()
    numba.set_num_threads(numba_threads())


_pools = {}         # (process id, threads) -> its SpinningPool
_current = None     # the key of the pool in use


def thread_pool():
    """The Python threads that run work the compiled loops cannot split
    themselves (pooling's slices of the batch, a stack's matrix products),
    beside the calling thread: numba_threads() - 1 of them, which wait for
    the next job spinning a while (kernels/spinning_pool.py).  Work handed
    to them must release the GIL (a ``nogil`` loop, a BLAS call) to run side
    by side.  One pool per process id (a forked child inherits the pool but
    not its threads, so it starts its own) and thread count (a pool left
    for another count is parked: its threads sleep until it is used again)."""
    global _current
    key = (os.getpid(), numba_threads())
    if key != _current:
        park_thread_pool()
        if key not in _pools:
            _pools[key] = spinning_pool.SpinningPool(max(1, key[1] - 1))
        _current = key
    return _pools[key]


def park_thread_pool():
    """Before other threads run (Numba's parallel loops, a product on several
    BLAS threads): the pool's threads that spin for a job sleep at once,
    leaving the cores to those (kernels/spinning_pool.py)."""
    if _current is not None and _current[0] == os.getpid():
        _pools[_current].park()


@functools.cache
def numpy_blas_libraries():
    """The BLAS libraries loaded when first asked -- NumPy's, loaded with NumPy
    before us: the ones ``single_threaded_blas`` sets (one loaded later, as
    SciPy's own OpenBLAS, runs none of NumPy's products)."""
    return tuple(blas_libraries())


@functools.cache
def _numpy_blas_setters():
    return tuple(blas_thread_setters(numpy_blas_libraries()))


_share = threading.local()        # .active: this thread runs one share of split work


def on_one_thread():
    """Whether the calling thread's compiled loops run on it alone: inside a
    share, or with one thread (then a parallel-compiled loop would only add
    Numba's launch)."""
    return in_share() or numba_threads() == 1


# Held while a parallel-compiled loop runs: Numba's workqueue layer aborts the
# process when two Python threads launch parallel loops at once (module docstring).
_numba_pool = threading.Lock()


@contextlib.contextmanager
def loops_for_this_thread(one_thread, parallel):
    """``with loops_for_this_thread(one_thread, parallel) as loops:`` the
    compiled loops the calling thread may run inside the block.

    ``one_thread()``'s where ``on_one_thread()``, or where another Python
    thread is running a parallel loop (it holds Numba's pool, which takes
    one launch at a time); else ``parallel()``'s, launched on
    numba_threads() threads, the pool held until the block ends.  Numba
    keeps its thread count per Python thread, and a thread that never set it
    launches its loops on all of Numba's pool: a step trained in a thread of
    the user's would run them on every core whatever set_num_threads chose,
    so the count is set here for the calling thread."""
    if on_one_thread() or not _numba_pool.acquire(blocking=False):
        yield one_thread()
        return
    try:
        loops = parallel()          # compiled first: that chooses Numba's layer
        import numba
        if numba.get_num_threads() != numba_threads():
            numba.set_num_threads(numba_threads())
        park_thread_pool()          # Numba's threads need the cores
        yield loops
    finally:
        _numba_pool.release()


def in_share():
    """Whether the calling thread is running one share of work split over
    threads (``map_in_shares``): its kernels then run on this thread alone
    -- the compiled loops' one-thread versions, BLAS on one thread, no
    further split -- while other threads run the other shares."""
    return getattr(_share, "active", False)


# Below this many bytes of a batch's inputs and outputs, a loop split by
# batch_slices runs on the calling thread: handing slices to the pool and
# waiting for them costs as long as the whole loop takes on small planes such
# as DenseNet's 6x6 (benchmarks/results.md, "Figures behind design choices in
# kernels/").
PARALLEL_MIN_BYTES = 2 * 2**20
# ... unless the loop does at least this many multiply-adds, whatever its
# bytes: the direct convolution's loops move few bytes for their work
# (BN-LeNet's second layer moves under 2 MB for 61 million multiply-adds),
# and this many take longer than handing a slice to the pool costs.
PARALLEL_MIN_MULTIPLY_ADDS = 2**22


def batch_slices(batch, nbytes, multiply_adds=0):
    """[(lo, hi), ...]: a batch of ``batch`` samples cut for the thread pool
    (``run_all``), for loops that split the batch by hand (pooling, the direct
    convolution): twice as many slices as threads, handed out as threads come
    free, so one the OS keeps waiting does not hold up the rest.  One slice on
    one thread, inside a share (its thread is one of the pool's), or when the
    batch's ``nbytes`` of inputs and outputs are below PARALLEL_MIN_BYTES and
    the loop's ``multiply_adds`` below PARALLEL_MIN_MULTIPLY_ADDS."""
    workers = numba_threads()
    small = nbytes < PARALLEL_MIN_BYTES and multiply_adds < PARALLEL_MIN_MULTIPLY_ADDS
    one = workers <= 1 or in_share() or small
    slices = 1 if one else max(1, min(batch, 2 * workers))
    bounds = [batch * s // slices for s in range(slices + 1)]
    return list(zip(bounds, bounds[1:]))


# Below this many bytes read and written, a loop that only streams memory
# (batch norm, ReLU, the sigmoid's backward, concatenation) runs on the calling thread: on the
# 2-core machines two threads streaming arrays of a few MB ran no faster than
# one (slower, counting the hand-over to the pool), and only longer passes
# gained (benchmarks/results.md, "Batch norm over slices of the batch"; for
# this bound, "The bias's gradient inside dW's loop").
STREAM_MIN_BYTES = 8 * 2**20


def stream_slices(length, nbytes):
    """``batch_slices`` for loops that only move memory: one slice, on the
    calling thread, below STREAM_MIN_BYTES of inputs and outputs."""
    return batch_slices(length, nbytes) if nbytes >= STREAM_MIN_BYTES else [(0, length)]


def over_batch(loop, batch_arrays, *args, slices=batch_slices):
    """``loop(*batch_arrays, *args)`` on slices of the arrays' first axis, run
    side by side (``run_all``).  ``batch_arrays`` are the (N, ...) inputs and
    outputs, sliced alike; ``args`` go to every slice unchanged; ``slices``
    cuts the batch from its length and the arrays' bytes: ``batch_slices``, or
    ``stream_slices`` for loops that only move memory."""
    length = batch_arrays[0].shape[0]
    cut = slices(length, sum(a.nbytes for a in batch_arrays))
    if cut == [(0, length)]:    # the whole batch, one job on this thread: no slices to make
        run_all([functools.partial(loop, *batch_arrays, *args)])
        return
    run_all([functools.partial(loop, *(a[lo:hi] for a in batch_arrays), *args)
             for lo, hi in cut])


def run_all(jobs):
    """Run the argument-less callables ``jobs`` side by side and wait for all:
    the calling thread and up to numba_threads() - 1 threads of
    ``thread_pool()``, each taking the next job as it comes free (one job: on
    the calling thread alone).  Re-raises the first job's error, once every
    thread has stopped (no job is started after an error).

    The calling thread works rather than waits: a pool thread asleep takes
    longer to wake than a small job takes to run (benchmarks/results.md,
    "Batch norm over slices of the batch"), and with the caller taking jobs
    the work starts at once, the pool's threads joining as they wake."""
    if len(jobs) == 1:
        jobs[0]()
        return
    taken = itertools.count()       # next() on it is atomic: each job is taken once
    errors = []

    def take_jobs():
        while not errors:
            index = next(taken)
            if index >= len(jobs):
                return
            try:
                jobs[index]()
            except BaseException as error:      # re-raised on the calling thread
                errors.append(error)

    pool = thread_pool()
    helpers = [pool.submit(take_jobs) for _ in range(min(len(jobs), numba_threads()) - 1)]
    take_jobs()
    _join(helpers)
    if errors:
        raise errors[0]


def shares_for(array):
    """How many chunks of work on ``array`` run side by side
    (``kernels.map_chunks``): get_num_threads() for a NumPy array, 1 for a
    GPU array, whose chunks go one after another on its stream."""
    return get_num_threads() if get_array_module(array) is np else 1


def map_in_shares(work, items, collect=list):
    """``collect`` of the results ``work(item)`` for the items, run side by side
    by the calling thread and up to numba_threads() - 1 threads of
    ``thread_pool()``, each taking the next item as it comes free, each item's
    kernels on its thread alone (``in_share``) with BLAS on one thread.

    ``collect`` gets the results in the items' order whichever thread ran
    them, so what the caller sums from them is summed in one fixed order.  The
    calling thread hands each result on as soon as it and those before it are
    done, and runs another item only while the next result is not ready, and
    at most numba_threads() items past it (the results waiting to be summed
    stay few).  An item's error is re-raised once every thread has stopped,
    no item started after it.

    The calling thread works rather than waits: with it waiting, the pool's
    two threads of a 2-core machine were both woken onto one core and took
    turns there (benchmarks/results.md, "The calling thread takes chunks")."""
    items = list(items)
    results = [None] * len(items)
    # one lock per item, held until the item is done: a threading.Event per item
    # took long enough to make that it delayed the pool's first item
    # (benchmarks/results.md, "What a hand-over to the pool costs")
    running = [spinning_pool.held_lock() for _ in items]
    taken = itertools.count()       # next() on it is atomic: each item is taken once
    errors, stop = [], []

    def run_next():
        """Run the next item nobody took yet on this thread: its index, or
        None where none is left (or an error or the caller stopped the work)."""
        if errors or stop:
            return None
        index = next(taken)
        if index >= len(items):
            return None
        _share.active = True
        try:
            results[index] = work(items[index])
        except BaseException as error:      # re-raised on the calling thread
            errors.append(error)
        finally:
            _share.active = False
            running[index].release()
        return index

    def helper():
        while run_next() is not None:
            pass

    def in_order():
        last = -1                           # the last item the calling thread ran
        for index in range(len(items)):
            while running[index].locked():
                ran = run_next() if last - index < numba_threads() else None
                if ran is not None:
                    last = ran
                elif errors:
                    break                   # the item may never start: do not wait for it
                else:
                    with running[index]:    # taken (all are, or it is behind `last`): wait
                        pass
            if errors:
                raise errors[0]
            result, results[index] = results[index], None
            yield result

    with single_threaded_blas():
        pool = thread_pool()
        helpers = [pool.submit(helper) for _ in range(min(len(items), numba_threads()) - 1)]
        try:
            return collect(in_order())
        finally:
            stop.append(True)               # (collect may stop early, or raise)
            _join(helpers)


def _join(helpers):
    """Wait for the pool's tasks ``helpers`` to finish; one that never
    started is cancelled instead (it would find nothing left to do)."""
    for helper in helpers:
        if not helper.cancel():
            helper.result()


_one_thread_blas = threading.Lock()     # guards _one_thread_blas_users
_one_thread_blas_users = 0              # threads inside single_threaded_blas


@contextlib.contextmanager
def single_threaded_blas():
    """Inside: every BLAS call runs on the thread that makes it, so several
    threads can each run whole products side by side (``shares_threads.py``).
    OpenBLAS's thread count is one number for the whole process, not per
    thread: another thread of the program calling BLAS meanwhile runs on
    one thread too.  Restored to ``get_num_threads()`` when the last thread
    inside leaves (two Python threads may each split a convolution: the
    first to finish must not give BLAS its threads back under the other's
    products)."""
    global _one_thread_blas_users
    setters = _numpy_blas_setters()
    with _one_thread_blas:
        if _one_thread_blas_users == 0:
            for set_blas_threads in setters:
                set_blas_threads(1)
        _one_thread_blas_users += 1
    try:
        yield
    finally:
        with _one_thread_blas:
            _one_thread_blas_users -= 1
            if _one_thread_blas_users == 0:
                for set_blas_threads in setters:
                    set_blas_threads(get_num_threads())
