"""batch_norm (fused BatchNorm / BatchNormEval) and its teaching twin batch_norm_simple:
forward against explicit loops, running statistics against their recurrence,
float64 gradchecks, agreement with each other and with torch.nn.functional."""
import math

import numpy as np
import pytest

import tinygrad_cnn as tc
from tinygrad_cnn.backend import to_device
from tinygrad_cnn.ops.batchnorm import batch_norm, batch_norm_simple
from tests.inputs import distinct

# (N, C), (N, C, L) and (N, C, H, W), each with batch size 2 and 4
GEOMETRIES = {
    "1d-NC-batch2": (2, 3),
    "1d-NC-batch4": (4, 3),
    "1d-NCL-batch2": (2, 3, 4),
    "1d-NCL-batch4": (4, 2, 3),
    "2d-batch2": (2, 3, 3, 2),
    "2d-batch4": (4, 2, 2, 3),
}
EPSILONS = [1e-5, 1e-3, 0.5]
geometries = pytest.mark.parametrize("shape", GEOMETRIES.values(), ids=GEOMETRIES.keys())
affine_or_not = pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
train_or_eval = pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])


# ---------------------------------------------------------------- references
def channel_values(x, c):
    """Every x[n, c, ...] of channel c, one at a time."""
    return [x[index] for index in np.ndindex(*x.shape) if index[1] == c]


def channel_stats_loops(x):
    """Per-channel mean and biased variance, summed by hand; and m, the values per channel."""
    means, variances = [], []
    for c in range(x.shape[1]):
        values = channel_values(x, c)
        mean = sum(values) / len(values)
        means.append(mean)
        variances.append(sum((v - mean) ** 2 for v in values) / len(values))
    return np.array(means), np.array(variances), len(values)


def batch_norm_loops(x, mean, var, gamma, beta, eps):
    """y = γ (x - μ)/√(σ² + ε) + β, one element at a time."""
    y = np.empty_like(x)
    for index in np.ndindex(*x.shape):
        c = index[1]
        y[index] = gamma[c] * (x[index] - mean[c]) / math.sqrt(var[c] + eps) + beta[c]
    return y


# ---------------------------------------------------------------- inputs
def tensor(array, device="cpu", requires_grad=False):
    return tc.tensor(array, device=device, requires_grad=requires_grad)


def affine_params(C, affine, device="cpu", requires_grad=False, seed=0):
    """(weight, bias) Tensors — γ away from 0 so it matters — or (None, None)."""
    if not affine:
        return None, None
    return (tensor(distinct(C, seed=seed, low=0.5, high=1.5), device, requires_grad),
            tensor(distinct(C, seed=seed + 1, low=-1, high=1), device, requires_grad))


def running_stats(C, device="cpu", seed=0):
    """Non-trivial running buffers: mean in [-1, 1], variance in [0.5, 2]."""
    return (tensor(distinct(C, seed=seed, low=-1, high=1), device),
            tensor(distinct(C, seed=seed + 1, low=0.5, high=2), device))


def cpu(t):
    return to_device(t.data, "cpu")


# ---------------------------------------------------------------- forward
@geometries
@affine_or_not
@pytest.mark.parametrize("eps", EPSILONS)
def test_training_forward_matches_loops(shape, affine, eps, device):
    x = distinct(*shape, seed=3)
    weight, bias = affine_params(shape[1], affine, device)
    y = batch_norm(tensor(x, device), None, None, weight, bias, training=True, eps=eps)
    mean, var, _ = channel_stats_loops(x)
    gamma = cpu(weight) if affine else np.ones(shape[1])
    beta = cpu(bias) if affine else np.zeros(shape[1])
    np.testing.assert_allclose(cpu(y), batch_norm_loops(x, mean, var, gamma, beta, eps),
                               rtol=1e-12, atol=1e-12)


@geometries
@affine_or_not
@pytest.mark.parametrize("eps", EPSILONS)
def test_eval_forward_matches_loops(shape, affine, eps, device):
    x = distinct(*shape, seed=4)
    weight, bias = affine_params(shape[1], affine, device)
    rm, rv = running_stats(shape[1], device)
    y = batch_norm(tensor(x, device), rm, rv, weight, bias, training=False, eps=eps)
    gamma = cpu(weight) if affine else np.ones(shape[1])
    beta = cpu(bias) if affine else np.zeros(shape[1])
    np.testing.assert_allclose(cpu(y), batch_norm_loops(x, cpu(rm), cpu(rv), gamma, beta, eps),
                               rtol=1e-12, atol=1e-12)


def test_eval_accepts_one_value_per_channel():
    # Only training needs a batch to take statistics over.
    rm, rv = running_stats(3)
    x = distinct(1, 3, seed=5)
    y = batch_norm(tensor(x), rm, rv, training=False)
    expected = batch_norm_loops(x, cpu(rm), cpu(rv), np.ones(3), np.zeros(3), 1e-5)
    np.testing.assert_allclose(cpu(y), expected, rtol=1e-12)


@pytest.mark.parametrize("which", ["weight", "bias"])
def test_weight_or_bias_alone(which):
    x = distinct(4, 3, 2, seed=6)
    weight, bias = affine_params(3, True)
    args = {"weight": weight} if which == "weight" else {"bias": bias}
    y = batch_norm(tensor(x), None, None, training=True, **args)
    mean, var, _ = channel_stats_loops(x)
    gamma = cpu(weight) if which == "weight" else np.ones(3)
    beta = cpu(bias) if which == "bias" else np.zeros(3)
    np.testing.assert_allclose(cpu(y), batch_norm_loops(x, mean, var, gamma, beta, 1e-5),
                               rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- running statistics
@geometries
@pytest.mark.parametrize("momentum", [0.1, 0.3, 1.0])
@pytest.mark.parametrize("fn", [batch_norm, batch_norm_simple], ids=["fused", "simple"])
def test_running_stats_follow_the_recurrence(shape, momentum, fn):
    # running ← (1 - momentum)·running + momentum·stat, with the unbiased variance
    rm, rv = running_stats(shape[1])
    expected_mean, expected_var = cpu(rm).copy(), cpu(rv).copy()
    for step in range(3):
        x = distinct(*shape, seed=10 + step, low=-3 + step, high=2 + 2 * step)
        fn(tensor(x), rm, rv, training=True, momentum=momentum)
        mean, var, m = channel_stats_loops(x)
        expected_mean = (1 - momentum) * expected_mean + momentum * mean
        expected_var = (1 - momentum) * expected_var + momentum * var * m / (m - 1)
    np.testing.assert_allclose(cpu(rm), expected_mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cpu(rv), expected_var, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fn", [batch_norm, batch_norm_simple], ids=["fused", "simple"])
def test_eval_leaves_running_stats_alone(fn):
    rm, rv = running_stats(3)
    before = cpu(rm).copy(), cpu(rv).copy()
    fn(tensor(distinct(4, 3, 2, 2)), rm, rv, training=False)
    np.testing.assert_array_equal(cpu(rm), before[0])
    np.testing.assert_array_equal(cpu(rv), before[1])


@pytest.mark.parametrize("fn", [batch_norm, batch_norm_simple], ids=["fused", "simple"])
def test_running_stats_stay_outside_the_graph(fn):
    x = tensor(distinct(4, 3, 2, 2, seed=7), requires_grad=True)
    weight, bias = affine_params(3, True, requires_grad=True)
    rm, rv = running_stats(3)
    buffers = rm.data, rv.data
    y = fn(x, rm, rv, weight, bias, training=True)
    assert rm.data is buffers[0] and rv.data is buffers[1], "must update in place"
    assert rm.is_leaf and rv.is_leaf and not rm.requires_grad and not rv.requires_grad
    updated = cpu(rm).copy(), cpu(rv).copy()
    (y * y).sum().backward()
    assert rm.grad is None and rv.grad is None
    np.testing.assert_array_equal(cpu(rm), updated[0])
    np.testing.assert_array_equal(cpu(rv), updated[1])


def test_running_stats_update_under_no_grad():
    # As in PyTorch: no_grad stops recording, not the update of the buffers.
    rm, rv = tc.zeros(3, dtype="float64"), tc.ones(3, dtype="float64")
    x = distinct(4, 3, 5, seed=8)
    with tc.no_grad():
        y = batch_norm(tensor(x), rm, rv, training=True)
    assert not y.requires_grad
    mean, _, _ = channel_stats_loops(x)
    np.testing.assert_allclose(cpu(rm), 0.1 * mean, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- gradients
@geometries
@affine_or_not
@pytest.mark.parametrize("eps", EPSILONS)
def test_training_gradcheck(shape, affine, eps, device):
    x = tensor(distinct(*shape, seed=20), device, requires_grad=True)
    weight, bias = affine_params(shape[1], affine, device, requires_grad=True)
    rm, rv = running_stats(shape[1], device)   # updated on every call; must not matter
    tc.gradcheck(lambda *a: batch_norm(a[0], rm, rv, *a[1:], training=True, eps=eps),
                 (x, weight, bias) if affine else (x,))


@geometries
@affine_or_not
def test_eval_gradcheck(shape, affine, device):
    x = tensor(distinct(*shape, seed=21), device, requires_grad=True)
    weight, bias = affine_params(shape[1], affine, device, requires_grad=True)
    rm, rv = running_stats(shape[1], device)
    tc.gradcheck(lambda *a: batch_norm(a[0], rm, rv, *a[1:], training=False),
                 (x, weight, bias) if affine else (x,))


@train_or_eval
@pytest.mark.parametrize("wrt", ["x", "weight", "bias", "weight+bias", "x+bias"])
def test_gradcheck_of_a_subset_of_inputs(training, wrt):
    # backward computes only the gradients asked for: each subset must still be right.
    x = tensor(distinct(3, 2, 2, 3, seed=22), requires_grad="x" in wrt)
    weight, bias = affine_params(2, True)
    weight.requires_grad = "weight" in wrt
    bias.requires_grad = "bias" in wrt
    rm, rv = running_stats(2)
    tc.gradcheck(lambda x, w, b: batch_norm(x, rm, rv, w, b, training=training),
                 (x, weight, bias))


@train_or_eval
def test_saves_only_what_backward_needs(training):
    rm, rv = running_stats(3)
    x = tensor(distinct(4, 3, 2, seed=23), requires_grad=True)
    weight, bias = affine_params(3, True, requires_grad=True)
    y = batch_norm(x, rm, rv, weight, bias, training=training)
    full_size = [a for a in y._ctx.saved if a is not None and a.shape == x.shape]
    if training:    # x itself, and no x̂: the backward computes x̂ again from x, μ and s
        assert len(full_size) == 1 and full_size[0] is x.data
    else:           # inference keeps x̂ for dγ (a constant map: x is not needed)
        assert len(full_size) == 1 and full_size[0] is not x.data
    x.requires_grad, weight.requires_grad = False, False      # only dβ = Σ dy wanted
    y = batch_norm(x, rm, rv, weight, bias, training=training)
    assert all(a is None for a in y._ctx.saved)


# ---------------------------------------------------------------- fused vs simple
@geometries
@affine_or_not
@train_or_eval
def test_fused_matches_simple(shape, affine, training):
    x_data = distinct(*shape, seed=30)
    upstream = np.random.default_rng(31).standard_normal(shape)
    results = []
    for fn in (batch_norm, batch_norm_simple):
        x = tensor(x_data, requires_grad=True)
        weight, bias = affine_params(shape[1], affine, requires_grad=True)
        rm, rv = running_stats(shape[1])
        y = fn(x, rm, rv, weight, bias, training=training, eps=1e-3)
        y.backward(upstream)
        grads = [cpu(t.grad) for t in (x, weight, bias) if t is not None]
        results.append([cpu(y), *grads, cpu(rm), cpu(rv)])
    for fused, simple in zip(*results):
        np.testing.assert_allclose(fused, simple, rtol=1e-10, atol=1e-12)


def test_simple_gradcheck():
    x = tensor(distinct(4, 2, 3, seed=32), requires_grad=True)
    weight, bias = affine_params(2, True, requires_grad=True)
    tc.gradcheck(lambda x, w, b: batch_norm_simple(x, None, None, w, b, training=True),
                 (x, weight, bias))


# ---------------------------------------------------------------- dtypes
@train_or_eval
@pytest.mark.parametrize("fn", [batch_norm, batch_norm_simple], ids=["fused", "simple"])
def test_float32_in_float32_out(training, fn):
    x64 = distinct(4, 3, 2, 2, seed=40)
    outputs = []
    for dtype in (np.float32, np.float64):
        x = tc.tensor(x64.astype(dtype), requires_grad=True)
        weight = tc.tensor(np.linspace(0.5, 1.5, 3, dtype=dtype), requires_grad=True)
        bias = tc.tensor(np.linspace(-1, 1, 3, dtype=dtype), requires_grad=True)
        rm, rv = tc.zeros(3, dtype=dtype), tc.ones(3, dtype=dtype)
        y = fn(x, rm, rv, weight, bias, training=training)
        y.sum().backward()
        for t in (y, x.grad, weight.grad, bias.grad, rm, rv):
            assert t.dtype == dtype
        outputs.append((cpu(y), cpu(rm), cpu(rv)))
    for single, double in zip(*outputs):
        np.testing.assert_allclose(single, double, rtol=1e-5, atol=1e-5)


@train_or_eval
def test_float32_stays_close_to_float64_on_values_far_from_zero(training):
    # Many values per channel around 500 with σ ≈ 1: the statistics must not lose the
    # digits a float32 running sum or E[x²] - μ² would; float32's own rounding of x
    # (about 3e-5 here) is what is left.
    x32 = (500 + distinct(8, 2, 16, 16, seed=42)).astype(np.float32)
    upstream = np.random.default_rng(43).standard_normal(x32.shape)
    results = []
    for dtype in (np.float32, np.float64):
        x = tc.tensor(x32.astype(dtype), requires_grad=True)
        weight, bias = (tc.tensor(a.astype(dtype), requires_grad=True)
                        for a in (np.array([0.5, 2.0]), np.array([1.0, -1.0])))
        rm, rv = tc.tensor(np.array([500.0, 500.0], dtype)), tc.ones(2, dtype=dtype)
        y = batch_norm(x, rm, rv, weight, bias, training=training)
        y.backward(upstream.astype(dtype))
        results.append([cpu(t) for t in (y, x.grad, weight.grad, bias.grad, rm, rv)])
    for single, double in zip(*results):
        assert single.dtype == np.float32
        np.testing.assert_allclose(single, double, rtol=1e-4, atol=1e-4 * np.abs(double).max())


def test_float64_params_do_not_promote_float32_input():
    x = tc.tensor(distinct(4, 3, seed=41).astype(np.float32))
    weight, bias = affine_params(3, True)              # float64
    rm, rv = running_stats(3)                          # float64
    for training in (True, False):
        assert batch_norm(x, rm, rv, weight, bias, training=training).dtype == np.float32


# ---------------------------------------------------------------- bad input
def _bad(shape=(4, 3, 2, 2), **overrides):
    args = dict(input=tc.tensor(np.zeros(shape)), running_mean=tc.zeros(3),
                running_var=tc.ones(3), weight=tc.ones(3), bias=tc.zeros(3), training=True)
    args.update(overrides)
    return args


BAD_INPUTS = {
    "rank-1": (_bad(shape=(3,)), ValueError,
               r"expected a 2-D \(N, C\), 3-D \(N, C, L\) or 4-D \(N, C, H, W\) input, "
               r"got shape \(3,\)"),
    "rank-5": (_bad(shape=(2, 3, 2, 2, 2)), ValueError, r"got shape \(2, 3, 2, 2, 2\)"),
    "weight-channels": (_bad(weight=tc.ones(4)), ValueError,
                        r"weight of shape \(4,\) does not match the input's 3 channels "
                        r"\(input shape \(4, 3, 2, 2\)\)"),
    "bias-channels": (_bad(bias=tc.zeros(2)), ValueError,
                      r"bias of shape \(2,\) does not match the input's 3 channels"),
    "running-mean-channels": (_bad(running_mean=tc.zeros(5)), ValueError,
                              r"running_mean of shape \(5,\) does not match the input's 3"),
    "running-var-2d": (_bad(running_var=tc.ones(3, 1)), ValueError,
                       r"running_var of shape \(3, 1\) does not match the input's 3"),
    "one-value-per-channel-NC": (_bad(shape=(1, 3)), ValueError,
                                 r"Expected more than 1 value per channel when training, "
                                 r"got input size \(1, 3\)"),
    "one-value-per-channel-NCHW": (_bad(shape=(1, 3, 1, 1)), ValueError,
                                   r"Expected more than 1 value per channel when training, "
                                   r"got input size \(1, 3, 1, 1\)"),
    "integer-input": (_bad(input=tc.tensor(np.zeros((4, 3), dtype=np.int64))), TypeError,
                      r"expected a floating-point input, got dtype int64"),
    "eval-without-running-stats": (_bad(running_mean=None, running_var=None, training=False),
                                   ValueError, r"running_mean and running_var are None"),
    "only-running-mean": (_bad(running_var=None), ValueError,
                          r"pass both running_mean and running_var, or neither"),
    "momentum-None": (_bad(momentum=None), TypeError, r"momentum must be a float, got None"),
    "array-buffer": (_bad(running_mean=np.zeros(3)), TypeError,
                     r"running_mean must be a Tensor or None, got ndarray"),
}


@pytest.mark.parametrize("args, error, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
@pytest.mark.parametrize("fn", [batch_norm, batch_norm_simple], ids=["fused", "simple"])
def test_bad_input(fn, args, error, message):
    with pytest.raises(error, match=f"^{fn.__name__}: .*{message}"):
        fn(**args)


# ---------------------------------------------------------------- torch parity
@geometries
@affine_or_not
@train_or_eval
def test_matches_torch(shape, affine, training):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    C = shape[1]
    rm, rv = running_stats(C)
    t_rm, t_rv = torch.tensor(cpu(rm)), torch.tensor(cpu(rv))
    for step in range(3):        # 3 steps: the running statistics accumulate
        x_data = distinct(*shape, seed=50 + step, low=-1 - step, high=3)
        upstream = np.random.default_rng(60 + step).standard_normal(shape)
        x = tensor(x_data, requires_grad=True)
        weight, bias = affine_params(C, affine, requires_grad=True, seed=step)
        y = batch_norm(x, rm, rv, weight, bias, training=training, momentum=0.2, eps=1e-3)
        y.backward(upstream)

        t_x = torch.tensor(x_data, requires_grad=True)
        t_w, t_b = ((torch.tensor(cpu(weight), requires_grad=True),
                     torch.tensor(cpu(bias), requires_grad=True)) if affine else (None, None))
        t_y = F.batch_norm(t_x, t_rm, t_rv, t_w, t_b, training=training, momentum=0.2,
                           eps=1e-3)
        t_y.backward(torch.tensor(upstream))

        np.testing.assert_allclose(cpu(y), t_y.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(cpu(x.grad), t_x.grad.numpy(), rtol=1e-9, atol=1e-11)
        if affine:
            np.testing.assert_allclose(cpu(weight.grad), t_w.grad.numpy(), rtol=1e-10,
                                       atol=1e-12)
            np.testing.assert_allclose(cpu(bias.grad), t_b.grad.numpy(), rtol=1e-10,
                                       atol=1e-12)
    np.testing.assert_allclose(cpu(rm), t_rm.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cpu(rv), t_rv.numpy(), rtol=1e-12, atol=1e-14)
