"""benchmarks/cpu.py's thread protocols and its scaling table (no timing here)."""
import pytest

from benchmarks import cpu

# Environment and table handling only: no kernel is called (tests/conftest.py).
pytestmark = pytest.mark.kernel_free


def test_user_protocol_adds_no_thread_variable(monkeypatch):
    monkeypatch.setattr(cpu, "USER_ENVIRONMENT", {"PATH": "/bin"})
    assert cpu.worker_environment("numba", 2, "user") == {"PATH": "/bin"}
    assert cpu.worker_environment("numba+torch", 2, "user") == {"PATH": "/bin"}


def test_environment_protocol_sets_every_thread_count_variable(monkeypatch):
    monkeypatch.setattr(cpu, "USER_ENVIRONMENT", {"PATH": "/bin"})
    env = cpu.worker_environment("numba", 3, "environment")
    assert {var: env[var] for var in cpu.THREAD_VARIABLES} == dict.fromkeys(
        cpu.THREAD_VARIABLES, "3")


def run(rate, cores_busy=None):
    r = {"examples_per_s": rate, "peak_rss_mb": 100.0, "baseline_rss_mb": 50.0}
    if cores_busy is not None:
        r["cores_busy"] = cores_busy
    return r


def test_scaling_table_gives_each_engines_efficiency_against_the_fewest_threads():
    report = {"networks": [
        {"name": "lenet", "threads": 1, "runs": {"numba": [run(90.0, 0.9), run(100.0, 1.0)],
                                                 "torch": [run(50.0)]}},
        {"name": "lenet", "threads": 2, "runs": {"numba": [run(150.0, 1.47)],
                                                 "torch": [run(100.0, 1.99)]}},
        {"name": "lenet", "threads": 4, "runs": {"numba": [run(200.0)],
                                                 "torch": [{"error": "boom"}]}}]}
    lines = cpu.scaling_table(report)
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines
             if line.startswith("| lenet")]
    rows = {row[1]: row for row in cells}
    # best round at 1 thread (100), then 150 at 2: 1.5x faster on 2x the threads;
    # per round, round 1's 150 against round 1's 90 (the only round run on both);
    # then the cores each best run kept busy (none recorded: blank)
    assert rows["ours, numba kernels"][2:] == ["100.0", "150.0", "200.0", "0.75", "0.50",
                                               "0.83", "0.56", "1.00", "1.47", ""]
    assert rows["PyTorch"][2:] == ["50.0", "100.0", "", "1.00", "", "1.00", "", "", "1.99",
                                   ""]
    header = next(line for line in lines if line.startswith("| network"))
    assert len(header.split("|")) == len(lines[lines.index(header) + 1].split("|"))


def test_per_round_efficiency_pairs_the_runs_of_one_round():
    # round 2's one-thread run met a busy moment: best against best pairs round
    # 3's 2-thread run with round 1's 1-thread run
    one = [run(100.0), run(60.0), run(90.0)]
    two = [run(150.0), run(120.0), run(153.0)]
    assert cpu.scaling_efficiency(153.0, 2, 100.0, 1) == pytest.approx(0.765)
    # within the rounds: 0.75, 1.00, 0.85 -> the median
    assert cpu.paired_efficiency(two, 2, one, 1) == pytest.approx(0.85)
    # a round with an error on either side is left out; none left: None
    assert cpu.paired_efficiency([run(150.0), {"error": "boom"}], 2, one, 1) == pytest.approx(0.75)
    assert cpu.paired_efficiency([{"error": "boom"}], 2, one, 1) is None


def test_per_round_efficiency_cell_gives_the_rounds_range():
    # three rounds: 150/100, 120/60, 153/90 -> 0.75, 1.00, 0.85 on twice the threads
    one = [run(100.0), run(60.0), run(90.0)]
    two = [run(150.0), run(120.0), run(153.0)]
    assert cpu.efficiency_per_round_cell(two, 2, one, 1) == "0.85 (0.75–1.00)"
    # one round where both ran: no range to give; none: a blank cell
    assert cpu.efficiency_per_round_cell([run(150.0), {"error": "boom"}], 2, one, 1) == "0.75"
    assert cpu.efficiency_per_round_cell([{"error": "boom"}], 2, one, 1) == ""
    report = {"networks": [{"name": "lenet", "threads": 1, "runs": {"numba": one}},
                           {"name": "lenet", "threads": 2, "runs": {"numba": two}}]}
    row = next(line for line in cpu.scaling_table(report) if line.startswith("| lenet"))
    # best against best: 153 / 100 on twice the threads
    assert "| 100.0 | 153.0 | 0.77 | 0.85 (0.75–1.00) |" in row


def test_one_thread_count_makes_no_scaling_table():
    report = {"networks": [{"name": "lenet", "threads": 2, "runs": {"numba": [run(1.0)]}}]}
    assert cpu.scaling_table(report) == []


def test_a_function_run_in_another_thread_gives_its_result_or_its_error():
    import threading

    def where(x):
        return x, threading.current_thread() is threading.main_thread()
    assert cpu._in_another_thread(where, 3) == (3, False)

    def failing():
        raise ZeroDivisionError("in the training thread")
    with pytest.raises(ZeroDivisionError, match="in the training thread"):
        cpu._in_another_thread(failing)


@pytest.mark.parametrize("engine, label", [
    ("numba", "ours, numba kernels"),
    ("numba+torch", "ours, numba kernels, PyTorch imported and called first"),
    ("numba+thread", "ours, numba kernels, steps in a second Python thread"),
    ("torch", "PyTorch")])
def test_engine_labels(engine, label):
    assert cpu.engine_label(engine) == label


def machine_line(blas_settings):
    machine = {"cpu": "x", "cpus": 2, "python": "3", "numpy": "2", "numba": "0", "torch": None,
               "load_average": (0.0, 0.0, 0.0), "blas": ["openblas 0.3 (Haswell, 2 threads)"],
               "blas_settings": blas_settings}
    report = {"machine": machine, "args": {"threads": "2", "protocol": "user"}, "argv": [],
              "date": "today", "networks": []}
    return next(line for line in cpu.markdown(report).splitlines() if line.startswith("Machine:"))


def test_the_machine_line_names_the_blas_kernel_variables_the_user_set():
    # OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU halves the products' speed:
    # a table run with it must say so
    user = {"PATH": "/bin", "OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_NUM_THREADS": "2"}
    assert cpu.blas_kernel_settings(user) == ["OPENBLAS_CORETYPE=Haswell"]
    assert cpu.blas_kernel_settings({"PATH": "/bin"}) == []
    assert "(openblas 0.3 (Haswell, 2 threads); set in the environment: " \
           "OPENBLAS_CORETYPE=Haswell)" in machine_line(["OPENBLAS_CORETYPE=Haswell"])
    assert "(openblas 0.3 (Haswell, 2 threads))" in machine_line([])
