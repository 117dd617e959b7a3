"""Elementwise ops: explicit-loop references, float64 gradcheck over shapes and
broadcasting, torch parity (values and gradients, kinks included), dtypes."""
import math

import numpy as np
import pytest

import tinygrad_cnn as tc
from tests.inputs import distinct
from tinygrad_cnn import Tensor, gradcheck
from tinygrad_cnn.ops import elementwise as E


def leaf(shape, device="cpu", seed=0, low=-2.0, high=2.0):
    return tc.tensor(distinct(*shape, seed=seed, low=low, high=high), device=device,
                     requires_grad=True)


def host(t):
    return tc.backend.to_device(t.data, "cpu")


def loop_map(f, a):
    """Apply the scalar function ``f`` to every element, one at a time."""
    out = np.empty(a.shape)
    for i in np.ndindex(*a.shape):
        out[i] = f(float(a[i]))
    return out


def loop_broadcast(f, a, b):
    """``f(a, b)`` with broadcasting spelled out: align shapes at the right,
    a size-1 (or missing) axis reads index 0."""
    ndim = max(a.ndim, b.ndim)
    sa, sb = (1,) * (ndim - a.ndim) + a.shape, (1,) * (ndim - b.ndim) + b.shape
    shape = tuple(max(m, n) for m, n in zip(sa, sb))
    A, B = a.reshape(sa), b.reshape(sb)
    out = np.empty(shape)
    for i in np.ndindex(*shape):
        ia = tuple(k if n > 1 else 0 for k, n in zip(i, sa))
        ib = tuple(k if n > 1 else 0 for k, n in zip(i, sb))
        out[i] = f(float(A[ia]), float(B[ib]))
    return out


# ---------------------------------------------------------------- unary ops
def scalar_sigmoid(v):
    return 1 / (1 + math.exp(-v))


# Inputs of the ops with kinks (0, clamp bounds) use this range: for every size
# tested, no value lies within 0.03 of a kink (checked below), so central
# differences never straddle one.
KINKED = (-2.05, 1.95)

# name: (op, scalar reference, input range, torch op name)
UNARY = {
    "neg": (E.neg, lambda v: -v, (-2, 2), "neg"),
    "exp": (E.exp, math.exp, (-2, 2), "exp"),
    "log": (E.log, math.log, (0.1, 3), "log"),
    "sqrt": (E.sqrt, math.sqrt, (0.1, 3), "sqrt"),
    "abs": (E.abs, abs, KINKED, "abs"),
    "relu": (E.relu, lambda v: max(v, 0.0), KINKED, "relu"),
    "sigmoid": (E.sigmoid, scalar_sigmoid, (-4, 4), "sigmoid"),
    "tanh": (E.tanh, math.tanh, (-2, 2), "tanh"),
    "clamp": (lambda x: E.clamp(x, -0.5, 1.0), lambda v: min(max(v, -0.5), 1.0), KINKED,
              None),
    "clamp-min": (lambda x: E.clamp(x, min=0.3), lambda v: max(v, 0.3), KINKED, None),
    "clamp-max": (lambda x: E.clamp(x, max=-0.2), lambda v: min(v, -0.2), KINKED, None),
}
SHAPES = [(), (5,), (2, 3), (2, 1, 4)]


def test_kinked_inputs_keep_away_from_the_kinks():
    for shape in SHAPES + [(3, 4)]:
        values = distinct(*shape, low=KINKED[0], high=KINKED[1]).reshape(-1, 1)
        assert np.abs(values - np.array([0.0, -0.5, 1.0, 0.3, -0.2])).min() > 0.03


@pytest.mark.parametrize("name", UNARY)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_unary_forward_matches_loop_reference(name, dtype):
    op, scalar, (low, high), _ = UNARY[name]
    x = Tensor(distinct(3, 4, low=low, high=high, dtype=dtype))
    y = op(x)
    assert y.dtype == dtype and y.shape == (3, 4)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y.data, loop_map(scalar, x.data), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", UNARY)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_unary_gradcheck(name, shape, device):
    op, _, (low, high), _ = UNARY[name]
    gradcheck(op, [leaf(shape, device, low=low, high=high)])


# Values at and around the kinks, where PyTorch's conventions decide the gradient.
KINKS = np.array([-1.0, -0.5, -0.3, 0.0, 0.3, 1.0, 1.5])


@pytest.mark.parametrize("name", UNARY)
def test_unary_torch_parity(name):
    torch = pytest.importorskip("torch")
    op, _, (low, high), torch_name = UNARY[name]
    values = np.concatenate([distinct(6, low=low, high=high),
                             KINKS if low < 0 else KINKS[KINKS > 0]])
    x = Tensor(values.copy(), requires_grad=True)
    tx = torch.tensor(values, requires_grad=True)
    g = distinct(values.size, seed=9)
    if torch_name is not None:
        ty = getattr(torch, torch_name)(tx)
    else:
        ty = {"clamp": lambda t: t.clamp(-0.5, 1.0), "clamp-min": lambda t: t.clamp(min=0.3),
              "clamp-max": lambda t: t.clamp(max=-0.2)}[name](tx)
    y = op(x)
    y.backward(g)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(x.grad.data, tx.grad.numpy(), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_saturates_without_overflow(dtype):
    x = Tensor(np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0], dtype=dtype), requires_grad=True)
    y = x.sigmoid()            # RuntimeWarnings are errors in this suite
    assert y.dtype == dtype
    np.testing.assert_allclose(y.data, [0, 0, 0.5, 1, 1], atol=1e-7)
    y.sum().backward()
    assert np.all(np.isfinite(x.grad.data))


def test_clamp_needs_a_bound():
    with pytest.raises(ValueError, match="clamp: at least one of min and max"):
        E.clamp(Tensor(np.ones(2)))


def test_ops_on_tensors_without_grad_save_nothing():
    for name, (op, *_rest) in UNARY.items():
        y = op(Tensor(distinct(3, low=0.1, high=2.0)))
        assert y.grad_fn is None, name


# ---------------------------------------------------------------- binary ops
BINARY = {
    "add": (E.add, lambda a, b: a + b),
    "sub": (E.sub, lambda a, b: a - b),
    "mul": (E.mul, lambda a, b: a * b),
    "div": (E.div, lambda a, b: a / b),
    "pow": (E.pow, lambda a, b: a ** b),
}
# (a's shape, b's shape): equal, scalar on either side, (1,), (N, 1), both stretched,
# and b with fewer dims than a and vice versa.
BROADCAST = [((2, 3), (2, 3)), ((2, 3), ()), ((), (2, 3)), ((2, 3), (1,)), ((3, 1), (3, 4)),
             ((2, 1), (1, 3)), ((4, 1, 3), (2, 1)), ((3,), (2, 2, 3))]


def binary_inputs(shapes, device, requires=(True, True)):
    # Positive values: pow needs a > 0 (log a) and div keeps away from b = 0.
    a = tc.tensor(distinct(*shapes[0], low=0.5, high=2.0), device=device,
                  requires_grad=requires[0])
    b = tc.tensor(distinct(*shapes[1], seed=1, low=0.5, high=2.0), device=device,
                  requires_grad=requires[1])
    return a, b


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("shapes", BROADCAST, ids=str)
def test_binary_forward_matches_loop_reference(name, shapes):
    op, scalar = BINARY[name]
    a, b = binary_inputs(shapes, "cpu")
    np.testing.assert_allclose(op(a, b).data, loop_broadcast(scalar, a.data, b.data),
                               rtol=1e-14)


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("shapes", BROADCAST, ids=str)
@pytest.mark.parametrize("requires", [(True, True), (True, False), (False, True)],
                         ids=["both", "a-only", "b-only"])
def test_binary_gradcheck(name, shapes, requires, device):
    op, _ = BINARY[name]
    a, b = binary_inputs(shapes, device, requires)
    gradcheck(op, [a, b])
    grads = [t.grad for t in (a, b)]
    assert grads == [None, None]   # gradcheck leaves .grad as it found it
    op(a, b).sum().backward()
    for t, need in zip((a, b), requires):
        assert (t.grad is not None) == need
        if need:
            assert t.grad.shape == t.shape


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("shapes", [((3, 1), (3, 4)), ((2, 3), ()), ((3,), (2, 2, 3))],
                         ids=str)
def test_binary_torch_parity(name, shapes):
    torch = pytest.importorskip("torch")
    op, scalar = BINARY[name]
    a, b = binary_inputs(shapes, "cpu")
    ta = torch.tensor(a.data, requires_grad=True)
    tb = torch.tensor(b.data, requires_grad=True)
    y, ty = op(a, b), scalar(ta, tb)
    g = distinct(*y.shape, seed=7)
    y.backward(g)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(a.grad.data, ta.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(b.grad.data, tb.grad.numpy(), rtol=1e-12)


def test_pow_exponent_gradient_is_zero_at_zero_base():
    # d(a^b)/db = a^b log a; PyTorch gives 0 at a = 0 rather than NaN.
    a = Tensor(np.array([0.0, 2.0]))
    b = Tensor(np.array([2.0, 3.0]), requires_grad=True)
    E.pow(a, b).sum().backward()
    np.testing.assert_allclose(b.grad.data, [0.0, 8 * np.log(2)])


def test_mul_by_constant_saves_only_the_constant():
    x = leaf((3,))
    y = E.mul(x, 2.0)
    a_saved, b_saved = y.grad_fn.saved
    assert a_saved is None and b_saved is not None


# ---------------------------------------------------------------- unbroadcast
@pytest.mark.parametrize("grad_shape, shape", [((2, 3), (2, 3)), ((2, 3), ()), ((2, 3), (1,)),
                                               ((2, 3), (3,)), ((2, 3), (2, 1)),
                                               ((4, 2, 3), (2, 1)), ((4, 2, 3), (1, 1, 3))],
                         ids=str)
def test_unbroadcast_sums_over_the_stretched_axes(grad_shape, shape):
    g = distinct(*grad_shape)
    out = E.unbroadcast(g, shape)
    assert out.shape == shape
    # Reference: add each element of g into the input position that produced it.
    expected = np.zeros(shape)
    full = (1,) * (len(grad_shape) - len(shape)) + shape
    for i in np.ndindex(*grad_shape):
        j = tuple(k if n > 1 else 0 for k, n in zip(i, full))[len(grad_shape) - len(shape):]
        expected[j] += g[i]
    np.testing.assert_allclose(out, expected)


# ---------------------------------------------------------------- dtype promotion
# PyTorch's rule where NumPy's differs: an integer operand takes its float
# partner's dtype, and integer division gives the default float (float32).
PROMOTIONS = [
    ("int64 * 0.5", lambda a, f32, f64: a * 0.5, np.float32),
    ("0.5 * int64", lambda a, f32, f64: 0.5 * a, np.float32),
    ("int64 + 1", lambda a, f32, f64: a + 1, np.int64),
    ("int64 / 2", lambda a, f32, f64: a / 2, np.float32),
    ("2 / int64", lambda a, f32, f64: 2 / a, np.float32),
    ("int64 / int64", lambda a, f32, f64: a / a, np.float32),
    ("int64 ** 0.5", lambda a, f32, f64: a ** 0.5, np.float32),
    ("int64 * float32", lambda a, f32, f64: a * f32, np.float32),
    ("float64 - int64", lambda a, f32, f64: f64 - a, np.float64),
    ("bool * float32", lambda a, f32, f64: (a > 1) * f32, np.float32),
]


@pytest.mark.parametrize("expression, expected", [(e, d) for e, _, d in PROMOTIONS],
                         ids=[e for e, _, _ in PROMOTIONS])
def test_mixed_dtypes_promote_as_pytorch(expression, expected):
    f = {e: f for e, f, _ in PROMOTIONS}[expression]
    a = Tensor(np.array([1, 2, 3]))
    f32, f64 = Tensor(np.ones(3, np.float32)), Tensor(np.ones(3))
    y = f(a, f32, f64)
    assert y.dtype == expected
    np.testing.assert_allclose(y.numpy(), f(a.numpy(), f32.numpy(), f64.numpy()), rtol=1e-6)
    torch = pytest.importorskip("torch")
    t = f(torch.tensor([1, 2, 3]), torch.ones(3), torch.ones(3, dtype=torch.float64))
    assert str(t.dtype) == f"torch.{np.dtype(expected).name}"
