"""LeNet and BN-LeNet: the from-scratch batch_norm/BatchNorm against loop
references, gradcheck and nn.BatchNorm2d/1d; the three networks' shape walk,
parameter counts, weight exchange with PyTorch twins, one forward/backward and
a few SGD steps."""
import math

import numpy as np
import pytest

import models
import tinygrad_cnn as tc
from models import lenet
from tests.inputs import distinct
from tests.models.checks import (assert_forward_backward, assert_sgd_lowers_loss,
                                      count_parameters, once_per_run)
from tests.models.torch_nets import assert_same_as_torch, torch_nets
from tinygrad_cnn import nn
from tinygrad_cnn.summary import summary

EPS, MOMENTUM = 1e-5, 0.9       # what the BatchNorm layer passes, as in d2l


# ============================================================ loop references
def loop_batch_stats(x):
    """Per-feature (axis 1) mean and biased variance over every other axis, by
    explicit loops over the elements."""
    channels = x.shape[1]
    sums, counts = [0.0] * channels, [0] * channels
    for index in np.ndindex(x.shape):
        sums[index[1]] += float(x[index])
        counts[index[1]] += 1
    means = [s / n for s, n in zip(sums, counts)]
    squares = [0.0] * channels
    for index in np.ndindex(x.shape):
        squares[index[1]] += (float(x[index]) - means[index[1]]) ** 2
    return np.array(means), np.array([s / n for s, n in zip(squares, counts)])


def loop_normalise(x, mean, var, gamma, beta):
    """y[n, c, ...] = gamma[c] (x[n, c, ...] - mean[c]) / sqrt(var[c] + eps) + beta[c],
    element by element."""
    y = np.empty(x.shape)
    for index in np.ndindex(x.shape):
        c = index[1]
        y[index] = gamma[c] * (x[index] - mean[c]) / math.sqrt(var[c] + EPS) + beta[c]
    return y


def stat_shape(x_shape):
    """(1, C) for (N, C) input, (1, C, 1, 1) for (N, C, H, W): d2l's layout."""
    return (1, x_shape[1]) if len(x_shape) == 2 else (1, x_shape[1], 1, 1)


SHAPES = [(5, 3), (2, 3, 4, 3)]       # fully connected and convolutional input


def bn_inputs(x_shape, dtype=np.float64):
    shape = stat_shape(x_shape)
    return dict(X=tc.tensor(distinct(*x_shape, seed=1).astype(dtype), requires_grad=True),
                gamma=tc.tensor(distinct(*shape, seed=2, low=0.5, high=1.5).astype(dtype),
                                requires_grad=True),
                beta=tc.tensor(distinct(*shape, seed=3).astype(dtype), requires_grad=True),
                moving_mean=tc.tensor(distinct(*shape, seed=4, low=-0.5, high=0.5)
                                      .astype(dtype)),
                moving_var=tc.tensor(distinct(*shape, seed=5, low=0.5, high=2.0)
                                     .astype(dtype)))


# ====================================================== the batch_norm function
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape", SHAPES)
def test_batch_norm_training_matches_loops(x_shape, dtype):
    """Batch statistics normalise; moving = 0.9 · moving + 0.1 · batch (biased var)."""
    a = bn_inputs(x_shape, dtype)
    Y, mm, mv = lenet.batch_norm(**a, eps=EPS, momentum=MOMENTUM, training=True)
    x = a["X"].detach().numpy()
    gamma, beta = a["gamma"].detach().numpy().ravel(), a["beta"].detach().numpy().ravel()
    mean, var = loop_batch_stats(x)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    assert Y.dtype == dtype and Y.shape == x_shape
    np.testing.assert_allclose(Y.detach().numpy(), loop_normalise(x, mean, var, gamma, beta),
                               **tol)
    old_mm, old_mv = a["moving_mean"].numpy().ravel(), a["moving_var"].numpy().ravel()
    assert mm.shape == mv.shape == stat_shape(x_shape)
    np.testing.assert_allclose(mm.numpy().ravel(), 0.9 * old_mm + 0.1 * mean, **tol)
    np.testing.assert_allclose(mv.numpy().ravel(), 0.9 * old_mv + 0.1 * var, **tol)


@pytest.mark.parametrize("x_shape", SHAPES)
def test_batch_norm_prediction_uses_moving_statistics(x_shape):
    a = bn_inputs(x_shape)
    Y, mm, mv = lenet.batch_norm(**a, eps=EPS, momentum=MOMENTUM, training=False)
    expected = loop_normalise(a["X"].detach().numpy(), a["moving_mean"].numpy().ravel(),
                              a["moving_var"].numpy().ravel(),
                              a["gamma"].detach().numpy().ravel(),
                              a["beta"].detach().numpy().ravel())
    np.testing.assert_allclose(Y.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(mm.numpy(), a["moving_mean"].numpy())
    np.testing.assert_array_equal(mv.numpy(), a["moving_var"].numpy())


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("x_shape", SHAPES)
def test_batch_norm_gradcheck(x_shape, training):
    a = bn_inputs(x_shape)
    stats = dict(moving_mean=a.pop("moving_mean"), moving_var=a.pop("moving_var"))

    def normalise(X, gamma, beta):
        return lenet.batch_norm(X, gamma, beta, **stats, eps=EPS, momentum=MOMENTUM,
                                training=training)[0]
    tc.gradcheck(normalise, (a["X"], a["gamma"], a["beta"]))


def test_batch_norm_statistics_leave_the_graph():
    Y, mm, mv = lenet.batch_norm(**bn_inputs((2, 3, 2, 2)), eps=EPS, momentum=MOMENTUM,
                                 training=True)
    assert Y.requires_grad
    assert not mm.requires_grad and mm.grad_fn is None
    assert not mv.requires_grad and mv.grad_fn is None


def test_batch_norm_rejects_other_ranks():
    X = tc.rand(2, 3, 4)
    stats = [tc.ones(1, 3, 1), tc.zeros(1, 3, 1), tc.zeros(1, 3, 1), tc.ones(1, 3, 1)]
    with pytest.raises(ValueError, match=r"batch_norm: .*got shape \(2, 3, 4\)"):
        lenet.batch_norm(X, *stats, eps=EPS, momentum=MOMENTUM, training=True)


# ========================================================= the BatchNorm layer
@pytest.mark.parametrize("x_shape", SHAPES)
def test_layer_mode_not_grad_mode_picks_the_statistics(x_shape):
    """d2l switches on torch.is_grad_enabled(); ours on train()/eval()."""
    bn = lenet.BatchNorm(x_shape[1], num_dims=len(x_shape))
    X = tc.tensor(distinct(*x_shape, low=1.0, high=5.0))   # mean far from moving_mean 0
    bn.double()
    with tc.no_grad():                                      # training, yet no grad
        Y = bn(X).numpy()
    axes = (0,) + tuple(range(2, len(x_shape)))
    np.testing.assert_allclose(Y.mean(axis=axes), 0, atol=1e-12)   # batch statistics
    moved_mean = bn.moving_mean.numpy().copy()
    np.testing.assert_allclose(moved_mean.ravel(), 0.1 * loop_batch_stats(X.numpy())[0])

    bn.eval()                                               # grad enabled, yet eval
    Y = bn(X)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), moved_mean)
    expected = (X.numpy() - moved_mean) / np.sqrt(bn.moving_var.numpy() + EPS)
    np.testing.assert_allclose(Y.detach().numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("x_shape", [(4, 5), (4, 5, 3, 3)])
def test_layer_moving_statistics_are_saved_buffers(x_shape):
    num_dims, shape = len(x_shape), stat_shape(x_shape)
    bn = lenet.BatchNorm(5, num_dims=num_dims)
    state = bn.state_dict()
    assert list(state) == ["gamma", "beta", "moving_mean", "moving_var"]
    assert all(v.shape == shape for v in state.values())
    assert [name for name, _ in bn.named_parameters()] == ["gamma", "beta"]

    bn(tc.rand(*x_shape))                                    # training moves them
    assert not np.array_equal(bn.moving_var.numpy(), np.ones(shape, np.float32))
    restored = lenet.BatchNorm(5, num_dims=num_dims)
    restored.load_state_dict({k: v.numpy() for k, v in bn.state_dict().items()})
    for name in ("moving_mean", "moving_var"):
        np.testing.assert_array_equal(getattr(restored, name).numpy(),
                                      getattr(bn, name).numpy())
    assert restored.double().moving_var.dtype == np.float64


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("x_shape", SHAPES)
def test_layer_gradcheck(x_shape, training):
    bn = lenet.BatchNorm(x_shape[1], num_dims=len(x_shape)).double().train(training)
    bn.gamma.data[...] = distinct(*bn.gamma.shape, seed=6, low=0.5, high=1.5)
    bn.beta.data[...] = distinct(*bn.beta.shape, seed=7)
    tc.gradcheck_module(bn, (tc.tensor(distinct(*x_shape), requires_grad=True),))


def test_layer_rejects_bad_num_dims():
    with pytest.raises(ValueError, match="BatchNorm: num_dims must be 2 .* got 3"):
        lenet.BatchNorm(4, num_dims=3)


@pytest.mark.parametrize("x_shape, library_bn", [((6, 4), nn.BatchNorm1d),
                                                 ((3, 4, 3, 2), nn.BatchNorm2d)],
                         ids=["BatchNorm1d", "BatchNorm2d"])
def test_scratch_layer_equals_library_batchnorm(x_shape, library_bn):
    """Same outputs and gradients, and the same running statistics once the
    conventions are aligned:

    - momentum: d2l's 0.9 weighs the OLD value, PyTorch's 0.1 the NEW one;
      both give running = 0.9 · running + 0.1 · batch_stat.
    - variance: both normalise with the biased batch variance, but
      nn.BatchNorm's running_var takes the unbiased one (× m/(m-1), m values
      per channel) and d2l's the biased one.  So the per-step increments
      agree after rescaling: (rv_k - 0.9 rv_{k-1}) · (m-1)/m = mv_k - 0.9 mv_{k-1}.

    In eval mode, given the same statistics, the two agree again.
    """
    channels, m = x_shape[1], math.prod(x_shape) // x_shape[1]
    scratch = lenet.BatchNorm(channels, num_dims=len(x_shape)).double()
    library = library_bn(channels, momentum=0.1).double()
    for seed in range(3):                                    # a few training steps
        # copies: nn.BatchNorm updates its buffer's array in place
        old_mv = scratch.moving_var.numpy().ravel().copy()
        old_rv = library.running_var.numpy().copy()
        _assert_same_forward_backward(scratch, library, x_shape, seed)
        np.testing.assert_allclose(scratch.moving_mean.numpy().ravel(),
                                   library.running_mean.numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(scratch.moving_var.numpy().ravel() - 0.9 * old_mv,
                                   (library.running_var.numpy() - 0.9 * old_rv) * (m - 1) / m,
                                   rtol=1e-12)

    library.running_var.data[...] = scratch.moving_var.numpy().ravel()
    scratch.eval()
    library.eval()
    _assert_same_forward_backward(scratch, library, x_shape, seed=7)


def _assert_same_forward_backward(scratch, library, x_shape, seed):
    for layer in (scratch, library):
        layer.zero_grad()
    x = distinct(*x_shape, seed=seed, low=-3, high=3)
    g = distinct(*x_shape, seed=seed + 100)
    outputs, input_grads = [], []
    for layer in (scratch, library):
        X = tc.tensor(x, requires_grad=True)
        Y = layer(X)
        Y.backward(g)
        outputs.append(Y.detach().numpy())
        input_grads.append(X.grad.numpy())
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(input_grads[0], input_grads[1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(scratch.gamma.grad.numpy().ravel(), library.weight.grad.numpy(),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(scratch.beta.grad.numpy().ravel(), library.bias.grad.numpy(),
                               rtol=1e-10, atol=1e-12)


# ================================================================== networks
BUILDERS = {"lenet": lenet.lenet, "lenet_bn": lenet.lenet_bn,
            "lenet_bn_scratch": lenet.lenet_bn_scratch}

# d2l 6.6's walk over one 28×28 image
LENET_WALK = [
    ("Conv2d", (1, 6, 28, 28)), ("Sigmoid", (1, 6, 28, 28)), ("AvgPool2d", (1, 6, 14, 14)),
    ("Conv2d", (1, 16, 10, 10)), ("Sigmoid", (1, 16, 10, 10)), ("AvgPool2d", (1, 16, 5, 5)),
    ("Flatten", (1, 400)), ("Linear", (1, 120)), ("Sigmoid", (1, 120)),
    ("Linear", (1, 84)), ("Sigmoid", (1, 84)), ("Linear", (1, 10)),
]


def test_lenet_shape_walk():
    rows = summary(lenet.lenet(), (1, 1, 28, 28), show=False).rows
    assert [(r.layer, r.output_shape) for r in rows] == LENET_WALK


@pytest.mark.parametrize("name, expected", [("lenet", 61_706), ("lenet_bn", 44_878),
                                            ("lenet_bn_scratch", 44_878)])
def test_parameter_count(name, expected):
    assert count_parameters(BUILDERS[name]()) == expected


def test_bn_variants_state_dict_keys():
    """The scratch layer's names are d2l's; the library's are PyTorch's."""
    scratch = list(lenet.lenet_bn_scratch().state_dict())
    library = list(lenet.lenet_bn().state_dict())
    assert scratch[2:6] == ["1.gamma", "1.beta", "1.moving_mean", "1.moving_var"]
    assert library[2:7] == ["1.weight", "1.bias", "1.running_mean", "1.running_var",
                            "1.num_batches_tracked"]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_builder_takes_in_channels_and_num_classes(name):
    assert BUILDERS[name](in_channels=3, num_classes=7)(tc.rand(2, 3, 28, 28)).shape == (2, 7)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_matches_torch(request, kernel_set, name):
    """Train mode (batch statistics, moving statistics updated) and eval mode."""
    once_per_run(request, kernel_set)
    twin = getattr(torch_nets(), name)
    assert_same_as_torch(BUILDERS[name](), twin(), (4, 1, 28, 28))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_forward_backward_at_d2l_size(request, kernel_set, name):
    once_per_run(request, kernel_set)
    assert_forward_backward(BUILDERS[name](), (2, 1, 28, 28))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_sgd_steps_lower_the_loss(request, kernel_set, name):
    once_per_run(request, kernel_set)
    assert_sgd_lowers_loss(BUILDERS[name](), (8, 1, 28, 28), lr=models.spec(name).lr)
