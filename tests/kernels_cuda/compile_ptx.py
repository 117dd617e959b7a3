"""Compile every CUDA kernel to PTX, as Numba would for a real GPU, without one.

    python tests/kernels_cuda/compile_ptx.py

The simulator runs the kernels as Python, so it cannot see what only Numba's
CUDA compiler checks: types (a variable that is float32 on one path and
float64 on another), the builtins and math functions the CUDA target
supports, shared arrays, device functions returning tuples.  This script
calls every kernel wrapper on the cases of ``cases.py`` with NumPy arrays,
records each launch instead of running it, and compiles each kernel for the
argument types it was launched with (``numba.typeof``: a contiguous CuPy
array of the same dtype and rank types alike) with ``cuda.compile_ptx``.

Needs NVIDIA's NVVM library (the CUDA toolkit, or the ``nvidia-cuda-nvcc-cu12``
wheel with CUDA_HOME pointing at its ``nvidia/cuda_nvcc`` folder); prints
``{"skip": reason}`` without it, else ``{"results": {kernel and types: null or error}}``.
"""
import json
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.kernels_cuda import check_simulator as check  # noqa: E402
from tests.kernels_cuda.cases import AVGPOOL, BATCHNORM, CONV, DTYPES, MAXPOOL  # noqa: E402

COMPUTE_CAPABILITY = (8, 0)     # any the NVVM supports: the types do not depend on it


def record_launches():
    """Call every wrapper on every case; return {(kernel, argument types)} launched."""
    import numba
    from kernels import bn_cuda, bn_numpy, conv_cuda, conv_numpy, pool_cuda, pool_numpy
    launched = {}

    def record(kernel, _size, *args):
        types = tuple(numba.typeof(a) for a in args)
        launched[(kernel.py_func.__name__, types)] = (kernel, types)
    for module in (conv_cuda, pool_cuda, bn_cuda):
        module.launch = record
    bn_cuda.launch_blocks = record
    # The checks compare the (unwritten) outputs with the reference; only the launches matter.
    for dtype in DTYPES:
        for _, shape, kw in CONV:
            check.check_conv(shape, kw, dtype, conv_cuda, conv_numpy)
        for _, shape, kind, kw in MAXPOOL:
            check.check_maxpool(shape, kind, kw, dtype, pool_cuda, pool_numpy)
        for _, shape, kw in AVGPOOL:
            check.check_avgpool(shape, kw, dtype, pool_cuda, pool_numpy)
        for _, shape, offset in BATCHNORM:
            check.check_batchnorm(shape, offset, dtype, bn_cuda, bn_numpy)
    return launched.values()


def main():
    try:
        from numba import config, cuda
        from numba.cuda.cudadrv import nvvm
        if config.ENABLE_CUDASIM:
            raise RuntimeError("the CUDA simulator is on (NUMBA_ENABLE_CUDASIM)")
        if not nvvm.is_available():
            raise RuntimeError("NVVM (libnvvm) is not found")
    except Exception as exc:
        print(json.dumps({"skip": f"cannot compile CUDA kernels here: {exc}"}))
        return
    np.seterr(all="ignore")     # the recorded launches leave the outputs unwritten
    # A kernel calling a device function compiles that for the current GPU's
    # compute capability; with no GPU, Numba is told which one to assume.
    from numba.cuda import dispatcher
    dispatcher.get_current_device = lambda: SimpleNamespace(
        compute_capability=COMPUTE_CAPABILITY)
    results = {}
    for kernel, types in record_launches():
        name = f"{kernel.py_func.__name__}({', '.join(map(str, types))})"
        try:
            cuda.compile_ptx(kernel.py_func, types, cc=COMPUTE_CAPABILITY)
            results[name] = None
        except Exception:
            results[name] = traceback.format_exc(limit=-2)[-1500:]
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
