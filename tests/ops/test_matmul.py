"""matmul (NumPy @ semantics: 1-D promotion, batch broadcasting) and linear:
triple-loop reference, float64 gradcheck, torch parity, argument checking."""
import numpy as np
import pytest

import tinygrad_cnn as tc
from tests.inputs import distinct
from tinygrad_cnn import Tensor, gradcheck
from tinygrad_cnn.ops.matmul import linear, matmul


def loop_matmul(a, b):
    """The definition: promote 1-D operands, broadcast the batch axes, then
    y[..., i, j] = Σ_k a[..., i, k] b[..., k, j], one product at a time."""
    A = a.reshape(1, -1) if a.ndim == 1 else a
    B = b.reshape(-1, 1) if b.ndim == 1 else b
    batch = np.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    A = np.broadcast_to(A, batch + A.shape[-2:])
    B = np.broadcast_to(B, batch + B.shape[-2:])
    n, K, m = A.shape[-2], A.shape[-1], B.shape[-1]
    out = np.zeros(batch + (n, m))
    for p in np.ndindex(*batch):
        for i in range(n):
            for j in range(m):
                for k in range(K):
                    out[p + (i, j)] += A[p + (i, k)] * B[p + (k, j)]
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return out


MATMUL_SHAPES = [((2, 3), (3, 4)), ((3,), (3,)), ((3,), (3, 4)), ((2, 3), (3,)),
                 ((2, 2, 3), (3, 4)), ((2, 3), (2, 3, 4)), ((5, 1, 2, 3), (4, 3, 2)),
                 ((3,), (2, 3, 4)), ((2, 3, 4), (4,)), ((1, 1), (1, 1))]


def inputs(shapes, device="cpu", requires=(True, True)):
    return [tc.tensor(distinct(*s, seed=k), device=device, requires_grad=r)
            for k, (s, r) in enumerate(zip(shapes, requires))]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_forward_matches_loops(shapes):
    a, b = inputs(shapes)
    y = matmul(a, b)
    expected = loop_matmul(a.data, b.data)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.data, expected, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
@pytest.mark.parametrize("requires", [(True, True), (True, False), (False, True)],
                         ids=["both", "a-only", "b-only"])
def test_matmul_gradcheck(shapes, requires, device):
    a, b = inputs(shapes, device, requires)
    gradcheck(matmul, [a, b])


@pytest.mark.parametrize("shapes", [((2, 3), (3, 4)), ((3,), (2, 3, 4)), ((5, 1, 2, 3), (4, 3, 2))],
                         ids=str)
def test_matmul_torch_parity(shapes):
    torch = pytest.importorskip("torch")
    a, b = inputs(shapes)
    ta, tb = (torch.tensor(t.data, requires_grad=True) for t in (a, b))
    y, ty = matmul(a, b), ta @ tb
    g = distinct(*y.shape, seed=8)
    y.backward(g)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(a.grad.data, ta.grad.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b.grad.data, tb.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_matmul_saves_only_what_each_gradient_needs():
    a, b = inputs(((2, 3), (3, 4)), requires=(True, False))
    saved_a, saved_b = matmul(a, b).grad_fn.saved
    assert saved_a is None and saved_b is not None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_keeps_dtype(dtype):
    a = Tensor(distinct(2, 3, dtype=dtype), requires_grad=True)
    y = matmul(a, Tensor(distinct(3, 2, dtype=dtype)))
    assert y.dtype == dtype
    y.sum().backward()
    assert a.grad.dtype == dtype


@pytest.mark.parametrize("shapes, message", [
    (((2, 3), (4, 5)), r"matmul: shapes \(2, 3\) and \(4, 5\) cannot be multiplied \(3 != 4\)"),
    (((3,), (4,)), r"matmul: shapes \(3,\) and \(4,\) cannot be multiplied"),
    (((2, 3), (2,)), r"matmul: shapes \(2, 3\) and \(2,\) cannot be multiplied \(3 != 2\)"),
    (((2, 2, 3), (2, 3)), r"matmul: shapes \(2, 2, 3\) and \(2, 3\) cannot be multiplied"),
    (((), (3,)), r"matmul: both arguments need at least 1 dimension, got shapes \(\) and \(3,\)"),
], ids=str)
def test_matmul_shape_mismatch(shapes, message):
    # (regression: 1-D operands used to be reported with their promoted shapes)
    a, b = inputs(shapes)
    with pytest.raises(ValueError, match=message):
        matmul(a, b)


def test_incompatible_batch_axes_raise():
    a, b = inputs(((2, 2, 3), (3, 3, 4)))
    with pytest.raises(ValueError, match=r"matmul: the batch axes of shapes \(2, 2, 3\) and "
                                         r"\(3, 3, 4\) do not broadcast"):
        matmul(a, b)


# ---------------------------------------------------------------- linear
def loop_linear(x, W, b):
    """y[..., o] = b[o] + Σ_i x[..., i] W[o, i]"""
    out = np.zeros(x.shape[:-1] + (W.shape[0],))
    for p in np.ndindex(*x.shape[:-1]):
        for o in range(W.shape[0]):
            total = b[o] if b is not None else 0.0
            for i in range(W.shape[1]):
                total += x[p + (i,)] * W[o, i]
            out[p + (o,)] = total
    return out


LINEAR = [((4, 3), 2, True), ((4, 3), 2, False), ((3,), 5, True), ((2, 3, 4), 2, True),
          ((1, 1), 1, True)]
LINEAR_IDS = [f"x{x}-out{o}-{'bias' if b else 'nobias'}" for x, o, b in LINEAR]


def linear_inputs(x_shape, out, bias, device="cpu"):
    x = tc.tensor(distinct(*x_shape), device=device, requires_grad=True)
    W = tc.tensor(distinct(out, x_shape[-1], seed=1), device=device, requires_grad=True)
    b = tc.tensor(distinct(out, seed=2), device=device, requires_grad=True) if bias else None
    return x, W, b


@pytest.mark.parametrize("x_shape, out, bias", LINEAR, ids=LINEAR_IDS)
def test_linear_forward_matches_loops(x_shape, out, bias):
    x, W, b = linear_inputs(x_shape, out, bias)
    y = linear(x, W, b)
    expected = loop_linear(x.data, W.data, b.data if bias else None)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.data, expected, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("x_shape, out, bias", LINEAR, ids=LINEAR_IDS)
def test_linear_gradcheck(x_shape, out, bias, device):
    args = [t for t in linear_inputs(x_shape, out, bias, device) if t is not None]
    gradcheck(linear, args)


@pytest.mark.parametrize("frozen", [0, 1, 2], ids=["x", "W", "b"])
def test_linear_gradcheck_with_one_input_frozen(frozen):
    args = list(linear_inputs((3, 4), 2, True))
    args[frozen] = args[frozen].detach()
    gradcheck(linear, args)


@pytest.mark.parametrize("x_shape, out, bias", LINEAR[:4], ids=LINEAR_IDS[:4])
def test_linear_torch_parity(x_shape, out, bias):
    torch = pytest.importorskip("torch")
    x, W, b = linear_inputs(x_shape, out, bias)
    tx, tW = (torch.tensor(t.data, requires_grad=True) for t in (x, W))
    tb = torch.tensor(b.data, requires_grad=True) if bias else None
    y, ty = linear(x, W, b), torch.nn.functional.linear(tx, tW, tb)
    g = distinct(*y.shape, seed=6)
    y.backward(g)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-13)
    for ours, theirs in [(x, tx), (W, tW)] + ([(b, tb)] if bias else []):
        np.testing.assert_allclose(ours.grad.data, theirs.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("x_shape, w_shape, b_shape, message", [
    ((4, 3), (2, 5), None, r"linear: input has 3 features \(shape \(4, 3\)\) but weight of "
                           r"shape \(2, 5\) expects 5"),
    ((2, 4, 3), (2, 4), None, r"linear: input has 3 features \(shape \(2, 4, 3\)\)"),
    ((4, 3), (2, 3, 1), None, r"linear: weight must be 2-D \(out, in\), got shape \(2, 3, 1\)"),
    ((4, 3), (2, 3), (3,), r"linear: bias shape \(3,\) does not match weight's 2 outputs"),
    ((), (2, 3), None, r"linear: input has 0 features \(shape \(\)\)"),
], ids=["features", "features-3d", "weight-3d", "bias", "0d-input"])
def test_linear_bad_shapes(x_shape, w_shape, b_shape, message):
    x = Tensor(distinct(*x_shape))
    W = Tensor(distinct(*w_shape))
    b = Tensor(distinct(*b_shape)) if b_shape else None
    with pytest.raises(ValueError, match=message):
        linear(x, W, b)


def test_linear_integer_input():
    with pytest.raises(TypeError, match="linear: expected a floating-point input, got dtype int64"):
        linear(Tensor(np.ones((2, 3), np.int64)), Tensor(distinct(2, 3)))


@pytest.mark.parametrize("weight_grad", [True, False])
@pytest.mark.parametrize("op", ["linear", "matmul"])
def test_products_go_through_the_kernel_interface(op, weight_grad):
    # so the CPU set's rules apply to them (a small product on one thread, kernels/shares_threads.py);
    # the backward's two products go together, which lets the kernels run them side by side
    import kernels
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((5, 4)), requires_grad=True)
    W = Tensor(rng.standard_normal((3, 4)), requires_grad=weight_grad)
    with kernels.counting() as calls:
        y = linear(x, W) if op == "linear" else matmul(x, W.T)
        y.sum().backward()
    if weight_grad:
        assert (calls["matmul"], calls["matmuls"]) == (1, 1)    # y; dx and dW together
    else:
        assert (calls["matmul"], calls["matmuls"]) == (2, 0)    # y; dx alone
    assert W.grad is None if not weight_grad else W.grad.shape == (3, 4)
