"""kernels/cuda_probe.py: whether the numba.cuda kernels are used is decided by
launching one small kernel, and any failure falls back to the NumPy references
with one warning that carries the reason (issue 12: numba-cuda 0.30.4 failed
to import under NumPy 2.5 while the old NVVM check still said yes)."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import kernels
from kernels import cuda_probe

# the probe is about the GPU, not the CPU kernel set: run under the first set only
pytestmark = pytest.mark.kernel_free

ROOT = Path(__file__).resolve().parents[2]
ROW_STACK = "module 'numpy' has no attribute 'row_stack'"


@pytest.fixture
def fresh(monkeypatch):
    """The probe and the GPU kernel choice taken afresh, and restored after."""
    cuda_probe.forget()
    monkeypatch.setattr(kernels, "_gpu_kernels", None)
    yield monkeypatch
    cuda_probe.forget()


def failing_probe(exc):
    def run():
        raise exc
    return run


def test_a_probe_that_raises_gives_its_exception_as_the_reason(fresh):
    fresh.setattr(cuda_probe, "_run_probe", failing_probe(AttributeError(ROW_STACK)))
    assert cuda_probe.why_not() == f"AttributeError: {ROW_STACK}"
    assert not kernels.numba_cuda_works()


def test_a_failing_probe_sends_gpu_arrays_to_the_reference_with_one_warning(fresh):
    fresh.setattr(cuda_probe, "_run_probe", failing_probe(AttributeError(ROW_STACK)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = kernels.gpu_kernels()
        kernels.gpu_kernels()                       # chosen once: no second warning
    assert [str(w.message) for w in caught if "numba.cuda" in str(w.message)] == [
        f"the numba.cuda kernels cannot run here (AttributeError: {ROW_STACK}); convolution "
        "and pooling run the NumPy reference kernels on the GPU instead, which is slower"]
    assert {f.__module__ for f in chosen.values()} <= {
        "kernels.conv_numpy", "kernels.winograd_numpy", "kernels.conv_direct_numpy",
        "kernels.pool_numpy", "kernels.bn_numpy", "kernels.elementwise_numpy",
        "kernels.shares_numpy"}


def test_a_numba_cuda_that_cannot_be_imported_is_a_failed_probe(fresh):
    # what numba-cuda 0.30.4 does under NumPy 2.5; None in sys.modules makes the import fail
    import numba
    fresh.setitem(sys.modules, "numba.cuda", None)
    fresh.delattr(numba, "cuda", raising=False)     # else `from numba import cuda` finds it
    fresh.delitem(sys.modules, "kernels.cuda_probe_kernel", raising=False)
    reason = cuda_probe.why_not()
    assert reason.startswith("ModuleNotFoundError") and "numba.cuda" in reason


def test_a_probe_kernel_that_computes_wrong_is_a_failed_probe(fresh):
    import kernels.cuda_probe_kernel as probe_kernel

    class Broken:
        def __getitem__(self, launch_config):
            return lambda x: None                   # "launches", writes nothing
    fresh.setattr(probe_kernel, "add_one", Broken())
    assert cuda_probe.why_not().startswith("RuntimeError: the probe kernel ran but computed")


def test_the_verdict_is_taken_once(fresh):
    runs = []
    fresh.setattr(cuda_probe, "_run_probe", lambda: runs.append(1))
    assert cuda_probe.why_not() is None and cuda_probe.why_not() is None
    assert runs == [1]


def test_on_this_machine_without_a_gpu_the_real_probe_fails_with_a_reason(fresh):
    pytest.importorskip("numba.cuda")
    from numba import config, cuda
    if config.ENABLE_CUDASIM or cuda.is_available():
        pytest.skip("a GPU (or the simulator) is here: the probe may pass")
    reason = cuda_probe.why_not()
    assert reason and ":" in reason


SIMULATED = """
import json, warnings
warnings.simplefilter("error")                      # the success path warns nothing
import kernels
chosen = kernels.gpu_kernels()
print(json.dumps({"why_not": kernels.cuda_probe.why_not(),
                  "im2col": chosen["im2col"].__module__}))
"""


def test_the_probe_passes_under_numbas_cuda_simulator():
    """The success path: under the simulator the probe kernel really compiles
    (as Python), launches and computes, and the CUDA kernels are chosen."""
    pytest.importorskip("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", SIMULATED], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "why_not": None, "im2col": "kernels.conv_cuda"}
