"""Reductions: sum mean var max min amax amin argmax argmin over dim/keepdim —
explicit-loop references, float64 gradcheck, torch parity (ties included)."""
import itertools

import numpy as np
import pytest

import tinygrad_cnn as tc
from tests.inputs import distinct
from tinygrad_cnn import Tensor, gradcheck
from tinygrad_cnn.ops import reduction as R


def leaf(shape, device="cpu", seed=0):
    return tc.tensor(distinct(*shape, seed=seed), device=device, requires_grad=True)


def loop_reduce(f, x, dim, keepdim):
    """Apply ``f`` to the list of elements of each reduced group, one group at a time."""
    dims = range(x.ndim) if dim is None else [dim] if isinstance(dim, int) else dim
    dims = sorted(d % x.ndim for d in dims)
    kept = [d for d in range(x.ndim) if d not in dims]
    out_shape = [1 if d in dims else n for d, n in enumerate(x.shape)]
    out = np.empty(out_shape)
    for position in np.ndindex(*[x.shape[d] for d in kept]):
        group = []
        for offsets in itertools.product(*[range(x.shape[d]) for d in dims]):
            index = [0] * x.ndim
            for d, i in zip(kept, position):
                index[d] = i
            for d, i in zip(dims, offsets):
                index[d] = i
            group.append(float(x[tuple(index)]))
        out[tuple(position[kept.index(d)] if d in kept else 0 for d in range(x.ndim))] = f(group)
    return out if keepdim else out.reshape([x.shape[d] for d in kept])


def loop_sum(values):
    total = 0.0
    for v in values:
        total += v
    return total


def loop_var(correction):
    def var(values):
        mean = loop_sum(values) / len(values)
        return loop_sum([(v - mean) ** 2 for v in values]) / (len(values) - correction)
    return var


# (shape, dim): all axes, one axis, a negative axis, several axes, a list, 0-d.
GEOMETRIES = [((2, 3, 4), None), ((2, 3, 4), 1), ((2, 3, 4), -1), ((2, 3, 4), (0, 2)),
              ((3, 4), [0]), ((5,), 0), ((), None), ((), 0)]
GEOMETRY_IDS = [f"{s}-dim{d}" for s, d in GEOMETRIES]

# name: (op(x, dim, keepdim), loop reference over one group, needs >= 2 elements)
SMOOTH = {
    "sum": (R.sum, loop_sum, False),
    "mean": (R.mean, lambda v: loop_sum(v) / len(v), False),
    "var": (lambda x, d, k: R.var(x, d, keepdim=k), loop_var(1), True),   # default unbiased
    "var-biased": (lambda x, d, k: R.var(x, d, unbiased=False, keepdim=k), loop_var(0), False),
    "var-correction2": (lambda x, d, k: R.var(x, d, keepdim=k, correction=2), loop_var(2),
                        True),
    "amax": (R.amax, max, False),
    "amin": (R.amin, min, False),
}


def group_size(shape, dim):
    if dim is None or not shape:
        return int(np.prod(shape))
    dims = [dim] if isinstance(dim, int) else dim
    return int(np.prod([shape[d] for d in dims]))


def usable(name, shape, dim):
    """Variance needs more elements per group than its correction."""
    needs_three = name == "var-correction2"
    return not SMOOTH[name][2] or group_size(shape, dim) > (2 if needs_three else 1)


CASES = [pytest.param(name, shape, dim, id=f"{name}-{geometry}")
         for name in SMOOTH for (shape, dim), geometry in zip(GEOMETRIES, GEOMETRY_IDS)
         if usable(name, shape, dim)]


@pytest.mark.parametrize("name, shape, dim", CASES)
@pytest.mark.parametrize("keepdim", [False, True])
def test_forward_matches_loop_reference(name, shape, dim, keepdim):
    op, reference, _ = SMOOTH[name]
    x = Tensor(distinct(*shape))
    y = op(x, dim, keepdim)
    expected = loop_reduce(reference, x.data, dim, keepdim) if shape else \
        np.array(reference([float(x.data)]))
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.data, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name, shape, dim", CASES)
@pytest.mark.parametrize("keepdim", [False, True])
def test_gradcheck(name, shape, dim, keepdim, device):
    op, _, _ = SMOOTH[name]
    gradcheck(lambda x: op(x, dim, keepdim), [leaf(shape, device)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", SMOOTH)
def test_float_dtype_is_kept(name, dtype):
    x = Tensor(distinct(3, 4, dtype=dtype), requires_grad=True)
    y = SMOOTH[name][0](x, 1, False)
    assert y.dtype == dtype
    y.sum().backward()
    assert x.grad.dtype == dtype


def test_sum_of_integers_stays_integer():
    y = R.sum(Tensor(np.arange(6).reshape(2, 3)), 1)
    assert y.dtype == np.int64 and y.tolist() == [3, 12]


# ---------------------------------------------------------------- var
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("dim, keepdim", [(None, False), (1, False), (0, True), ((0, 2), False)])
def test_var_torch_parity(unbiased, dim, keepdim):
    torch = pytest.importorskip("torch")
    x = leaf((3, 4, 2))
    tx = torch.tensor(x.data, requires_grad=True)
    y = R.var(x, dim, unbiased=unbiased, keepdim=keepdim)
    ty = tx.var(dim=dim, unbiased=unbiased, keepdim=keepdim)
    g = distinct(*y.shape, seed=3)
    y.backward(g)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(x.grad.data, tx.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_var_defaults_to_unbiased():
    x = Tensor(distinct(5))
    np.testing.assert_allclose(R.var(x).item(), x.data.var(ddof=1))


def test_var_of_a_single_element_is_nan_forward_and_backward():
    # Regression: backward raised ZeroDivisionError (PyTorch gives NaN).
    x = Tensor(np.array([1.5]), requires_grad=True)
    y = R.var(x)
    assert np.isnan(y.item())
    y.backward()
    assert np.isnan(x.grad.data).all()


# ---------------------------------------------------------------- max / min
@pytest.mark.parametrize("largest", [True, False], ids=["max", "min"])
@pytest.mark.parametrize("shape, dim", [((3, 4), 1), ((3, 4), 0), ((2, 3, 4), -2), ((5,), 0)])
@pytest.mark.parametrize("keepdim", [False, True])
def test_max_min_along_dim_return_values_and_indices(largest, shape, dim, keepdim):
    x = leaf(shape)
    result = (R.max if largest else R.min)(x, dim, keepdim)
    values, indices = result
    assert result.values is values and result.indices is indices
    pick = max if largest else min
    expected = loop_reduce(pick, x.data, dim, keepdim)
    np.testing.assert_allclose(values.data, expected)
    assert indices.dtype == np.int64 and not indices.requires_grad
    # The index points at the value: take it back out along dim.
    idx = indices.data if keepdim else np.expand_dims(indices.data, dim)
    np.testing.assert_allclose(np.take_along_axis(x.data, idx, axis=dim),
                               expected if keepdim else np.expand_dims(expected, dim))
    gradcheck(lambda x: (R.max if largest else R.min)(x, dim, keepdim).values, [x])


@pytest.mark.parametrize("largest", [True, False], ids=["max", "min"])
@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4)], ids=str)
def test_max_min_of_everything(largest, shape):
    x = leaf(shape)
    y = (R.max if largest else R.min)(x)
    assert y.shape == ()
    assert y.item() == (x.data.max() if largest else x.data.min())
    gradcheck(lambda x: (R.max if largest else R.min)(x), [x])


TIES = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0], [-1.0, -1.0, -1.0]])


@pytest.mark.parametrize("call", [
    lambda m, x: m.max(x), lambda m, x: m.min(x),
    lambda m, x: m.max(x, 1).values, lambda m, x: m.min(x, 0).values,
    lambda m, x: m.amax(x, 1), lambda m, x: m.amin(x, (0, 1), True),
], ids=["max", "min", "max-dim", "min-dim", "amax", "amin-dims"])
def test_gradient_on_ties_matches_torch(call):
    # max()/amax split the gradient evenly among tied extrema; max(dim) sends
    # it all to the index it returns (the first).
    torch = pytest.importorskip("torch")
    x = Tensor(TIES.copy(), requires_grad=True)
    tx = torch.tensor(TIES, requires_grad=True)
    y, ty = call(R, x), call(torch, tx)
    g = distinct(*y.shape, seed=4) + 3
    y.backward(g)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(y.data, ty.detach().numpy())
    np.testing.assert_allclose(x.grad.data, tx.grad.numpy())


def test_max_with_several_dims_is_a_type_error():
    with pytest.raises(TypeError, match=r"max: dim must be an int.*amax"):
        R.max(leaf((2, 3)), (0, 1))


# ---------------------------------------------------------------- argmax / argmin
@pytest.mark.parametrize("largest", [True, False], ids=["argmax", "argmin"])
@pytest.mark.parametrize("dim, keepdim", [(None, False), (0, False), (1, True), (-1, False)])
def test_argmax_argmin(largest, dim, keepdim):
    x = Tensor(TIES)
    op = R.argmax if largest else R.argmin
    y = op(x, dim, keepdim)
    assert y.dtype == np.int64 and not y.requires_grad
    if dim is None:   # the index into the flattened tensor
        flat = TIES.reshape(-1)
        best = max(flat) if largest else min(flat)
        assert y.item() == list(flat).index(best)
        return
    rows = np.moveaxis(TIES, dim, -1)
    expected = [list(r).index(max(r) if largest else min(r)) for r in rows]  # first on ties
    np.testing.assert_array_equal(y.data.reshape(-1), expected)
    assert y.ndim == (2 if keepdim else 1)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, op", [
    (lambda x: R.sum(x, 2), "sum"), (lambda x: R.mean(x, -3), "mean"),
    (lambda x: R.var(x, (0, 5)), "var"), (lambda x: R.max(x, 2), "max"),
    (lambda x: R.amax(x, 4), "amax"), (lambda x: R.argmax(x, 3), "argmax"),
    (lambda x: R.argmin(x, -3), "argmin"), (lambda x: R.min(x, 2), "min"),
])
def test_dim_out_of_range_names_op_and_dim(call, op):
    message = f"{op}: dim -?\\d is out of range for a tensor with 2 dims"
    with pytest.raises(ValueError, match=message):
        call(Tensor(distinct(2, 3)))


@pytest.mark.parametrize("op", ["mean", "var"])
def test_integer_tensor_where_float_needed(op):
    with pytest.raises(TypeError, match=f"{op}: expected a floating-point tensor, got dtype int64"):
        getattr(R, op)(Tensor(np.arange(4)))


def test_zero_dim_tensor_accepts_dim_zero():
    # Regression: sum(0) of a 0-d tensor raised NumPy's AxisError.
    x = Tensor(np.array(2.5), requires_grad=True)
    assert R.sum(x, 0).item() == 2.5 and R.mean(x, -1, keepdim=True).shape == ()
    with pytest.raises(ValueError, match="sum: dim 1 is out of range"):
        R.sum(x, 1)
