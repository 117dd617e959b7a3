"""kernels/threads.py: OpenBLAS's threads quieted whatever the import order,
Numba on the workqueue layer, no environment variable written, and one
thread count for BLAS and Numba (set_num_threads/get_num_threads)."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import threadpoolctl

import kernels
import tinygrad_cnn as tc
from kernels import threads

# The thread settings are process-wide, not per kernel set: each test runs once.
pytestmark = pytest.mark.kernel_free

ROOT = Path(__file__).resolve().parents[2]

# A fresh interpreter that imports what ``first`` names, then the rest, runs a
# compiled loop and reports what the libraries ended up with.
PROBE = r"""
import json, os, sys
before = dict(os.environ)
for name in %(order)r:
    __import__(name)
import numpy as np
import kernels
from kernels import threads
timeouts = list(threads.openblas_timeouts().values())     # NumPy's OpenBLAS
kernels.relu_forward(np.ones((4, 8), np.float32))   # starts Numba's threads
import numba
after = dict(os.environ)
print(json.dumps({
    "timeouts": timeouts,
    "environment_changes": sorted(k for k in set(before) | set(after)
                                  if before.get(k) != after.get(k)),
    "numba_layer": numba.threading_layer(),
    "numba_threads": numba.get_num_threads(),
    "blas_threads": [lib.num_threads for lib in threads.blas_libraries()],
    "get_num_threads": threads.get_num_threads(),
}))
"""

THREAD_VARIABLES = ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT", "OMP_WAIT_POLICY",
                    "NUMBA_THREADING_LAYER", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "GOTO_NUM_THREADS", "NUMBA_NUM_THREADS", "TINYGRAD_CNN_KERNELS")


def probe(order, script=PROBE, **env):
    """Run ``script`` (PROBE: importing the modules ``order`` first) with
    ``env`` added to an environment without any thread variable; -> the JSON
    it printed last."""
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", script % {"order": order}],
                         env={**clean, **env}, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def openblas_here():
    if not threads.openblas_timeouts():
        pytest.skip("NumPy's BLAS here is not an OpenBLAS with its own thread pool")


@pytest.mark.parametrize("order", [["numpy", "tinygrad_cnn"], ["tinygrad_cnn", "numpy"],
                                   ["numpy", "kernels"]], ids=lambda o: " then ".join(o))
def test_openblas_threads_sleep_after_a_product_whatever_the_import_order(order):
    openblas_here()
    seen = probe(order)
    assert seen["timeouts"] and all(t == threads.QUIET_TIMEOUT for t in seen["timeouts"])


def test_import_writes_no_environment_variable():
    seen = probe(["numpy", "tinygrad_cnn"])
    assert seen["environment_changes"] == []


def test_a_timeout_the_user_set_is_left_alone():
    openblas_here()
    seen = probe(["numpy", "tinygrad_cnn"], OPENBLAS_THREAD_TIMEOUT="28")
    assert seen["timeouts"] and all(t == 28 for t in seen["timeouts"])


def test_numba_runs_on_the_workqueue_layer():
    assert probe(["numpy", "tinygrad_cnn"])["numba_layer"] == "workqueue"


def test_a_threading_layer_the_user_chose_is_kept():
    # Only the choice, not a launch: the chosen layer need not be installed here.
    code = "from kernels import threads; print(threads.choose_numba_layer())"
    env = dict(os.environ, NUMBA_THREADING_LAYER="tbb",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "tbb"


def test_numba_follows_the_thread_count_blas_took_from_the_environment():
    seen = probe(["numpy", "tinygrad_cnn"], OMP_NUM_THREADS="1")
    assert seen["get_num_threads"] == 1
    assert seen["blas_threads"] and set(seen["blas_threads"]) == {1}
    assert seen["numba_threads"] == 1


@pytest.fixture
def restore_threads():
    previous = tc.get_num_threads()
    yield
    tc.set_num_threads(previous)


def blas_threads():
    return {p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"}


def test_set_num_threads_round_trip_reaches_blas_and_numba(restore_threads):
    import numba
    kernels.relu_forward(np.ones(3, np.float32))    # Numba's threads started
    for n in (1, 2):
        tc.set_num_threads(n)
        assert tc.get_num_threads() == n
        assert blas_threads() == {n}
        assert numba.get_num_threads() == min(n, numba.config.NUMBA_NUM_THREADS)
        assert threads.numba_threads() == min(n, numba.config.NUMBA_NUM_THREADS)


class GpuArrayLikeTheLaunchCounters(np.ndarray):
    """A GPU array that is a NumPy subclass, as benchmarks/launches.py's fake's are."""


def test_chunks_run_side_by_side_only_for_cpu_arrays(restore_threads, monkeypatch):
    tc.set_num_threads(2)
    x = np.zeros((4, 3), np.float32)
    assert threads.shares_for(x) == 2
    monkeypatch.setattr(kernels.arrays, "cupy", type("FakeCupy", (), {
        "ndarray": GpuArrayLikeTheLaunchCounters}))
    assert threads.shares_for(x.view(GpuArrayLikeTheLaunchCounters)) == 1   # one stream
    assert threads.shares_for(x) == 2


def test_set_num_threads_reaches_blas_from_any_python_thread(restore_threads):
    # threadpoolctl (3.8+) obeys only the first Python thread that set OpenBLAS's
    # thread count and ignores the others without a word; ours must not
    for library in threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers:
        library.set_num_threads(2)          # this thread now controls them (threadpoolctl)
    seen = []

    def elsewhere():
        for n in (1, 2):
            tc.set_num_threads(n)
            seen.append(blas_threads())
    worker = threading.Thread(target=elsewhere)
    worker.start()
    worker.join()
    assert seen == [{1}, {2}]


# A step trained in a thread of the user's: Numba keeps its thread count per
# Python thread, and a new thread launches its loops on all of Numba's pool.
IN_ANOTHER_THREAD = r"""
import json, threading
import numpy as np
import numba
import kernels
import tinygrad_cnn as tc
tc.set_num_threads(2)
def im2col():
    kernels.im2col(np.ones((2, 3, 8, 8), np.float32), (3, 3), (1, 1), (0, 0, 0, 0), (1, 1))
im2col()        # compiled here, in the main thread
seen = {}
def step():
    im2col()
    seen["numba_threads"] = numba.get_num_threads()
thread = threading.Thread(target=step)
thread.start()
thread.join()
print(json.dumps(seen))
"""


def test_parallel_loops_in_another_thread_use_set_num_threads():
    seen = probe([], IN_ANOTHER_THREAD, NUMBA_NUM_THREADS="3", TINYGRAD_CNN_KERNELS="numba")
    assert seen == {"numba_threads": 2}


def test_a_thread_finding_numbas_pool_taken_runs_the_one_thread_loops(restore_threads):
    # workqueue aborts the process when two Python threads launch parallel
    # loops at once: the second must get the one-thread loops instead
    tc.set_num_threads(2)
    if threads.numba_threads() < 2:
        pytest.skip("Numba's pool has one thread here")
    one, parallel = "one-thread loops", "parallel loops"

    def choose():
        with threads.loops_for_this_thread(lambda: one, lambda: parallel) as loops:
            return loops

    def in_another_thread():
        seen = []
        worker = threading.Thread(target=lambda: seen.append(choose()))
        worker.start()
        worker.join()
        return seen[0]

    with threads.loops_for_this_thread(lambda: one, lambda: parallel) as loops:
        assert loops == parallel
        assert in_another_thread() == one           # this thread holds the pool
    assert in_another_thread() == parallel          # given back when the block ends
    tc.set_num_threads(1)
    assert choose() == one


# Two Python threads each running the parallel-compiled loops (im2col, col2im,
# the Winograd transforms) over and over: before the pool was held, workqueue
# ended this process ("Concurrent access has been detected") within a few calls.
TWO_THREADS_AT_ONCE = r"""
import json, threading
import numpy as np
import kernels
from kernels import conv_numpy, winograd_numpy
import tinygrad_cnn as tc
tc.set_num_threads(2)
x = np.random.default_rng(0).standard_normal((8, 16, 24, 24)).astype(np.float32)
W = np.random.default_rng(1).standard_normal((16, 16, 3, 3)).astype(np.float32)
args = ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
col = conv_numpy.im2col(x, *args)
expected = {"im2col": col, "col2im": conv_numpy.col2im(col, x.shape, *args),
            "winograd_weight": winograd_numpy.winograd_weight(W),
            "winograd_input": winograd_numpy.winograd_input(x, (1, 1, 1, 1), (12, 12))}
def run_all():
    return {"im2col": kernels.im2col(x, *args), "col2im": kernels.col2im(col, x.shape, *args),
            "winograd_weight": kernels.winograd_weight(W),
            "winograd_input": kernels.winograd_input(x, (1, 1, 1, 1), (12, 12))}
run_all()                   # compiled before the threads start
wrong = []
def work():
    for _ in range(100):
        for name, got in run_all().items():
            if not np.allclose(got, expected[name], rtol=1e-5, atol=1e-5):
                wrong.append(name)
workers = [threading.Thread(target=work) for _ in range(2)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(json.dumps({"wrong": sorted(set(wrong))}))
"""


def test_two_python_threads_can_run_the_parallel_loops_at_once():
    seen = probe([], TWO_THREADS_AT_ONCE, TINYGRAD_CNN_KERNELS="numba")
    assert seen == {"wrong": []}


def test_blas_keeps_one_thread_until_the_last_thread_leaves_single_threaded_blas(
        restore_threads):
    # two Python threads each splitting a convolution: the first to finish must
    # not give BLAS its threads back under the other's products
    tc.set_num_threads(2)
    inside, leave = threading.Event(), threading.Event()

    def other():
        with threads.single_threaded_blas():
            inside.set()
            leave.wait()
    worker = threading.Thread(target=other)
    worker.start()
    inside.wait()
    with threads.single_threaded_blas():
        assert blas_threads() == {1}
    assert blas_threads() == {1}                    # the other thread is still inside
    leave.set()
    worker.join()
    assert blas_threads() == {2}


def test_a_thread_count_is_the_users_choice_once_set_or_in_the_environment(monkeypatch):
    monkeypatch.setattr(threads, "_requested", None)
    for variable in threads.THREAD_COUNT_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    assert not threads.chosen_by_user()
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert threads.chosen_by_user()
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "_requested", 2)
    assert threads.chosen_by_user()


def test_more_threads_than_numbas_pool_caps_numba_only(restore_threads):
    import numba
    n = numba.config.NUMBA_NUM_THREADS + 1
    tc.set_num_threads(n)
    assert tc.get_num_threads() == n
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                        ("2", TypeError), (True, TypeError), (None, TypeError)])
def test_set_num_threads_rejects_what_is_not_a_positive_int(bad, error):
    with pytest.raises(error, match="set_num_threads"):
        tc.set_num_threads(bad)


# ---------------------------------------------------------------- CPU quotas
def cgroup_tree(tmp_path, membership, files):
    """A fake /proc/self/cgroup (``membership``) and cgroup file system (``files``:
    {relative path: text}); -> (root, membership file) for threads.cpu_quota."""
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(membership)
    return str(root), str(proc)


@pytest.mark.parametrize("membership, files, quota", [
    # cgroup v2: docker --cpus=2.5 -> 3 CPUs
    ("0::/docker/abc\n", {"docker/abc/cpu.max": "250000 100000\n"}, 3),
    # no limit here, a smaller one on a parent
    ("0::/kube/pod/c1\n", {"kube/pod/c1/cpu.max": "max 100000\n",
                           "kube/pod/cpu.max": "100000 100000\n"}, 1),
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),
    # cgroup v1, the cpu controller mounted with cpuacct
    ("4:memory:/x\n2:cpu,cpuacct:/job\n", {"cpu,cpuacct/job/cpu.cfs_quota_us": "200000\n",
                                           "cpu,cpuacct/job/cpu.cfs_period_us": "100000\n"}, 2),
    ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
], ids=["v2", "v2-parent", "v2-max", "v1", "v1-none"])
def test_cpu_quota_reads_cgroups_v1_and_v2(tmp_path, membership, files, quota):
    root, proc = cgroup_tree(tmp_path, membership, files)
    assert threads.cpu_quota(root, proc) == quota


def test_no_cgroups_means_no_quota(tmp_path):
    assert threads.cpu_quota(str(tmp_path), str(tmp_path / "missing")) is None
    root, proc = cgroup_tree(tmp_path, "garbage\n0::/a\n", {"a/cpu.max": "oops\n"})
    assert threads.cpu_quota(root, proc) is None        # unreadable lines and files: no quota


def test_blas_follows_a_cpu_quota_below_its_threads_unless_the_user_chose(monkeypatch,
                                                                          restore_threads):
    openblas_here()
    monkeypatch.setattr(threads, "_requested", None)     # no count chosen...
    for set_blas_threads in threads.blas_thread_setters():
        set_blas_threads(2)                              # ...and BLAS on 2 threads
    for variable in threads.THREAD_COUNT_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(threads, "cpu_quota", lambda: 1)
    assert threads.fit_cpu_quota() == 1 and blas_threads() == {1}
    assert threads.usable_cores() == 1
    assert threads.fit_cpu_quota() is None              # BLAS is within the quota now
    tc.set_num_threads(2)                               # the user's choice stands
    assert threads.fit_cpu_quota() is None and blas_threads() == {2}
