"""Every CUDA kernel compiles to PTX for the argument types the wrappers
launch it with: what Numba's compiler checks and the simulator cannot
(types, supported builtins).  Runs where NVIDIA's NVVM library is found
(a CUDA toolkit, or the nvidia-cuda-nvcc-cu12 wheel with CUDA_HOME set to its
nvidia/cuda_nvcc folder); skipped elsewhere.  See compile_ptx.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# the CUDA kernels run under the simulator (a subprocess) or compile to PTX, whatever the CPU
# set: run under the first kernel set only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free

HERE = Path(__file__).resolve().parent
KERNELS = {"_im2col_kernel", "_col2im_kernel", "_maxpool_forward_kernel",
           "_maxpool_backward_kernel", "_avgpool_forward_kernel", "_avgpool_backward_kernel",
           "_moments_kernel", "_normalise_kernel", "_grad_sums_kernel", "_input_grad_kernel"}


def test_cuda_kernels_compile_to_ptx():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, str(HERE / "compile_ptx.py")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    results = report["results"]
    failed = {name: error for name, error in results.items() if error is not None}
    assert not failed, "\n\n".join(f"{name}:\n{error}" for name, error in failed.items())
    for dtype in ("float32", "float64"):     # every kernel, for arrays of both dtypes
        first_argument = f"array({dtype}"
        assert {name.split("(")[0] for name in results
                if name.split("(", 1)[1].startswith(first_argument)} == KERNELS, dtype
