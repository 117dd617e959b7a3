"""max_pool2d, avg_pool2d, adaptive_avg_pool2d, adaptive_max_pool2d (and max_pool2d_simple)."""
import math

import numpy as np
import pytest

from tinygrad_cnn import Tensor, gradcheck
from tinygrad_cnn.backend import to_device
from tinygrad_cnn.ops.pooling import (adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d,
                                      max_pool2d, max_pool2d_simple)
from tests.inputs import distinct
from tests.kernels.test_pool_kernels import loop_avg_pool, loop_max_pool


def pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


# ---------------------------------------------------------------- configurations
# (input shape, keyword arguments); batch 1 and 3, square and not
MAX_CONFIGS = {
    "k2": ((1, 2, 4, 6), dict(kernel_size=2)),
    "k3-s1-pad1": ((3, 2, 5, 5), dict(kernel_size=3, stride=1, padding=1)),
    "k3-s2-alexnet": ((1, 2, 7, 7), dict(kernel_size=3, stride=2)),
    "k3-s2-pad1-ceil": ((3, 1, 6, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    "k3-s2-ceil-googlenet": ((1, 2, 6, 6), dict(kernel_size=3, stride=2, ceil_mode=True)),
    "non-square": ((1, 2, 5, 7), dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0))),
    "dilated": ((1, 1, 7, 6), dict(kernel_size=2, stride=1, padding=1, dilation=2)),
}
AVG_CONFIGS = {name: cfg for name, cfg in MAX_CONFIGS.items() if "dilation" not in cfg[1]}
AVG_VARIANTS = [dict(count_include_pad=True), dict(count_include_pad=False),
                dict(divisor_override=4)]
# (input shape, output_size): smaller, larger than the input, overlapping bins, None
ADAPTIVE_CONFIGS = {
    "global": ((3, 2, 5, 4), (1, 1)),
    "global-int": ((2, 3, 6, 5), 1),
    "2x3": ((1, 2, 5, 7), (2, 3)),
    "larger-than-input": ((1, 2, 4, 5), (5, 7)),
    "divisible": ((1, 1, 8, 6), 2),
    "overlapping-bins": ((3, 1, 7, 5), (3, 3)),
    "keep-width": ((1, 2, 6, 5), (4, None)),
}


def leaf(shape, device="cpu", dtype=np.float64, **kw):
    return Tensor(to_device(distinct(*shape, dtype=dtype, **kw), device), requires_grad=True)


def cpu(tensor):
    return to_device(tensor.data, "cpu")


def geometry(kw):
    """The loop references' (kernel, stride, padding) pairs for a config's kwargs."""
    k = pair(kw["kernel_size"])
    return k, pair(kw.get("stride") or k), pair(kw.get("padding", 0))


# ---------------------------------------------------------------- loop references (adaptive)
def adaptive_bins(size, out):
    return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]


def loop_adaptive_pool(x, out, reduce):
    n_, c_, h, w = x.shape
    oh_, ow_ = (n if o is None else o for o, n in zip(pair(out), (h, w)))
    y = np.zeros((n_, c_, oh_, ow_))
    for n, c in np.ndindex(n_, c_):
        for i, (top, bottom) in enumerate(adaptive_bins(h, oh_)):
            for j, (left, right) in enumerate(adaptive_bins(w, ow_)):
                y[n, c, i, j] = reduce([x[n, c, r, col] for r in range(top, bottom)
                                        for col in range(left, right)])
    return y


# ---------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("name", list(MAX_CONFIGS))
def test_max_pool2d_gradcheck(name):
    shape, kw = MAX_CONFIGS[name]
    gradcheck(lambda x: max_pool2d(x, **kw), leaf(shape))


@pytest.mark.parametrize("variant", AVG_VARIANTS, ids=str)
@pytest.mark.parametrize("name", list(AVG_CONFIGS))
def test_avg_pool2d_gradcheck(name, variant):
    shape, kw = AVG_CONFIGS[name]
    gradcheck(lambda x: avg_pool2d(x, **kw, **variant), leaf(shape))


@pytest.mark.parametrize("pool", [adaptive_avg_pool2d, adaptive_max_pool2d])
@pytest.mark.parametrize("name", list(ADAPTIVE_CONFIGS))
def test_adaptive_pool_gradcheck(name, pool):
    shape, out = ADAPTIVE_CONFIGS[name]
    gradcheck(lambda x: pool(x, out), leaf(shape))


@pytest.mark.parametrize("pool, kw", [(max_pool2d, dict(kernel_size=3, stride=2, padding=1)),
                                      (avg_pool2d, dict(kernel_size=3, stride=2, padding=1)),
                                      (adaptive_avg_pool2d, dict(output_size=(2, 3))),
                                      (adaptive_max_pool2d, dict(output_size=(2, 3)))],
                         ids=lambda v: getattr(v, "__name__", ""))
def test_unbatched_3d_input_matches_batch_of_one(pool, kw):
    x3, x4 = leaf((2, 5, 6)), leaf((1, 2, 5, 6))
    y3, y4 = pool(x3, **kw), pool(x4, **kw)
    assert y3.shape == y4.shape[1:]
    np.testing.assert_array_equal(y3.data, y4.data[0])
    gy = distinct(*y3.shape, seed=3)
    y3.backward(gy)
    y4.backward(gy[None])
    np.testing.assert_array_equal(x3.grad.data, x4.grad.data[0])
    gradcheck(lambda x: pool(x, **kw), x3)


# ---------------------------------------------------------------- max pooling specifics
def test_cell_winning_overlapping_max_windows_gets_the_sum_of_their_gradients():
    x = leaf((1, 1, 5, 5))
    x.data[0, 0, 2, 2] = 10.0                     # the max of every 3x3 window around it
    y = max_pool2d(x, kernel_size=3, stride=1)    # nine overlapping windows, all contain it
    gy = distinct(*y.shape, seed=1, low=0.5, high=2.0)   # positive: the sum cannot cancel
    y.backward(gy)
    windows_holding_it = [(oh, ow) for oh in range(y.shape[2]) for ow in range(y.shape[3])
                          if oh <= 2 < oh + 3 and ow <= 2 < ow + 3]
    assert len(windows_holding_it) > 1
    expected = sum(gy[0, 0, oh, ow] for oh, ow in windows_holding_it)
    assert x.grad.data[0, 0, 2, 2] == pytest.approx(expected, rel=1e-12)
    assert np.count_nonzero(x.grad.data) == 1     # no other cell won anything


def test_max_pool2d_padding_never_wins_on_negative_input():
    x = Tensor(distinct(2, 3, 5, 6, low=-3.0, high=-1.0))
    y = max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
    assert (y.data < 0).all() and np.isfinite(y.data).all()
    k, s, p = geometry(dict(kernel_size=3, stride=2, padding=1))
    np.testing.assert_array_equal(y.data, loop_max_pool(x.data, k, s, p, ceil_mode=True)[0])


# max_pool2d_simple has no padding, dilation or ceil_mode
SIMPLE_CONFIGS = [name for name, (_, kw) in MAX_CONFIGS.items()
                  if not {"padding", "dilation", "ceil_mode"} & set(kw)]


@pytest.mark.parametrize("name", SIMPLE_CONFIGS)
def test_max_pool2d_simple_matches_max_pool2d(name):
    shape, kw = MAX_CONFIGS[name]
    x_simple, x_fast = leaf(shape), leaf(shape)
    y_simple = max_pool2d_simple(x_simple, kw["kernel_size"], kw.get("stride"))
    y_fast = max_pool2d(x_fast, **kw)
    np.testing.assert_array_equal(y_simple.data, y_fast.data)
    gy = distinct(*y_fast.shape, seed=1)
    y_simple.backward(gy)
    y_fast.backward(gy)
    np.testing.assert_allclose(x_simple.grad.data, x_fast.grad.data, rtol=1e-12, atol=1e-12)


def test_max_pool2d_simple_overlapping_windows_and_ties():
    """Overlap (stride < kernel) and ties exercise the same routing as max_pool2d."""
    values = np.random.default_rng(0).integers(0, 3, size=(2, 2, 6, 5)).astype(np.float64)
    x_simple, x_fast = Tensor(values, requires_grad=True), Tensor(values, requires_grad=True)
    y_simple, y_fast = max_pool2d_simple(x_simple, 3, 1), max_pool2d(x_fast, 3, 1)
    gy = distinct(*y_fast.shape, seed=1)
    y_simple.backward(gy)
    y_fast.backward(gy)
    np.testing.assert_array_equal(y_simple.data, y_fast.data)
    np.testing.assert_allclose(x_simple.grad.data, x_fast.grad.data, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- forward vs explicit loops
@pytest.mark.parametrize("name", list(MAX_CONFIGS))
def test_max_pool2d_forward_matches_loops(name):
    shape, kw = MAX_CONFIGS[name]
    x = Tensor(distinct(*shape))
    k, s, p = geometry(kw)
    expected, _ = loop_max_pool(x.data, k, s, p, pair(kw.get("dilation", 1)),
                                kw.get("ceil_mode", False))
    np.testing.assert_array_equal(max_pool2d(x, **kw).data, expected)


@pytest.mark.parametrize("variant", AVG_VARIANTS, ids=str)
@pytest.mark.parametrize("name", list(AVG_CONFIGS))
def test_avg_pool2d_forward_matches_loops(name, variant):
    shape, kw = AVG_CONFIGS[name]
    x = Tensor(distinct(*shape))
    k, s, p = geometry(kw)
    expected = loop_avg_pool(x.data, k, s, p, kw.get("ceil_mode", False),
                             variant.get("count_include_pad", True),
                             variant.get("divisor_override"))
    np.testing.assert_allclose(avg_pool2d(x, **kw, **variant).data, expected, rtol=1e-12)


@pytest.mark.parametrize("pool, reduce", [(adaptive_avg_pool2d, np.mean),
                                          (adaptive_max_pool2d, max)], ids=["avg", "max"])
@pytest.mark.parametrize("name", list(ADAPTIVE_CONFIGS))
def test_adaptive_pool_forward_matches_loops(name, pool, reduce):
    shape, out = ADAPTIVE_CONFIGS[name]
    x = Tensor(distinct(*shape))
    np.testing.assert_allclose(pool(x, out).data, loop_adaptive_pool(x.data, out, reduce),
                               rtol=1e-12)


# ---------------------------------------------------------------- torch parity
def torch_parity(ours, theirs, shape, device):
    """Run both on the same float64 input and upstream gradient; compare y and dx."""
    torch = pytest.importorskip("torch")
    x = leaf(shape, device)
    xt = torch.tensor(distinct(*shape), requires_grad=True)
    y, yt = ours(x), theirs(xt)
    y, yt = (y[0], yt[0]) if isinstance(y, tuple) else (y, yt)
    assert y.shape == tuple(yt.shape)
    np.testing.assert_allclose(cpu(y), yt.detach().numpy(), rtol=1e-12, atol=1e-14)
    gy = distinct(*y.shape, seed=1)
    y.backward(to_device(gy, device))
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(cpu(x.grad), xt.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(MAX_CONFIGS))
def test_max_pool2d_matches_torch(name, device):
    torch = pytest.importorskip("torch")
    shape, kw = MAX_CONFIGS[name]
    torch_parity(lambda x: max_pool2d(x, **kw),
                 lambda x: torch.nn.functional.max_pool2d(x, **kw), shape, device)


@pytest.mark.parametrize("name", list(MAX_CONFIGS) + ["ties"])
def test_max_pool2d_return_indices_match_torch(name, device):
    torch = pytest.importorskip("torch")
    shape, kw = MAX_CONFIGS.get(name, MAX_CONFIGS["k3-s1-pad1"])
    values = distinct(*shape) if name != "ties" else \
        np.random.default_rng(0).integers(0, 3, size=shape).astype(np.float64)
    y, indices = max_pool2d(Tensor(to_device(values, device)), **kw, return_indices=True)
    yt, indices_t = torch.nn.functional.max_pool2d(torch.tensor(values), **kw,
                                                   return_indices=True)
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(cpu(y), yt.numpy())
    np.testing.assert_array_equal(cpu(indices), indices_t.numpy())


@pytest.mark.parametrize("variant", AVG_VARIANTS, ids=str)
@pytest.mark.parametrize("name", list(AVG_CONFIGS))
def test_avg_pool2d_matches_torch(name, variant, device):
    torch = pytest.importorskip("torch")
    shape, kw = AVG_CONFIGS[name]
    torch_parity(lambda x: avg_pool2d(x, **kw, **variant),
                 lambda x: torch.nn.functional.avg_pool2d(x, **kw, **variant), shape, device)


@pytest.mark.parametrize("op", ["adaptive_avg_pool2d", "adaptive_max_pool2d"])
@pytest.mark.parametrize("name", list(ADAPTIVE_CONFIGS))
def test_adaptive_pool_matches_torch(name, op, device):
    torch = pytest.importorskip("torch")
    shape, out = ADAPTIVE_CONFIGS[name]
    ours = {"adaptive_avg_pool2d": adaptive_avg_pool2d,
            "adaptive_max_pool2d": adaptive_max_pool2d}[op]
    torch_parity(lambda x: ours(x, out),
                 lambda x: getattr(torch.nn.functional, op)(x, out), shape, device)


@pytest.mark.parametrize("name", list(ADAPTIVE_CONFIGS))
def test_adaptive_max_pool2d_return_indices_match_torch(name):
    torch = pytest.importorskip("torch")
    shape, out = ADAPTIVE_CONFIGS[name]
    values = distinct(*shape)
    _, indices = adaptive_max_pool2d(Tensor(values), out, return_indices=True)
    _, indices_t = torch.nn.functional.adaptive_max_pool2d(torch.tensor(values), out,
                                                           return_indices=True)
    np.testing.assert_array_equal(indices.data, indices_t.numpy())


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_output_sizes_and_errors_match_torch_over_a_sweep(op):
    """Every small geometry, ceil_mode on and off: same shape and values as PyTorch,
    and a ValueError exactly where PyTorch refuses the geometry."""
    torch = pytest.importorskip("torch")
    ours, theirs = {"max_pool2d": (max_pool2d, torch.nn.functional.max_pool2d),
                    "avg_pool2d": (avg_pool2d, torch.nn.functional.avg_pool2d)}[op]
    for size in range(1, 8):
        values = distinct(1, 1, size, size + 1)
        for k in range(1, 5):
            for s in range(1, 4):
                for p in range(k // 2 + 1):
                    for ceil_mode in (False, True):
                        kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil_mode)
                        try:
                            expected = theirs(torch.tensor(values), **kw).numpy()
                        except RuntimeError:
                            with pytest.raises(ValueError, match=f"{op}.*output size"):
                                ours(Tensor(values), **kw)
                            continue
                        np.testing.assert_allclose(ours(Tensor(values), **kw).data, expected,
                                                   rtol=1e-12, err_msg=str((size, kw)))


def test_max_pool2d_propagates_nan_like_torch():
    torch = pytest.importorskip("torch")
    values = distinct(1, 1, 4, 4)
    values[0, 0, 1, 1] = np.nan
    y, indices = max_pool2d(Tensor(values), 3, 1, 1, return_indices=True)
    yt, indices_t = torch.nn.functional.max_pool2d(torch.tensor(values), 3, 1, 1,
                                                   return_indices=True)
    np.testing.assert_array_equal(y.data, yt.numpy())      # NaNs compare equal here
    np.testing.assert_array_equal(indices.data, indices_t.numpy())


# ---------------------------------------------------------------- global average pool
@pytest.mark.parametrize("output_size", [1, (1, 1), (1, None)], ids=str)
def test_global_average_pool_is_the_mean_over_each_plane(output_size):
    # (1, None) keeps a width of 1: the same global pool, spelled differently
    x = leaf((2, 3, 4, 1) if output_size == (1, None) else (2, 3, 4, 5))
    y = adaptive_avg_pool2d(x, output_size)
    np.testing.assert_allclose(y.data, x.data.mean(axis=(2, 3), keepdims=True), rtol=1e-12)
    gy = distinct(*y.shape, seed=1)
    y.backward(gy)
    area = x.shape[2] * x.shape[3]
    np.testing.assert_allclose(x.grad.data, np.broadcast_to(gy / area, x.shape), rtol=1e-12)


def test_global_average_pool_gradient_is_an_ordinary_array():
    # not a read-only broadcast view: the ops downstream read it as they read any array
    x = leaf((2, 3, 4, 5))
    y = adaptive_avg_pool2d(x, 1)
    gx = y._ctx.backward(np.ones(y.shape))
    assert gx.shape == x.shape and gx.flags.c_contiguous and gx.flags.writeable


# ---------------------------------------------------------------- float32 against torch
@pytest.mark.parametrize("op, kw", [
    ("max_pool2d", dict(kernel_size=3, stride=2, padding=1)),
    ("max_pool2d", dict(kernel_size=3, stride=2, ceil_mode=True)),
    ("avg_pool2d", dict(kernel_size=2)),
    ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ("adaptive_avg_pool2d", dict(output_size=1)),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={w}" for k, w in v.items()))
def test_float32_matches_torch(op, kw):
    """The float32 path of each kernel set, forward and backward, on a ResNet-like
    block of 8 planes, against PyTorch's float32 CPU kernels."""
    torch = pytest.importorskip("torch")
    ours = {"max_pool2d": max_pool2d, "avg_pool2d": avg_pool2d,
            "adaptive_avg_pool2d": adaptive_avg_pool2d}[op]
    values = np.random.default_rng(0).standard_normal((2, 4, 13, 12)).astype(np.float32)
    x, xt = Tensor(values, requires_grad=True), torch.tensor(values, requires_grad=True)
    y, yt = ours(x, **kw), getattr(torch.nn.functional, op)(xt, **kw)
    np.testing.assert_allclose(y.data, yt.detach().numpy(), rtol=1e-6, atol=1e-6)
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    y.backward(gy)
    yt.backward(torch.tensor(gy))
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad.data, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- dtypes
@pytest.mark.parametrize("pool, kw", [(max_pool2d, dict(kernel_size=3, stride=2, padding=1)),
                                      (avg_pool2d, dict(kernel_size=3, stride=2, padding=1,
                                                        ceil_mode=True)),
                                      (adaptive_avg_pool2d, dict(output_size=(2, 3))),
                                      (adaptive_max_pool2d, dict(output_size=(2, 3))),
                                      (max_pool2d_simple, dict(kernel_size=2))],
                         ids=lambda v: getattr(v, "__name__", ""))
def test_float32_in_float32_out(pool, kw):
    x = leaf((2, 3, 6, 7), dtype=np.float32)
    y = pool(x, **kw)
    assert y.dtype == np.float32
    y.backward(np.ones(y.shape, dtype=np.float32))
    assert x.grad.dtype == np.float32


# ---------------------------------------------------------------- bad input
def x4():
    return Tensor(distinct(1, 2, 5, 5))


@pytest.mark.parametrize("call, error, message", [
    (lambda: max_pool2d(Tensor(distinct(2, 5)), 2), ValueError,
     r"max_pool2d: expected a 3-D .* or 4-D .* got shape \(2, 5\)"),
    (lambda: avg_pool2d(Tensor(distinct(1, 1, 1, 4, 4)), 2), ValueError,
     r"avg_pool2d: .*got shape \(1, 1, 1, 4, 4\)"),
    (lambda: max_pool2d(Tensor(np.ones((1, 1, 4, 4), dtype=np.int64)), 2), TypeError,
     r"max_pool2d: expected a floating-point input, got dtype int64"),
    (lambda: adaptive_avg_pool2d(Tensor(np.ones((1, 4, 4), dtype=np.int32)), 2), TypeError,
     r"adaptive_avg_pool2d: .*dtype int32"),
    (lambda: max_pool2d(x4(), 0), ValueError, r"max_pool2d: kernel_size must be positive, "
                                              r"got 0"),
    (lambda: avg_pool2d(x4(), (2, -1)), ValueError, r"avg_pool2d: kernel_size .*\(2, -1\)"),
    (lambda: max_pool2d(x4(), 2, stride=0), ValueError, r"max_pool2d: stride must be "
                                                        r"positive, got 0"),
    (lambda: max_pool2d(x4(), 2, dilation=(1, 0)), ValueError, r"max_pool2d: dilation"),
    (lambda: max_pool2d(x4(), 2.5), TypeError, r"max_pool2d: kernel_size must be an int "
                                               r"or a pair of ints, got 2.5"),
    (lambda: avg_pool2d(x4(), (2, 2, 2)), ValueError, r"avg_pool2d: kernel_size .*\(2, 2, 2\)"),
    (lambda: max_pool2d(x4(), 3, padding=2), ValueError,
     r"max_pool2d: pad should be at most half of kernel size.*padding=\(2, 2\), "
     r"kernel_size=\(3, 3\)"),
    (lambda: avg_pool2d(x4(), 4, padding=-1), ValueError,
     r"avg_pool2d: pad .*padding=\(-1, -1\)"),
    (lambda: max_pool2d(x4(), 7), ValueError,
     r"max_pool2d: the window \(7, 7\).*larger than the padded input.*\(5, 5\).*"
     r"output size of \(0, 0\)"),
    (lambda: avg_pool2d(x4(), (2, 7), padding=(1, 0)), ValueError,
     r"avg_pool2d: .*larger than the padded input.*output size of \(3, 0\)"),
    (lambda: max_pool2d(x4(), 3, dilation=3), ValueError,
     r"max_pool2d: the window \(7, 7\) \(kernel_size=\(3, 3\), dilation=\(3, 3\)\)"),
    (lambda: avg_pool2d(x4(), 2, divisor_override=0), ValueError,
     r"avg_pool2d: divisor_override must be a non-zero int, got 0"),
    (lambda: adaptive_avg_pool2d(x4(), 0), ValueError,
     r"adaptive_avg_pool2d: output_size must be positive, got 0"),
    (lambda: adaptive_max_pool2d(x4(), (2, 3, 4)), ValueError,
     r"adaptive_max_pool2d: output_size .* got \(2, 3, 4\)"),
    (lambda: adaptive_max_pool2d(x4(), (2, -1)), ValueError,
     r"adaptive_max_pool2d: output_size .* got \(2, -1\)"),
    (lambda: adaptive_avg_pool2d(x4(), None), TypeError,
     r"adaptive_avg_pool2d: output_size .* got None"),
    (lambda: adaptive_avg_pool2d(x4(), "2"), TypeError,
     r"adaptive_avg_pool2d: output_size .* got '2'"),
    (lambda: adaptive_max_pool2d(Tensor(np.zeros((1, 1, 0, 3))), 1), ValueError,
     r"adaptive_max_pool2d: input of shape \(1, 1, 0, 3\) has an empty spatial dim"),
    (lambda: max_pool2d(distinct(1, 1, 4, 4), 2), TypeError,
     r"max_pool2d: expected a Tensor, got ndarray"),
    (lambda: max_pool2d_simple(Tensor(distinct(2, 4, 4)), 2), ValueError,
     r"max_pool2d_simple: expected a 4-D .* got shape \(2, 4, 4\)"),
])
def test_bad_input_raises(call, error, message):
    with pytest.raises(error, match=message):
        call()
