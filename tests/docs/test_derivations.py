"""The derivation steps of docs/*.md that no other test checks, each checked numerically.

Every test here is cited by a docs page (tests/docs/test_doc_references.py makes sure
the citations exist); the page says which equation it checks.  float64 throughout, so
central differences are good to ~1e-8.
"""
import numpy as np
import pytest

import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from kernels import bn_numpy, conv_numpy
from kernels.geometry import adaptive_bins
from models.lenet import batch_norm as d2l_batch_norm
from tinygrad_cnn import Tensor, autograd

# the derivations' numbers do not depend on the kernel set (the sets' agreement is tested in
# tests/kernels/): run under the first kernel set only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free

RNG = np.random.default_rng(0)


def leaf(*shape):
    return Tensor(RNG.standard_normal(shape), requires_grad=True)


def central_difference(f, v, eps=1e-6):
    return (f(v + eps) - f(v - eps)) / (2 * eps)


# ---------------------------------------------------------------- docs/conv.md
GEOMETRY = dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0, 1, 1), dilation=(1, 2))


def test_merged_columns_are_each_images_columns_side_by_side():
    x = RNG.standard_normal((3, 2, 7, 6))
    per_image = conv_numpy.im2col(x, **GEOMETRY)                     # (N, C·KH·KW, L)
    merged = conv_numpy.im2col(x, **GEOMETRY, merge_batch=True)      # (C·KH·KW, N·L)
    N, rows, L = per_image.shape
    assert merged.shape == (rows, N * L)
    for n in range(N):                       # column q = n·L + oh·OW + ow
        np.testing.assert_array_equal(merged[:, n * L:(n + 1) * L], per_image[n])


CONV_ARGS = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2))    # F.conv2d's spelling
KERNEL_GEOMETRY = dict(stride=(2, 1), padding=(1, 1, 0, 0), dilation=(1, 2))  # the kernel's


def _columns_and_weights(x, W):
    """X_col (C·KH·KW, N·L) and W_mat (O, C·KH·KW) of docs/conv.md."""
    col = conv_numpy.im2col(x, W.shape[2:], **KERNEL_GEOMETRY, merge_batch=True)
    return col, W.reshape(W.shape[0], -1)


def test_forward_is_one_product_of_weights_and_columns():
    x, W, b = leaf(2, 3, 6, 5), leaf(4, 3, 3, 2), leaf(4)
    y = F.conv2d(x, W, b, **CONV_ARGS).data
    col, W_mat = _columns_and_weights(x.data, W.data)
    Y = W_mat @ col                                                  # (O, N·L): one GEMM
    N, O, OH, OW = y.shape
    expected = Y.reshape(O, N, OH, OW).transpose(1, 0, 2, 3) + b.data.reshape(1, O, 1, 1)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_conv_gradients_are_the_three_products():
    x, W, b = leaf(2, 3, 6, 5), leaf(4, 3, 3, 2), leaf(4)
    y = F.conv2d(x, W, b, **CONV_ARGS)
    dy = RNG.standard_normal(y.shape)
    y.backward(dy)
    col, W_mat = _columns_and_weights(x.data, W.data)
    N, O, OH, OW = dy.shape
    dY = dy.transpose(1, 0, 2, 3).reshape(O, N * OH * OW)            # laid out like Y
    dW = dY @ col.T
    dx = conv_numpy.col2im(W_mat.T @ dY, x.shape, W.shape[2:], **KERNEL_GEOMETRY,
                           merge_batch=True)
    db = dy.sum(axis=(0, 2, 3))
    np.testing.assert_allclose(W.grad.data, dW.reshape(W.shape), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(x.grad.data, dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.grad.data, db, rtol=1e-10, atol=1e-12)


def test_grouped_conv_is_independent_convs_on_channel_slices():
    G = 2
    x, W = leaf(2, 4, 5, 5), leaf(6, 4 // G, 3, 3)
    y = F.conv2d(x, W, padding=1, groups=G).data
    step = 6 // G
    for g in range(G):
        channels, outputs = slice(2 * g, 2 * g + 2), slice(g * step, (g + 1) * step)
        alone = F.conv2d(Tensor(x.data[:, channels]), Tensor(W.data[outputs]), padding=1).data
        # (a thin one-group conv may run as Conv2d[direct], summing in another order)
        np.testing.assert_allclose(y[:, g * step:(g + 1) * step], alone, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- docs/pooling.md
def test_max_pool_gradient_goes_to_the_winner_only():
    x = leaf(1, 1, 4, 4)
    y = F.max_pool2d(x, 2)
    dy = RNG.standard_normal(y.shape)
    y.backward(dy)
    expected = np.zeros((4, 4))
    for oh in range(2):
        for ow in range(2):
            window = x.data[0, 0, 2 * oh:2 * oh + 2, 2 * ow:2 * ow + 2]
            i, j = np.unravel_index(window.argmax(), window.shape)
            expected[2 * oh + i, 2 * ow + j] += dy[0, 0, oh, ow]
    np.testing.assert_array_equal(x.grad.data[0, 0], expected)


def test_avg_pool_divisor_counts_padding_only_when_asked():
    x = Tensor(RNG.standard_normal((1, 1, 5, 5)))
    corner = x.data[0, 0, :2, :2].sum()          # a 3x3 window at (-1, -1) holds 4 real cells
    with_pad = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True)
    without = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert with_pad.data[0, 0, 0, 0] == pytest.approx(corner / 9)
    assert without.data[0, 0, 0, 0] == pytest.approx(corner / 4)
    edge = x.data[0, 0, :2, 1:4].sum()           # window at (-1, 1): 6 real cells
    assert without.data[0, 0, 0, 2] == pytest.approx(edge / 6)


def test_avg_pool_backward_spreads_each_gradient_evenly():
    x = leaf(1, 1, 5, 5)
    y = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
    dy = RNG.standard_normal(y.shape)
    y.backward(dy)
    expected = np.zeros((5, 5))
    for oh in range(y.shape[2]):
        for ow in range(y.shape[3]):
            rows = range(max(2 * oh - 1, 0), min(2 * oh + 2, 5))
            cols = range(max(2 * ow - 1, 0), min(2 * ow + 2, 5))
            share = dy[0, 0, oh, ow] / (len(rows) * len(cols))
            for h in rows:
                for w in cols:
                    expected[h, w] += share
    np.testing.assert_allclose(x.grad.data[0, 0], expected, rtol=1e-12)


def test_adaptive_bins_follow_pytorchs_edges():
    assert adaptive_bins(5, 3) == [(0, 2), (1, 4), (3, 5)]     # neighbours share a cell
    assert adaptive_bins(6, 3) == [(0, 2), (2, 4), (4, 6)]     # exact split: no overlap
    assert adaptive_bins(2, 4) == [(0, 1), (0, 1), (1, 2), (1, 2)]   # out > size: repeats
    for size, out in [(7, 3), (10, 4), (3, 5)]:
        bins = adaptive_bins(size, out)
        covered = set().union(*(range(a, b) for a, b in bins))
        assert covered == set(range(size))


# ---------------------------------------------------------------- docs/batchnorm.md
EPS = 1e-5


def _channel(m=12):
    """One channel's m values, an upstream g = dL/dx̂, and its statistics."""
    x = RNG.standard_normal(m) * 2 + 3
    g = RNG.standard_normal(m)
    mu = x.mean()
    var = ((x - mu) ** 2).mean()
    s = 1 / np.sqrt(var + EPS)
    return x, g, mu, var, s, (x - mu) * s


def test_bn_step_2_gradient_of_the_variance():
    x, g, mu, var, s, x_hat = _channel()
    loss_of_var = lambda v: (g * (x - mu) / np.sqrt(v + EPS)).sum()   # μ held fixed
    numeric = central_difference(loss_of_var, var)
    assert numeric == pytest.approx(-0.5 * s ** 2 * (g * x_hat).sum(), rel=1e-6)


def test_bn_step_3_gradient_of_the_mean():
    x, g, mu, var, s, x_hat = _channel()

    def loss_of_mean(m):            # μ enters directly and through σ² = mean((x - μ)²)
        return (g * (x - m) / np.sqrt(((x - m) ** 2).mean() + EPS)).sum()

    assert central_difference(loss_of_mean, mu) == pytest.approx(-s * g.sum(), rel=1e-6)


def test_bn_steps_4_5_chain_rule_sum_is_the_closed_form():
    x, dy, mu, var, s, x_hat = _channel()
    gamma, m = 1.7, len(x)
    g = gamma * dy
    d_var = -0.5 * s ** 2 * (g * x_hat).sum()
    d_mu = -s * g.sum()
    chain_rule = g * s + d_var * 2 * (x - mu) / m + d_mu / m                  # step 4
    closed = gamma * s * (dy - dy.sum() / m - x_hat * (dy * x_hat).sum() / m)   # step 5
    np.testing.assert_allclose(chain_rule, closed, rtol=1e-10)
    # ...which is what the kernel computes (as (N, C) = (m, 1))...
    gx, _, _ = bn_numpy.batchnorm_backward(dy[:, None], x[:, None], np.array([mu]),
                                           np.array([s]), np.array([gamma * s]))
    np.testing.assert_allclose(gx[:, 0], closed, rtol=1e-10)

    # ...and the true derivative of L(x) = Σ dy·y(x), element by element.
    def loss(values):
        v_hat = (values - values.mean()) / np.sqrt(values.var() + EPS)
        return (dy * (gamma * v_hat)).sum()
    for k in range(m):
        e = np.zeros(m)
        e[k] = 1
        assert central_difference(lambda t: loss(x + t * e), 0.0) == \
            pytest.approx(closed[k], rel=1e-5, abs=1e-9)


def test_bn_input_gradient_is_blind_to_shift_and_scale():
    x = leaf(16, 3)
    gamma = Tensor(np.array([0.5, 2.0, -1.0]), requires_grad=True)
    beta = Tensor(np.zeros(3))
    y = F.batch_norm(x, None, None, gamma, beta, training=True)
    y.backward(RNG.standard_normal(y.shape))
    gx = x.grad.data
    var = x.data.var(axis=0)
    x_hat = (x.data - x.data.mean(axis=0)) / np.sqrt(var + EPS)
    np.testing.assert_allclose(gx.sum(axis=0), 0, atol=1e-12)
    expected = gamma.data / np.sqrt(var + EPS) * gamma.grad.data * EPS / (var + EPS)
    np.testing.assert_allclose((gx * x_hat).sum(axis=0), expected, rtol=1e-6, atol=1e-15)


def test_d2l_momentum_0_9_is_pytorch_momentum_0_1():
    X = Tensor(RNG.standard_normal((8, 4)) * 3 + 1)
    m = X.shape[0]
    moving_mean, moving_var = tc.zeros(1, 4, dtype=tc.float64), tc.ones(1, 4, dtype=tc.float64)
    ones, zeros = Tensor(np.ones((1, 4))), Tensor(np.zeros((1, 4)))
    _, d2l_mean, d2l_var = d2l_batch_norm(X, ones, zeros, moving_mean, moving_var, EPS, 0.9,
                                          training=True)
    running_mean, running_var = tc.zeros(4, dtype=tc.float64), tc.ones(4, dtype=tc.float64)
    F.batch_norm(X, running_mean, running_var, training=True, momentum=0.1)
    np.testing.assert_allclose(running_mean.data, d2l_mean.data.ravel(), rtol=1e-12)
    biased = X.data.var(axis=0)            # d2l's new term; PyTorch's is m/(m - 1) of it
    np.testing.assert_allclose(d2l_var.data.ravel(), 0.9 + 0.1 * biased, rtol=1e-12)
    np.testing.assert_allclose(running_var.data, 0.9 + 0.1 * biased * m / (m - 1), rtol=1e-12)


def test_bn_two_values_per_channel_become_plus_and_minus_one():
    x = Tensor(np.array([[5.0, -0.3], [40.0, 0.5]]))           # (N=2, C=2)
    y = F.batch_norm(x, None, None, training=True).data
    var = x.data.var(axis=0)
    magnitude = np.sqrt(var / (var + EPS))
    np.testing.assert_allclose(y, [[-1, -1], [1, 1]] * magnitude, rtol=1e-12)
    np.testing.assert_allclose(np.abs(y), 1, atol=1e-3)


# ---------------------------------------------------------------- docs/autograd.md
def test_backward_runs_each_op_after_all_its_consumers(monkeypatch):
    order = []
    monkeypatch.setattr(autograd, "trace_hook",
                        lambda event, fn, *_: order.append(fn) if event == "backward" else None)
    x = leaf(3)
    h = x.exp()                        # h feeds three consumers, one of them two ops away
    loss = (h * 2 + h.tanh() + h.sqrt().log()).sum()
    loss.backward()
    position = {fn: i for i, fn in enumerate(order)}
    assert len(position) == len(order)                   # each backward ran once
    for fn in order:
        for parent in fn.parents:
            if parent is not None and not isinstance(parent, Tensor):
                assert position[parent] > position[fn], (parent.name, fn.name)


def test_broadcast_gradient_sums_over_added_and_stretched_axes():
    a, b = leaf(2, 3, 4), leaf(3, 1)               # b: a leading axis added, axis 2 stretched
    dy = RNG.standard_normal((2, 3, 4))
    (a * b).backward(dy)
    np.testing.assert_allclose(b.grad.data, (dy * a.data).sum(axis=(0, 2))[:, None], rtol=1e-12)
    np.testing.assert_allclose(a.grad.data, dy * b.data, rtol=1e-12)
