"""Inverted dropout: y = x·mask/(1 - p); reproducible masks, statistics of the
mask, gradients, the identity cases and the edge cases p = 0 and p = 1."""
import math

import numpy as np
import pytest

import tinygrad_cnn as tc
from tinygrad_cnn.backend import to_device
from tinygrad_cnn.ops.dropout import dropout
from tests.inputs import distinct

SHAPES = {"vector": (7,), "NC": (4, 5), "NCHW": (2, 3, 4, 3)}
shapes = pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
probabilities = pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.8])


def cpu(t):
    return to_device(t.data, "cpu")


def positive(*shape, seed=0):
    """Distinct values in [0.5, 2]: none is 0, so y == 0 exactly where the mask dropped."""
    return distinct(*shape, seed=seed, low=0.5, high=2.0)


@shapes
@probabilities
def test_gradcheck_with_a_fixed_mask(shape, p, device):
    # gradcheck re-runs the function many times: re-seeding first repeats the mask.
    x = tc.tensor(distinct(*shape, seed=1), device=device, requires_grad=True)
    tc.gradcheck(lambda x: (tc.manual_seed(1), dropout(x, p))[1], (x,))


@shapes
@probabilities
def test_forward_and_backward_follow_the_mask(shape, p, device):
    x_data = positive(*shape, seed=2)
    x = tc.tensor(x_data, device=device, requires_grad=True)
    y = dropout(x, p)
    kept = cpu(y) != 0
    np.testing.assert_allclose(cpu(y), np.where(kept, x_data / (1 - p), 0), rtol=1e-15)
    upstream = np.random.default_rng(3).standard_normal(shape)
    y.backward(upstream)
    np.testing.assert_allclose(cpu(x.grad), np.where(kept, upstream / (1 - p), 0),
                               rtol=1e-15)


def test_keeps_only_the_scaled_mask():
    x = tc.tensor(positive(6, 5, seed=4), requires_grad=True)
    y = dropout(x, 0.25)
    mask, = y._ctx.saved
    np.testing.assert_array_equal(mask, (cpu(y) != 0) / 0.75)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_fraction_of_zeros_is_p(p, device):
    n = 200_000
    y = dropout(tc.ones(n, device=device), p)
    # the zero count is Binomial(n, p): allow 6 standard deviations
    assert abs(float((cpu(y) == 0).mean()) - p) < 6 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_mean_is_preserved(p):
    # E[y] = x: each element is x/(1 - p) with probability 1 - p, else 0.
    n = 200_000
    x = np.full(n, 3.0)
    y = cpu(dropout(tc.tensor(x), p))
    std_of_mean = 3.0 * math.sqrt(p / (1 - p) / n)
    assert abs(y.mean() - 3.0) < 6 * std_of_mean


def test_manual_seed_makes_the_mask_reproducible():
    x = tc.ones(50, 40)
    tc.manual_seed(7)
    first = cpu(dropout(x, 0.5))
    tc.manual_seed(7)
    np.testing.assert_array_equal(cpu(dropout(x, 0.5)), first)
    assert not np.array_equal(cpu(dropout(x, 0.5)), first), "the next call draws a new mask"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keeps_the_dtype(dtype):
    x = tc.tensor(positive(5, 6).astype(dtype), requires_grad=True)
    y = dropout(x, 0.4)
    y.sum().backward()
    assert y.dtype == dtype and x.grad.dtype == dtype


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_eval_mode_returns_the_input_itself(p):
    x = tc.tensor(positive(3, 4), requires_grad=True)
    assert dropout(x, p, training=False) is x


def test_p_zero_returns_the_input_itself():
    x = tc.tensor(positive(3, 4), requires_grad=True)
    assert dropout(x, 0.0) is x
    assert dropout(x, 0) is x


def test_p_one_drops_everything():
    x = tc.tensor(positive(3, 4), requires_grad=True)
    y = dropout(x, 1.0)
    np.testing.assert_array_equal(cpu(y), np.zeros((3, 4)))
    y.backward(np.ones((3, 4)))
    np.testing.assert_array_equal(cpu(x.grad), np.zeros((3, 4)))


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), 2])
def test_bad_p(p):
    with pytest.raises(ValueError, match=rf"^dropout: probability p must be between 0 and 1, "
                                         rf"got p={p!r}"):
        dropout(tc.ones(3), p)


def test_integer_input():
    with pytest.raises(TypeError, match=r"^dropout: expected a floating-point input, "
                                        r"got dtype int64"):
        dropout(tc.tensor(np.arange(4)), 0.5)
