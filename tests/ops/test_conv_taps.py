"""conv2d as one product per kernel tap (ops/conv_taps.py): the windows each
tap reaches, the rule that picks it, forward and gradients against an
explicit loop and against the im2col path, float64 gradcheck, PyTorch
parity, chunks and threads, what is saved."""
import numpy as np
import pytest

import tinygrad_cnn as tc
from kernels import geometry
from tests.ops.test_conv import (assert_auto_picks, assert_matches_the_loops,
                                 assert_same_as_im2col, config, gradcheck_conv,
                                 make_inputs)
from tinygrad_cnn.ops import conv as conv_module
from tinygrad_cnn.ops.conv import conv2d
from tinygrad_cnn.ops.conv_taps import tap_windows, taps_share

# every geometry the taps must get right, run with set_algorithm("taps")
GEOMETRIES = {
    "3x3-map-pad1": config((2, 5, 3, 3), (4, 5, 3, 3), padding=1),
    "5x5-kernel-on-3x3": config((2, 3, 3, 3), (4, 3, 5, 5), False, padding=2),
    "stride2-asymmetric": config((3, 4, 5, 4), (6, 4, 3, 2), stride=2, padding=(2, 1)),
    "dilation2": config((2, 3, 4, 4), (2, 3, 3, 3), padding=2, dilation=2),
    "same-6x7": config((2, 3, 6, 7), (4, 3, 3, 3), padding="same"),
    "no-padding-stride2": config((2, 3, 5, 5), (4, 3, 2, 2), stride=2),
    # outputs that see only padding: no tap reaches the map at all
    "no-tap-reaches": config((1, 3, 1, 1), (2, 3, 1, 1), stride=3, padding=1),
}


@pytest.mark.parametrize("cfg", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_taps_match_the_loops(cfg, algorithm):
    algorithm("taps")
    assert_matches_the_loops(cfg, "taps")


@pytest.mark.parametrize("cfg", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_taps_gradcheck(cfg, algorithm):
    algorithm("taps")
    gradcheck_conv(cfg, *make_inputs(cfg))


@pytest.mark.parametrize("cfg", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_taps_path_equals_the_im2col_path(cfg, algorithm):
    assert_same_as_im2col(cfg, algorithm, "taps", "taps", 1e-12)


@pytest.mark.parametrize("threads, budget", [(1, None), (2, None), (2, 1)])
def test_chunks_and_threads_give_the_same_result(threads, budget, algorithm, monkeypatch):
    # one chunk per thread at least (for a batch this small only without
    # SPLIT_MIN_BYTES); a 1-byte budget gives one image per chunk
    monkeypatch.setattr(geometry, "SPLIT_MIN_BYTES", 0)
    algorithm("taps")
    previous_budget = conv_module.set_column_budget(budget)
    previous_threads = tc.get_num_threads()
    tc.set_num_threads(threads)
    try:
        x, w, b = make_inputs(config((5, 64, 3, 3), (64, 64, 3, 3), padding=1))
        y = conv2d(x, w, b, padding=1)
        chunks = y.grad_fn.chunks
        y.backward(np.random.default_rng(0).standard_normal(y.shape))
    finally:
        tc.set_num_threads(previous_threads)
        conv_module.set_column_budget(previous_budget)
    assert y.grad_fn.name == "Conv2d[taps]"
    assert len(chunks) == (5 if budget == 1 else threads)
    algorithm("im2col")
    x2, w2, b2 = make_inputs(config((5, 64, 3, 3), (64, 64, 3, 3), padding=1))
    y2 = conv2d(x2, w2, b2, padding=1)
    y2.backward(np.random.default_rng(0).standard_normal(y2.shape))
    for ours, plain in ((y, y2), (x.grad, x2.grad), (w.grad, w2.grad), (b.grad, b2.grad)):
        np.testing.assert_allclose(ours.detach().numpy(), plain.detach().numpy(), rtol=1e-12,
                                   atol=1e-12)


def test_taps_match_torch_in_float32():
    torch = pytest.importorskip("torch")
    cfg = config((3, 128, 3, 3), (128, 128, 3, 3), padding=1)     # too large a dense weight
    x, w, b = make_inputs(cfg, dtype=np.float32)
    y = conv2d(x, w, b, padding=1)
    assert y.grad_fn.name == "Conv2d[taps]" and y.dtype == np.float32
    g = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    tx, tw, tb = (torch.tensor(t.data, requires_grad=True) for t in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, padding=1)
    ty.backward(torch.tensor(g))
    scale = np.abs(ty.detach().numpy()).max()
    np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), atol=1e-5 * scale)
    for ours, theirs in ((x, tx), (w, tw), (b, tb)):
        assert ours.grad.dtype == np.float32
        expected = theirs.grad.numpy()
        np.testing.assert_allclose(ours.grad.numpy(), expected,
                                   atol=1e-5 * np.abs(expected).max())


# auto's rule: which layers get the taps, and which keep their algorithm
RULE = {
    "resnet18-512-on-3x3": (config((1, 512, 3, 3), (512, 512, 3, 3), padding=1), "taps"),
    "googlenet-192-384": (config((1, 192, 3, 3), (384, 192, 3, 3), padding=1), "taps"),
    "5x5-kernel-on-6x6": (config((1, 64, 6, 6), (64, 64, 5, 5), padding=2), "taps"),
    "3x3-on-6x6-winograd": (config((1, 256, 6, 6), (256, 256, 3, 3), padding=1), "winograd"),
    "resnet18-stride2": (config((1, 256, 6, 6), (512, 256, 3, 3), stride=2, padding=1),
                         "im2col"),
    "few-channels": (config((1, 32, 6, 6), (64, 32, 5, 5), padding=2), "im2col"),
    "small-dense-weight": (config((1, 64, 3, 3), (64, 64, 3, 3), padding=1), "dense"),
    "groups2": (config((1, 128, 6, 6), (128, 64, 5, 5), padding=2, groups=2), "im2col"),
}


@pytest.mark.parametrize("cfg, name", RULE.values(), ids=RULE.keys())
def test_auto_runs_taps_where_they_skip_enough_padding(cfg, name):
    assert_auto_picks(cfg, name)


def test_set_algorithm_taps_leaves_grouped_convolutions_to_im2col(algorithm):
    algorithm("taps")
    x, w, b = make_inputs(config((1, 4, 3, 3), (4, 2, 3, 3), padding=1, groups=2))
    assert conv2d(x, w, b, padding=1, groups=2).grad_fn.name == "Conv2d[im2col]"


@pytest.mark.parametrize("x_grad, w_grad", [(True, False), (False, True)])
def test_taps_save_only_what_the_wanted_gradients_need(x_grad, w_grad, algorithm):
    algorithm("taps")
    x, w, b = make_inputs(GEOMETRIES["3x3-map-pad1"])
    x.requires_grad, w.requires_grad = x_grad, w_grad
    x_saved, by_tap = conv2d(x, w, b, padding=1).grad_fn.saved
    assert (x_saved is not None) == w_grad      # x only serves dW
    assert (by_tap is not None) == x_grad       # the weights by tap only serve dx


@pytest.mark.parametrize("size, out, kernel, stride, pad, dilation",
                         [(3, 3, 3, 1, 1, 1), (5, 3, 3, 2, 2, 1), (4, 4, 3, 1, 2, 2),
                          (1, 1, 1, 3, 1, 1), (7, 4, 4, 2, 1, 1)])
def test_tap_windows_are_the_outputs_whose_input_pixel_is_inside(size, out, kernel, stride,
                                                                 pad, dilation):
    for i, (lo, hi, start) in enumerate(tap_windows(size, out, kernel, stride, pad, dilation)):
        inside = [o for o in range(out) if 0 <= o * stride + i * dilation - pad < size]
        assert list(range(lo, hi)) == inside
        if inside:
            assert start == inside[0] * stride + i * dilation - pad


def test_taps_share_counts_the_multiply_adds_im2col_spends_on_real_pixels():
    one = (1, 1)
    # 3x3 map, 3x3 kernel, padding 1: corners see 4 pixels, edges 6, the centre 9
    assert taps_share((1, 1, 3, 3), (1, 1, 3, 3), one, (1, 1, 1, 1), one, (3, 3)) == 49 / 81
    # 5x5 kernel, padding 2 on a 3x3 map: 9 real pixels per output row/column pair of 25
    assert taps_share((1, 1, 3, 3), (1, 1, 5, 5), one, (2, 2, 2, 2), one, (3, 3)) == 81 / 225
    # no padding: every tap reaches every output
    assert taps_share((1, 1, 8, 8), (1, 1, 3, 3), one, (0, 0, 0, 0), one, (6, 6)) == 1
