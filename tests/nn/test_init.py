"""nn.init against its formulas, and the layers' default initialisation.

Statistics are taken over a few hundred thousand draws: the sample std of
n uniform/normal draws is within ~1% of the true one with overwhelming
probability at that size (relative standard error ≈ 1/sqrt(2n)).
"""
import math

import numpy as np
import pytest

import tinygrad_cnn as tc
from tinygrad_cnn import nn
from tinygrad_cnn.nn import init

BIG_CONV = (128, 64, 3, 3)         # fan_in 576, fan_out 1152, 73 728 values
BIG_LINEAR = (300, 500)           # fan_in 500, fan_out 300, 150 000 values


def empty(*shape, dtype=np.float32):
    return nn.Parameter(np.full(shape, np.nan, dtype=dtype))


def stats(t):
    a = t.detach().numpy().astype(np.float64)
    return a.mean(), a.std(), a.min(), a.max()


# ---------------------------------------------------------------- gains and fans
@pytest.mark.parametrize("nonlinearity,param,gain", [
    ("linear", None, 1.0), ("conv2d", None, 1.0), ("sigmoid", None, 1.0),
    ("tanh", None, 5 / 3), ("relu", None, math.sqrt(2)),
    ("leaky_relu", None, math.sqrt(2 / (1 + 0.01 ** 2))),
    ("leaky_relu", math.sqrt(5), math.sqrt(2 / 6)), ("leaky_relu", 0, math.sqrt(2)),
    ("selu", None, 0.75),
])
def test_calculate_gain(nonlinearity, param, gain):
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(gain, rel=1e-15)


def test_calculate_gain_matches_torch():
    torch = pytest.importorskip("torch")
    for name in ("linear", "conv2d", "sigmoid", "tanh", "relu", "leaky_relu", "selu"):
        assert init.calculate_gain(name) == pytest.approx(torch.nn.init.calculate_gain(name))
    assert init.calculate_gain("leaky_relu", 0.2) == \
        pytest.approx(torch.nn.init.calculate_gain("leaky_relu", 0.2))


def test_calculate_gain_rejects_unknown_names_and_bad_slopes():
    with pytest.raises(ValueError, match="unsupported nonlinearity 'swish'"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="negative_slope 'a' is not a valid number"):
        init.calculate_gain("leaky_relu", "a")


@pytest.mark.parametrize("shape,fan_in,fan_out", [
    ((6, 1, 5, 5), 25, 150), ((16, 6, 5, 5), 150, 400), ((8, 4, 3, 2), 24, 48),
    ((120, 400), 400, 120),
])
def test_fans_follow_pytorch(shape, fan_in, fan_out):
    assert init._calculate_fan_in_and_fan_out(tc.zeros(*shape)) == (fan_in, fan_out)


def test_fans_need_two_dimensions():
    with pytest.raises(ValueError, match=r"fewer than 2 dimensions \(shape \(5,\)\)"):
        init.xavier_uniform_(tc.zeros(5))


# ---------------------------------------------------------------- Xavier / Kaiming
def expected_std(kind, shape, **kw):
    """The target std written out from the papers' formulas."""
    receptive = int(np.prod(shape[2:]))
    fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    if kind.startswith("xavier"):
        return kw.get("gain", 1.0) * math.sqrt(2 / (fan_in + fan_out))
    fan = fan_in if kw.get("mode", "fan_in") == "fan_in" else fan_out
    a = kw.get("a", 0)
    gain = {"relu": math.sqrt(2), "leaky_relu": math.sqrt(2 / (1 + a * a)),
            "tanh": 5 / 3}[kw.get("nonlinearity", "leaky_relu")]
    return gain / math.sqrt(fan)


INIT_CASES = [
    ("xavier_uniform_", BIG_CONV, {}), ("xavier_uniform_", BIG_LINEAR, dict(gain=2.0)),
    ("xavier_normal_", BIG_CONV, dict(gain=0.5)), ("xavier_normal_", BIG_LINEAR, {}),
    ("kaiming_uniform_", BIG_CONV, {}),
    ("kaiming_uniform_", BIG_CONV, dict(mode="fan_out", nonlinearity="relu")),
    ("kaiming_uniform_", BIG_LINEAR, dict(a=math.sqrt(5))),
    ("kaiming_normal_", BIG_CONV, dict(nonlinearity="relu")),
    ("kaiming_normal_", BIG_LINEAR, dict(mode="fan_out", nonlinearity="tanh")),
]


@pytest.mark.parametrize("kind,shape,kw", INIT_CASES, ids=lambda v: str(v))
def test_xavier_and_kaiming_statistics(kind, shape, kw):
    t = empty(*shape)
    data = t.data
    assert getattr(init, kind)(t, **kw) is t
    assert t.data is data and t.dtype == np.float32         # filled in place
    std = expected_std(kind, shape, **kw)
    mean, sample_std, lo, hi = stats(t)
    assert abs(mean) < 0.02 * std
    assert sample_std == pytest.approx(std, rel=0.01)
    if kind.endswith("uniform_"):                           # U(-b, b), b = sqrt(3)·std
        bound = math.sqrt(3) * std
        assert -bound <= lo and hi <= bound
        assert hi > 0.999 * bound and lo < -0.999 * bound


def test_kaiming_rejects_a_bad_mode():
    with pytest.raises(ValueError, match="mode 'fan_avg' not supported"):
        init.kaiming_uniform_(tc.zeros(3, 3), mode="fan_avg")


def test_zero_element_tensor_is_left_alone_with_a_warning():
    t = tc.zeros(0, 3)
    with pytest.warns(UserWarning, match="zero-element"):
        assert init.kaiming_normal_(t) is t


# ---------------------------------------------------------------- plain fills
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uniform_normal_and_constant_fills(dtype):
    t = empty(400, 500, dtype=dtype)
    assert init.uniform_(t, -3, 5) is t and t.dtype == dtype
    mean, std, lo, hi = stats(t)
    assert -3 <= lo and hi <= 5 and lo < -2.99 and hi > 4.99
    assert mean == pytest.approx(1, abs=0.03) and std == pytest.approx(8 / math.sqrt(12),
                                                                       rel=0.01)
    init.uniform_(t)
    assert 0 <= stats(t)[2] and stats(t)[3] < 1
    assert init.normal_(t, mean=2, std=0.5) is t
    mean, std, _, _ = stats(t)
    assert mean == pytest.approx(2, abs=0.01) and std == pytest.approx(0.5, rel=0.01)
    init.normal_(t)
    assert stats(t)[1] == pytest.approx(1, rel=0.01)
    for fill, value in ((init.zeros_, 0), (init.ones_, 1)):
        assert fill(t) is t and (t.detach().numpy() == value).all()
    assert (init.constant_(t, 0.25).detach().numpy() == 0.25).all()


def test_draws_follow_manual_seed():
    def draw(seed):
        tc.manual_seed(seed)
        return init.kaiming_uniform_(empty(4, 5)).detach().numpy().copy()
    np.testing.assert_array_equal(draw(3), draw(3))
    assert not np.array_equal(draw(3), draw(4))


def test_init_on_device(device):
    t = nn.Parameter(tc.zeros(50, 60).to(device))
    init.xavier_normal_(t)
    assert t.device == tc.backend.parse_device(device)
    assert stats(t.cpu())[1] == pytest.approx(math.sqrt(2 / 110), rel=0.1)


# ---------------------------------------------------------------- layer defaults
@pytest.mark.parametrize("make,fan_in", [
    (lambda: nn.Conv2d(64, 128, 3), 64 * 9),
    (lambda: nn.Conv2d(32, 64, (5, 3), groups=4), 8 * 15),
    (lambda: nn.Linear(500, 300), 500),
])
def test_default_init_is_uniform_within_one_over_sqrt_fan_in(make, fan_in):
    layer = make()
    bound = 1 / math.sqrt(fan_in)
    for name, p in layer.named_parameters():
        assert p.dtype == np.float32, name
        mean, std, lo, hi = stats(p)
        assert -bound <= lo and hi <= bound, name
        # the bound is reached: nearly for thousands of weights, roughly for a few biases
        near = 0.99 if name == "weight" else 0.5
        assert hi > near * bound and lo < -near * bound, name
    _, std, _, _ = stats(layer.weight)
    assert std == pytest.approx(bound / math.sqrt(3), rel=0.02)


def test_default_init_differs_between_layers_and_follows_the_seed():
    tc.manual_seed(5)
    a, b = nn.Linear(10, 10), nn.Linear(10, 10)
    tc.manual_seed(5)
    c = nn.Linear(10, 10)
    assert not np.array_equal(a.weight.detach().numpy(), b.weight.detach().numpy())
    np.testing.assert_array_equal(a.weight.detach().numpy(), c.weight.detach().numpy())
    np.testing.assert_array_equal(a.bias.detach().numpy(), c.bias.detach().numpy())
