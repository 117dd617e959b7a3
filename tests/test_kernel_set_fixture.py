"""The suite's promise: each test really runs under the kernel set it is labelled with,
and a test marked ``kernel_free`` runs once, under the first set."""
import subprocess
import sys
from pathlib import Path

import pytest

import kernels

ROOT = Path(__file__).resolve().parents[1]


def test_the_labelled_kernel_set_is_the_active_one(kernel_set):
    assert kernels.active == kernel_set


@pytest.mark.kernel_free
def test_a_kernel_free_test_runs_under_the_first_set_only(kernel_set, request):
    assert kernel_set == request.config.getoption("--kernels").split(",")[0]


@pytest.mark.kernel_free       # one subprocess is enough
def test_the_marker_decides_how_often_a_test_runs():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-o", "addopts=--import-mode=importlib", "--kernels", "numpy,numba",
         f"{Path(__file__).relative_to(ROOT)}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    ids = [line.split("::", 1)[1] for line in result.stdout.splitlines() if "::" in line]
    assert [i for i in ids if i.startswith("test_the_labelled")] == [
        "test_the_labelled_kernel_set_is_the_active_one[numpy]",
        "test_the_labelled_kernel_set_is_the_active_one[numba]"]
    assert [i for i in ids if i.startswith("test_a_kernel_free")] == [
        "test_a_kernel_free_test_runs_under_the_first_set_only[numpy]"]
