"""The batch-norm kernels: bn_numpy (the reference) against a float64 loop
computation of the statistics, and bn_numba against bn_numpy -- forward,
backward, and the running statistics the op derives from them -- for (N, C),
(N, C, L) and (N, C, H, W), float32 and float64.  tests/ops/test_batchnorm.py
checks the op itself (loops, gradcheck, torch) under both kernel sets."""
import numpy as np
import pytest

pytest.importorskip("numba")

import kernels  # noqa: E402
import tinygrad_cnn as tc  # noqa: E402
from kernels import bn_numba, bn_numpy  # noqa: E402
from tinygrad_cnn.backend import to_device  # noqa: E402
from tinygrad_cnn.ops.batchnorm import batch_norm  # noqa: E402

SHAPES = {"NC": (6, 3), "NC-batch2": (2, 5), "NCL": (4, 3, 7), "NCHW": (2, 3, 4, 5),
          "NCHW-1-channel": (3, 1, 3, 3), "NCHW-odd": (1, 4, 5, 3)}
DTYPES = [np.float32, np.float64]
KERNELS = {"numpy": bn_numpy, "numba": bn_numba}
FORWARD_NAMES = ["y", "mean", "var", "inv_std"]


def tolerance(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)


def random_inputs(shape, dtype, seed=0, offset=0.0):
    """x (offset + N(0, 2²)), γ, β, and an upstream gradient gy, all in ``dtype``."""
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = offset + 2 * rng.standard_normal(shape)
    gamma, beta = rng.uniform(0.5, 1.5, C), rng.uniform(-1, 1, C)
    gy = rng.standard_normal(shape)
    return tuple(a.astype(dtype) for a in (x, gamma, beta, gy))


def statistics_float64(x, eps):
    """Per-channel mean, biased variance and 1/√(var + ε) of x, in float64, channel by channel."""
    planes = [x[:, c].astype(np.float64).ravel() for c in range(x.shape[1])]
    mean = np.array([p.sum() / p.size for p in planes])
    var = np.array([((p - m) ** 2).sum() / p.size for p, m in zip(planes, mean)])
    return mean, var, 1 / np.sqrt(var + eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_forward_statistics_match_float64_loops(shape, name, dtype):
    x, gamma, beta, _ = random_inputs(shape, dtype)
    y, mean, var, inv_std = KERNELS[name].batchnorm_forward_train(x, gamma, beta, 1e-3)
    for a in (y, mean, var, inv_std):
        assert a.dtype == dtype
    assert y.shape == shape and mean.shape == var.shape == inv_std.shape == (shape[1],)
    expected = statistics_float64(x, 1e-3)
    for actual, want in zip((mean, var, inv_std), expected):
        np.testing.assert_allclose(actual, want, **tolerance(dtype))
    per_channel = (1, -1) + (1,) * (len(shape) - 2)
    want_x_hat = (x - expected[0].reshape(per_channel)) * expected[2].reshape(per_channel)
    np.testing.assert_allclose(y, gamma.reshape(per_channel) * want_x_hat
                               + beta.reshape(per_channel), **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_backward_computes_x_hat_again_from_x_and_the_statistics(shape, name, dtype):
    # the forward keeps no x̂: dγ = Σ gy·x̂ and dx, from x with the forward's μ and σ⁻¹,
    # against float64 loops over x̂ = (x - μ)σ⁻¹
    x, gamma, beta, gy = random_inputs(shape, dtype, seed=5, offset=4.0)
    _, mean, _, inv_std = KERNELS[name].batchnorm_forward_train(x, gamma, beta, 1e-3)
    gx, dgamma, dbeta = KERNELS[name].batchnorm_backward(gy, x, mean, inv_std, gamma * inv_std)
    per_channel = (1, -1) + (1,) * (len(shape) - 2)
    x64, gy64 = x.astype(np.float64), gy.astype(np.float64)
    x_hat = (x64 - mean.astype(np.float64).reshape(per_channel)) \
        * inv_std.astype(np.float64).reshape(per_channel)
    axes = (0,) + tuple(range(2, len(shape)))
    m = x.size // shape[1]
    want_dgamma, want_dbeta = (gy64 * x_hat).sum(axis=axes), gy64.sum(axis=axes)
    want_gx = (gamma * inv_std).astype(np.float64).reshape(per_channel) * (
        gy64 - want_dbeta.reshape(per_channel) / m - x_hat * want_dgamma.reshape(per_channel) / m)
    for actual, want in ((dgamma, want_dgamma), (dbeta, want_dbeta), (gx, want_gx)):
        assert actual.dtype == dtype
        np.testing.assert_allclose(actual, want, rtol=tolerance(dtype)["rtol"],
                                   atol=10 * tolerance(dtype)["atol"] * np.abs(want).max())


@pytest.mark.parametrize("name", KERNELS)
def test_float32_statistics_stay_accurate_on_many_values_far_from_zero(name):
    # 2·16·32·32 = 32768 values per channel around 1000 with σ = 2: a float32 running
    # sum would lose digits, and E[x²] - μ² would cancel almost every one of them.
    x, gamma, beta, _ = random_inputs((16, 2, 32, 32), np.float32, offset=1000.0)
    _, mean, var, _ = KERNELS[name].batchnorm_forward_train(x, gamma, beta, 1e-5)
    want_mean, want_var, _ = statistics_float64(x, 1e-5)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-7)
    np.testing.assert_allclose(var, want_var, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_numba_forward_equals_reference(shape, dtype):
    x, gamma, beta, _ = random_inputs(shape, dtype, seed=1, offset=3.0)
    numba_out = bn_numba.batchnorm_forward_train(x, gamma, beta, 1e-5)
    numpy_out = bn_numpy.batchnorm_forward_train(x, gamma, beta, 1e-5)
    for name, actual, expected in zip(FORWARD_NAMES, numba_out, numpy_out):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
        np.testing.assert_allclose(actual, expected, **tolerance(dtype), err_msg=name)


@pytest.mark.parametrize("want_gx", [True, False], ids=["with-dx", "without-dx"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_numba_backward_equals_reference(shape, dtype, want_gx):
    x, gamma, beta, gy = random_inputs(shape, dtype, seed=2)
    _, mean, _, inv_std = bn_numpy.batchnorm_forward_train(x, gamma, beta, 1e-5)
    scale = gamma * inv_std if want_gx else None
    numba_out = bn_numba.batchnorm_backward(gy, x, mean, inv_std, scale)
    numpy_out = bn_numpy.batchnorm_backward(gy, x, mean, inv_std, scale)
    for name, actual, expected in zip(["gx", "dgamma", "dbeta"], numba_out, numpy_out):
        if expected is None:
            assert actual is None, name
            continue
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
        np.testing.assert_allclose(actual, expected, **tolerance(dtype), err_msg=name)


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "transposed"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_numba_backward_over_gy_equals_writing_a_new_array(shape, dtype, contiguous):
    # overwrite_gy: dx goes over a C-contiguous gy (after the sums have read it),
    # the same bits as into a new array; over any other layout into a new array,
    # gy untouched.  The reference never takes the offer.
    x, gamma, beta, gy = random_inputs(shape, dtype, seed=2)
    if not contiguous:
        gy = np.asfortranarray(gy)
    _, mean, _, inv_std = bn_numpy.batchnorm_forward_train(x, gamma, beta, 1e-5)
    given = gy.copy()
    expected = bn_numba.batchnorm_backward(given, x, mean, inv_std, gamma * inv_std)
    actual = bn_numba.batchnorm_backward(gy, x, mean, inv_std, gamma * inv_std,
                                         overwrite_gy=True)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)
    if gy.flags.c_contiguous:
        assert actual[0] is gy
    else:
        assert actual[0] is not gy
        np.testing.assert_array_equal(gy, given)
    reference = bn_numpy.batchnorm_backward(given, x, mean, inv_std, gamma * inv_std,
                                            overwrite_gy=True)
    assert reference[0] is not given
    np.testing.assert_allclose(reference[0], expected[0], **tolerance(dtype))


def test_numba_backward_reads_a_broadcast_gradient():
    # y.sum().backward() hands over a read-only, zero-stride view of ones.
    x, gamma, beta, _ = random_inputs((4, 3, 2, 5), np.float64, seed=3)
    _, mean, _, inv_std = bn_numpy.batchnorm_forward_train(x, gamma, beta, 1e-5)
    gy = np.broadcast_to(np.float64(1.5), x.shape)
    for actual, expected in zip(bn_numba.batchnorm_backward(gy, x, mean, inv_std, gamma * inv_std),
                                bn_numpy.batchnorm_backward(gy, x, mean, inv_std, gamma * inv_std)):
        np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [SHAPES["NC"], SHAPES["NCL"], SHAPES["NCHW"]],
                         ids=["NC", "NCL", "NCHW"])
def test_op_gives_the_same_results_under_both_kernel_sets(shape, dtype):
    """batch_norm through each kernel set: output, all three gradients and the
    running statistics after three steps."""
    results = {}
    for kernel_set in ("numpy", "numba"):
        kernels.set_kernels(kernel_set)     # the autouse fixture restores the set afterwards
        running_mean, running_var = tc.zeros(shape[1], dtype=dtype), tc.ones(shape[1], dtype=dtype)
        outputs = []
        for step in range(3):
            x, gamma, beta, gy = (tc.tensor(a, requires_grad=True) for a in
                                  random_inputs(shape, dtype, seed=10 + step, offset=step))
            y = batch_norm(x, running_mean, running_var, gamma, beta, training=True,
                           momentum=0.3)
            y.backward(gy.data)
            outputs += [y.data, x.grad.data, gamma.grad.data, beta.grad.data]
        results[kernel_set] = outputs + [running_mean.data, running_var.data]
    for actual, expected in zip(results["numba"], results["numpy"]):
        assert actual.dtype == dtype
        np.testing.assert_allclose(actual, expected, **tolerance(dtype))


def test_other_dtypes_use_the_reference_without_compiling(monkeypatch):
    def no_numba():
        raise AssertionError("the compiled loops were asked for")
    monkeypatch.setattr(bn_numba, "_compiled", no_numba)
    x, gamma, beta, gy = random_inputs((4, 3, 2, 2), np.float16)
    out = bn_numba.batchnorm_forward_train(x, gamma, beta, 1e-5)
    for actual, expected in zip(out, bn_numpy.batchnorm_forward_train(x, gamma, beta, 1e-5)):
        assert actual.dtype == np.float16
        np.testing.assert_array_equal(actual, expected)
    gx, dgamma, dbeta = bn_numba.batchnorm_backward(gy, x, out[1], out[3], gamma * out[3])
    assert gx.dtype == dgamma.dtype == dbeta.dtype == np.float16


def test_device_arrays_stay_on_their_device(device):
    x, gamma, beta, gy = (to_device(a, device) for a in random_inputs((4, 3, 5), np.float64))
    out = bn_numba.batchnorm_forward_train(x, gamma, beta, 1e-5)
    grads = bn_numba.batchnorm_backward(gy, x, out[1], out[3], gamma * out[3])
    for array in out + grads:
        assert type(array) is type(x)
    np.testing.assert_allclose(to_device(out[0], "cpu"),
                               bn_numpy.batchnorm_forward_train(
                                   *(to_device(a, "cpu") for a in (x, gamma, beta)), 1e-5)[0],
                               rtol=1e-12)


@pytest.fixture
def split_small(monkeypatch):
    """Every pass cut into slices and every sum into blocks, even on these small
    arrays (40 images: more than bn_numba.BLOCKS, so blocks hold one or two)."""
    monkeypatch.setattr(kernels.threads, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(kernels.threads, "PARALLEL_MIN_BYTES", 0)
    previous = kernels.threads.get_num_threads()
    yield kernels.threads.set_num_threads
    kernels.threads.set_num_threads(previous)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(40, 3), (40, 3, 5, 4)], ids=["NC", "NCHW"])
def test_blocks_and_slices_give_the_reference_on_any_number_of_threads(shape, dtype,
                                                                       split_small):
    x, gamma, beta, gy = random_inputs(shape, dtype, seed=4, offset=5.0)
    expected_forward = bn_numpy.batchnorm_forward_train(x, gamma, beta, 1e-5)
    expected_backward = bn_numpy.batchnorm_backward(gy, x, expected_forward[1],
                                                    expected_forward[3],
                                                    gamma * expected_forward[3])
    results = {}
    for threads in (1, 2, 3):
        split_small(threads)
        forward = bn_numba.batchnorm_forward_train(x, gamma, beta, 1e-5)
        statistics = (forward[1], forward[3])
        backward = bn_numba.batchnorm_backward(gy, x, *statistics, gamma * forward[3])
        over_gy = bn_numba.batchnorm_backward(gy.copy(), x, *statistics, gamma * forward[3],
                                              overwrite_gy=True)
        for actual, expected in zip(forward + backward, expected_forward + expected_backward):
            np.testing.assert_allclose(actual, expected, **tolerance(dtype))
        for actual, expected in zip(over_gy, backward):
            np.testing.assert_array_equal(actual, expected)
        results[threads] = forward + backward
    # the blocks depend on the shape only: the same bits whoever summed them
    for threads in (2, 3):
        for actual, expected in zip(results[threads], results[1]):
            np.testing.assert_array_equal(actual, expected)


def test_small_batches_run_on_the_calling_thread(monkeypatch):
    # below threads.STREAM_MIN_BYTES a pass is one job, run here: no hand-over to the pool
    jobs = []
    monkeypatch.setattr(kernels.threads, "run_all", lambda js: jobs.append(len(js)) or
                        [job() for job in js])
    previous = kernels.threads.get_num_threads()
    kernels.threads.set_num_threads(2)
    try:
        x, gamma, beta, gy = random_inputs((256, 120), np.float32)
        forward = bn_numba.batchnorm_forward_train(x, gamma, beta, 1e-5)
        bn_numba.batchnorm_backward(gy, x, forward[1], forward[3], gamma * forward[3])
        assert jobs == [1, 1, 1, 1]
        jobs.clear()
        monkeypatch.setattr(kernels.threads, "STREAM_MIN_BYTES", 0)
        monkeypatch.setattr(kernels.threads, "PARALLEL_MIN_BYTES", 0)
        bn_numba.batchnorm_forward_train(x, gamma, beta, 1e-5)
        assert jobs == [4, 4]           # threads.batch_slices: two slices per thread
    finally:
        kernels.threads.set_num_threads(previous)


# ---------------------------------------------------------------- inference
def eval_inputs(shape, dtype, seed=5):
    """x and a per-channel scale and shift, as BatchNormEval folds them."""
    rng = np.random.default_rng(seed)
    x = 3 + 2 * rng.standard_normal(shape)
    scale, shift = rng.uniform(0.2, 2.0, shape[1]), rng.uniform(-3, 3, shape[1])
    return tuple(a.astype(dtype) for a in (x, scale, shift))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_eval_forward_matches_loops(shape, name, dtype):
    x, scale, shift = eval_inputs(shape, dtype)
    y = KERNELS[name].batchnorm_forward_eval(x, scale, shift)
    assert y.dtype == dtype and y.shape == shape
    want = np.empty(shape, np.float64)
    for n in range(shape[0]):
        for c in range(shape[1]):
            want[n, c] = x[n, c].astype(np.float64) * float(scale[c]) + float(shift[c])
    np.testing.assert_allclose(y, want, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_eval_forward_reads_a_strided_input_and_splits_over_threads(dtype, split_small):
    x, scale, shift = eval_inputs((40, 6, 5, 4), dtype)
    x = x[:, ::2]                                    # every other channel: not contiguous
    scale, shift = scale[::2], shift[::2]
    expected = bn_numpy.batchnorm_forward_eval(x, scale, shift)
    for threads in (1, 2, 3):
        split_small(threads)
        np.testing.assert_allclose(bn_numba.batchnorm_forward_eval(x, scale, shift), expected,
                                   **tolerance(dtype))
