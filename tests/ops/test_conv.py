"""conv2d: gradcheck, explicit-loop reference, torch parity, the primitive-op
twin conv2d_simple, and argument checking."""
import numpy as np
import pytest

import kernels
from kernels import geometry
from kernels.geometry import batch_chunks
from tests.inputs import distinct
import tinygrad_cnn as tc
from tinygrad_cnn import Tensor, gradcheck
from tinygrad_cnn.ops import conv as conv_module
from tinygrad_cnn.ops.conv import conv2d, conv2d_simple, set_column_budget


def config(x_shape, w_shape, bias=True, stride=1, padding=0, dilation=1, groups=1):
    return dict(x_shape=x_shape, w_shape=w_shape, bias=bias,
                kwargs=dict(stride=stride, padding=padding, dilation=dilation, groups=groups))


CONFIGS = {
    "k1": config((2, 3, 4, 5), (4, 3, 1, 1)),
    "k1-groups2-nobias": config((2, 4, 3, 3), (6, 2, 1, 1), False, groups=2),
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


def gradcheck_conv(cfg, x, w, b):
    """The float64 gradient check of conv2d with ``cfg``'s settings on x, w and
    b (where the config has a bias)."""
    gradcheck(lambda *t: conv2d(*t, **cfg["kwargs"]), (x, w) if b is None else (x, w, b))


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


@pytest.mark.parametrize("name", ["k3-pad1-batch3", "k1", "dilation2-pad1"])
def test_backward_keeps_the_input_not_the_columns(name):
    # dW needs the columns, but backward rebuilds them from x: it saves x itself
    # (no copy) and W, nothing of the columns' size.
    cfg = CONFIGS[name]
    x, w, b = make_inputs(cfg)
    y = conv2d(x, w, b, **cfg["kwargs"])
    x_saved, w_saved = y.grad_fn.saved
    assert x_saved is x.data and w_saved is w.data


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
    "2-D input": (ones(5, 5), ones(2, 3, 3, 3), None, {},
                  ValueError, r"conv2d: expected a 3-D \(C, H, W\) or 4-D \(N, C, H, W\) "
                              r"input, got shape \(5, 5\)"),
    "2-D weight": (ones(1, 3, 5, 5), ones(2, 27), None, {},
                   ValueError, r"conv2d: expected a 4-D weight .*got shape \(2, 27\)"),
    "channels": (ones(1, 3, 8, 8), ones(6, 1, 5, 5), None, {},
                 ValueError, r"conv2d: input has 3 channels but weight of shape "
                             r"\(6, 1, 5, 5\) expects 1 \(groups=1\)"),
    "channels-groups": (ones(1, 4, 8, 8), ones(6, 1, 3, 3), None, {"groups": 2},
                        ValueError, r"input has 4 channels but weight of shape \(6, 1, 3, 3\) "
                                    r"expects 2 \(groups=2\)"),
    "groups-divide": (ones(1, 3, 8, 8), ones(4, 1, 3, 3), None, {"groups": 2},
                      ValueError, r"conv2d: in_channels \(3\) must be divisible by groups \(2\)"),
    "groups-zero": (ones(1, 3, 8, 8), ones(4, 3, 3, 3), None, {"groups": 0},
                    ValueError, r"conv2d: groups must be positive, got 0"),
    "bias-shape": (ones(1, 3, 8, 8), ones(4, 3, 3, 3), ones(3), {},
                   ValueError, r"conv2d: bias must have shape \(4,\) .* got \(3,\)"),
    "stride-zero": (ones(1, 3, 8, 8), ones(4, 3, 3, 3), None, {"stride": 0},
                    ValueError, r"conv2d: stride must be positive, got 0"),
    "stride-negative": (ones(1, 3, 8, 8), ones(4, 3, 3, 3), None, {"stride": (1, -2)},
                        ValueError, r"conv2d: stride must be positive, got \(1, -2\)"),
    "stride-triple": (ones(1, 3, 8, 8), ones(4, 3, 3, 3), None, {"stride": (1, 2, 3)},
                      ValueError, r"conv2d: stride must be an int or a pair of ints, "
                                  r"got \(1, 2, 3\)"),
    "dilation-zero": (ones(1, 3, 8, 8), ones(4, 3, 3, 3), None, {"dilation": 0},
                      ValueError, r"conv2d: dilation must be positive, got 0"),
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
                                 r"convolutions \(stride=2\)"),
    "kernel-too-large": (ones(1, 3, 4, 9), ones(4, 3, 5, 5), None, {"padding": (0, 1)},
                         ValueError, r"conv2d: kernel 5x5 .* larger than the padded input "
                                     r"4x11 .*output would be 0x7"),
    "dilated-too-large": (ones(1, 1, 6, 6), ones(1, 1, 3, 3), None, {"dilation": 3},
                          ValueError, r"spans 7x7\) is larger than the padded input 6x6 .*"
                                      r"output would be 0x0"),
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


# ---------------------------------------------------------------- column chunks
@pytest.fixture
def column_budget():
    """Set the column budget inside a test; restored afterwards.  On one thread:
    with more, a batch needing several chunks gets a multiple of the thread
    count (tests/ops/test_conv_shares.py), which these counts do not follow."""
    previous, threads = conv_module.column_budget, tc.get_num_threads()
    tc.set_num_threads(1)
    yield set_column_budget
    set_column_budget(previous)
    tc.set_num_threads(threads)


def column_bytes_per_image(cfg):
    """im2col's bytes per image for cfg, counted from the output size by hand."""
    _, C, H, W = cfg["x_shape"]
    KH, KW = cfg["w_shape"][2:]
    (SH, SW), (top, bottom, left, right), (DH, DW), _ = loop_geometry(cfg)
    OH = (H + top + bottom - DH * (KH - 1) - 1) // SH + 1
    OW = (W + left + right - DW * (KW - 1) - 1) // SW + 1
    return C * KH * KW * OH * OW * 8          # float64


CHUNKED = {
    "k3-pad1": config((5, 2, 5, 6), (3, 2, 3, 3), padding=1),
    "stride2-groups2": config((5, 4, 7, 6), (6, 2, 3, 2), stride=2, padding=(1, 0), groups=2),
    "dilation2-nobias": config((5, 1, 8, 7), (2, 1, 3, 3), False, dilation=2),
}


def run_conv(cfg, g):
    x, w, b = make_inputs(cfg)
    y = conv2d(x, w, b, **cfg["kwargs"])
    chunks = y.grad_fn.chunks
    y.backward(g)
    return [y.detach().numpy()] + [t.grad.numpy() for t in (x, w, b) if t is not None], chunks


@pytest.mark.parametrize("cfg", CHUNKED.values(), ids=CHUNKED.keys())
def test_chunked_batch_equals_whole_batch(cfg, column_budget, algorithm):
    algorithm("im2col")         # the chunks are im2col's (thin layers would run direct)
    x, w, b = make_inputs(cfg)
    g = np.random.default_rng(0).standard_normal(conv2d(x, w, b, **cfg["kwargs"]).shape)
    whole, chunks = run_conv(cfg, g)
    assert len(chunks) == 1
    # room for two images' columns: the batch of 5 splits into chunks of 1, 2 and 2
    column_budget(2 * column_bytes_per_image(cfg) + 7)
    chunked, chunks = run_conv(cfg, g)
    assert sorted(len(range(5)[c]) for c in chunks) == [1, 2, 2]
    assert [i for c in chunks for i in range(5)[c]] == list(range(5))
    for part, reference in zip(chunked, whole):
        np.testing.assert_allclose(part, reference, rtol=1e-13, atol=1e-13)


def test_a_budget_below_one_image_takes_one_image_at_a_time(column_budget, algorithm):
    algorithm("im2col")
    cfg = CHUNKED["k3-pad1"]
    column_budget(1)
    x, w, b = make_inputs(cfg)
    y = conv2d(x, w, b, **cfg["kwargs"])
    assert [len(range(5)[c]) for c in y.grad_fn.chunks] == [1] * 5
    np.testing.assert_allclose(y.detach().numpy(),
                               conv2d_loops(x.data, w.data, b.data, *loop_geometry(cfg)),
                               rtol=1e-12, atol=1e-12)


CHUNKED_SMALL = {   # for gradcheck, whose cost grows with the number of elements
    "k2-pad1": config((5, 1, 3, 4), (2, 1, 2, 2), padding=1),
    "stride2-groups2-nobias": config((5, 2, 4, 3), (2, 1, 2, 2), False, stride=2, groups=2),
}


@pytest.mark.parametrize("cfg", CHUNKED_SMALL.values(), ids=CHUNKED_SMALL.keys())
def test_gradcheck_chunked(cfg, column_budget, algorithm):
    algorithm("im2col")
    column_budget(2 * column_bytes_per_image(cfg))
    x, w, b = make_inputs(cfg)
    assert len(conv2d(x, w, b, **cfg["kwargs"]).grad_fn.chunks) == 3
    gradcheck_conv(cfg, x, w, b)


# the other chunked algorithms: each pass's bias, db and dW summed chunk by chunk
CHUNKED_OTHERS = {
    "pointwise-groups2": (config((4, 4, 2, 3), (6, 2, 1, 1), groups=2), "auto", "pointwise"),
    "winograd": (config((3, 2, 4, 3), (2, 2, 3, 3), padding=1), "winograd", "winograd"),
    "winograd4x4": (config((3, 2, 5, 6), (2, 2, 3, 3), padding=1), "winograd4x4",
                    "winograd4x4"),
}


@pytest.mark.parametrize("cfg, chosen, name", CHUNKED_OTHERS.values(), ids=CHUNKED_OTHERS.keys())
def test_gradcheck_chunked_pointwise_and_winograd(cfg, chosen, name, column_budget, algorithm):
    algorithm(chosen)
    column_budget(1)                    # one image per chunk
    x, w, b = make_inputs(cfg)
    fn = conv2d(x, w, b, **cfg["kwargs"]).grad_fn
    assert fn.name == f"Conv2d[{name}]" and len(fn.chunks) == cfg["x_shape"][0]
    gradcheck_conv(cfg, x, w, b)


def test_column_buffers_stay_within_the_budget(column_budget, monkeypatch):
    cfg = CHUNKED["stride2-groups2"]
    budget = 3 * column_bytes_per_image(cfg)
    column_budget(budget)
    built = []

    def recording_im2col(*args, **kwargs):
        col = reference_im2col(*args, **kwargs)
        built.append(col.nbytes)
        return col
    reference_im2col = kernels.im2col
    monkeypatch.setattr(kernels, "im2col", recording_im2col)
    x, w, b = make_inputs(cfg)
    conv2d(x, w, b, **cfg["kwargs"]).sum().backward()
    assert len(built) == 4                     # chunks of 3 + 2 (or 2 + 3), forward and backward
    assert max(built) <= budget


def test_set_column_budget_returns_the_previous_bound(column_budget):
    previous = conv_module.column_budget
    assert column_budget(1234) == previous
    assert conv_module.column_budget == 1234


@pytest.mark.parametrize("nbytes", [0, -5, 2.5, "1MB", True])
def test_set_column_budget_rejects_non_positive_ints(nbytes, column_budget):
    with pytest.raises(ValueError, match=r"set_column_budget: expected a positive int number "
                                         r"of bytes, got " + repr(nbytes).replace(".", r"\.")):
        column_budget(nbytes)


# ---------------------------------------------------------------- 1×1 fast path
POINTWISE = {
    "k1": CONFIGS["k1"],
    "k1-groups2-nobias": CONFIGS["k1-groups2-nobias"],
    "k1-dilation2": config((3, 2, 4, 3), (5, 2, 1, 1), dilation=2),
}


@pytest.fixture(params=["per-image", "merged"])
def pointwise_products(request, monkeypatch):
    """Each pointwise test runs both ways of multiplying: one product per image,
    and a chunk's images side by side (``pointwise_merges``), whatever the map's size."""
    limit = 0 if request.param == "per-image" else 10**9
    monkeypatch.setattr(conv_module, "POINTWISE_MERGE_MAX_PIXELS", limit)
    return request.param == "merged"


@pytest.mark.parametrize("cfg", POINTWISE.values(), ids=POINTWISE.keys())
def test_pointwise_path_equals_the_im2col_path(cfg, algorithm, pointwise_products):
    # Padding by 1 and cropping the border back off gives the same numbers
    # through the general im2col path.
    algorithm("im2col")         # (which 'auto' would run direct, these layers being thin)
    x1, w1, b1 = make_inputs(cfg)
    x2, w2, b2 = make_inputs(cfg)
    kwargs = dict(cfg["kwargs"], padding=0)
    fast = conv2d(x1, w1, b1, **kwargs)
    padded = conv2d(x2, w2, b2, **dict(kwargs, padding=1))
    assert fast.grad_fn.name == "Conv2d[pointwise]" and padded.grad_fn.name == "Conv2d[im2col]"
    assert fast.grad_fn.merged == pointwise_products
    general = padded[:, :, 1:-1, 1:-1]
    np.testing.assert_allclose(fast.detach().numpy(), general.detach().numpy(),
                               rtol=1e-13, atol=1e-13)
    g = np.random.default_rng(0).standard_normal(fast.shape)
    fast.backward(g)
    general.backward(g)
    pairs = [(x1, x2), (w1, w2)] + ([(b1, b2)] if b1 is not None else [])
    for a, b in pairs:
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("cfg", [POINTWISE["k1-groups2-nobias"], CHUNKED_OTHERS[
    "pointwise-groups2"][0]], ids=["nobias", "bias"])
def test_pointwise_gradcheck_in_chunks_of_one_image(cfg, column_budget, pointwise_products):
    # chunks of one image: the merged products' reordering, per chunk, and the
    # bias riding along it
    column_budget(1)
    x, w, b = make_inputs(cfg)
    fn = conv2d(x, w, b, **cfg["kwargs"]).grad_fn
    assert fn.merged == pointwise_products and len(fn.chunks) == cfg["x_shape"][0]
    gradcheck_conv(cfg, x, w, b)


@pytest.mark.parametrize("x_shape, merged", [((64, 832, 3, 3), True), ((64, 528, 6, 6), True),
                                             ((64, 256, 8, 8), False),
                                             ((64, 192, 12, 12), False)])
def test_pointwise_merges_the_images_of_small_cpu_maps_only(x_shape, merged):
    # GoogLeNet's last blocks (3x3, 6x6 maps) merged; from 8x8 up, one product per image
    assert conv_module.pointwise_merges(np.empty(x_shape, np.float32)) == merged


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pointwise_reads_a_non_contiguous_input(dtype, pointwise_products):
    cfg = CONFIGS["k1"]
    x, w, b = make_inputs(cfg, dtype=dtype)
    x_t = Tensor(np.ascontiguousarray(x.data.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2),
                 requires_grad=True)
    assert not x_t.data.flags.c_contiguous
    y = conv2d(x_t, w, b)
    expected = conv2d_loops(x.data.astype(np.float64), w.data, b.data, *loop_geometry(cfg))
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=tolerance, atol=tolerance)
    y.sum().backward()
    assert x_t.grad.shape == x_t.shape


@pytest.mark.parametrize("batch, image_bytes, budget, threads, count", [
    (64, 10, 490, 2, 2), (5, 3, 6, 2, 4), (7, 100, 1, 2, 7), (7, 100, 1, 4, 7),
    (64, 10, 200, 4, 4), (64, 10, 150, 4, 8), (64, 10, 1000, 16, 1), (3, 10, 10, 4, 3)])
def test_batch_chunks_come_in_multiples_of_the_threads(batch, image_bytes, budget, threads,
                                                      count):
    # one chunk of a batch this small stays one (below SPLIT_MIN_BYTES); several are
    # rounded up to a multiple of the threads, or to one image each
    chunks = batch_chunks(batch, image_bytes, budget, threads)
    assert len(chunks) == count
    assert [i for c in chunks for i in range(batch)[c]] == list(range(batch))
    sizes = [len(range(batch)[c]) for c in chunks]
    assert max(sizes) - min(sizes) <= 1 and max(sizes) * image_bytes <= max(budget, image_bytes)


@pytest.mark.parametrize("batch, threads, count", [(64, 2, 2), (64, 16, 16), (5, 16, 5),
                                                  (1, 2, 1), (64, 1, 1)])
def test_a_batch_that_fits_one_chunk_gets_one_per_thread_unless_tiny(batch, threads, count):
    # every image's buffers together just reach SPLIT_MIN_BYTES: split among the
    # threads (at most one image each); a byte less, the batch stays whole
    image_bytes = -(-geometry.SPLIT_MIN_BYTES // batch)
    chunks = batch_chunks(batch, image_bytes, 10 * geometry.SPLIT_MIN_BYTES, threads)
    assert len(chunks) == count
    assert [i for c in chunks for i in range(batch)[c]] == list(range(batch))
    sizes = [len(range(batch)[c]) for c in chunks]
    assert max(sizes) - min(sizes) <= 1
    small = batch_chunks(batch, (geometry.SPLIT_MIN_BYTES - 1) // batch,
                         10 * geometry.SPLIT_MIN_BYTES, threads)
    assert small == [slice(0, batch)]


@pytest.mark.parametrize("batch, image_bytes, budget", [
    (64, 10, 490), (5, 3, 6), (7, 100, 1), (1, 50, 1000), (10, 4, 40), (0, 8, 100)])
def test_batch_chunks_are_few_balanced_and_within_budget(batch, image_bytes, budget):
    chunks = batch_chunks(batch, image_bytes, budget)
    sizes = [len(range(batch)[c]) for c in chunks]
    assert [i for c in chunks for i in range(batch)[c]] == list(range(batch))  # in order, once
    per_chunk = max(1, budget // image_bytes)                # images that fit (at least one)
    assert max(sizes) <= per_chunk
    assert len(chunks) == max(1, -(-batch // per_chunk))    # no more chunks than needed
    assert max(sizes) - min(sizes) <= 1


# ---------------------------------------------------------------- aliasing
@pytest.mark.parametrize("x_shape, kernel, stride", [
    ((1, 3, 3, 3), 3, 1),        # one window covering the whole image
    ((1, 3, 2, 2), 1, 2),        # 1×1 stride 2 with a 1×1 output
    ((1, 2, 4, 1), 1, 2),        # a single-column image
    ((2, 3, 4, 4), 2, 2)])       # windows tiling the image
def test_backward_leaves_a_shared_input_intact(x_shape, kernel, stride):
    # im2col without padding may return a view of x.  Backward reuses the
    # column buffer for Wᵀ @ dy; that must never overwrite x, which a second
    # consumer (here another conv) still needs for its own backward.
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape)
    w1 = rng.standard_normal((4, x_shape[1], kernel, kernel))
    w2 = rng.standard_normal((4, x_shape[1], 3, 3))
    shared = Tensor(x.copy(), requires_grad=True)
    w1_t, w2_t = Tensor(w1, requires_grad=True), Tensor(w2, requires_grad=True)
    loss = conv2d(shared, w1_t, stride=stride).sum() + (conv2d(shared, w2_t, padding=1) ** 2).sum()
    loss.backward()
    np.testing.assert_array_equal(shared.data, x)
    # dW2 = Σ 2·y2 ⋆ x: checked against the loops on the untouched input
    y2 = conv2d_loops(x, w2, None, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    expected = np.zeros_like(w2)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i in range(3):
        for j in range(3):
            window = xp[:, :, i:i + x_shape[2], j:j + x_shape[3]]
            expected[:, :, i, j] = np.einsum("nohw,nchw->oc", 2 * y2, window)
    np.testing.assert_allclose(w2_t.grad.numpy(), expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- unbatched input
@pytest.mark.parametrize("op", [conv2d, conv2d_simple], ids=["conv2d", "conv2d_simple"])
def test_unbatched_input_is_one_image(op):
    # PyTorch accepts (C, H, W): the result is the batch-of-one result without its batch axis.
    cfg = CONFIGS["k3-pad1-batch3"]
    x, w, b = make_inputs(cfg)
    image = Tensor(x.data[1], requires_grad=True)
    y = op(image, w, b, padding=1)
    expected = conv2d_loops(x.data[1:2], w.data, b.data, *loop_geometry(cfg))[0]
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    gradcheck(lambda t: op(t, w, b, padding=1), (image,))


# ---------------------------------------------------------------- 3×3 stride 1: Winograd
# Shapes Conv2d hands to Winograd (16+ channels, 3×3, stride 1, output tiles
# mostly used): output sizes that are no multiple of m leave part-used tiles.
WINOGRAD = {
    "pad1": config((2, 16, 6, 6), (16, 16, 3, 3), padding=1),
    "pad1-odd-nobias": config((3, 16, 7, 9), (20, 16, 3, 3), False, padding=1),
    "valid": config((2, 17, 8, 6), (16, 17, 3, 3)),
    "pad-pair": config((1, 16, 5, 8), (16, 16, 3, 3), padding=(2, 0)),
    "same": config((2, 16, 6, 7), (16, 16, 3, 3), padding="same"),
}
WINOGRAD_NAMES = ["winograd", "winograd4x4"]      # F(2×2, 3×3), F(4×4, 3×3)
# ... and shapes it leaves to the others: im2col, the direct loops where the layer is thin
# (conv_direct.direct_suits), one dense product on a map no larger than the kernel
NOT_WINOGRAD = {
    "stride2": config((2, 16, 8, 8), (16, 16, 3, 3), stride=2, padding=1),
    "dilation2": config((2, 16, 8, 8), (16, 16, 3, 3), dilation=2, padding=2),
    "groups2": config((2, 16, 6, 6), (16, 8, 3, 3), padding=1, groups=2),
    "8-channels": config((2, 8, 6, 6), (16, 8, 3, 3), padding=1),
    "3x3-output": config((2, 16, 3, 3), (16, 16, 3, 3), padding=1),
    "5x5-kernel": config((2, 16, 8, 8), (16, 16, 5, 5), padding=2),
}
AUTO_PICKS_INSTEAD = {"stride2": "im2col", "dilation2": "direct", "groups2": "im2col",
                      "8-channels": "direct", "3x3-output": "dense", "5x5-kernel": "direct"}


def assert_same_as_im2col(cfg, set_algorithm, name, function, tolerance):
    """y, dx, dW and db with ``set_algorithm(name)``, which must run
    ``Conv2d[function]``, equal im2col's to ``tolerance`` in float64, for one
    random upstream gradient (the other algorithms' tests use it too)."""
    results = {}
    g = None
    for chosen, runs in ((name, function), ("im2col", "im2col")):
        set_algorithm(chosen)
        x, w, b = make_inputs(cfg)
        y = conv2d(x, w, b, **cfg["kwargs"])
        assert y.grad_fn.name == f"Conv2d[{runs}]"
        if g is None:
            g = np.random.default_rng(0).standard_normal(y.shape)
        y.backward(g)
        results[chosen] = [y.detach().numpy()] + [t.grad.numpy() for t in (x, w, b)
                                                   if t is not None]
    for fast, plain in zip(results[name], results["im2col"]):
        np.testing.assert_allclose(fast, plain, rtol=tolerance, atol=tolerance)


def assert_matches_the_loops(cfg, function):
    """conv2d under the current setting runs the layer ``cfg`` as
    ``Conv2d[function]`` and its y equals ``conv2d_loops``' to 1e-12 in float64
    (the other algorithms' tests use it too)."""
    x, w, b = make_inputs(cfg)
    y = conv2d(x, w, b, **cfg["kwargs"])
    assert y.grad_fn.name == f"Conv2d[{function}]"
    expected = conv2d_loops(x.data, w.data, None if b is None else b.data, *loop_geometry(cfg))
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def assert_auto_picks(cfg, name):
    """conv2d under the current setting runs the layer ``cfg`` as ``Conv2d[name]``."""
    x = Tensor(np.zeros(cfg["x_shape"], np.float32), requires_grad=True)
    w = Tensor(np.zeros(cfg["w_shape"], np.float32), requires_grad=True)
    assert conv2d(x, w, **cfg["kwargs"]).grad_fn.name == f"Conv2d[{name}]"


@pytest.mark.parametrize("name", WINOGRAD_NAMES)
@pytest.mark.parametrize("cfg", WINOGRAD.values(), ids=WINOGRAD.keys())
def test_winograd_path_equals_the_im2col_path(cfg, name, algorithm):
    assert_same_as_im2col(cfg, algorithm, name, name, 1e-11)


@pytest.mark.parametrize("name", WINOGRAD_NAMES)
@pytest.mark.parametrize("cfg", [WINOGRAD["pad1-odd-nobias"], WINOGRAD["pad-pair"]],
                         ids=["pad1-odd-nobias", "pad-pair"])
def test_winograd_gradcheck(cfg, name, algorithm):
    algorithm(name)
    x, w, b = make_inputs(cfg)
    assert conv2d(x, w, b, **cfg["kwargs"]).grad_fn.name == f"Conv2d[{name}]"
    gradcheck(lambda x, w, b: conv2d(x, w, b, **cfg["kwargs"]), (x, w, b))


@pytest.mark.parametrize("name", WINOGRAD_NAMES)
def test_winograd_matches_explicit_loops(name, algorithm):
    algorithm(name)
    assert_matches_the_loops(WINOGRAD["pad1-odd-nobias"], name)


# output size -> what "auto" runs: 4x4 tiles where they cover the output with at
# most a quarter wasted, else 2x2 tiles where those do; a 3x3 map, no larger than
# the kernel's window, is one dense product (conv_dense.py)
AUTO_TILES = {
    (24, 24): "winograd4x4", (12, 12): "winograd4x4", (14, 14): "winograd4x4",
    (6, 4): "winograd4x4", (6, 6): "winograd", (7, 9): "winograd", (3, 3): "dense",
}


@pytest.mark.parametrize("out_hw, name", AUTO_TILES.items(), ids=map(str, AUTO_TILES))
def test_auto_picks_the_tiles_the_output_suits(out_hw, name):
    x = Tensor(np.zeros((1, 16) + out_hw), requires_grad=True)
    w = Tensor(np.zeros((16, 16, 3, 3)), requires_grad=True)
    assert conv2d(x, w, padding=1).grad_fn.name == f"Conv2d[{name}]"


@pytest.mark.parametrize("name", NOT_WINOGRAD)
def test_winograd_only_where_it_pays(name):
    cfg = NOT_WINOGRAD[name]
    x, w, b = make_inputs(cfg)
    assert conv2d(x, w, b, **cfg["kwargs"]).grad_fn.name == f"Conv2d[{AUTO_PICKS_INSTEAD[name]}]"


@pytest.mark.parametrize("name", WINOGRAD_NAMES)
def test_winograd_chunks_equal_the_whole_batch(name, column_budget, algorithm):
    algorithm(name)
    cfg = WINOGRAD["pad1-odd-nobias"]
    x, w, _ = make_inputs(cfg)
    g = np.random.default_rng(1).standard_normal((3, 20, 7, 9))
    y = conv2d(x, w, **cfg["kwargs"])
    assert y.grad_fn.name == f"Conv2d[{name}]" and len(y.grad_fn.chunks) == 1
    y.backward(g)
    whole = [y.detach().numpy(), x.grad.numpy(), w.grad.numpy()]
    column_budget(1)                            # one image per chunk
    x2, w2, _ = make_inputs(cfg)
    y2 = conv2d(x2, w2, **cfg["kwargs"])
    assert len(y2.grad_fn.chunks) == 3
    y2.backward(g)
    for a, b in zip(whole, [y2.detach().numpy(), x2.grad.numpy(), w2.grad.numpy()]):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


# float32 error of each Winograd algorithm, relative to the output's largest
# value, at most this many times im2col's: F(2×2, 3×3) adds and halves before
# multiplying; F(4×4, 3×3)'s transforms multiply by up to 8 and 1/24, and
# measured 5-28x im2col's error on ResNet-sized layers (docs/conv.md).
ERROR_VS_IM2COL = {"winograd": 4, "winograd4x4": 40}


@pytest.mark.parametrize("name", WINOGRAD_NAMES)
def test_winograd_float32_error_is_close_to_im2col_s(name, algorithm):
    # measured against a float64 result, forward and both gradients
    cfg = config((4, 64, 12, 12), (64, 64, 3, 3), padding=1)
    x, w, b = make_inputs(cfg, requires_grad=False)
    g = np.random.default_rng(3).standard_normal((4, 64, 12, 12))

    def results(dtype):
        tensors = [Tensor(t.data.astype(dtype), requires_grad=True) for t in (x, w, b)]
        y = conv2d(*tensors, padding=1)
        y.backward(g.astype(dtype))
        return [y.detach().numpy()] + [t.grad.numpy() for t in tensors[:2]]
    algorithm("im2col")
    exact = results(np.float64)
    errors = {}
    for chosen in (name, "im2col"):
        algorithm(chosen)
        errors[chosen] = [np.abs(r - e).max() / np.abs(e).max()
                          for r, e in zip(results(np.float32), exact)]
    for fast, plain in zip(errors[name], errors["im2col"]):
        assert fast < ERROR_VS_IM2COL[name] * plain + 1e-7, errors


def test_set_algorithm_rejects_unknown_names(algorithm):
    with pytest.raises(ValueError, match=r"set_algorithm: expected one of \('auto', 'im2col', "
                                         r"'winograd', 'winograd4x4', 'taps'\), got 'fft'"):
        algorithm("fft")


@pytest.mark.parametrize("chosen", WINOGRAD_NAMES)
@pytest.mark.parametrize("name", ["8-channels", "3x3-output"])
def test_set_algorithm_winograd_runs_it_wherever_it_can_compute(name, chosen, algorithm):
    # 'auto' leaves these to others (too few channels, wasted tiles); 'winograd' does not
    cfg = NOT_WINOGRAD[name]
    x, w, b = make_inputs(cfg)
    plain = conv2d(x, w, b, **cfg["kwargs"])
    assert plain.grad_fn.name == f"Conv2d[{AUTO_PICKS_INSTEAD[name]}]"
    algorithm(chosen)
    forced = conv2d(x, w, b, **cfg["kwargs"])
    assert forced.grad_fn.name == f"Conv2d[{chosen}]"
    np.testing.assert_allclose(forced.detach().numpy(), plain.detach().numpy(), rtol=1e-11,
                               atol=1e-11)


@pytest.mark.parametrize("chosen", WINOGRAD_NAMES)
@pytest.mark.parametrize("name", ["stride2", "dilation2", "groups2", "5x5-kernel"])
def test_set_algorithm_winograd_leaves_what_it_cannot_compute_to_im2col(name, chosen,
                                                                         algorithm):
    cfg = NOT_WINOGRAD[name]
    algorithm(chosen)
    x, w, b = make_inputs(cfg)
    assert conv2d(x, w, b, **cfg["kwargs"]).grad_fn.name == "Conv2d[im2col]"


@pytest.mark.parametrize("name", WINOGRAD_NAMES)
def test_winograd_backward_twice_with_retain_graph(name, algorithm):
    # The transformed weights are kept until the graph is freed, not dropped
    # by the first backward.
    algorithm(name)
    cfg = WINOGRAD["pad1"]
    x, w, b = make_inputs(cfg)
    y = conv2d(x, w, b, **cfg["kwargs"])
    assert y.grad_fn.name == f"Conv2d[{name}]"
    g = np.random.default_rng(2).standard_normal(y.shape)
    y.backward(g, retain_graph=True)
    first = [t.grad.numpy().copy() for t in (x, w, b)]
    y.backward(g)
    for t, once in zip((x, w, b), first):
        np.testing.assert_allclose(t.grad.numpy(), 2 * once, rtol=1e-12, atol=1e-12)
    assert y.grad_fn.saved == ()                # released with the graph


@pytest.mark.parametrize("name, m", [("winograd", 2), ("winograd4x4", 4)])
def test_winograd_saves_its_transformed_weights_like_any_saved_array(name, m, algorithm):
    # U = G W Gᵀ is saved with save_for_backward, kept by retain_graph=True and
    # released with the graph by the engine, as every saved array is.
    algorithm(name)
    cfg = WINOGRAD["pad1"]
    x, w, b = make_inputs(cfg)
    y = conv2d(x, w, b, **cfg["kwargs"])
    fn = y.grad_fn
    x_saved, U = fn.saved
    assert x_saved is x.data
    np.testing.assert_allclose(U, kernels.winograd_weight(w.data, m).reshape((m + 2) ** 2, 16, 16),
                               rtol=1e-14)
    g = np.ones(y.shape)
    y.backward(g, retain_graph=True)
    assert fn.saved[1] is U and not fn._freed
    y.backward(g)
    assert fn.saved == () and fn._freed
    assert not any(value is U for value in vars(fn).values())


@pytest.mark.parametrize("name", WINOGRAD_NAMES)
@pytest.mark.parametrize("x_grad, w_grad", [(True, False), (False, True)])
def test_winograd_saves_only_what_the_wanted_gradients_need(x_grad, w_grad, name, algorithm):
    algorithm(name)
    cfg = WINOGRAD["pad1"]
    x, w, b = make_inputs(cfg)
    x.requires_grad, w.requires_grad = x_grad, w_grad
    x_saved, U = conv2d(x, w, b, **cfg["kwargs"]).grad_fn.saved
    assert (x_saved is not None) == w_grad      # x only serves dW
    assert (U is not None) == x_grad            # U only serves dx


@pytest.mark.parametrize("name", WINOGRAD_NAMES)
@pytest.mark.parametrize("cfg", [WINOGRAD["pad1-odd-nobias"], WINOGRAD["pad1"]],
                         ids=["pad1-odd-nobias", "pad1"])
def test_winograd_keeps_float32_float32(cfg, name, algorithm):
    algorithm(name)
    x, w, b = make_inputs(cfg, dtype=np.float32)
    y = conv2d(x, w, b, **cfg["kwargs"])
    assert y.grad_fn.name == f"Conv2d[{name}]" and y.dtype == np.float32
    y.backward(np.ones(y.shape, dtype=np.float32))
    assert all(t.grad.dtype == np.float32 for t in (x, w, b) if t is not None)
