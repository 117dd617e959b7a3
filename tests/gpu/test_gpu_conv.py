"""The GPU convolution on a real GPU (issue 12): whole-batch columns, the budget
from free GPU memory, and TF32 as PyTorch's flags say.  Needs CuPy and a GPU;
the same logic is checked on the CPU through the strict fake CuPy
(tests/cupy_api/test_gpu_conv.py)."""
import numpy as np
import pytest

import tinygrad_cnn as tc
from tinygrad_cnn import backends, cuda
from tinygrad_cnn.ops import conv as conv_module
from tinygrad_cnn.ops.conv import conv2d

pytestmark = [pytest.mark.kernel_free, pytest.mark.gpu,
              pytest.mark.skipif(not tc.cuda.is_available(), reason="needs CuPy and a GPU")]


@pytest.fixture
def flags():
    previous = backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32
    yield backends
    backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = previous


def has_tf32():
    import cupy
    return int(cupy.cuda.Device().compute_capability) >= 80


def relative_error(ours, exact):
    return float(np.abs(ours - exact).max() / np.abs(exact).max())


def conv_inputs():
    rng = np.random.default_rng(0)
    return rng.standard_normal((8, 64, 16, 16)), rng.standard_normal((64, 64, 3, 3))


def gpu_conv(x, w):
    y = conv2d(tc.Tensor(x.astype(np.float32)).to("cuda"),
               tc.Tensor(w.astype(np.float32)).to("cuda"), padding=1)
    return y.to("cpu").numpy().astype(np.float64)


def test_a_resnet_sized_convolution_is_one_chunk_on_the_gpu():
    x = tc.Tensor(np.zeros((128, 64, 24, 24), np.float32)).to("cuda").requires_grad_()
    w = tc.Tensor(np.zeros((64, 64, 3, 3), np.float32)).to("cuda").requires_grad_()
    y = conv2d(x, w, padding=1)
    # 170 MB of columns: 11 chunks under the CPU's 16 MB budget, one here
    assert y.grad_fn.name == "Conv2d[im2col]" and len(y.grad_fn.chunks) == 1
    assert cuda._conv_column_budgets[0] >= 170 * 2**20


def test_conv_tf32_on_is_tf32s_precision_off_is_float32s(flags):
    if not has_tf32():
        pytest.skip("TF32 needs compute capability 8.0 or later")
    x, w = conv_inputs()
    exact = conv2d(tc.Tensor(x), tc.Tensor(w), padding=1).numpy()     # float64, CPU
    flags.cudnn.allow_tf32 = True
    tf32 = relative_error(gpu_conv(x, w), exact)
    flags.cudnn.allow_tf32 = False
    fp32 = relative_error(gpu_conv(x, w), exact)
    assert 1e-4 < tf32 < 1e-2, tf32           # 10-bit mantissas: ~1e-3
    assert fp32 < 1e-5, fp32                  # float32: ~1e-6


def test_matmul_tf32_flag_and_the_state_is_put_back(flags):
    if not has_tf32():
        pytest.skip("TF32 needs compute capability 8.0 or later")
    import cupy
    from cupy._core import _routines_linalg as linalg
    before = (cupy.cuda.cublas.getMathMode(cupy.cuda.device.get_cublas_handle()),
              linalg.get_compute_type(np.float32))
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((512, 1024)), rng.standard_normal((1024, 512))
    errors = {}
    for allowed in (True, False):
        flags.cuda.matmul.allow_tf32 = allowed
        y = tc.matmul(tc.Tensor(a.astype(np.float32)).to("cuda"),
                      tc.Tensor(b.astype(np.float32)).to("cuda"))
        errors[allowed] = relative_error(y.to("cpu").numpy().astype(np.float64), a @ b)
    assert 1e-4 < errors[True] < 1e-2 and errors[False] < 1e-5, errors
    after = (cupy.cuda.cublas.getMathMode(cupy.cuda.device.get_cublas_handle()),
             linalg.get_compute_type(np.float32))
    assert after == before


def test_auto_runs_im2col_on_the_gpu_where_the_cpu_runs_winograd():
    x, w = conv_inputs()
    assert conv_module.algorithm == "auto"
    cpu = conv2d(tc.Tensor(x, requires_grad=True), tc.Tensor(w), padding=1)
    assert cpu.grad_fn.name == "Conv2d[winograd4x4]"        # 16x16: 4x4 tiles
    gpu = conv2d(tc.Tensor(x.astype(np.float32)).to("cuda").requires_grad_(),
                 tc.Tensor(w.astype(np.float32)).to("cuda"), padding=1)
    assert gpu.grad_fn.name == "Conv2d[im2col]"
