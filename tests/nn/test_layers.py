"""Layers: forward and backward against torch.nn with the same weights (float64),
BatchNorm's running statistics over several steps, Dropout's modes, float64
gradchecks of every layer type, repr text and bad inputs."""
import re

import numpy as np
import pytest

import tinygrad_cnn as tc
from tinygrad_cnn import nn
from tests.inputs import distinct


def values(t):
    return t.detach().numpy()


def torch_twin(torch, ours, theirs):
    """Put ``ours`` and ``theirs`` in float64 with identical parameters and buffers."""
    ours.double()
    theirs.double()
    theirs.load_state_dict({k: torch.from_numpy(v.numpy().copy())
                            for k, v in ours.state_dict().items()})
    return ours, theirs


def forward_backward_both(torch, ours, theirs, x, seed=0):
    """Run both modules on ``x`` with one random upstream gradient; compare
    outputs, input gradients and every parameter gradient."""
    x_ours = tc.tensor(x, requires_grad=True)
    x_theirs = torch.from_numpy(x.copy()).requires_grad_()
    y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    np.testing.assert_allclose(values(y_ours), y_theirs.detach().numpy(), rtol=1e-10,
                               atol=1e-12)
    g = np.random.default_rng(seed).standard_normal(tuple(y_theirs.shape))
    y_ours.backward(g)
    y_theirs.backward(torch.from_numpy(g))
    np.testing.assert_allclose(x_ours.grad.numpy(), x_theirs.grad.numpy(), rtol=1e-10,
                               atol=1e-12)
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), theirs_params[name].grad.numpy(),
                                   rtol=1e-10, atol=1e-12, err_msg=name)


# ---------------------------------------------------------------- Linear, Conv2d vs torch
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_shape", [(5, 4), (2, 3, 4)], ids=["2d", "3d"])
def test_linear_matches_torch(bias, x_shape):
    torch = pytest.importorskip("torch")
    ours, theirs = torch_twin(torch, nn.Linear(4, 3, bias=bias), torch.nn.Linear(4, 3, bias))
    forward_backward_both(torch, ours, theirs, distinct(*x_shape))


CONV_CONFIGS = [
    dict(in_channels=2, out_channels=3, kernel_size=3),
    dict(in_channels=2, out_channels=4, kernel_size=3, stride=2, padding=1),
    dict(in_channels=3, out_channels=2, kernel_size=(3, 2), stride=(1, 2), padding=(2, 0)),
    dict(in_channels=2, out_channels=2, kernel_size=3, dilation=2, padding=2, bias=False),
    dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, padding=1),
    dict(in_channels=2, out_channels=3, kernel_size=(2, 3), padding="same"),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding="valid"),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("config", CONV_CONFIGS, ids=lambda c: ",".join(map(str, c.values())))
def test_conv2d_matches_torch(config):
    torch = pytest.importorskip("torch")
    ours, theirs = torch_twin(torch, nn.Conv2d(**config), torch.nn.Conv2d(**config))
    x = distinct(2, config["in_channels"], 7, 6)
    forward_backward_both(torch, ours, theirs, x)


# ---------------------------------------------------------------- BatchNorm vs torch
BN_CASES = [("BatchNorm1d", (8, 3)), ("BatchNorm1d", (4, 3, 5)), ("BatchNorm2d", (3, 3, 4, 5))]


@pytest.mark.parametrize("name,shape", BN_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine,track", [(True, True), (False, True), (True, False)],
                         ids=["affine", "no-affine", "no-tracking"])
def test_batchnorm_training_steps_and_eval_match_torch(name, shape, momentum, affine, track):
    torch = pytest.importorskip("torch")
    kwargs = dict(momentum=momentum, affine=affine, track_running_stats=track)
    ours, theirs = torch_twin(torch, getattr(nn, name)(3, **kwargs),
                              getattr(torch.nn, name)(3, **kwargs))
    if affine:       # non-trivial γ, β
        ours.weight.data[...] = [0.5, 1.5, -2.0]
        ours.bias.data[...] = [0.1, -0.3, 0.7]
        ours, theirs = torch_twin(torch, ours, theirs)
    for step in range(3):
        x = distinct(*shape, seed=step) * (step + 1) + step      # batches with moving stats
        forward_backward_both(torch, ours, theirs, x, seed=step)
        for p in ours.parameters():
            p.grad = None
        theirs.zero_grad()
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(theirs_state)
    for key, value in ours_state.items():
        np.testing.assert_allclose(value.numpy(), theirs_state[key].numpy(), rtol=1e-12,
                                   err_msg=key)
    if track:
        assert ours.num_batches_tracked.item() == 3
    ours.eval(), theirs.eval()
    forward_backward_both(torch, ours, theirs, distinct(*shape, seed=9), seed=9)
    if track:
        assert ours.num_batches_tracked.item() == 3


def test_batchnorm_running_stats_follow_their_formula_without_torch():
    """running = (1 - m)·running + m·stat (unbiased var); momentum=None: plain average."""
    for momentum in (0.1, None):
        bn = nn.BatchNorm1d(2, momentum=momentum).double()
        mean, var = np.zeros(2), np.ones(2)
        batch_means, batch_vars = [], []
        for step in range(1, 4):
            x = distinct(6, 2, seed=step) * step + step
            bn(tc.tensor(x))
            batch_means.append(x.mean(axis=0))
            batch_vars.append(x.var(axis=0, ddof=1))
            m = momentum if momentum is not None else 1 / step
            mean = (1 - m) * mean + m * batch_means[-1]
            var = (1 - m) * var + m * batch_vars[-1]
        np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=1e-12)
        np.testing.assert_allclose(bn.running_var.numpy(), var, rtol=1e-12)
        if momentum is None:       # cumulative average of the batches seen
            np.testing.assert_allclose(mean, np.mean(batch_means, axis=0), rtol=1e-12)
            np.testing.assert_allclose(var, np.mean(batch_vars, axis=0), rtol=1e-12)


def test_batchnorm_buffers_and_defaults():
    bn = nn.BatchNorm2d(4)
    assert [n for n, _ in bn.named_buffers()] == ["running_mean", "running_var",
                                                  "num_batches_tracked"]
    assert bn.num_batches_tracked.dtype == np.int64 and bn.num_batches_tracked.shape == ()
    assert (bn.running_mean.numpy() == 0).all() and (bn.running_var.numpy() == 1).all()
    assert (values(bn.weight) == 1).all() and (values(bn.bias) == 0).all()
    assert bn.weight.dtype == np.float32
    bn(tc.randn(2, 4, 3, 3) + 1)
    bn.reset_running_stats()
    assert bn.num_batches_tracked.item() == 0 and (bn.running_mean.numpy() == 0).all()
    assert nn.BatchNorm2d(4, bias=False).bias is None
    untracked = nn.BatchNorm1d(4, track_running_stats=False)
    assert list(untracked.buffers()) == [] and untracked.running_mean is None


# ---------------------------------------------------------------- parameter-free layers vs torch
POOL_AND_ACTIVATION_CASES = [
    ("MaxPool2d", dict(kernel_size=2)),
    ("MaxPool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("MaxPool2d", dict(kernel_size=2, stride=1, dilation=2)),
    ("AvgPool2d", dict(kernel_size=2)),
    ("AvgPool2d", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ("AvgPool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, divisor_override=4)),
    ("AdaptiveAvgPool2d", dict(output_size=(2, 3))),
    ("AdaptiveAvgPool2d", dict(output_size=1)),
    ("AdaptiveMaxPool2d", dict(output_size=(3, 2))),
    ("ReLU", {}), ("Sigmoid", {}), ("Tanh", {}),
    ("Softmax", dict(dim=1)), ("LogSoftmax", dict(dim=-1)),
    ("Flatten", {}), ("Flatten", dict(start_dim=0, end_dim=2)),
]


@pytest.mark.parametrize("name,kwargs", POOL_AND_ACTIVATION_CASES, ids=lambda v: str(v))
def test_parameter_free_layers_match_torch(name, kwargs):
    torch = pytest.importorskip("torch")
    ours, theirs = getattr(nn, name)(**kwargs), getattr(torch.nn, name)(**kwargs)
    assert repr(ours) == repr(theirs)
    forward_backward_both(torch, ours, theirs, distinct(2, 3, 7, 6))


@pytest.mark.parametrize("name", ["MaxPool2d", "AdaptiveMaxPool2d"])
def test_max_pool_layers_return_torch_indices(name):
    torch = pytest.importorskip("torch")
    arg = 3 if name == "MaxPool2d" else (2, 3)
    x = distinct(2, 2, 6, 7)
    y, idx = getattr(nn, name)(arg, return_indices=True)(tc.tensor(x))
    y_t, idx_t = getattr(torch.nn, name)(arg, return_indices=True)(torch.from_numpy(x))
    np.testing.assert_array_equal(y.numpy(), y_t.numpy())
    np.testing.assert_array_equal(idx.numpy(), idx_t.numpy())


def test_identity_returns_its_input_and_ignores_arguments():
    x = tc.randn(2, 3)
    assert nn.Identity(54, unused="x")(x) is x


# ---------------------------------------------------------------- Dropout
def test_dropout_drops_and_scales_in_training_only():
    drop = nn.Dropout(0.25)
    x = tc.ones(200, 100)
    with tc.no_grad():                        # grad mode does not matter
        y = drop(x).numpy()
    assert abs((y == 0).mean() - 0.25) < 0.02
    np.testing.assert_allclose(y[y != 0], 1 / 0.75, rtol=1e-6)
    drop.eval()
    np.testing.assert_array_equal(drop(x).numpy(), x.numpy())
    assert (nn.Dropout(0.0)(x).numpy() == 1).all()
    assert (nn.Dropout(1.0)(x).numpy() == 0).all()


def test_dropout_gradient_uses_the_same_mask():
    drop = nn.Dropout(0.4)
    x = tc.tensor(distinct(4, 5), requires_grad=True)

    def reseeded(x):          # a fixed mask, so finite differences see one function
        tc.manual_seed(7)
        return drop(x)
    tc.gradcheck(reseeded, (x,))


# ---------------------------------------------------------------- gradcheck every layer type
GRADCHECK_CASES = [
    (lambda: nn.Linear(4, 3), (3, 4)),
    (lambda: nn.Linear(4, 2, bias=False), (2, 3, 4)),
    (lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 2, 4, 4)),
    (lambda: nn.Conv2d(4, 2, (2, 3), stride=2, dilation=(1, 2), groups=2, bias=False),
     (1, 4, 5, 7)),
    (lambda: nn.BatchNorm1d(3), (5, 3)),
    (lambda: nn.BatchNorm1d(2, affine=False, momentum=None), (3, 2, 4)),
    (lambda: nn.BatchNorm2d(2), (2, 2, 3, 3)),
    (lambda: nn.BatchNorm2d(2).eval(), (2, 2, 3, 3)),
    (lambda: nn.MaxPool2d(2), (2, 2, 4, 4)),
    (lambda: nn.MaxPool2d(3, stride=2, padding=1), (1, 2, 5, 5)),
    (lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (1, 2, 5, 5)),
    (lambda: nn.AdaptiveAvgPool2d((2, 3)), (1, 2, 5, 5)),
    (lambda: nn.AdaptiveMaxPool2d(2), (1, 2, 5, 5)),
    (lambda: nn.ReLU(), (3, 4)), (lambda: nn.Sigmoid(), (3, 4)), (lambda: nn.Tanh(), (3, 4)),
    (lambda: nn.Softmax(dim=1), (3, 4)), (lambda: nn.LogSoftmax(dim=0), (3, 4)),
    (lambda: nn.Flatten(), (2, 2, 3)),
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Flatten(), nn.Linear(8, 3)), (2, 1, 6, 6)),
]


@pytest.mark.parametrize("make,shape", GRADCHECK_CASES,
                         ids=[f"{i}-{s}" for i, (_, s) in enumerate(GRADCHECK_CASES)])
def test_layer_gradcheck_float64(make, shape):
    module = make().double()
    x = tc.tensor(distinct(*shape), requires_grad=True)
    state_before = {k: v.numpy().copy() for k, v in module.state_dict().items()}
    assert tc.gradcheck_module(module, (x,))
    for key, value in module.state_dict().items():      # buffers restored
        np.testing.assert_array_equal(value.numpy(), state_before[key], err_msg=key)


# ---------------------------------------------------------------- defaults, dtype, repr
def test_parameters_are_float32_and_layers_keep_input_dtype():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))
    assert all(p.dtype == np.float32 for p in net.parameters())
    assert net(tc.randn(2, 1, 4, 4)).dtype == np.float32
    assert net.double()(tc.randn(2, 1, 4, 4, dtype=tc.float64)).dtype == np.float64


@pytest.mark.parametrize("layer,text", [
    (lambda: nn.Conv2d(1, 6, kernel_size=5, padding=2),
     "Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))"),
    (lambda: nn.Conv2d(4, 8, (3, 1), stride=2, dilation=2, groups=4, bias=False),
     "Conv2d(4, 8, kernel_size=(3, 1), stride=(2, 2), dilation=(2, 2), groups=4, bias=False)"),
    (lambda: nn.Conv2d(2, 2, 3, padding="same"),
     "Conv2d(2, 2, kernel_size=(3, 3), stride=(1, 1), padding=same)"),
    (lambda: nn.Linear(120, 84), "Linear(in_features=120, out_features=84, bias=True)"),
    (lambda: nn.BatchNorm1d(7, momentum=None),
     "BatchNorm1d(7, eps=1e-05, momentum=None, affine=True, bias=True, "
     "track_running_stats=True)"),
    (lambda: nn.AvgPool2d(2), "AvgPool2d(kernel_size=2, stride=2, padding=0)"),
    (lambda: nn.Dropout(), "Dropout(p=0.5, inplace=False)"),
    (lambda: nn.ReLU(), "ReLU()"),
    (lambda: nn.Flatten(), "Flatten(start_dim=1, end_dim=-1)"),
])
def test_repr_text(layer, text):
    assert repr(layer()) == text


# ---------------------------------------------------------------- bad inputs
def test_batchnorm_rejects_the_wrong_rank_and_channel_count():
    with pytest.raises(ValueError, match=re.escape(
            "BatchNorm2d: expected 4-D (N, C, H, W) input, got 3-D input of shape (2, 3, 4)")):
        nn.BatchNorm2d(3)(tc.randn(2, 3, 4))
    with pytest.raises(ValueError, match=re.escape(
            "BatchNorm1d: expected 2-D (N, C) or 3-D (N, C, L) input, got 4-D input of "
            "shape (2, 3, 4, 4)")):
        nn.BatchNorm1d(3)(tc.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3, .*\): expected input with 3 "
                                         r"channels \(dim 1\), got input of shape "
                                         r"\(2, 4, 5, 5\)"):
        nn.BatchNorm2d(3)(tc.randn(2, 4, 5, 5))


def test_layers_name_themselves_on_a_shape_mismatch():
    with pytest.raises(ValueError, match=re.escape(
            "Conv2d(3, 6, kernel_size=(5, 5), stride=(1, 1)): expected a 4-D input "
            "(N, 3, H, W) or a 3-D one (3, H, W), got input of shape (1, 1, 28, 28)")):
        nn.Conv2d(3, 6, 5)(tc.randn(1, 1, 28, 28))
    with pytest.raises(ValueError, match=re.escape(
            "Linear(in_features=400, out_features=120, bias=True): expected input with 400 "
            "features in its last dimension, got input of shape (2, 256)")):
        nn.Linear(400, 120)(tc.randn(2, 256))


@pytest.mark.parametrize("make,message", [
    (lambda: nn.Conv2d(3, 6, 3, groups=2), r"Conv2d: in_channels \(3\) must be divisible by groups"),
    (lambda: nn.Conv2d(4, 6, 3, groups=4), r"Conv2d: out_channels \(6\) must be divisible by groups"),
    (lambda: nn.Conv2d(2, 2, 3, groups=0), "Conv2d: groups must be positive, got 0"),
    (lambda: nn.Conv2d(2, 2, 3, padding="full"), r"Conv2d: padding must be an int, a pair, 'valid' or 'same', got 'full'"),
    (lambda: nn.Conv2d(2, 2, 3, stride=2, padding="same"),
     r"padding='same' is not supported for strided convolutions \(stride=2\)"),
    (lambda: nn.Dropout(1.5), "between 0 and 1, but got 1.5"),
])
def test_bad_constructor_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_conv2d_layer_takes_one_unbatched_image():
    conv = nn.Conv2d(3, 6, 5, padding=1)
    image = tc.randn(3, 9, 8)
    y = conv(image)
    assert y.shape == (6, 7, 6)
    batched = conv(image.reshape(1, 3, 9, 8))
    np.testing.assert_allclose(y.detach().numpy(), batched.detach().numpy()[0], rtol=1e-6)
