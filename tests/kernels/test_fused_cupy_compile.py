"""The CUDA C of kernels/fused_cupy.py compiles, without a GPU: NVRTC (the compiler
CuPy calls) is a plain library, so every kernel source is compiled here to PTX
for the H100/H200's architecture with the options CuPy is given.

NVRTC comes with CUDA, or from the ``nvidia-cuda-nvrtc-cu12`` wheel (not in the
CI install: ``pip install nvidia-cuda-nvrtc-cu12`` where you want this run);
``TINYGRAD_CNN_NVRTC`` may name the library file.  Without it these tests skip.
What the compiled code computes is tests/gpu/test_gpu_fused.py's, on a GPU; the
arguments it is launched with, tests/cupy_api/test_fused_kernels.py's."""
import ctypes
import ctypes.util
import os
import re
from pathlib import Path

import numpy as np
import pytest

from kernels import fused_cupy

pytestmark = pytest.mark.kernel_free
ARCH = "-arch=compute_90"          # H100/H200 (sm_90); the GPU path's target


def find_nvrtc():
    """The NVRTC library (ctypes.CDLL), or None."""
    candidates = [os.environ.get("TINYGRAD_CNN_NVRTC")]
    try:
        import nvidia.cuda_nvrtc          # the pip wheel: a namespace package, no __file__
        candidates += [str(p) for folder in nvidia.cuda_nvrtc.__path__
                       for p in sorted(Path(folder, "lib").glob("libnvrtc.so*"))]
    except ImportError:
        pass
    candidates.append(ctypes.util.find_library("nvrtc"))
    for candidate in filter(None, candidates):
        try:
            return ctypes.CDLL(candidate)
        except OSError:
            continue
    return None


NVRTC = find_nvrtc()
needs_nvrtc = pytest.mark.skipif(NVRTC is None, reason="needs NVRTC (pip install "
                                 "nvidia-cuda-nvrtc-cu12, or TINYGRAD_CNN_NVRTC=path)")


def compile_to_ptx(code, options):
    """(PTX or None, NVRTC's log) for ``code`` compiled with ``options``."""
    program = ctypes.c_void_p()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(program), code.encode(), b"fused.cu",
                                    0, None, None) == 0
    try:
        encoded = [o.encode() for o in options]
        status = NVRTC.nvrtcCompileProgram(program, len(encoded),
                                           (ctypes.c_char_p * len(encoded))(*encoded))
        size = ctypes.c_size_t()
        NVRTC.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetProgramLog(program, log)
        if status != 0:
            return None, log.value.decode()
        NVRTC.nvrtcGetPTXSize(program, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetPTX(program, ptx)
        return ptx.value.decode(), log.value.decode()
    finally:
        NVRTC.nvrtcDestroyProgram(ctypes.byref(program))


@needs_nvrtc
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_kernel_compiles_with_the_options_cupy_gets(dtype):
    ptx, log = compile_to_ptx(fused_cupy.source(dtype), fused_cupy.OPTIONS + (ARCH,))
    assert ptx is not None, log
    entries = set(re.findall(r"\.entry (\w+)\(", ptx))
    assert entries == set(fused_cupy.FUNCTIONS)        # extern "C": unmangled names
    # --fmad=false: no a*b + c contracted into one rounding (the reference rounds twice);
    # but CUDA's tanh, whose library code uses fma on purpose (sigmoid_forward: to a few ulp)
    kernels = {re.search(r"\.entry (\w+)", part)[1]: part
               for part in re.split(r"(?=\.visible \.entry)", ptx)[1:]}
    assert [name for name, code in kernels.items() if re.search(r"\bfma\.", code)] == [
        "sigmoid_forward"]
    kind = {np.float32: "f32", np.float64: "f64"}[dtype]
    assert re.search(rf"\bmul\.rn\.{kind}\b", ptx)       # the arithmetic is in the dtype


@needs_nvrtc
def test_without_fmad_false_nvrtc_would_contract_and_the_check_would_see_it():
    ptx, log = compile_to_ptx(fused_cupy.source(np.float32), ("--std=c++11", ARCH))
    assert ptx is not None, log
    sgd = re.split(r"(?=\.visible \.entry)", ptx.split(".entry sgd_multi(")[1])[0]
    assert re.search(r"\bfma\.rn\.f32\b", sgd)


@needs_nvrtc
def test_a_compile_error_is_reported():
    ptx, log = compile_to_ptx(fused_cupy.source(np.float32) + "\nnot C at all;",
                              fused_cupy.OPTIONS + (ARCH,))
    assert ptx is None and "error" in log
