"""The pool threads that take split work (kernels/spinning_pool.py): every job
runs once on a pool thread, errors reach the waiter, a job taken back never
runs; threads spin for the next job until parked, then sleep until a job
comes; and the pool is parked before Numba's and BLAS's threads run."""
import os
import threading
import time

import numpy as np
import pytest

from kernels import shares_threads, spinning_pool, threads

# The thread count is process-wide: each test sets what it needs and restores it.
pytestmark = pytest.mark.kernel_free


def wait_until(condition, timeout=10.0):
    """Poll ``condition()`` until it holds (True) or ``timeout`` seconds pass (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


@pytest.fixture
def spin_until_parked(monkeypatch):
    """Threads that spin for a job as long as nobody parks them: waking or
    sleeping then depends on the protocol alone, not on a clock."""
    monkeypatch.setattr(spinning_pool, "spin_turns", lambda: 10**12)


def test_every_job_runs_once_on_a_pool_thread():
    pool = spinning_pool.SpinningPool(2)
    ran = []
    tasks = [pool.submit(lambda i=i: ran.append((i, threading.current_thread().name)))
             for i in range(20)]
    for task in tasks:
        task.result()
    assert sorted(i for i, _ in ran) == list(range(20))
    assert all(name.startswith("tinygrad_cnn_") for _, name in ran)
    assert threading.current_thread().name not in {name for _, name in ran}


def test_result_waits_for_the_job_and_reraises_its_error():
    pool = spinning_pool.SpinningPool(1)
    ended = []

    def slow():
        time.sleep(0.05)
        ended.append(True)
    pool.submit(slow).result()
    assert ended
    with pytest.raises(ValueError, match="the job failed"):
        pool.submit(lambda: (_ for _ in ()).throw(ValueError("the job failed"))).result()


def test_a_job_taken_back_before_it_started_never_runs():
    pool = spinning_pool.SpinningPool(1)
    started, release, ran = threading.Event(), threading.Event(), []
    busy = pool.submit(lambda: started.set() or release.wait())    # holds the one thread
    queued = pool.submit(lambda: ran.append("queued"))
    assert started.wait(10)
    assert not busy.cancel()                    # started: too late to take it back
    assert queued.cancel()
    release.set()
    busy.result()
    pool.submit(lambda: ran.append("after")).result()   # runs after where `queued` stood
    assert ran == ["after"]


def test_threads_spin_for_the_next_job_until_parked_then_sleep_until_a_job(spin_until_parked):
    pool = spinning_pool.SpinningPool(2)
    try:
        for task in [pool.submit(lambda: None) for _ in range(4)]:
            task.result()
        time.sleep(0.05)
        assert pool.asleep == 0                     # spinning, not asleep
        ran = []
        pool.submit(lambda: ran.append(True)).result()      # a spinning thread takes it
        assert ran
        pool.park()
        assert wait_until(lambda: pool.asleep == 2)
        pool.submit(lambda: ran.append(True)).result()      # a job wakes a thread
        assert ran == [True, True]
    finally:
        pool.park()                                 # no thread left spinning after the test


def test_without_spinning_the_threads_sleep_once_the_jobs_are_done(monkeypatch):
    monkeypatch.setattr(spinning_pool, "spin_turns", lambda: 0)    # as where there is no sched_yield
    pool = spinning_pool.SpinningPool(2)
    for task in [pool.submit(lambda: time.sleep(0.01)) for _ in range(4)]:
        task.result()
    assert wait_until(lambda: pool.asleep == 2)


@pytest.mark.skipif(not hasattr(os, "sched_yield"), reason="no sched_yield: no spinning")
def test_spin_turns_are_counted_for_the_spin_time():
    turns = spinning_pool.spin_turns()
    assert turns >= 1
    assert 1 <= spinning_pool.settle_turns() < turns
    # the compiled loop sets `ended` first, then returns as soon as the watched
    # value changes (after the settling turns), and at a park
    spin = spinning_pool._compiled().spin_while
    ended = np.zeros(1, dtype=np.int64)
    assert spin(np.array([1]), 0, np.array([0]), turns, 3, ended) and ended[0] == 1
    ended[0] = 0
    assert not spin(np.array([0]), 0, np.array([1]), turns, 3, ended) and ended[0] == 1


def record_spins(monkeypatch):
    """Record each spin's (ended array, its value on entry, settle turns, thread name)."""
    spins = []
    real = spinning_pool._spin_while

    def spin_while(watched, value, parked=spinning_pool._NEVER_PARKED, settle=0,
                   ended=spinning_pool._NOTHING_ENDED):
        spins.append((ended, int(ended[0]), settle, threading.current_thread().name))
        return real(watched, value, parked, settle, ended)
    monkeypatch.setattr(spinning_pool, "_spin_while", spin_while)
    return spins


def test_a_jobs_end_is_told_by_the_spin_loop_with_the_gil_released(monkeypatch):
    # Told from Python, the waiter would see it while the pool thread still
    # holds the GIL, and sleep asking for it (module docstring).
    spins = record_spins(monkeypatch)
    pool = spinning_pool.SpinningPool(1)
    try:
        task = pool.submit(lambda: time.sleep(0.02))
        task.result()
        assert wait_until(lambda: any(ended is task._done for ended, *_ in spins))
        told = [before for ended, before, *_ in spins if ended is task._done]
        assert told == [0]          # not yet set when the pool thread's spin started
        assert task._done[0] == 1
    finally:
        pool.park()


def test_a_pool_thread_that_saw_a_job_settles_before_it_asks_for_the_gil(monkeypatch):
    spins = record_spins(monkeypatch)
    pool = spinning_pool.SpinningPool(1)
    try:
        pool.submit(lambda: None).result()
        assert wait_until(lambda: any(name.startswith("tinygrad_cnn_") for *_, name in spins))
        settles = {(name.startswith("tinygrad_cnn_"), settle) for *_, settle, name in spins}
        # the pool thread settles; the waiter, whose GIL is free once told, does not
        assert settles == {(True, spinning_pool.settle_turns()), (False, 0)}
    finally:
        pool.park()


def test_a_job_longer_than_the_spin_is_waited_for_asleep(monkeypatch):
    monkeypatch.setattr(spinning_pool, "spin_turns", lambda: 1)     # the waiter gives up at once
    pool = spinning_pool.SpinningPool(1)
    ended = []
    pool.submit(lambda: time.sleep(0.05) or ended.append(True)).result()
    assert ended


# ---------------------------------------------------------------- threads' pool
def parks(monkeypatch):
    """Record the parks of the pool in use."""
    recorded = []
    pool = threads.thread_pool()
    real_park = pool.park
    monkeypatch.setattr(pool, "park", lambda: recorded.append(True) or real_park())
    return recorded


def test_the_pool_has_a_thread_fewer_than_the_count_the_caller_being_one(two_threads):
    names = set()
    pool = threads.thread_pool()
    for task in [pool.submit(lambda: names.add(threading.current_thread().name) or
                             time.sleep(0.01)) for _ in range(6)]:
        task.result()
    assert len(names) == 1


def test_a_new_thread_count_gets_its_own_pool_and_parks_the_last(two_threads, monkeypatch):
    recorded = parks(monkeypatch)
    first = threads.thread_pool()
    threads.set_num_threads(1)
    assert threads.thread_pool() is not first and recorded
    threads.set_num_threads(2)
    assert threads.thread_pool() is first       # kept for its count, not started again


def test_the_pool_is_parked_before_numbas_parallel_loops(two_threads, monkeypatch):
    recorded = parks(monkeypatch)
    with threads.loops_for_this_thread(lambda: "one thread", lambda: "parallel") as loops:
        assert loops == "parallel" and recorded


@pytest.mark.parametrize("large", [False, True], ids=["one-blas-thread", "blas-threads"])
def test_the_pool_is_parked_before_a_product_on_several_blas_threads(two_threads, monkeypatch,
                                                                      large):
    recorded = parks(monkeypatch)
    a, b = np.ones((512, 512), np.float32), np.ones((512, 128), np.float32)
    monkeypatch.setattr(shares_threads, "BLAS_MIN_MULTIPLY_ADDS",
                        a.size * b.shape[1] + (0 if large else 1))
    shares_threads.matmul(a, b)
    assert bool(recorded) == large
