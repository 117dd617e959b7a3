"""Can the ``numba.cuda`` kernels run here?  Ask by running one.

Looking for the pieces (a GPU, NVIDIA's NVVM compiler library) is not enough:
on a machine with both, numba-cuda itself may fail to import (numba-cuda
0.30.4 under NumPy 2.5 raises ``AttributeError: module 'numpy' has no
attribute 'row_stack'``), the driver may refuse the compiled code, or CuPy
and Numba may disagree about the arrays they share.  So the probe compiles a
tiny kernel, launches it once on an array of the kind the engine will hand
the kernels (a CuPy array; a NumPy one under Numba's CUDA simulator), and
checks what it wrote.  Any exception, or a wrong result, is the answer "no",
with the reason in words.  The verdict is taken once per process.
"""
import importlib
import warnings

import numpy as np

from . import arrays

PROBE_SIZE = 40             # more than one block of 32 threads: the grid arithmetic is checked


def _run_probe():
    """Compile and launch the probe kernel; raise on any failure."""
    # importlib honours a None in sys.modules: how the tests make the import fail
    probe_kernel = importlib.import_module("kernels.cuda_probe_kernel")
    config = importlib.import_module("numba.core.config")
    on_gpu = arrays.cupy is not None and not config.ENABLE_CUDASIM
    xp = arrays.cupy if on_gpu else np
    x = xp.arange(PROBE_SIZE, dtype=xp.float32)
    with warnings.catch_warnings():     # a 2-block grid is small on purpose
        warnings.filterwarnings("ignore", message=".*under-utilization")
        probe_kernel.add_one[(PROBE_SIZE + 31) // 32, 32](x)
    got = arrays.cupy.asnumpy(x) if on_gpu else x
    expected = np.arange(PROBE_SIZE, dtype=np.float32) + 1
    if not np.array_equal(got, expected):
        raise RuntimeError(f"the probe kernel ran but computed {got[:4]}..., "
                           f"expected {expected[:4]}...")


_verdict = ()               # () until probed; then None (works) or the reason it does not


def why_not():
    """None when a numba.cuda kernel compiles, launches and computes the right
    result here; else why not, as ``"<ExceptionType>: <message>"``."""
    global _verdict
    if _verdict == ():
        try:
            _run_probe()
            _verdict = None
        except Exception as exc:    # ImportError, NVVM missing, no driver, launch failure...
            _verdict = " ".join(f"{type(exc).__name__}: {exc}".split())   # one line
    return _verdict


def forget():
    """Probe again at the next ``why_not()`` (for tests)."""
    global _verdict
    _verdict = ()
