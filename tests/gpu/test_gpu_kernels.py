"""The numba.cuda kernels on a real GPU: every simulator case of
tests/kernels_cuda/cases.py, plus shapes large enough for many blocks, on
CuPy arrays against the NumPy reference on the host.  Needs CuPy and a GPU."""
import numpy as np
import pytest

import kernels
import tinygrad_cnn as tc
from tests.kernels_cuda import check_simulator as check
from tests.kernels_cuda.cases import AVGPOOL, BATCHNORM, CONV, DTYPES, MAXPOOL

# the fused CUDA C kernels (kernels/fused_cupy.py, tests/gpu/test_gpu_fused.py)
FUSED = kernels.FUSED_OVERLAYS["kernels.fused_cupy"]
# no GPU version: CuPy arrays take the reference (one GPU kernel per expression)
REFERENCE_ONLY = ("adam_update",) + tuple(k for k in kernels.KERNELS if k.startswith("winograd"))

# CuPy arrays go to the GPU kernels whatever the CPU set: run under the first kernel set only
# (tests/conftest.py).
pytestmark = [pytest.mark.kernel_free, pytest.mark.gpu,
              pytest.mark.skipif(not tc.cuda.is_available(), reason="needs CuPy and a GPU")]


class OnGpu:
    """``module``'s kernels called with CuPy copies of NumPy arguments; results
    come back as NumPy, so the simulator's checks apply unchanged."""

    def __init__(self, module):
        self.module = module

    def __getattr__(self, name):
        import cupy
        kernel = getattr(self.module, name)

        def call(*args, **kwargs):
            args = [cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
            out = kernel(*args, **kwargs)
            outputs = out if isinstance(out, tuple) else (out,)
            assert all(o is None or isinstance(o, cupy.ndarray) for o in outputs), \
                f"{name} returned host arrays for CuPy input"
            back = [None if o is None else cupy.asnumpy(o) for o in outputs]
            return tuple(back) if isinstance(out, tuple) else back[0]
        return call


@pytest.fixture(scope="module")
def gpu():
    if not kernels.numba_cuda_works():
        pytest.skip(f"the numba.cuda kernels cannot run here: {kernels.cuda_probe.why_not()}")
    from kernels import bn_cuda, conv_cuda, pool_cuda
    return {"conv": OnGpu(conv_cuda), "pool": OnGpu(pool_cuda), "bn": OnGpu(bn_cuda)}


BIG_CONV = ("conv_big", (8, 16, 28, 28), dict(kernel_size=(3, 3), stride=(1, 1),
                                              padding=(1, 1, 1, 1), dilation=(1, 1)))
BIG_MAX = ("max_big", (8, 16, 28, 28), "normal", dict(kernel_size=(3, 3), stride=(2, 2),
                                                      padding=(1, 1)))
BIG_AVG = ("avg_big", (8, 16, 28, 28), dict(kernel_size=(3, 3), stride=(2, 2),
                                            padding=(1, 1), count_include_pad=False))
BIG_BN = ("bn_big", (32, 16, 28, 28), 0.5)   # 25,088 values per channel: many per thread


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV + [BIG_CONV], ids=lambda c: c[0])
def test_conv(gpu, case, dtype):
    from kernels import conv_numpy
    _, shape, kw = case
    assert check.check_conv(shape, kw, dtype, gpu["conv"], conv_numpy) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MAXPOOL + [BIG_MAX], ids=lambda c: c[0])
def test_maxpool(gpu, case, dtype):
    from kernels import pool_numpy
    _, shape, kind, kw = case
    assert check.check_maxpool(shape, kind, kw, dtype, gpu["pool"], pool_numpy) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", AVGPOOL + [BIG_AVG], ids=lambda c: c[0])
def test_avgpool(gpu, case, dtype):
    from kernels import pool_numpy
    _, shape, kw = case
    assert check.check_avgpool(shape, kw, dtype, gpu["pool"], pool_numpy) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", BATCHNORM + [BIG_BN], ids=lambda c: c[0])
def test_batchnorm(gpu, case, dtype):
    from kernels import bn_numpy
    _, shape, offset = case
    assert check.check_batchnorm(shape, offset, dtype, gpu["bn"], bn_numpy) is None


def test_cupy_arrays_are_dispatched_to_the_gpu_kernels():
    import cupy
    expected = ({"kernels.conv_cuda", "kernels.pool_cuda"}
                if kernels.numba_cuda_works() else  # else the reference, on CuPy arrays
                {"kernels.conv_numpy", "kernels.pool_numpy"})
    assert kernels.fused_cupy.why_not() is None      # wherever CuPy runs, they must
    chosen = kernels.gpu_kernels()
    assert {chosen[name].__module__ for name in FUSED} == {"kernels.fused_cupy"}
    assert {chosen[name].__module__ for name in REFERENCE_ONLY} == {
        "kernels.elementwise_numpy", "kernels.winograd_numpy"}
    assert {f.__module__ for name, f in chosen.items()      # adaptive: the reference
            if not name.startswith("adaptive") and name not in REFERENCE_ONLY + FUSED} == expected
    x = cupy.arange(16, dtype=cupy.float32).reshape(1, 1, 4, 4)
    y, argmax = kernels.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))
    assert isinstance(y, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(y), [[[[5, 7], [13, 15]]]])
    np.testing.assert_array_equal(cupy.asnumpy(argmax), [[[[3, 3], [3, 3]]]])
