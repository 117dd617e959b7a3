"""benchmarks/replicas.py: the ratios and the table from constructed times, a
small run of our engine in a worker process, a failing replica, and the
arguments it refuses."""
import threading

import pytest

from benchmarks import replicas

# The thread settings are process-wide, and the run happens in a worker process.
pytestmark = pytest.mark.kernel_free


def test_each_ratio_is_the_median_over_rounds_of_that_rounds_ratio():
    times = {"1": [1.0, 1.2, 0.9], "t": [0.6, 0.6, 0.5], "replicas": [0.55, 0.5, 0.5],
             "alone": [0.5, 0.5, 0.4], "processes": [0.5, 0.4, 0.5]}
    (efficiency, bound, split, side_by_side, smaller_batch, processes_bound,
     one_process) = replicas.ratios(times, 2)
    # per round: 1/(2·0.6) = 0.833, 1.2/1.2 = 1.0, 0.9/1.0 = 0.9
    assert efficiency == pytest.approx(0.9)
    # 1/1.1 = 0.909, 1.2/1.0 = 1.2, 0.9/1.0 = 0.9
    assert bound == pytest.approx(1 / 1.1)
    # 0.6/0.55 = 1.091, 0.6/0.5 = 1.2, 0.5/0.5 = 1.0
    assert split == pytest.approx(0.6 / 0.55)
    # 0.55/0.5 = 1.1, 0.5/0.5 = 1.0, 0.5/0.4 = 1.25
    assert side_by_side == pytest.approx(1.1)
    # 0.5/0.5 = 1.0, 0.5/0.6 = 0.833, 0.4/0.45 = 0.889
    assert smaller_batch == pytest.approx(0.4 / 0.45)
    # 1/1.0 = 1.0, 1.2/0.8 = 1.5, 0.9/1.0 = 0.9
    assert processes_bound == pytest.approx(1.0)
    # 0.55/0.5 = 1.1, 0.5/0.4 = 1.25, 0.5/0.5 = 1.0
    assert one_process == pytest.approx(1.1)


def test_the_table_has_one_row_per_network_and_engine():
    times = {"1": [0.040], "t": [0.025], "replicas": [0.021], "alone": [0.020],
             "processes": [0.016]}
    lines = replicas.table({"lenet": {"ours": times, "torch": times}}, 4).splitlines()
    assert lines[0] == ("| network | engine | 1 thread ms | 4 threads ms | 4 replicas ms "
                        "| 1 replica alone ms | 4 processes ms | efficiency 1→4 "
                        "| replicas' efficiency | split | side by side | smaller batch "
                        "| processes' efficiency | one process |")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert [row[:2] for row in rows] == [["lenet", "ours"], ["lenet", "torch"]]
    assert rows[0][2:] == ["40.0", "25.0", "21.0", "20.0", "16.0", "0.400", "0.476", "1.190",
                           "1.050", "2.000", "0.625", "1.312"]


def test_a_small_run_times_our_replicas_in_a_worker_process_and_its_replica_processes(capsys):
    replicas.main(["--networks", "lenet", "--batch", "8", "--threads", "2", "--rounds", "1",
                   "--steps", "1", "--no-torch"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 threads, 1 rounds; batch per network: lenet 8"
    row = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert row[:2] == ["lenet", "ours"] and len(lines) == 4
    assert all(float(cell) > 0 for cell in row[2:])


@pytest.mark.parametrize("argv, message", [
    (["--threads", "1"], "--threads must be at least 2, got 1"),
    (["--networks", "lenet", "--batch", "9"], "the batch (9) must split evenly over 2 replicas"),
])
def test_arguments_that_cannot_be_measured_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        replicas.main(argv + ["--no-torch"])
    assert message in capsys.readouterr().err


def test_the_replicas_run_side_by_side_each_step_once_per_timed_step():
    calls = [0, 0]

    def counter(i):
        def step():
            calls[i] += 1
        return step
    seconds = replicas._replicas_timed([counter(0), counter(1)], steps=3)
    assert calls == [4, 4] and seconds >= 0         # one untimed step, three timed


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_replica_that_raises_stops_the_measurement_instead_of_hanging():
    def fails():
        raise ValueError("replica broke")
    with pytest.raises(threading.BrokenBarrierError):
        replicas._replicas_timed([lambda: None, fails], steps=2)


def test_the_replica_processes_step_together_each_on_its_own_process():
    with replicas._replica_processes("ours", "lenet", 2, 2) as processes:
        processes.wait_until_ready()
        assert replicas._timed(processes.step, 2) > 0
        pids = {process.pid for process in processes._workers}
        assert len(pids) == 2 and all(process.is_alive() for process in processes._workers)
    assert not any(process.is_alive() for process in processes._workers)


def test_a_replica_process_that_raises_stops_the_measurement_instead_of_hanging(capfd,
                                                                               monkeypatch):
    monkeypatch.setattr(replicas, "PROCESS_TIMEOUT", None)     # no timeout to end the wait
    with pytest.raises(threading.BrokenBarrierError):
        with replicas._replica_processes("ours", "no_such_network", 2, 2) as processes:
            processes.wait_until_ready()
    assert "no_such_network" in capfd.readouterr().err      # the replica's own traceback
