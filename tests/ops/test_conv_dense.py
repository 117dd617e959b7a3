"""conv2d on tiny maps as one dense product (ops/conv_dense.py): the tap
matrix, the rule that picks it, forward and gradients against an explicit
loop and against the im2col path, float64 gradcheck, PyTorch parity, what is
saved."""
import numpy as np
import pytest

from tests.ops.test_conv import (assert_auto_picks, assert_matches_the_loops,
                                 assert_same_as_im2col, config, gradcheck_conv,
                                 make_inputs)
from tinygrad_cnn.ops.conv import conv2d
from tinygrad_cnn.ops.conv_dense import tap_matrix


# maps no larger than the kernel's window: what "auto" runs densely (with more
# than the direct loops' 1000 multiply-adds per output pixel: conv_direct.py)
DENSE = {
    "densenet-3x3": config((2, 16, 3, 3), (8, 16, 3, 3), padding=1),
    "googlenet-5x5-nobias": config((3, 4, 3, 3), (12, 4, 5, 5), False, padding=2),
    "stride2": config((2, 3, 3, 3), (2, 3, 3, 3), stride=2, padding=1),
    "dilation2": config((1, 16, 3, 3), (8, 16, 3, 3), padding=2, dilation=2),
    "2x3-map": config((2, 16, 2, 3), (8, 16, 3, 3), padding=(1, 1)),
    "same": config((2, 16, 3, 3), (8, 16, 3, 3), padding="same"),
}


@pytest.mark.parametrize("cfg", DENSE.values(), ids=DENSE.keys())
def test_auto_runs_tiny_maps_densely_and_matches_the_loops(cfg):
    assert_matches_the_loops(cfg, "dense")


@pytest.mark.parametrize("cfg", DENSE.values(), ids=DENSE.keys())
def test_dense_gradcheck(cfg):
    gradcheck_conv(cfg, *make_inputs(cfg))


@pytest.mark.parametrize("cfg", DENSE.values(), ids=DENSE.keys())
def test_dense_path_equals_the_im2col_path(cfg, algorithm):
    assert_same_as_im2col(cfg, algorithm, "auto", "dense", 1e-12)


@pytest.mark.parametrize("cfg", [DENSE["densenet-3x3"], DENSE["googlenet-5x5-nobias"]],
                         ids=["densenet-3x3", "googlenet-5x5-nobias"])
def test_dense_matches_torch_in_float32(cfg):
    torch = pytest.importorskip("torch")
    x, w, b = make_inputs(cfg, dtype=np.float32)
    y = conv2d(x, w, b, **cfg["kwargs"])
    assert y.grad_fn.name == "Conv2d[dense]" and y.dtype == np.float32
    g = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    tx, tw = (torch.tensor(t.data, requires_grad=True) for t in (x, w))
    tb = None if b is None else torch.tensor(b.data, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, **cfg["kwargs"])
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    for ours, theirs in ((x, tx), (w, tw), (b, tb)):
        if ours is not None:
            assert ours.grad.dtype == np.float32
            np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-5,
                                       atol=1e-4)


# ... and what it leaves to the others
NOT_DENSE = {
    "map-larger-than-window": (config((1, 16, 4, 4), (16, 16, 3, 3), padding=1), "winograd4x4"),
    "groups2": (config((1, 4, 3, 3), (4, 2, 3, 3), padding=1, groups=2), "im2col"),
    "resnet18-512-on-3x3": (config((1, 512, 3, 3), (512, 512, 3, 3), padding=1), "taps"),
    "googlenet-160-320": (config((1, 160, 3, 3), (320, 160, 3, 3), padding=1), "taps"),
    "1x1": (config((1, 4, 1, 1), (4, 4, 1, 1)), "pointwise"),
}


@pytest.mark.parametrize("cfg, name", NOT_DENSE.values(), ids=NOT_DENSE.keys())
def test_dense_only_on_tiny_maps_with_small_dense_weights(cfg, name):
    assert_auto_picks(cfg, name)


def test_im2col_when_asked(algorithm):
    algorithm("im2col")
    x, w, b = make_inputs(DENSE["densenet-3x3"])
    assert conv2d(x, w, b, padding=1).grad_fn.name == "Conv2d[im2col]"


@pytest.mark.parametrize("x_grad, w_grad", [(True, False), (False, True)])
def test_dense_saves_only_what_the_wanted_gradients_need(x_grad, w_grad):
    x, w, b = make_inputs(DENSE["densenet-3x3"])
    x.requires_grad, w.requires_grad = x_grad, w_grad
    x_saved, dense = conv2d(x, w, b, padding=1).grad_fn.saved
    assert (x_saved is not None) == w_grad      # x only serves dW
    assert (dense is not None) == x_grad        # the dense weight only serves dx


def test_a_bias_of_another_dtype_is_added_in_the_outputs_dtype(algorithm):
    x, w, _ = make_inputs(DENSE["densenet-3x3"], dtype=np.float32)
    b = np.random.default_rng(2).standard_normal(8)           # float64
    dense = conv2d(x, w, b, padding=1)
    assert dense.grad_fn.name == "Conv2d[dense]"
    algorithm("im2col")
    im2col = conv2d(x, w, b, padding=1)
    assert dense.dtype == im2col.dtype == np.float32
    np.testing.assert_allclose(dense.detach().numpy(), im2col.detach().numpy(), rtol=1e-5,
                               atol=1e-5)


def test_tap_matrix_joins_each_pair_by_at_most_one_tap():
    # 3x3 map, 3x3 kernel, padding 1: output pixel p and input pixel q are joined
    # by the tap at q - p + (1, 1), if that lies in the kernel; the corner output
    # sees 4 input pixels, an edge one 6, the centre all 9.
    P, out_hw = tap_matrix((3, 3), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    assert out_hw == (3, 3) and P.shape == (9, 81) and not P.flags.writeable
    pairs = P.reshape(9, 9, 9)                  # tap, output pixel, input pixel
    assert set(np.unique(P)) == {0, 1} and (pairs.sum(axis=0) <= 1).all()
    assert list(pairs.sum(axis=(0, 2))) == [4, 6, 4, 6, 9, 6, 4, 6, 4]
    for p in range(9):
        for q in range(9):
            di, dj = q // 3 - p // 3 + 1, q % 3 - p % 3 + 1
            inside = 0 <= di < 3 and 0 <= dj < 3
            assert pairs[:, p, q].sum() == inside
            if inside:
                assert pairs[di * 3 + dj, p, q] == 1
