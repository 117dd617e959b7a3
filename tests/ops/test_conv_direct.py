"""Conv2dDirect (thin layers on the CPU): gradcheck, explicit loops, the im2col
path and PyTorch agree with it; it computes only the gradients asked for; and
choose_algorithm picks it exactly for thin stride-1 layers such as LeNet's two."""
import numpy as np
import pytest

import kernels
from tests.inputs import distinct
from tests.ops.test_conv import (config, conv2d_loops, gradcheck_conv, loop_geometry,
                                 make_inputs)
from tinygrad_cnn import Tensor, gradcheck
from tinygrad_cnn.ops.conv import choose_algorithm, conv2d, conv2d_geometry
from tinygrad_cnn.ops.conv_direct import DIRECT_MAX_MULTIPLY_ADDS, Conv2dDirect

DIRECT = {
    "lenet-conv1-pad2": config((2, 1, 10, 9), (6, 1, 5, 5), padding=2),
    "3x3-pad1-nobias": config((3, 2, 5, 6), (3, 2, 3, 3), False, padding=1),
    "same-even-kernel": config((1, 2, 5, 6), (2, 2, 2, 4), padding="same"),
    "dilation2-pairs": config((2, 2, 7, 8), (3, 2, 3, 2), padding=(2, 1), dilation=(2, 1)),
    "batch1-one-output-row": config((1, 3, 3, 7), (2, 3, 3, 2)),
}
IDS, PARAMS = list(DIRECT), list(DIRECT.values())


def run(cfg, g=None, dtype=np.float64):
    """y and the gradients of x, w (and b) through conv2d, and y's Function name."""
    x, w, b = make_inputs(cfg, dtype=dtype)
    y = conv2d(x, w, b, **cfg["kwargs"])
    if g is None:
        g = np.random.default_rng(0).standard_normal(y.shape).astype(dtype)
    y.backward(g)
    return [y.detach().numpy()] + [t.grad.numpy() for t in (x, w, b) if t is not None], \
        y.grad_fn.name, g


@pytest.mark.parametrize("cfg", PARAMS, ids=IDS)
def test_auto_runs_these_thin_layers_direct(cfg):
    x, w, b = make_inputs(cfg)
    assert conv2d(x, w, b, **cfg["kwargs"]).grad_fn.name == "Conv2d[direct]"


@pytest.mark.parametrize("cfg", PARAMS, ids=IDS)
def test_direct_gradcheck(cfg):
    x, w, b = make_inputs(cfg)
    assert conv2d(x, w, b, **cfg["kwargs"]).grad_fn.name == "Conv2d[direct]"
    gradcheck_conv(cfg, x, w, b)


@pytest.mark.parametrize("cfg", PARAMS, ids=IDS)
def test_direct_matches_explicit_loops(cfg):
    x, w, b = make_inputs(cfg)
    y = conv2d(x, w, b, **cfg["kwargs"])
    expected = conv2d_loops(x.data, w.data, None if b is None else b.data, *loop_geometry(cfg))
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", PARAMS, ids=IDS)
def test_direct_path_equals_the_im2col_path(cfg, dtype, algorithm):
    direct, name, g = run(cfg, dtype=dtype)
    assert name == "Conv2d[direct]"
    algorithm("im2col")
    plain, name, _ = run(cfg, g, dtype=dtype)
    assert name == "Conv2d[im2col]"
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(direct, plain):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)


# torch warns that it copies the input for an even kernel with padding='same'
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("cfg", PARAMS, ids=IDS)
def test_direct_matches_torch(cfg):
    torch = pytest.importorskip("torch")
    (y, *grads), name, g = run(cfg)
    assert name == "Conv2d[direct]"
    x, w, b = make_inputs(cfg)
    tx, tw = (torch.tensor(t.data, requires_grad=True) for t in (x, w))
    tb = torch.tensor(b.data, requires_grad=True) if b is not None else None
    ty = torch.nn.functional.conv2d(tx, tw, tb, **cfg["kwargs"])
    ty.backward(torch.from_numpy(g))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    for ours, theirs in zip(grads, [t for t in (tx, tw, tb) if t is not None]):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("x_grad, w_grad", [(False, True), (True, False), (False, False)])
def test_direct_computes_only_the_gradients_asked_for(x_grad, w_grad):
    cfg = DIRECT["lenet-conv1-pad2"]
    x = Tensor(distinct(*cfg["x_shape"]), requires_grad=x_grad)
    w = Tensor(distinct(*cfg["w_shape"], seed=1), requires_grad=w_grad)
    b = Tensor(distinct(cfg["w_shape"][0], seed=2), requires_grad=True)
    y = conv2d(x, w, b, **cfg["kwargs"])
    assert y.grad_fn.name == "Conv2d[direct]"
    saved_x, saved_w = y.grad_fn.saved
    assert (saved_x is not None, saved_w is not None) == (w_grad, x_grad)   # x for dW, W for dx
    with kernels.counting() as calls:
        y.sum().backward()
    assert calls["conv_direct_backward_input"] == x_grad
    assert calls["conv_direct_backward_weight"] == w_grad
    assert (x.grad is not None, w.grad is not None) == (x_grad, w_grad)
    np.testing.assert_allclose(b.grad.numpy(), np.prod(y.shape) / y.shape[1])     # db = Σ dy


def test_a_frozen_bias_gets_no_gradient_and_leaves_dW_as_it_is():
    # dW's kernel sums db on the way only when db is wanted
    cfg = DIRECT["lenet-conv1-pad2"]
    x = Tensor(distinct(*cfg["x_shape"]))
    w = Tensor(distinct(*cfg["w_shape"], seed=1), requires_grad=True)
    bias = distinct(cfg["w_shape"][0], seed=2)
    gradients = []
    for b in (Tensor(bias), Tensor(bias, requires_grad=True)):
        w.grad = None
        y = conv2d(x, w, b, **cfg["kwargs"])
        assert y.grad_fn.name == "Conv2d[direct]"
        y.backward(np.random.default_rng(3).standard_normal(y.shape))
        gradients.append((w.grad.numpy(), b.grad))
    (frozen_dW, frozen_db), (trained_dW, trained_db) = gradients
    np.testing.assert_array_equal(frozen_dW, trained_dW)
    assert frozen_db is None and trained_db is not None


def test_direct_function_runs_strided_layers_too():
    # auto picks it for stride 1 only (the compiled loops' case); the Function
    # itself computes any stride, through the reference kernels
    cfg = config((2, 2, 9, 8), (3, 2, 3, 2), stride=(2, 3), padding=1)
    x, w, b = make_inputs(cfg)
    stride, padding, dilation, _ = conv2d_geometry(x.shape, w.shape, **{
        k: v for k, v in cfg["kwargs"].items() if k != "groups"})
    gradcheck(lambda *t: Conv2dDirect(stride, padding, dilation, has_bias=True)(*t), (x, w, b))
    y = Conv2dDirect(stride, padding, dilation, has_bias=True)(x, w, b)
    np.testing.assert_allclose(y.detach().numpy(),
                               conv2d_loops(x.data, w.data, b.data, *loop_geometry(cfg)),
                               rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the rule
# (x shape, weight shape, stride, padding, groups) of real layers
LAYERS = {
    "lenet-conv1": ((256, 1, 28, 28), (6, 1, 5, 5), 1, 2, 1),
    "bn-lenet-conv1": ((256, 1, 28, 28), (6, 1, 5, 5), 1, 0, 1),
    "lenet-conv2": ((256, 6, 14, 14), (16, 6, 5, 5), 1, 0, 1),
    "bn-lenet-conv2": ((256, 6, 12, 12), (16, 6, 5, 5), 1, 0, 1),
    "alexnet-conv1": ((128, 1, 224, 224), (96, 1, 11, 11), 4, 1, 1),
    "alexnet-conv2": ((128, 96, 26, 26), (256, 96, 5, 5), 1, 2, 1),
    "resnet-stem": ((64, 3, 96, 96), (64, 3, 7, 7), 2, 3, 1),
    "resnet-3x3": ((64, 64, 24, 24), (64, 64, 3, 3), 1, 1, 1),
    "thin-but-strided": ((8, 1, 28, 28), (6, 1, 5, 5), 2, 2, 1),
    "thin-but-grouped": ((8, 4, 28, 28), (4, 2, 3, 3), 1, 1, 2),
    "winograd-3x3": ((64, 16, 28, 28), (16, 16, 3, 3), 1, 1, 1),
    "5x5-beyond-the-bound": ((64, 16, 10, 10), (32, 16, 5, 5), 1, 2, 1),
}
PICKS_DIRECT = {"lenet-conv1", "bn-lenet-conv1", "lenet-conv2", "bn-lenet-conv2"}


def choice(name, xp=np):
    x_shape, w_shape, stride, padding, groups = LAYERS[name]
    stride, padding, dilation, out_hw = conv2d_geometry(x_shape, w_shape, stride, padding,
                                                        groups=groups)
    return choose_algorithm(x_shape, w_shape, stride, padding, dilation, groups, out_hw, xp)


@pytest.mark.parametrize("name", LAYERS)
def test_auto_picks_direct_for_lenets_two_convs_only(name):
    # 6·5·5·16 = 2400 multiply-adds per pixel for LeNet's second convolution,
    # within the bound; 16 -> 16 channels 3x3 are within it too, but Winograd suits them
    assert (choice(name) == "direct") == (name in PICKS_DIRECT)


def test_the_rule_is_the_multiply_adds_per_output_pixel():
    c_in, kernel = 2, 3
    at_bound = DIRECT_MAX_MULTIPLY_ADDS // (c_in * kernel * kernel)
    for outputs, expected in ((at_bound, "direct"), (at_bound + 1, "im2col")):
        x_shape, w_shape = (4, c_in, 9, 9), (outputs, c_in, kernel, kernel)
        assert choose_algorithm(x_shape, w_shape, (1, 1), (1, 1, 1, 1), (1, 1), 1, (9, 9)) \
            == expected


@pytest.mark.parametrize("name", sorted(PICKS_DIRECT))
def test_set_algorithm_im2col_turns_direct_off(name, algorithm):
    algorithm("im2col")
    assert choice(name) == "im2col"
