"""kernels/pool_time.py: the thread pool's work timed inside a block, and a
step's loss against a perfect speed-up split into serial, waiting and extra
work.  The jobs sleep for known times, so what is checked is the accounting
(a sleep lasts at least its time), never a speed."""
import threading
import time

import numpy as np
import pytest

from kernels import pool_time, threads

pytestmark = pytest.mark.kernel_free

NAP = 0.02


def napping_job(ran):
    def job(*args):
        time.sleep(NAP)
        ran.append(threading.get_ident())
        return args[0] if args else None
    return job


def test_run_all_is_one_region_with_every_jobs_time(two_threads):
    ran = []
    with pool_time.timing() as pool:
        threads.run_all([napping_job(ran) for _ in range(3)])
    assert len(ran) == 3
    assert pool.regions == 1
    assert pool.busy >= 3 * NAP                  # each job's time, whichever thread ran it
    assert pool.wall >= NAP and pool.busy <= 2 * pool.wall + 1e-3     # two threads at most


def test_map_in_shares_is_one_region_and_keeps_its_results_in_order(two_threads):
    ran = []
    with pool_time.timing() as pool:
        results = threads.map_in_shares(napping_job(ran), range(4))
    assert results == [0, 1, 2, 3]
    assert pool.regions == 1 and pool.busy >= 4 * NAP


def test_a_region_inside_a_job_is_not_counted_twice(two_threads):
    ran = []

    def job_with_its_own_jobs():
        threads.run_all([napping_job(ran) for _ in range(2)])
    with pool_time.timing() as pool:
        threads.run_all([job_with_its_own_jobs, job_with_its_own_jobs])
    assert len(ran) == 4
    assert pool.regions == 1                     # the outer call; the inner ones are its jobs
    assert 4 * NAP <= pool.busy <= 2 * pool.wall + 1e-3


def test_a_single_job_runs_inline_and_is_no_region(two_threads):
    ran = []
    with pool_time.timing() as pool:
        threads.run_all([napping_job(ran)])
        threads.map_in_shares(napping_job(ran), [0])
    assert len(ran) == 2 and pool.regions == 0 and pool.busy == 0 and pool.wall == 0


def test_the_loops_split_by_over_batch_are_timed_too(two_threads):
    sliced = []

    def loop(part):
        time.sleep(NAP)
        sliced.append(len(part))
    with pool_time.timing() as pool:
        threads.over_batch(loop, (np.zeros(64),), slices=lambda n, nbytes: [(0, 32), (32, 64)])
    assert sorted(sliced) == [32, 32] and pool.regions == 1 and pool.busy >= 2 * NAP


def test_the_pools_functions_come_back_after_the_block_even_on_an_error(two_threads):
    run_all, map_in_shares = threads.run_all, threads.map_in_shares
    with pytest.raises(RuntimeError, match="inside"):
        with pool_time.timing():
            assert threads.run_all is not run_all
            raise RuntimeError("inside")
    assert threads.run_all is run_all and threads.map_in_shares is map_in_shares
    with pool_time.timing() as pool:
        pass
    ran = []
    threads.run_all([napping_job(ran), napping_job(ran)])      # outside: not timed
    assert pool.regions == 0 and len(ran) == 2


def test_a_jobs_error_still_reaches_the_caller_and_its_time_is_kept(two_threads):
    def fail():
        time.sleep(NAP)
        raise ValueError("job failed")
    with pool_time.timing() as pool:
        with pytest.raises(ValueError, match="job failed"):
            threads.run_all([fail, fail])
    assert pool.regions == 1 and pool.busy >= NAP


def test_the_three_losses_sum_to_the_step_minus_the_perfect_one():
    one_thread = {"step": 1.0, "inside": 0.0, "busy": 0.0}
    # on 4 threads: 0.1 s outside the pool, 0.3 s inside it, the jobs 1.08 s in all
    four = {"step": 0.4, "inside": 0.3, "busy": 1.08}
    lost = pool_time.lost_time(one_thread, four, 4)
    assert lost["serial"] == pytest.approx(0.075)           # 0.1 · (1 - 1/4)
    assert lost["waiting"] == pytest.approx(0.03)           # 0.3 - 1.08 / 4
    assert lost["extra work"] == pytest.approx(0.045)       # (1.08 + 0.1 - 1.0) / 4
    assert sum(lost.values()) == pytest.approx(0.4 - 1.0 / 4)
    assert pool_time.work(four) == pytest.approx(1.18)
    assert pool_time.lost_time(one_thread, one_thread, 1) == {
        "serial": 0.0, "waiting": 0.0, "extra work": 0.0}


def test_a_baseline_on_several_threads_counts_all_their_work():
    two = {"step": 0.6, "inside": 0.5, "busy": 0.9}          # 1.0 s of work in all
    four = {"step": 0.3, "inside": 0.25, "busy": 0.9}
    lost = pool_time.lost_time(two, four, 4)
    assert sum(lost.values()) == pytest.approx(0.3 - 1.0 / 4)
    assert lost["extra work"] == pytest.approx((0.9 + 0.05 - 1.0) / 4)   # less work: a gain
