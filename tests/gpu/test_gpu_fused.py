"""The fused CUDA C kernels (kernels/fused_cupy.py) on a real GPU, against the NumPy
reference on the host: float32 and float64, odd sizes, sizes beyond one grid
(the loops' grid stride), non-contiguous inputs, NaN/inf where the rules say
what happens to them, and the multi-tensor optimizer steps against the
per-parameter loop.  Elementwise results must be bit for bit the reference's
(``--fmad=false``, IEEE division and square root); per-channel sums agree to
float64 rounding.  Needs CuPy and a GPU; the same wrappers run on the CPU
through the strict fake (tests/cupy_api/test_fused_kernels.py)."""
import numpy as np
import pytest

import kernels
import tinygrad_cnn as tc
from kernels import bn_numpy, elementwise_numpy, fused_cupy

pytestmark = [pytest.mark.kernel_free, pytest.mark.gpu,
              pytest.mark.skipif(not tc.cuda.is_available(), reason="needs CuPy and a GPU")]
DTYPES = [np.float32, np.float64]
BEYOND_ONE_GRID = fused_cupy.MAX_BLOCKS * fused_cupy.THREADS + 12345


@pytest.fixture(scope="module")
def cupy():
    import cupy
    why = fused_cupy.why_not()
    assert why is None, why         # wherever CuPy runs, these kernels must
    return cupy


def host(a):
    import cupy
    assert isinstance(a, cupy.ndarray), type(a)
    return cupy.asnumpy(a)


def noncontiguous(cupy, a):
    """A GPU copy of ``a`` with the same values in a non-C-contiguous layout."""
    return cupy.asarray(np.ascontiguousarray(a.swapaxes(0, -1))).swapaxes(0, -1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 11), (2, 3, 33, 17), (BEYOND_ONE_GRID,)])
def test_relu_and_sigmoid_kernels_are_the_reference_bit_for_bit(cupy, dtype, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[:4] = [np.nan, -0.0, 0.0, np.inf] if x.size >= 4 else x.flat[:4]
    gy = rng.standard_normal(shape).astype(dtype)
    gy.flat[-1] = np.nan
    y = elementwise_numpy.relu_forward(x)
    s = (1 / (1 + np.exp(-x))).astype(dtype)
    layouts = [cupy.asarray] + ([lambda a: noncontiguous(cupy, a)] if len(shape) > 1 else [])
    for on_gpu in layouts:
        np.testing.assert_array_equal(host(fused_cupy.relu_forward(on_gpu(x))), y, strict=True)
        np.testing.assert_array_equal(host(fused_cupy.relu_backward(on_gpu(gy), on_gpu(y))),
                                      elementwise_numpy.relu_backward(gy, y), strict=True)
        np.testing.assert_array_equal(host(fused_cupy.sigmoid_backward(on_gpu(gy), on_gpu(s))),
                                      elementwise_numpy.sigmoid_backward(gy, s), strict=True)
        # CUDA's tanh is within 2 ulp: a few ulp of 1/2 tanh + 1/2, NaN and inf as NumPy's
        got = host(fused_cupy.sigmoid_forward(on_gpu(x)))
        expected = elementwise_numpy.sigmoid_forward(x)
        assert got.dtype == expected.dtype
        np.testing.assert_allclose(got, expected, rtol=0, atol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 7), (3, 5, 6, 7), (2, 3, 301, 301),
                                   (128, 64, 24, 24)])
def test_batchnorm_kernels_equal_the_reference(cupy, dtype, shape):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 3 + 100).astype(dtype)
    gamma, beta, scale = (rng.standard_normal(shape[1]).astype(dtype) for _ in range(3))
    gy = rng.standard_normal(shape).astype(dtype)
    rtol = 1e-5 if dtype == np.float32 else 1e-11
    got = fused_cupy.batchnorm_forward_train(noncontiguous(cupy, x), cupy.asarray(gamma),
                                             cupy.asarray(beta), 1e-5)
    expected = bn_numpy.batchnorm_forward_train(x, gamma, beta, 1e-5)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(host(g), e, rtol=rtol, atol=rtol)
    mean, inv_std = expected[1], expected[3]
    for s in (scale, None):
        got = fused_cupy.batchnorm_backward(noncontiguous(cupy, gy), noncontiguous(cupy, x),
                                            cupy.asarray(mean), cupy.asarray(inv_std),
                                            None if s is None else cupy.asarray(s))
        for g, e in zip(got, bn_numpy.batchnorm_backward(gy, x, mean, inv_std, s)):
            assert (g is None) == (e is None)
            if e is not None:       # sums of up to 10^5 terms: relative to their size
                np.testing.assert_allclose(host(g), e, rtol=rtol, atol=rtol * np.abs(e).max())


SHAPES = [(64, 3, 3, 3), (64,), (), (BEYOND_ONE_GRID,), (10, 17), (1,), (512, 257)]


def parameters(dtype, seed):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s)).astype(dtype) for s in SHAPES]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", [(0.1, 0.9, 0, 0, False), (0.05, 0.9, 0.3, 1e-2, False),
                                     (0.1, 0.9, 0, 1e-2, True), (0.1, 0, 0, 1e-3, False)])
def test_the_multi_tensor_sgd_step_is_the_loop_bit_for_bit(cupy, dtype, options):
    params = parameters(dtype, 0)
    on_gpu = [cupy.asarray(p) for p in params]
    buffers, gpu_buffers = [None] * len(params), [None] * len(params)
    for step in range(3):
        grads = parameters(dtype, 10 + step)
        buffers = elementwise_numpy.sgd_update_multi(params, grads, buffers, *options)
        gpu_buffers = fused_cupy.sgd_update_multi(on_gpu, [cupy.asarray(g) for g in grads],
                                                  gpu_buffers, *options)
        for got, expected in zip(on_gpu, params):
            np.testing.assert_array_equal(host(got), expected, strict=True)
        for got, expected in zip(gpu_buffers, buffers):
            assert (got is None) == (expected is None)
            if expected is not None:
                np.testing.assert_array_equal(host(got), expected, strict=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", [(1e-3, 0.9, 0.999, 1e-8, 0, False, False),
                                     (1e-2, 0.8, 0.99, 1e-6, 1e-2, True, False),
                                     (1e-2, 0.9, 0.999, 1e-8, 1e-2, False, True)])
def test_the_multi_tensor_adam_step_is_the_loop_bit_for_bit(cupy, dtype, options):
    params = parameters(dtype, 0)
    state = [[np.zeros_like(p) for p in params] for _ in range(3)]
    on_gpu = [cupy.asarray(p) for p in params]
    gpu_state = [[cupy.asarray(a) for a in s] for s in state]
    for step in range(1, 4):
        grads = parameters(dtype, 10 + step)
        steps = [step] * (len(params) - 1) + [step + 3]
        elementwise_numpy.adam_update_multi(params, grads, *state, steps, *options)
        fused_cupy.adam_update_multi(on_gpu, [cupy.asarray(g) for g in grads], *gpu_state,
                                     steps, *options)
        for got, expected in zip(on_gpu + sum(gpu_state, []), params + sum(state, [])):
            np.testing.assert_array_equal(host(got), expected, strict=True)


def test_kernels_dispatch_gpu_arrays_to_the_fused_kernels(cupy):
    x = cupy.zeros(3, dtype=cupy.float32)
    assert kernels.which("relu_backward", x) == "kernels.fused_cupy.relu_backward"
    assert kernels.which("sgd_update_multi", x) == "kernels.fused_cupy.sgd_update_multi"
