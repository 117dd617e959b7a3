"""benchmarks/bandwidth.py: that it streams every slice, its table and its
arguments (tiny working sets: what is checked is the work, not its speed)."""
import json

import numpy as np
import pytest

from benchmarks import bandwidth

# Compiles its own loop (Numba) and calls no engine kernel (tests/conftest.py).
pytestmark = pytest.mark.kernel_free


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_thread_streams_its_own_slice(threads):
    x = np.arange(1001, dtype=np.float32)
    y = np.full_like(x, np.nan)
    seconds = bandwidth.stream_seconds(x, y, threads, passes=2)
    assert seconds > 0
    np.testing.assert_array_equal(y, 1.5 * x)         # no slice left out, none overlapping


def test_measure_gives_a_rate_for_each_thread_count():
    rates = bandwidth.measure(64 * 1024, [1, 2], seconds=0.002, repeats=1)
    assert set(rates) == {1, 2} and all(r > 0 for r in rates.values())


def test_table_gives_the_speed_up_from_the_fewest_threads_to_the_most():
    results = {1: {1: 60.0, 2: 114.0}, 64.0: {1: 20.0, 2: 29.0}}
    lines = bandwidth.table(results, [1, 2]).splitlines()
    assert lines[0] == "| working set | 1 thread GB/s | 2 threads GB/s | speed-up 1→2 |"
    assert lines[2:] == ["| 1 MB | 60.0 | 114.0 | 1.90 |", "| 64 MB | 20.0 | 29.0 | 1.45 |"]
    one = bandwidth.table({4: {2: 50.0}}, [2]).splitlines()
    assert one[0] == "| working set | 2 threads GB/s |" and one[2] == "| 4 MB | 50.0 |"


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0,2"], "--threads must be positive"),
    (["--threads", "two"], "--threads must be comma-separated numbers"),
    (["--sizes", "-1"], "--sizes must be positive"),
    (["--seconds", "0"], "--seconds must be positive"),
])
def test_bad_arguments_are_refused_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit):
        bandwidth.parse_args(argv)
    assert message in capsys.readouterr().err


def test_main_prints_the_table_and_writes_the_json_whole(tmp_path, capsys):
    out = tmp_path / "bandwidth.json"
    bandwidth.main(["--threads", "2,1", "--sizes", "0.0625", "--seconds", "0.002",
                    "--repeats", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "caches:" in printed and "| 0.0625 MB |" in printed
    report = json.loads(out.read_text())
    assert report["threads"] == [1, 2] and set(report["gb_per_s"]["0.0625"]) == {"1", "2"}
    assert [p.name for p in tmp_path.iterdir()] == ["bandwidth.json"]     # no temporary left
