"""conv2d: gradcheck, explicit-loop reference, torch parity, the primitive-op
twin conv2d_simple, and argument checking."""
import numpy as np
import pytest

from tests.inputs import distinct
from tinygrad_cnn import Tensor, gradcheck
from tinygrad_cnn.ops.conv import conv2d, conv2d_simple


def config(x_shape, w_shape, bias=True, stride=1, padding=0, dilation=1, groups=1):
    return dict(x_shape=x_shape, w_shape=w_shape, bias=bias,
                kwargs=dict(stride=stride, padding=padding, dilation=dilation, groups=groups))


CONFIGS = {
    "k1": config((2, 3, 4, 5), (4, 3, 1, 1)),
    "k3-pad1-batch3": config((3, 2, 5, 6), (3, 2, 3, 3), padding=1),
    "k3-stride2-pad2-nobias": config((1, 2, 7, 6), (2, 2, 3, 3), False, stride=2, padding=2),
    "k5-stride4-pad2": config((1, 1, 9, 11), (2, 1, 5, 5), stride=4, padding=2),
    "k11": config((1, 1, 12, 13), (1, 1, 11, 11)),
    "dilation2-pad1": config((2, 2, 7, 8), (3, 2, 3, 3), padding=1, dilation=2),
    "groups2": config((2, 4, 5, 5), (6, 2, 3, 3), padding=1, groups=2),
    "groups2-stride2-nobias": config((1, 4, 6, 5), (4, 2, 2, 3), False, stride=2, groups=2),
    "same-even-kernel": config((1, 2, 5, 6), (2, 2, 2, 4), padding="same"),
    "same-dilation2": config((2, 1, 6, 5), (2, 1, 3, 2), padding="same", dilation=2),
    "valid-stride-pair": config((2, 1, 6, 5), (2, 1, 3, 2), padding="valid", stride=(2, 1)),
    "pairs": config((1, 2, 6, 7), (3, 2, 3, 2), stride=(1, 2), padding=(2, 1),
                    dilation=(1, 2)),
}
IDS, PARAMS = list(CONFIGS), list(CONFIGS.values())


def make_inputs(cfg, seed=0, requires_grad=True, dtype=np.float64):
    x = Tensor(distinct(*cfg["x_shape"], seed=seed, dtype=dtype), requires_grad=requires_grad)
    w = Tensor(distinct(*cfg["w_shape"], seed=seed + 1, dtype=dtype),
               requires_grad=requires_grad)
    b = Tensor(distinct(cfg["w_shape"][0], seed=seed + 2, dtype=dtype),
               requires_grad=requires_grad) if cfg["bias"] else None
    return x, w, b


def conv2d_loops(x, w, b, stride, padding, dilation, groups):
    """The definition, one multiply-add at a time (numbers as PyTorch documents them)."""
    N, C, H, W = x.shape
    O, Cg, KH, KW = w.shape
    (SH, SW), (DH, DW) = stride, dilation
    top, bottom, left, right = padding
    OH = (H + top + bottom - DH * (KH - 1) - 1) // SH + 1
    OW = (W + left + right - DW * (KW - 1) - 1) // SW + 1
    y = np.zeros((N, O, OH, OW))
    for n in range(N):
        for o in range(O):
            group = o // (O // groups)
            for oh in range(OH):
                for ow in range(OW):
                    total = b[o] if b is not None else 0.0
                    for c in range(Cg):
                        for i in range(KH):
                            for j in range(KW):
                                h = oh * SH + i * DH - top
                                v = ow * SW + j * DW - left
                                if 0 <= h < H and 0 <= v < W:
                                    total += x[n, group * Cg + c, h, v] * w[o, c, i, j]
                    y[n, o, oh, ow] = total
    return y


def loop_geometry(cfg):
    """The config's arguments as explicit pairs / 4-tuples, worked out by hand."""
    kw = cfg["kwargs"]
    pair = lambda v: v if isinstance(v, tuple) else (v, v)   # noqa: E731
    stride, dilation = pair(kw["stride"]), pair(kw["dilation"])
    p = kw["padding"]
    if p == "valid":
        padding = (0, 0, 0, 0)
    elif p == "same":
        KH, KW = cfg["w_shape"][2:]
        th, tw = dilation[0] * (KH - 1), dilation[1] * (KW - 1)
        padding = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    else:
        ph, pw = pair(p)
        padding = (ph, ph, pw, pw)
    return stride, padding, dilation, kw["groups"]


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("cfg", PARAMS, ids=IDS)
def test_gradcheck(cfg):
    x, w, b = make_inputs(cfg)
    gradcheck(lambda x, w, b: conv2d(x, w, b, **cfg["kwargs"]), (x, w, b))


@pytest.mark.parametrize("which", [(True, False, False), (False, True, False),
                                   (False, False, True), (False, True, True),
                                   (True, False, True)])
def test_gradcheck_when_only_some_inputs_require_grad(which):
    cfg = CONFIGS["groups2"]
    x, w, b = make_inputs(cfg)
    for t, flag in zip((x, w, b), which):
        t.requires_grad = flag
    gradcheck(lambda x, w, b: conv2d(x, w, b, **cfg["kwargs"]), (x, w, b))
    # ... and nothing is computed, or stored, for the others
    y = conv2d(x, w, b, **cfg["kwargs"])
    col, w_saved = y.grad_fn.saved
    assert (col is not None) == which[1]        # the columns only serve dW
    assert (w_saved is not None) == which[0]    # W only serves dx
    y.sum().backward()
    for t, flag in zip((x, w, b), which):
        assert (t.grad is not None) == flag


def test_backward_does_not_keep_the_input():
    cfg = CONFIGS["k3-pad1-batch3"]
    x, w, b = make_inputs(cfg)
    y = conv2d(x, w, b, **cfg["kwargs"])
    assert not any(a is x.data for a in y.grad_fn.saved)


# ---------------------------------------------------------------- forward
@pytest.mark.parametrize("cfg", PARAMS, ids=IDS)
def test_forward_matches_loops(cfg, device):
    x, w, b = make_inputs(cfg, requires_grad=False)
    args = [t.to(device) if t is not None else None for t in (x, w, b)]
    y = conv2d(*args, **cfg["kwargs"])
    expected = conv2d_loops(x.data, w.data, b.data if b is not None else None,
                            *loop_geometry(cfg))
    assert y.device == x.to(device).device
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_output_dtype_follows_input(dtype):
    x, w, b = make_inputs(CONFIGS["groups2"], requires_grad=True, dtype=dtype)
    y = conv2d(x, w, b, padding=1, groups=2)
    assert y.dtype == dtype
    y.sum().backward()
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == dtype


# ---------------------------------------------------------------- torch parity
# torch warns that it copies the input for an even kernel with padding='same'
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("cfg", PARAMS, ids=IDS)
def test_matches_torch(cfg):
    torch = pytest.importorskip("torch")
    x, w, b = make_inputs(cfg)
    tx, tw = (torch.tensor(t.data, requires_grad=True) for t in (x, w))
    tb = torch.tensor(b.data, requires_grad=True) if b is not None else None
    y = conv2d(x, w, b, **cfg["kwargs"])
    ty = torch.nn.functional.conv2d(tx, tw, tb, **cfg["kwargs"])
    np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    g = np.random.default_rng(0).standard_normal(y.shape)
    y.backward(g)
    ty.backward(torch.from_numpy(g))
    for ours, theirs in [(x, tx), (w, tw)] + ([(b, tb)] if b is not None else []):
        np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(),
                                   rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the twin
TWIN_IDS = [i for i in IDS if CONFIGS[i]["kwargs"]["groups"] == 1
            and CONFIGS[i]["kwargs"]["dilation"] == 1]


@pytest.mark.parametrize("cfg", [CONFIGS[i] for i in TWIN_IDS], ids=TWIN_IDS)
def test_conv2d_simple_equals_conv2d(cfg):
    kwargs = {k: v for k, v in cfg["kwargs"].items() if k in ("stride", "padding")}
    x1, w1, b1 = make_inputs(cfg)
    x2, w2, b2 = make_inputs(cfg)
    y1 = conv2d(x1, w1, b1, **kwargs)
    y2 = conv2d_simple(x2, w2, b2, **kwargs)
    np.testing.assert_allclose(y2.detach().numpy(), y1.detach().numpy(), rtol=1e-12, atol=1e-12)
    g = np.random.default_rng(0).standard_normal(y1.shape)
    y1.backward(g)
    y2.backward(g)
    pairs = [(x1, x2), (w1, w2)] + ([(b1, b2)] if b1 is not None else [])
    for fast, simple in pairs:
        np.testing.assert_allclose(simple.grad.numpy(), fast.grad.numpy(),
                                   rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- bad input
def ones(*shape, dtype=np.float64):
    return Tensor(np.ones(shape, dtype=dtype))


BAD = {
    "3-D input": (ones(3, 5, 5), ones(2, 3, 3, 3), None, {},
                  ValueError, r"conv2d: expected a 4-D input \(N, C, H, W\), got shape "
                              r"\(3, 5, 5\)"),
    "2-D weight": (ones(1, 3, 5, 5), ones(2, 27), None, {},
                   ValueError, r"conv2d: expected a 4-D weight .*got shape \(2, 27\)"),
    "channels": (ones(1, 3, 8, 8), ones(6, 1, 5, 5), None, {},
                 ValueError, r"conv2d: input has 3 channels but weight of shape "
                             r"\(6, 1, 5, 5\) expects 1 \(groups=1\)"),
    "channels-groups": (ones(1, 4, 8, 8), ones(6, 1, 3, 3), None, {"groups": 2},
                        ValueError, r"input has 4 channels but weight of shape \(6, 1, 3, 3\) "
                                    r"expects 2 \(groups=2\)"),
    "groups-divide": (ones(1, 3, 8, 8), ones(4, 1, 3, 3), None, {"groups": 2},
                      ValueError, r"conv2d: groups=2 must divide .* 3 channels .* 4 output"),
    "groups-zero": (ones(1, 3, 8, 8), ones(4, 3, 3, 3), None, {"groups": 0},
                    ValueError, r"conv2d: groups must be a positive int, got 0"),
    "bias-shape": (ones(1, 3, 8, 8), ones(4, 3, 3, 3), ones(3), {},
                   ValueError, r"conv2d: bias must have shape \(4,\) .* got \(3,\)"),
    "stride-zero": (ones(1, 3, 8, 8), ones(4, 3, 3, 3), None, {"stride": 0},
                    ValueError, r"conv2d: stride must be positive, got \(0, 0\)"),
    "stride-negative": (ones(1, 3, 8, 8), ones(4, 3, 3, 3), None, {"stride": (1, -2)},
                        ValueError, r"conv2d: stride must be positive, got \(1, -2\)"),
    "stride-triple": (ones(1, 3, 8, 8), ones(4, 3, 3, 3), None, {"stride": (1, 2, 3)},
                      ValueError, r"conv2d: stride must be an int or a pair of ints, "
                                  r"got \(1, 2, 3\)"),
    "dilation-zero": (ones(1, 3, 8, 8), ones(4, 3, 3, 3), None, {"dilation": 0},
                      ValueError, r"conv2d: dilation must be positive, got \(0, 0\)"),
    "kernel-zero": (ones(1, 3, 8, 8), ones(4, 3, 0, 3), None, {},
                    ValueError, r"conv2d: kernel size must be positive, got weight shape "
                                r"\(4, 3, 0, 3\)"),
    "padding-negative": (ones(1, 3, 8, 8), ones(4, 3, 3, 3), None, {"padding": -1},
                         ValueError, r"conv2d: padding must be non-negative, got -1"),
    "padding-word": (ones(1, 3, 8, 8), ones(4, 3, 3, 3), None, {"padding": "full"},
                     ValueError, r"conv2d: padding must be .*'valid' or 'same', got 'full'"),
    "same-strided": (ones(1, 3, 8, 8), ones(4, 3, 3, 3), None,
                     {"padding": "same", "stride": 2},
                     ValueError, r"conv2d: padding='same' is not supported for strided "
                                 r"convolutions \(stride=\(2, 2\)\)"),
    "kernel-too-large": (ones(1, 3, 4, 9), ones(4, 3, 5, 5), None, {"padding": (0, 1)},
                         ValueError, r"conv2d: kernel 5x5 .* larger than the padded input "
                                     r"4x11 .*output size would be 0x7"),
    "dilated-too-large": (ones(1, 1, 6, 6), ones(1, 1, 3, 3), None, {"dilation": 3},
                          ValueError, r"spans 7x7\) is larger than the padded input 6x6 .*"
                                      r"output size would be 0x0"),
    "int-input": (ones(1, 3, 8, 8, dtype=np.int64), ones(4, 3, 3, 3), None, {},
                  TypeError, r"conv2d: expected a floating-point input, got dtype int64"),
    "int-weight": (ones(1, 3, 8, 8), ones(4, 3, 3, 3, dtype=np.int32), None, {},
                   TypeError, r"conv2d: expected a floating-point weight, got dtype int32"),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_arguments(case):
    x, w, b, kwargs, error, message = case
    with pytest.raises(error, match=message):
        conv2d(x, w, b, **kwargs)


@pytest.mark.parametrize("name", ["channels", "kernel-too-large", "int-input", "same-strided"])
def test_conv2d_simple_checks_arguments_too(name):
    x, w, b, kwargs, error, message = BAD[name]
    with pytest.raises(error, match=message.replace("conv2d:", "conv2d_simple:")):
        conv2d_simple(x, w, b, **kwargs)
