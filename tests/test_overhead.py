"""The engine's fast paths stay correct: gradients reused without copies only
where nothing else holds them, float32 kept float32 by every op and optimiser,
optimiser steps without avoidable temporaries, in-place activations."""
import tracemalloc

import numpy as np
import pytest

import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from tests.inputs import distinct
from tinygrad_cnn import Tensor, autograd, nn, optim
from tinygrad_cnn.autograd import Function


def leaf(*shape, seed=0, dtype=np.float64):
    return Tensor(distinct(*shape, seed=seed).astype(dtype), requires_grad=True)


# ---------------------------------------------------------------- leaf gradients
def test_a_gradient_made_by_backward_becomes_the_leaf_grad_without_a_copy():
    made = []

    class Double(Function):
        def forward(self, x):
            return x * 2

        def backward(self, gy):
            made.append(gy * 2)
            return made[-1]

    x = leaf(3)
    Double()(x).sum().backward()
    assert x.grad.data is made[0]
    np.testing.assert_allclose(x.grad.data, np.full(3, 2.0))


def test_one_array_returned_for_two_leaves_is_copied_for_each():
    class AddShared(Function):
        def forward(self, a, b):
            return a + b

        def backward(self, gy):
            g = gy * 1
            return g, g

    a, b = leaf(3), leaf(3, seed=1)
    AddShared()(a, b).sum().backward()
    assert not np.shares_memory(a.grad.data, b.grad.data)
    a.grad.zero_()
    np.testing.assert_allclose(b.grad.data, np.ones(3))


@pytest.mark.parametrize("make", [
    lambda x: x.reshape(6),                 # backward returns a view of gy
    lambda x: x.permute(1, 0),              # a transposed view
    lambda x: x + 0,                        # Add passes gy itself through
    lambda x: x[:, :],                      # GetItem: a new array (fresh)
], ids=["reshape", "permute", "add", "getitem"])
def test_the_callers_gradient_is_never_written_through_a_leaf(make):
    x = leaf(2, 3)
    y = make(x)
    seed = np.arange(1.0, 7.0).reshape(y.shape)
    y.backward(seed.copy())
    before = x.grad.data.copy()
    x.grad.zero_()
    y2 = make(x)
    kept = seed.copy()
    y2.backward(kept)
    np.testing.assert_array_equal(kept, seed)
    assert x.grad.data.flags.writeable
    np.testing.assert_allclose(x.grad.data, before)


def test_an_array_returned_by_a_leaf_hook_is_copied():
    kept = np.ones(3)
    x = leaf(3)
    x.register_hook(lambda g: Tensor(kept))
    (x * 2).sum().backward()
    x.grad.zero_()
    np.testing.assert_array_equal(kept, np.ones(3))


# ---------------------------------------------------------------- in-place sums
def test_contributions_to_a_shared_tensor_are_summed_without_touching_the_seed():
    # h's Function receives the seed itself twice (Add passes it through): the
    # sum must be a new array, not the seed added into.
    x = leaf(3)
    h = x * 2
    seed = np.array([1.0, 2.0, 3.0])
    (h + h).backward(seed)
    np.testing.assert_array_equal(seed, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(x.grad.data, 2 * 2 * seed)


def test_fresh_contributions_are_summed_in_place_correctly():
    # h gets gy·3 and gy·4 (both new arrays), then the exp path's gy·eʰ
    x = leaf(4)
    h = x * 2
    (h * 3 + h * 4 + h.exp()).sum().backward()
    np.testing.assert_allclose(x.grad.data, (3 + 4 + np.exp(2 * x.data)) * 2)


def test_with_a_trace_hook_no_array_it_was_shown_changes(monkeypatch):
    shown = []

    def hook(event, fn, inputs, outputs):
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        for a in (*inputs, *outputs):
            if a is not None:
                shown.append((a, np.array(a, copy=True)))

    monkeypatch.setattr(autograd, "trace_hook", hook)
    x = leaf(4)
    h = x * 2
    (h * 3 + h * 4).sum().backward()
    assert shown
    for array, copy in shown:
        np.testing.assert_array_equal(array, copy)


# ---------------------------------------------------------------- float32 stays float32
def _scalar_arithmetic(x):
    return (x * 2.5 - 1.5) / (x.abs() + 0.5) ** 2 + 2.0 ** x - x.sqrt() * 0 + (-x).exp()


DTYPE_CASES = {
    "sigmoid": (lambda x: x.sigmoid(), [(4, 5)]),
    "tanh": (lambda x: x.tanh(), [(4, 5)]),
    "relu": (lambda x: x.relu(), [(4, 5)]),
    "python_scalars": (lambda x: _scalar_arithmetic(x.abs() + 0.1), [(4, 5)]),
    "log_clamp": (lambda x: (x.abs() + 1).log().clamp(-0.5, 0.5), [(4, 5)]),
    "reductions": (lambda x: x.mean(1) + x.var(0).sum() + x.max(1).values + x.amax(),
                   [(4, 5)]),
    "softmax": (lambda x: x.softmax(1) * x.log_softmax(1), [(4, 5)]),
    "cross_entropy": (lambda x: F.cross_entropy(x, np.array([0, 1, 2, 4])), [(4, 5)]),
    "nll_mse": (lambda x: F.nll_loss(x.log_softmax(1), np.array([0, 1, 2, 4]))
                + F.mse_loss(x, Tensor(np.zeros((4, 5), np.float32))), [(4, 5)]),
    "linear": (lambda x, w, b: F.linear(x, w, b), [(4, 5), (3, 5), (3,)]),
    "matmul": (lambda a, b: a @ b, [(4, 5), (5, 3)]),
    "shape_ops": (lambda x: tc.cat([x.reshape(5, 4).permute(1, 0)[1:],
                                    F.pad(x, (1, 1))[:, 1:-1][1:]], 0), [(4, 5)]),
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, padding=1), [(2, 3, 5, 5), (4, 3, 3, 3),
                                                             (4,)]),
    "pooling": (lambda x: F.max_pool2d(x, 2) + F.avg_pool2d(x, 2)
                + F.adaptive_avg_pool2d(x, 2) + F.adaptive_max_pool2d(x, 2), [(2, 3, 4, 4)]),
    "batch_norm": (lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True),
                   [(4, 3, 2, 2), (3,), (3,)]),
    "dropout": (lambda x: F.dropout(x, 0.5, training=True), [(4, 5)]),
}


@pytest.mark.parametrize("case", DTYPE_CASES)
def test_float32_stays_float32_forward_and_backward(case, monkeypatch):
    fn, shapes = DTYPE_CASES[case]
    upcasts = []

    def hook(event, op, inputs, outputs):
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        for a in (*inputs, *outputs):
            if a is not None and a.dtype.kind == "f" and a.dtype != np.float32:
                upcasts.append(f"{op.name}.{event}: {a.dtype}")

    monkeypatch.setattr(autograd, "trace_hook", hook)
    inputs = [leaf(*s, seed=i, dtype=np.float32) for i, s in enumerate(shapes)]
    y = fn(*inputs)
    assert y.dtype == np.float32
    y.sum().backward()
    assert upcasts == []
    assert all(x.grad.dtype == np.float32 for x in inputs)


OPTIMIZERS = {
    "sgd": lambda p: optim.SGD(p, lr=0.1),
    "sgd_momentum": lambda p: optim.SGD(p, lr=0.1, momentum=0.9),
    "sgd_dampening_wd": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.5,
                                            weight_decay=1e-2),
    "sgd_nesterov_wd": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                           weight_decay=1e-2),
    "adam": lambda p: optim.Adam(p, lr=0.1, weight_decay=1e-2),
    "adam_amsgrad": lambda p: optim.Adam(p, lr=0.1, amsgrad=True),
    "adamw": lambda p: optim.AdamW(p, lr=0.1),
}
# Temporaries alive at once, in parameter sizes: one, except where weight decay's
# decayed gradient lives on beside the dampened one, the look-ahead or Adam's.
TEMPORARIES = {"sgd_dampening_wd": 2, "sgd_nesterov_wd": 2, "adam": 2}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_step_keeps_float32_and_allocates_no_avoidable_temporaries(name):
    p = nn.Parameter(np.linspace(-1, 1, 2**18, dtype=np.float32))
    opt = OPTIMIZERS[name]([p])
    grad = np.linspace(1, -1, p.numel(), dtype=np.float32)
    for _ in range(2):              # the first step creates the state
        p.grad = Tensor(grad)
        opt.step()
    tracemalloc.start()
    try:
        opt.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert p.dtype == np.float32
    assert all(v.dtype == np.float32 for v in opt.state[p].values() if hasattr(v, "dtype"))
    allowed = TEMPORARIES.get(name, 1) * p.data.nbytes
    assert peak < allowed + p.data.nbytes // 4, f"{peak / p.data.nbytes:.2f} parameter sizes"


@pytest.mark.parametrize("name", ["sgd_momentum", "adam"])
def test_optimizer_state_is_updated_in_place(name):
    p = nn.Parameter(np.ones(4, dtype=np.float32))
    opt = OPTIMIZERS[name]([p])
    p.grad = Tensor(np.ones(4, dtype=np.float32))
    opt.step()
    before = {k: v for k, v in opt.state[p].items() if hasattr(v, "dtype")}
    opt.step()
    assert all(opt.state[p][k] is v for k, v in before.items())


# ---------------------------------------------------------------- activations
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4)])
def test_sigmoid_and_tanh_in_place_forms_match_the_definitions(dtype, shape):
    x = Tensor(np.linspace(-200, 200, max(1, int(np.prod(shape)))).reshape(shape).astype(dtype),
               requires_grad=True)
    gy = np.linspace(-1, 1, x.numel()).reshape(shape).astype(dtype)
    with np.errstate(over="ignore"):         # the reference's exp(-x) overflows to inf
        s = 1 / (1 + np.exp(-x.data.astype(np.float64)))
    y = x.sigmoid()
    y.backward(gy)
    assert y.dtype == dtype and x.grad.dtype == dtype
    np.testing.assert_allclose(y.data, s, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(x.grad.data, gy * s * (1 - s), rtol=1e-5, atol=1e-7)
    x.grad = None
    t = x.tanh()
    t.backward(gy)
    np.testing.assert_allclose(x.grad.data, gy * (1 - np.tanh(x.data.astype(np.float64)) ** 2),
                               rtol=1e-5, atol=1e-7)
