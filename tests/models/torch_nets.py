"""PyTorch twins of d2l's LeNet, BN-LeNet, AlexNet, VGG and NiN code, and
``assert_same_as_torch``, which swaps weights between a network of ours and
its twin and compares what they compute.

The twins are d2l's code with ``torch.nn`` (builders take
``in_channels``/``num_classes`` where ours do).  One deliberate change:
d2l's from-scratch ``BatchNorm`` keeps its moving statistics as plain
attributes and picks train/predict by ``torch.is_grad_enabled()``; the twin
registers them as buffers and follows ``self.training``, as ours does, so
the state dicts and the semantics match.

Everything imports torch lazily (``torch_nets()`` skips the calling test
when torch is missing), so importing this module never needs torch.
"""
import functools
import types

import numpy as np
import pytest

import tinygrad_cnn as tc


@functools.lru_cache(maxsize=None)
def torch_nets():
    torch = pytest.importorskip("torch")
    # One thread: the twins are small, and on a busy 2-core machine PyTorch's
    # spinning worker threads made each call many times slower.
    torch.set_num_threads(1)
    tnn = torch.nn

    def lenet(in_channels=1, num_classes=10):
        return tnn.Sequential(
            tnn.Conv2d(in_channels, 6, kernel_size=5, padding=2), tnn.Sigmoid(),
            tnn.AvgPool2d(kernel_size=2, stride=2),
            tnn.Conv2d(6, 16, kernel_size=5), tnn.Sigmoid(),
            tnn.AvgPool2d(kernel_size=2, stride=2),
            tnn.Flatten(),
            tnn.Linear(16 * 5 * 5, 120), tnn.Sigmoid(),
            tnn.Linear(120, 84), tnn.Sigmoid(),
            tnn.Linear(84, num_classes))

    def batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum, training):
        if not training:
            X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
        else:
            assert len(X.shape) in (2, 4)
            if len(X.shape) == 2:
                mean = X.mean(dim=0)
                var = ((X - mean) ** 2).mean(dim=0)
            else:
                mean = X.mean(dim=(0, 2, 3), keepdim=True)
                var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
            X_hat = (X - mean) / torch.sqrt(var + eps)
            moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
            moving_var = momentum * moving_var + (1.0 - momentum) * var
        Y = gamma * X_hat + beta
        return Y, moving_mean.data, moving_var.data

    class BatchNorm(tnn.Module):
        def __init__(self, num_features, num_dims):
            super().__init__()
            shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
            self.gamma = tnn.Parameter(torch.ones(shape))
            self.beta = tnn.Parameter(torch.zeros(shape))
            self.register_buffer("moving_mean", torch.zeros(shape))
            self.register_buffer("moving_var", torch.ones(shape))

        def forward(self, X):
            Y, self.moving_mean, self.moving_var = batch_norm(
                X, self.gamma, self.beta, self.moving_mean, self.moving_var,
                eps=1e-5, momentum=0.9, training=self.training)
            return Y

    def lenet_bn_scratch(in_channels=1, num_classes=10):
        return tnn.Sequential(
            tnn.Conv2d(in_channels, 6, kernel_size=5), BatchNorm(6, num_dims=4), tnn.Sigmoid(),
            tnn.AvgPool2d(kernel_size=2, stride=2),
            tnn.Conv2d(6, 16, kernel_size=5), BatchNorm(16, num_dims=4), tnn.Sigmoid(),
            tnn.AvgPool2d(kernel_size=2, stride=2), tnn.Flatten(),
            tnn.Linear(16 * 4 * 4, 120), BatchNorm(120, num_dims=2), tnn.Sigmoid(),
            tnn.Linear(120, 84), BatchNorm(84, num_dims=2), tnn.Sigmoid(),
            tnn.Linear(84, num_classes))

    def lenet_bn(in_channels=1, num_classes=10):
        return tnn.Sequential(
            tnn.Conv2d(in_channels, 6, kernel_size=5), tnn.BatchNorm2d(6), tnn.Sigmoid(),
            tnn.AvgPool2d(kernel_size=2, stride=2),
            tnn.Conv2d(6, 16, kernel_size=5), tnn.BatchNorm2d(16), tnn.Sigmoid(),
            tnn.AvgPool2d(kernel_size=2, stride=2), tnn.Flatten(),
            tnn.Linear(256, 120), tnn.BatchNorm1d(120), tnn.Sigmoid(),
            tnn.Linear(120, 84), tnn.BatchNorm1d(84), tnn.Sigmoid(),
            tnn.Linear(84, num_classes))

    def alexnet(in_channels=1, num_classes=10):
        return tnn.Sequential(
            tnn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1), tnn.ReLU(),
            tnn.MaxPool2d(kernel_size=3, stride=2),
            tnn.Conv2d(96, 256, kernel_size=5, padding=2), tnn.ReLU(),
            tnn.MaxPool2d(kernel_size=3, stride=2),
            tnn.Conv2d(256, 384, kernel_size=3, padding=1), tnn.ReLU(),
            tnn.Conv2d(384, 384, kernel_size=3, padding=1), tnn.ReLU(),
            tnn.Conv2d(384, 256, kernel_size=3, padding=1), tnn.ReLU(),
            tnn.MaxPool2d(kernel_size=3, stride=2),
            tnn.Flatten(),
            tnn.Linear(6400, 4096), tnn.ReLU(),
            tnn.Dropout(p=0.5),
            tnn.Linear(4096, 4096), tnn.ReLU(),
            tnn.Dropout(p=0.5),
            tnn.Linear(4096, num_classes))

    class AlexNetCIFAR10(tnn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.features = tnn.Sequential(
                tnn.Conv2d(3, 96, kernel_size=5, stride=1, padding=2),
                tnn.ReLU(inplace=True),
                tnn.MaxPool2d(kernel_size=3, stride=2),
                tnn.Conv2d(96, 256, kernel_size=5, padding=2),
                tnn.ReLU(inplace=True),
                tnn.MaxPool2d(kernel_size=3, stride=2),
                tnn.Conv2d(256, 384, kernel_size=3, padding=1),
                tnn.ReLU(inplace=True),
                tnn.Conv2d(384, 384, kernel_size=3, padding=1),
                tnn.ReLU(inplace=True),
                tnn.Conv2d(384, 256, kernel_size=3, padding=1),
                tnn.ReLU(inplace=True),
                tnn.MaxPool2d(kernel_size=3, stride=2))
            self.classifier = tnn.Sequential(
                tnn.Flatten(),
                tnn.Linear(256 * 3 * 3, 4096),
                tnn.ReLU(inplace=True),
                tnn.Dropout(p=0.5),
                tnn.Linear(4096, 4096),
                tnn.ReLU(inplace=True),
                tnn.Dropout(p=0.5),
                tnn.Linear(4096, num_classes))

        def forward(self, x):
            x = self.features(x)
            x = self.classifier(x)
            return x

    def vgg_block(num_convs, in_channels, out_channels):
        layers = []
        for _ in range(num_convs):
            layers.append(tnn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
            layers.append(tnn.ReLU())
            in_channels = out_channels
        layers.append(tnn.MaxPool2d(kernel_size=2, stride=2))
        return tnn.Sequential(*layers)

    def vgg(conv_arch, in_channels=1, num_classes=10):
        conv_blks = []
        for (num_convs, out_channels) in conv_arch:
            conv_blks.append(vgg_block(num_convs, in_channels, out_channels))
            in_channels = out_channels
        return tnn.Sequential(
            *conv_blks, tnn.Flatten(),
            tnn.Linear(out_channels * 7 * 7, 4096), tnn.ReLU(), tnn.Dropout(0.5),
            tnn.Linear(4096, 4096), tnn.ReLU(), tnn.Dropout(0.5),
            tnn.Linear(4096, num_classes))

    def nin_block(in_channels, out_channels, kernel_size, strides, padding):
        return tnn.Sequential(
            tnn.Conv2d(in_channels, out_channels, kernel_size, strides, padding),
            tnn.ReLU(),
            tnn.Conv2d(out_channels, out_channels, kernel_size=1), tnn.ReLU(),
            tnn.Conv2d(out_channels, out_channels, kernel_size=1), tnn.ReLU())

    def nin(in_channels=1, num_classes=10):
        return tnn.Sequential(
            nin_block(in_channels, 96, kernel_size=11, strides=4, padding=0),
            tnn.MaxPool2d(3, stride=2),
            nin_block(96, 256, kernel_size=5, strides=1, padding=2),
            tnn.MaxPool2d(3, stride=2),
            nin_block(256, 384, kernel_size=3, strides=1, padding=1),
            tnn.MaxPool2d(3, stride=2),
            tnn.Dropout(0.5),
            nin_block(384, num_classes, kernel_size=3, strides=1, padding=1),
            tnn.AdaptiveAvgPool2d((1, 1)),
            tnn.Flatten())

    return types.SimpleNamespace(
        torch=torch, lenet=lenet, batch_norm=batch_norm, BatchNorm=BatchNorm,
        lenet_bn_scratch=lenet_bn_scratch, lenet_bn=lenet_bn, alexnet=alexnet,
        AlexNetCIFAR10=AlexNetCIFAR10, vgg_block=vgg_block, vgg=vgg,
        nin_block=nin_block, nin=nin)


# ================================================================ parity check
def assert_same_state_layout(ours, theirs):
    """Identical state-dict keys, in the same order, with the same shapes."""
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(theirs_state), "state_dict keys or their order differ"
    for key, value in ours_state.items():
        assert value.shape == tuple(theirs_state[key].shape), key


def assert_close(ours, theirs, what, rtol):
    """|ours - theirs| <= rtol·|theirs| + atol elementwise, atol = rtol/10 of the
    largest |theirs|: an entry summed from large terms that cancel keeps their
    rounding noise, while a real bug is off by O(1) of the entries' scale.
    (Written out rather than np.testing.assert_allclose, whose temporaries
    dominate the time for AlexNet's 26M-entry gradients.)"""
    theirs = theirs.detach().cpu().numpy() if hasattr(theirs, "detach") else theirs
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs {theirs.shape}"
    scale = float(np.abs(theirs).max()) if theirs.size else 0.0
    err = np.abs(ours - theirs)
    err -= rtol * np.abs(theirs)
    worst = int(np.argmax(err)) if err.size else 0
    if err.size and not err.flat[worst] <= rtol * 0.1 * max(1.0, scale):
        raise AssertionError(f"{what}: ours {ours.flat[worst]!r} vs PyTorch "
                             f"{theirs.flat[worst]!r} at flat index {worst} "
                             f"(rtol {rtol}, largest |entry| {scale:.3g})")


def _compare_step(ours, theirs, rng, input_shape, rtol, backward):
    """Same input through both: logits; with ``backward`` also the same upstream
    gradient, then the input's and every parameter's gradient (by name)."""
    torch = torch_nets().torch
    ours.zero_grad()
    theirs.zero_grad()
    dtype = next(ours.parameters()).dtype
    x = rng.standard_normal(input_shape).astype(dtype)
    x_ours = tc.tensor(x, requires_grad=backward)
    x_theirs = torch.from_numpy(x.copy()).requires_grad_(backward)
    with (tc.enable_grad() if backward else tc.no_grad()), torch.set_grad_enabled(backward):
        y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    assert_close(y_ours.detach().numpy(), y_theirs, "logits", rtol)
    if not backward:
        return
    g = rng.standard_normal(tuple(y_theirs.shape)).astype(dtype)
    y_ours.backward(g)
    y_theirs.backward(torch.from_numpy(g))
    assert_close(x_ours.grad.numpy(), x_theirs.grad, "input gradient", rtol)
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert_close(p.grad.numpy(), theirs_params[name].grad, f"gradient of {name}", rtol)


def _compare_in_modes(ours, theirs, rng, input_shape, modes, rtol, backward):
    for mode in modes:
        ours.train(mode == "train")
        theirs.train(mode == "train")
        _compare_step(ours, theirs, rng, input_shape, rtol, backward)
        theirs_state = theirs.state_dict()     # BN statistics a training forward moved
        for name, buf in ours.named_buffers():
            assert_close(buf.numpy(), theirs_state[name], name, rtol)


def assert_same_as_torch(ours, theirs, input_shape, *, modes=("train", "eval"),
                         dtype=np.float64, rtol=1e-7, seed=0):
    """A state dict moves both ways between ``ours`` and its PyTorch twin
    ``theirs``, and with the same weights both compute the same thing.

    1. Same state-dict layout.  PyTorch's state -> ours with
       ``load_state_dict({k: v.numpy()})``; in each of ``modes`` the logits,
       the input's and every parameter's gradient agree, and so do the
       buffers afterwards (BN's running statistics, which training moves).
    2. Ours takes an SGD step (its weights are no longer PyTorch's) and its
       state -> PyTorch; the logits (and buffers) agree again in each mode.

    Networks with dropout compare in eval mode only: the two libraries draw
    different masks, and dropout is tested on its own.
    """
    torch = torch_nets().torch
    assert_same_state_layout(ours, theirs)
    # The same weights on every run: in float32 a pre-activation within
    # rounding of 0 can take a ReLU's other side in one library, moving a
    # gradient entry by a whole term, and some random draws put one there.
    torch.manual_seed(seed)
    for module in theirs.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    ours.to(dtype)
    theirs.to({np.float64: torch.float64, np.float32: torch.float32}[np.dtype(dtype).type])
    rng = np.random.default_rng(seed)

    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    _compare_in_modes(ours, theirs, rng, input_shape, modes, rtol, backward=True)

    for p in ours.parameters():           # an SGD step by hand, outside the graph
        p.data -= 0.1 * p.grad.data
    theirs.load_state_dict({k: torch.from_numpy(v.numpy().copy())
                            for k, v in ours.state_dict().items()})
    _compare_in_modes(ours, theirs, rng, input_shape, modes, rtol, backward=False)
