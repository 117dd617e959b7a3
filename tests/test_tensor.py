"""The Tensor class: attributes, conversions, operators and their dtype rules,
comparisons, and the methods that forward to the ops."""
import numpy as np
import pytest

import tinygrad_cnn as tc
from tests.inputs import distinct
from tinygrad_cnn import Tensor, gradcheck

# the Tensor core calls no kernel: run under the first kernel set only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free


def leaf(*shape, seed=0, low=-2.0, high=2.0):
    return Tensor(distinct(*shape, seed=seed, low=low, high=high), requires_grad=True)


# ---------------------------------------------------------------- attributes
def test_attributes():
    data = distinct(2, 3)
    x = Tensor(data, requires_grad=True)
    assert x.shape == (2, 3) and isinstance(x.shape, tuple)
    assert x.ndim == 2 and x.dim() == 2
    assert x.dtype == np.float64
    assert x.device == "cpu"
    assert x.requires_grad and x.is_leaf and x.grad_fn is None
    assert x.grad is None
    assert x.data is data
    assert x.size() == (2, 3) and x.size(1) == 3 and x.size(-2) == 2
    assert x.numel() == 6 and len(x) == 2


def test_len_of_0d_tensor_raises():
    with pytest.raises(TypeError, match="0-d"):
        len(Tensor(np.array(1.0)))


def test_non_leaf_attributes():
    y = leaf(3) * 2
    assert y.requires_grad and not y.is_leaf and y.grad_fn.name == "Mul"
    assert "grad_fn=<Mul>" in repr(y)


def test_repr_shows_values_and_non_default_dtype():
    assert repr(Tensor(np.array([1.5, 2.0], dtype=np.float32))) == "tensor([1.5, 2. ])"
    assert "dtype=float64" in repr(Tensor(np.array([1.0])))
    assert "requires_grad=True" in repr(leaf(2))


# ---------------------------------------------------------------- conversion
def test_numpy_shares_data_and_refuses_tensors_requiring_grad():
    x = Tensor(distinct(3))
    assert np.shares_memory(x.numpy(), x.data)
    with pytest.raises(RuntimeError, match=r"detach\(\)\.numpy\(\)"):
        leaf(3).numpy()


def test_numpy_array_protocol():
    # Regression: np.asarray(t) used to build an object array of 0-d Tensors.
    x = Tensor(distinct(2, 3))
    assert np.asarray(x) is x.data
    assert np.asarray(x, dtype=np.float32).dtype == np.float32
    assert not np.shares_memory(np.array(x), x.data)
    with pytest.raises(RuntimeError, match="detach"):
        np.asarray(leaf(2))


@pytest.mark.parametrize("data", [np.array(2.5), np.array([2.5]), np.array([[2.5]])])
def test_item(data):
    value = Tensor(data).item()
    assert value == 2.5 and type(value) is float


def test_item_of_several_elements_raises():
    with pytest.raises(ValueError, match=r"item\(\).*shape \(2,\)"):
        Tensor(np.ones(2)).item()


def test_detach_shares_data_and_cuts_the_graph():
    x = leaf(3)
    y = x * 2
    d = y.detach()
    assert d.data is y.data and not d.requires_grad and d.grad_fn is None


@pytest.mark.parametrize("convert, dtype", [
    (lambda t: t.float(), np.float32), (lambda t: t.double(), np.float64),
    (lambda t: t.to(np.float32), np.float32), (lambda t: t.to("float32"), np.float32),
    (lambda t: t.to(dtype=np.float32), np.float32), (lambda t: t.to("cpu", np.float32), np.float32),
    (lambda t: t.type_as(Tensor(np.zeros(1, np.float32))), np.float32),
])
def test_dtype_conversions_are_differentiable_back_to_the_source_dtype(convert, dtype):
    x = leaf(3)
    y = convert(x)
    assert y.dtype == dtype
    (y * y).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_allclose(x.grad.data, 2 * x.data, rtol=1e-6)


def test_cast_gradcheck():
    # Through float32 the rounding (~1e-7) needs a large step to stay below atol.
    gradcheck(lambda x: x.float().double() * 3, [leaf(2, 3)], eps=1e-2, atol=1e-4)


def test_conversion_to_own_dtype_and_device_returns_self():
    x = Tensor(np.ones(2, np.float32))
    assert x.float() is x and x.to("cpu") is x and x.cpu() is x


def test_long_truncates():
    assert Tensor(np.array([1.7, -1.7])).long().tolist() == [1, -1]


def test_unknown_device_raises():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        tc.tensor([1.0], device="tpu")


@pytest.mark.skipif(tc.backend.cupy is not None, reason="CuPy is installed")
def test_to_cuda_without_cupy_says_so():
    with pytest.raises(RuntimeError, match="CuPy is not installed"):
        Tensor(np.ones(1)).to("cuda")


def test_scalar_conversions_and_truth_value():
    x = Tensor(np.array([3.0]))
    assert float(x) == 3.0 and int(x) == 3 and bool(x)
    assert [1, 2, 3, 4][Tensor(np.array(2))] == 3      # __index__
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(Tensor(np.ones(2)))


def test_iteration_yields_rows_with_gradient():
    x = leaf(3, 2)
    rows = list(x)
    assert [r.shape for r in rows] == [(2,)] * 3
    (rows[0] * 1 + rows[2] * 2).sum().backward()
    np.testing.assert_allclose(x.grad.data, [[1, 1], [0, 0], [2, 2]])


# ---------------------------------------------------------------- operators
BINARY = {
    "+": (lambda a, b: a + b, np.add),
    "-": (lambda a, b: a - b, np.subtract),
    "*": (lambda a, b: a * b, np.multiply),
    "/": (lambda a, b: a / b, np.divide),
    "**": (lambda a, b: a ** b, np.power),
}


@pytest.mark.parametrize("op", BINARY)
@pytest.mark.parametrize("shapes", [((2, 3), (2, 3)), ((2, 3), ()), ((), (2, 3)),
                                    ((2, 3), (1,)), ((2, 1), (1, 3)), ((4, 1, 3), (2, 1))],
                         ids=str)
def test_binary_operators_broadcast_and_reduce_gradients_to_each_shape(op, shapes):
    apply, reference = BINARY[op]
    a = leaf(*shapes[0], low=0.5, high=2.0)     # positive: a ** b needs a > 0
    b = leaf(*shapes[1], seed=1, low=0.5, high=2.0)
    y = apply(a, b)
    np.testing.assert_allclose(y.data, reference(a.data, b.data))
    y.sum().backward()
    assert a.grad.shape == a.shape and b.grad.shape == b.shape
    gradcheck(apply, [a, b])


@pytest.mark.parametrize("expr, reference, derivative", [
    (lambda x: x + 2, lambda v: v + 2, lambda v: np.ones_like(v)),
    (lambda x: 2 + x, lambda v: 2 + v, lambda v: np.ones_like(v)),
    (lambda x: x - 2, lambda v: v - 2, lambda v: np.ones_like(v)),
    (lambda x: 2 - x, lambda v: 2 - v, lambda v: -np.ones_like(v)),
    (lambda x: x * 3, lambda v: v * 3, lambda v: np.full_like(v, 3)),
    (lambda x: 3 * x, lambda v: 3 * v, lambda v: np.full_like(v, 3)),
    (lambda x: x / 4, lambda v: v / 4, lambda v: np.full_like(v, 0.25)),
    (lambda x: 1 / x, lambda v: 1 / v, lambda v: -1 / v ** 2),
    (lambda x: x ** 3, lambda v: v ** 3, lambda v: 3 * v ** 2),
    (lambda x: 2 ** x, lambda v: 2 ** v, lambda v: np.log(2) * 2 ** v),
    (lambda x: -x, lambda v: -v, lambda v: -np.ones_like(v)),
    (lambda x: +x, lambda v: v, lambda v: np.ones_like(v)),
], ids=["x+2", "2+x", "x-2", "2-x", "x*3", "3*x", "x/4", "1/x", "x**3", "2**x", "-x", "+x"])
def test_operators_with_python_scalars_on_either_side(expr, reference, derivative):
    x = leaf(2, 3, low=0.5, high=2.0)
    y = expr(x)
    np.testing.assert_allclose(y.data, reference(x.data))
    y.sum().backward()
    np.testing.assert_allclose(x.grad.data, derivative(x.data))


@pytest.mark.parametrize("expr", [lambda x: x * 2.5, lambda x: 2 * x, lambda x: x / 3,
                                  lambda x: 1 - x, lambda x: x ** 2, lambda x: 2.0 ** x,
                                  lambda x: x + np.float64(1.5), lambda x: np.int64(2) * x,
                                  lambda x: x - np.int32(1)],
                         ids=["x*2.5", "2*x", "x/3", "1-x", "x**2", "2.0**x", "x+np.float64",
                              "np.int64*x", "x-np.int32"])
def test_python_scalar_keeps_float32(expr):
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    y = expr(x)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


@pytest.mark.parametrize("other", [np.float32, np.float64])
def test_mixed_dtypes_follow_numpy_promotion(other):
    a = Tensor(np.ones(2, np.float32))
    b = Tensor(np.ones(2, other))
    assert (a + b).dtype == np.result_type(np.float32, other)
    assert (b * a).dtype == np.result_type(np.float32, other)


def test_integer_tensor_with_int_scalar_stays_int64():
    assert (Tensor(np.arange(3)) * 2).dtype == np.int64


def test_bool_tensor_with_int_scalar_counts():
    # Regression: the int took the bool dtype, so mask * 2 was True, not 2.
    mask = Tensor(np.array([True, False, True]))
    y = mask * 2
    assert y.dtype == np.int64 and y.tolist() == [2, 0, 2]
    assert (mask + 1).tolist() == [2, 1, 2]
    assert (mask * 1.5).dtype == np.float32


def test_ndarray_on_the_left_defers_to_the_tensor():
    x = leaf(2, 2)
    a = distinct(2, 2, seed=1)
    for y, expected in [(a + x, a + x.data), (a * x, a * x.data), (a @ x, a @ x.data)]:
        assert isinstance(y, Tensor)
        np.testing.assert_allclose(y.data, expected)


def test_matmul_operator():
    a, b = leaf(2, 3), leaf(3, 4, seed=1)
    np.testing.assert_allclose((a @ b).data, a.data @ b.data)
    np.testing.assert_allclose(a.matmul(b).data, a.data @ b.data)
    gradcheck(lambda a, b: a @ b, [a, b])


# ---------------------------------------------------------------- comparisons
@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">="])
def test_comparisons_give_bool_tensors_without_grad(op):
    a = leaf(2, 3)
    b = Tensor(np.where(distinct(2, 3, seed=1) > 0, a.data, 0.0))   # some ties
    compare = eval(f"lambda p, q: p {op} q")
    for rhs, raw in [(b, b.data), (0.0, 0.0)]:
        y = compare(a, rhs)
        assert y.dtype == np.bool_ and not y.requires_grad and y.grad_fn is None
        np.testing.assert_array_equal(y.data, compare(a.data, raw))


def test_tensors_hash_by_identity():
    a, b = Tensor(np.ones(2)), Tensor(np.ones(2))
    assert len({a, b, a}) == 2


# ---------------------------------------------------------------- in-place helpers
def test_setitem_on_tensor_requiring_grad_needs_no_grad():
    x = leaf(3)
    with pytest.raises(RuntimeError, match="no_grad"):
        x[0] = 5.0
    with tc.no_grad():
        x[0] = 5.0
        x[Tensor(np.array([1]))] = Tensor(np.array([6.0]))
    assert x.data[:2].tolist() == [5.0, 6.0]


def test_in_place_helpers():
    x = Tensor(np.ones(3))
    assert x.zero_() is x and x.tolist() == [0, 0, 0]
    assert x.fill_(2.0).tolist() == [2, 2, 2]
    assert x.copy_(Tensor(np.array([1.0, 2.0, 3.0]))).tolist() == [1, 2, 3]


def test_clone_copies_and_keeps_the_graph():
    x = leaf(3)
    y = x.clone()
    assert y.data is not x.data and y.requires_grad
    y.sum().backward()
    np.testing.assert_allclose(x.grad.data, np.ones(3))
    plain = Tensor(np.ones(2))
    assert not np.shares_memory(plain.clone().data, plain.data)


# ---------------------------------------------------------------- methods -> ops
def test_reduction_methods_accept_dim_keepdim_and_axis_alias():
    x = leaf(3, 4)
    np.testing.assert_allclose(x.sum(axis=1).data, x.data.sum(axis=1))
    np.testing.assert_allclose(x.mean(dim=0, keepdim=True).data, x.data.mean(0, keepdims=True))
    np.testing.assert_allclose(x.var(1).data, x.data.var(1, ddof=1))
    np.testing.assert_allclose(x.var(1, unbiased=False).data, x.data.var(1))
    np.testing.assert_allclose(x.var(axis=0, correction=0).data, x.data.var(0))
    values, indices = x.max(axis=1)
    np.testing.assert_allclose(values.data, x.data.max(1))
    np.testing.assert_array_equal(indices.data, x.data.argmax(1))
    np.testing.assert_array_equal(x.min(1).indices.data, x.data.argmin(1))
    assert x.max().item() == x.data.max() and x.min().item() == x.data.min()
    np.testing.assert_array_equal(x.argmax(axis=0).data, x.data.argmax(0))
    np.testing.assert_array_equal(x.argmin(1, keepdim=True).data,
                                  x.data.argmin(1)[:, None])
    np.testing.assert_allclose(x.amax((0, 1)).data, x.data.max())
    np.testing.assert_allclose(x.amin(0).data, x.data.min(0))


def test_shape_methods():
    x = leaf(2, 3, 4)
    assert x.reshape(6, 4).shape == (6, 4) and x.view((4, -1)).shape == (4, 6)
    assert x.flatten().shape == (24,) and x.flatten(1).shape == (2, 12)
    assert x.permute(2, 0, 1).shape == (4, 2, 3) and x.transpose(0, 2).shape == (4, 3, 2)
    assert x.T.shape == (4, 3, 2) and x[0].t().shape == (4, 3)
    assert x.unsqueeze(1).shape == (2, 1, 3, 4) and x.unsqueeze(1).squeeze().shape == (2, 3, 4)
    assert x.unsqueeze(-1).squeeze(-1).shape == (2, 3, 4) and x.contiguous() is x


def test_t_of_a_vector_is_the_vector():
    # Regression: t() of a 1-D tensor raised (PyTorch returns it unchanged).
    x = leaf(3)
    assert x.t() is x and x.T.shape == (3,)


def test_elementwise_methods_match_numpy():
    x = leaf(2, 3, low=0.1, high=2.0)
    v = x.data
    pairs = [(x.exp(), np.exp(v)), (x.log(), np.log(v)), (x.sqrt(), np.sqrt(v)),
             ((-x).abs(), v), (x.clamp(0.5, 1.5), np.clip(v, 0.5, 1.5)),
             (x.clip(max=1.0), np.minimum(v, 1.0)), ((x - 1).relu(), np.maximum(v - 1, 0)),
             (x.sigmoid(), 1 / (1 + np.exp(-v))), (x.tanh(), np.tanh(v))]
    for y, expected in pairs:
        np.testing.assert_allclose(y.data, expected)


def test_softmax_methods():
    x = leaf(2, 3)
    e = np.exp(x.data)
    np.testing.assert_allclose(x.softmax(1).data, e / e.sum(1, keepdims=True))
    np.testing.assert_allclose(x.log_softmax(-1).data, np.log(e / e.sum(1, keepdims=True)))
