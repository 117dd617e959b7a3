"""The numba.cuda kernels (kernels/*_cuda.py) against the NumPy reference,
under Numba's CUDA simulator: the GPU kernels' logic, checked without a GPU.

One subprocess (the simulator must be on before numba.cuda is imported)
runs every case of cases.py; each case is then its own test here.  Skipped
when this Numba has no CUDA simulator.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.kernels_cuda.cases import case_ids
from tests.kernels_cuda.check_simulator import compare

# the CUDA kernels run under the simulator (a subprocess) or compile to PTX, whatever the CPU
# set: run under the first kernel set only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def simulator_results():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, str(HERE / "check_simulator.py")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    return report["results"]


@pytest.mark.parametrize("case", case_ids())
def test_cuda_kernel_matches_reference(simulator_results, case):
    assert case in simulator_results, f"the checker did not run {case}"
    assert simulator_results[case] is None, simulator_results[case]


def test_the_checker_runs_exactly_the_listed_cases(simulator_results):
    assert sorted(simulator_results) == sorted(case_ids())


# The comparison the checker relies on must be able to fail.
def test_compare_reports_a_wrong_value():
    a = np.arange(6.0).reshape(2, 3)
    b = a.copy()
    b[1, 2] += 1e-3
    assert compare("x", a, a.copy()) is None
    assert "1 of 6 values differ" in compare("x", a, b)
    assert "differ" in compare("x", a, a + 1e-9, exact=True)


def test_compare_reports_shape_and_dtype():
    a = np.zeros((2, 3))
    assert "expected" in compare("x", a, np.zeros((3, 2)))
    assert "expected" in compare("x", a.astype(np.float32), a)
    assert compare("x", np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), exact=True) is None
