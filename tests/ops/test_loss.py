"""softmax, log_softmax, cross_entropy, nll_loss, mse_loss: loop references,
float64 gradcheck, torch parity (forward and backward, every reduction),
numerical stability and argument checking."""
import math

import numpy as np
import pytest

import tinygrad_cnn as tc
from tests.inputs import distinct
from tinygrad_cnn import Tensor, gradcheck
from tinygrad_cnn.ops import loss as L


def leaf(shape, device="cpu", seed=0, low=-2.0, high=2.0):
    return tc.tensor(distinct(*shape, seed=seed, low=low, high=high), device=device,
                     requires_grad=True)


def targets(shape, classes, seed=0):
    return np.random.default_rng(seed).integers(0, classes, size=shape)


def lines_along(shape, axis):
    """Every 1-D line of an array of ``shape`` along ``axis``, as index lists."""
    rest = [n for d, n in enumerate(shape) if d != axis]
    for p in np.ndindex(*rest):
        p = list(p)
        yield [tuple(p[:axis] + [k] + p[axis:]) for k in range(shape[axis])]


def loop_log_softmax(x, axis):
    out = np.empty(x.shape)
    for line in lines_along(x.shape, axis):
        values = [float(x[i]) for i in line]
        log_total = math.log(sum(math.exp(v) for v in values))
        for i, v in zip(line, values):
            out[i] = v - log_total
    return out


def loop_nll(logp, t, reduction):
    """-logp[n, t[n, ...], ...] per position, then the reduction."""
    losses = np.empty(t.shape)
    for i in np.ndindex(*t.shape):
        losses[i] = -logp[(i[0], t[i]) + i[1:]]
    if reduction == "none":
        return losses
    total = sum(losses.reshape(-1).tolist())
    return np.array(total / t.size if reduction == "mean" else total)


# ---------------------------------------------------------------- softmax / log_softmax
SOFTMAX_GEOMETRIES = [((4,), 0), ((3, 5), 1), ((3, 5), 0), ((2, 3, 4), -1), ((2, 3, 2, 2), 1)]


@pytest.mark.parametrize("shape, dim", SOFTMAX_GEOMETRIES, ids=str)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_forward_matches_loops(shape, dim, log):
    x = leaf(shape)
    y = (L.log_softmax if log else L.softmax)(x, dim)
    expected = loop_log_softmax(x.data, dim % len(shape))
    np.testing.assert_allclose(y.data, expected if log else np.exp(expected), rtol=1e-12,
                               atol=1e-15)


@pytest.mark.parametrize("shape, dim", SOFTMAX_GEOMETRIES, ids=str)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_gradcheck(shape, dim, log, device):
    op = L.log_softmax if log else L.softmax
    gradcheck(lambda x: op(x, dim), [leaf(shape, device)])


@pytest.mark.parametrize("shape, dim", SOFTMAX_GEOMETRIES[1:4], ids=str)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_torch_parity(shape, dim, log):
    torch = pytest.importorskip("torch")
    x = leaf(shape)
    tx = torch.tensor(x.data, requires_grad=True)
    y = (L.log_softmax if log else L.softmax)(x, dim)
    ty = (torch.log_softmax if log else torch.softmax)(tx, dim)
    g = distinct(*shape, seed=3)
    y.backward(g)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(x.grad.data, tx.grad.numpy(), rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_of_huge_logits_does_not_overflow(dtype):
    x = Tensor(np.array([[1000.0, 999.0, -1000.0]], dtype=dtype), requires_grad=True)
    y = L.softmax(x, 1)
    assert y.dtype == dtype
    e = math.exp(-1)
    np.testing.assert_allclose(y.data, [[1 / (1 + e), e / (1 + e), 0.0]], rtol=1e-6)
    np.testing.assert_allclose(L.log_softmax(x, 1).data[0, :2],
                               [-math.log(1 + e), -1 - math.log(1 + e)], rtol=1e-6)
    y[:, 0].sum().backward()
    assert np.isfinite(x.grad.data).all()


def test_softmax_rows_sum_to_one():
    y = L.softmax(leaf((4, 6)), 1)
    np.testing.assert_allclose(y.data.sum(1), np.ones(4), rtol=1e-14)


# ---------------------------------------------------------------- cross_entropy / nll_loss
REDUCTIONS = ["mean", "sum", "none"]
CLASSIFICATION = [((5, 3), (5,)), ((1, 4), (1,)), ((2, 3, 2, 2), (2, 2, 2)), ((3, 4, 5), (3, 5))]


@pytest.mark.parametrize("x_shape, t_shape", CLASSIFICATION, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
def test_classification_losses_match_loops(x_shape, t_shape, reduction, name):
    x = leaf(x_shape)
    t = targets(t_shape, x_shape[1])
    y = getattr(L, name)(x, Tensor(t), reduction=reduction)
    logp = loop_log_softmax(x.data, 1) if name == "cross_entropy" else x.data
    expected = loop_nll(logp, t, reduction)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.data, expected, rtol=1e-12)


@pytest.mark.parametrize("x_shape, t_shape", CLASSIFICATION, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
def test_classification_losses_gradcheck(x_shape, t_shape, reduction, name, device):
    t = targets(t_shape, x_shape[1])
    op = getattr(L, name)
    gradcheck(lambda x: op(x, t, reduction=reduction), [leaf(x_shape, device)])


@pytest.mark.parametrize("x_shape, t_shape", CLASSIFICATION, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
def test_classification_losses_torch_parity(x_shape, t_shape, reduction, name):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = leaf(x_shape)
    t = targets(t_shape, x_shape[1], seed=1)
    tx = torch.tensor(x.data, requires_grad=True)
    y = getattr(L, name)(x, Tensor(t), reduction=reduction)
    ty = getattr(F, name)(tx, torch.tensor(t), reduction=reduction)
    g = distinct(*y.shape, seed=4)
    y.backward(g)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(x.grad.data, tx.grad.numpy(), rtol=1e-12, atol=1e-16)


def test_cross_entropy_gradient_is_softmax_minus_onehot():
    x = leaf((4, 3))
    t = np.array([0, 2, 1, 2])
    L.cross_entropy(x, t, reduction="sum").backward()
    e = np.exp(x.data)
    onehot = np.zeros((4, 3))
    onehot[np.arange(4), t] = 1
    np.testing.assert_allclose(x.grad.data, e / e.sum(1, keepdims=True) - onehot, rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_stable_and_keeps_dtype(dtype):
    x = Tensor(np.array([[1000.0, -1000.0], [-1000.0, 1000.0]], dtype=dtype),
               requires_grad=True)
    y = L.cross_entropy(x, np.array([0, 0]))
    assert y.dtype == dtype and y.shape == ()
    np.testing.assert_allclose(y.item(), 1000.0, rtol=1e-6)   # (0 + 2000) / 2
    y.backward()
    assert x.grad.dtype == dtype and np.isfinite(x.grad.data).all()


def test_targets_may_be_lists_arrays_or_tensors():
    x = Tensor(distinct(3, 4))
    values = [L.cross_entropy(x, t).item() for t in
              ([1, 0, 3], np.array([1, 0, 3]), Tensor(np.array([1, 0, 3])),
               np.array([1, 0, 3], np.int32))]
    assert values == [values[0]] * 4


# ---------------------------------------------------------------- mse_loss
@pytest.mark.parametrize("shape", [(4,), (2, 3), (2, 1, 3)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_loss_matches_loops_and_torch(shape, reduction):
    x, y = leaf(shape), leaf(shape, seed=1)
    out = L.mse_loss(x, y, reduction=reduction)
    squares = np.empty(shape)
    for i in np.ndindex(*shape):
        squares[i] = (float(x.data[i]) - float(y.data[i])) ** 2
    total = sum(squares.reshape(-1).tolist())
    expected = {"none": squares, "sum": total, "mean": total / squares.size}[reduction]
    np.testing.assert_allclose(out.data, expected, rtol=1e-13)
    torch = pytest.importorskip("torch")
    tx, ty = (torch.tensor(t.data, requires_grad=True) for t in (x, y))
    tout = torch.nn.functional.mse_loss(tx, ty, reduction=reduction)
    g = distinct(*out.shape, seed=2)
    out.backward(g)
    tout.backward(torch.tensor(g))
    np.testing.assert_allclose(x.grad.data, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(y.grad.data, ty.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("requires", [(True, True), (True, False), (False, True)],
                         ids=["both", "input-only", "target-only"])
def test_mse_loss_gradcheck(reduction, requires, device):
    x = tc.tensor(distinct(2, 3), device=device, requires_grad=requires[0])
    y = tc.tensor(distinct(2, 3, seed=1), device=device, requires_grad=requires[1])
    gradcheck(lambda x, y: L.mse_loss(x, y, reduction=reduction), [x, y])


def test_mse_loss_accepts_an_array_target():
    x = leaf((3,))
    target = distinct(3, seed=1)
    np.testing.assert_allclose(L.mse_loss(x, target).item(), ((x.data - target) ** 2).mean())


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("bad", [3, -1, 7])
def test_target_out_of_range(name, bad):
    with pytest.raises(ValueError, match=f"{name}: target {bad} is out of bounds for 3 classes "
                                         r"\(valid: 0 … 2\)"):
        getattr(L, name)(leaf((2, 3)), np.array([0, bad]))


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
def test_float_targets_are_a_type_error(name):
    with pytest.raises(TypeError, match=f"{name}: target must hold integer class indices, "
                                        "got dtype float"):
        getattr(L, name)(leaf((2, 3)), Tensor(np.array([0.0, 1.0])))


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("x_shape, t_shape, expected", [
    ((2, 3), (3,), r"\(2,\)"), ((2, 3), (2, 1), r"\(2,\)"), ((2, 3, 4), (2,), r"\(2, 4\)"),
    ((3,), (3,), r"\(N,\)")], ids=str)
def test_target_shape_mismatch(name, x_shape, t_shape, expected):
    with pytest.raises(ValueError, match=rf"{name}: input of shape {re_shape(x_shape)} "
                                         rf"\(N, C, ...\) needs a target of shape {expected}"):
        getattr(L, name)(leaf(x_shape), np.zeros(t_shape, np.int64))


def re_shape(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("call, name", [
    (lambda x: L.cross_entropy(x, [0, 1], reduction="avg"), "cross_entropy"),
    (lambda x: L.nll_loss(x, [0, 1], reduction="max"), "nll_loss"),
    (lambda x: L.mse_loss(x, x.detach(), reduction="avg"), "mse_loss"),
])
def test_unknown_reduction(call, name):
    with pytest.raises(ValueError, match=f"{name}: reduction must be 'mean', 'sum' or 'none'"):
        call(leaf((2, 3)))


@pytest.mark.parametrize("call, name", [
    (lambda x: L.softmax(x, 1), "softmax"), (lambda x: L.log_softmax(x, 1), "log_softmax"),
    (lambda x: L.cross_entropy(x, [0, 1]), "cross_entropy"),
    (lambda x: L.mse_loss(x, x), "mse_loss"),
])
def test_integer_input_where_float_needed(call, name):
    with pytest.raises(TypeError, match=f"{name}: expected a floating-point tensor, got dtype "
                                        "int64"):
        call(Tensor(np.ones((2, 3), np.int64)))


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_dim_must_be_given_and_in_range(op):
    with pytest.raises(TypeError, match=f"{op}: pass dim= explicitly"):
        getattr(L, op)(leaf((2, 3)))
    with pytest.raises(ValueError, match=f"{op}: dim 2 is out of range for a tensor with 2 dims"):
        getattr(L, op)(leaf((2, 3)), 2)


def test_mse_loss_shape_mismatch():
    with pytest.raises(ValueError, match=r"mse_loss: input shape \(2, 3\) and target shape "
                                         r"\(3,\) differ"):
        L.mse_loss(leaf((2, 3)), leaf((3,)))
