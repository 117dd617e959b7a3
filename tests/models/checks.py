"""Checks shared by the whole-network tests of every model file: run once per
test session, forward/backward shapes and finiteness, SGD descent, and
parity with a PyTorch twin (logits and gradients, float32 state dicts)."""

import numpy as np
import pytest

import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from tinygrad_cnn import optim


def once_per_run(request, kernel_set):
    """Skip all but the first kernel set for a whole-network test (or one
    that calls no kernel: a parameter count), as conftest does for
    kernel-free files.

    A network is many calls of the same few kernels, which the op and block
    tests check under every set; running it twice only costs time.
    """
    chosen = request.config.getoption("--kernels").split(",")[0]
    if kernel_set != chosen:
        pytest.skip(f"whole-network test runs under the {chosen!r} kernel set only")


def count_parameters(net):
    return sum(p.numel() for p in net.parameters())


def shape_walk(net, input_shape):
    """d2l's walk: (class name, output shape) after each top-level layer."""
    X = tc.rand(*input_shape)
    walk = []
    with tc.no_grad():
        for layer in net:
            X = layer(X)
            walk.append((type(layer).__name__, X.shape))
    return walk


def assert_forward_backward(net, input_shape, num_classes=10):
    """One training-mode forward and backward: logits of the right shape, and a
    finite gradient of the right shape in EVERY parameter (a layer left out of
    forward, or a branch whose gradient is dropped, shows up as None)."""
    X = tc.randn(*input_shape)
    y = tc.tensor(np.arange(input_shape[0]) % num_classes)
    logits = net(X)
    assert logits.shape == (input_shape[0], num_classes)
    F.cross_entropy(logits, y).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.shape == p.shape, name
        assert np.isfinite(p.grad.numpy()).all(), name


def assert_sgd_lowers_loss(net, input_shape, lr, steps=2, num_classes=10):
    """A few plain SGD steps on one fixed batch must lower its loss."""
    X = tc.randn(*input_shape)
    y = tc.tensor(np.arange(input_shape[0]) % num_classes)
    optimizer = optim.SGD(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps + 1):
        loss = F.cross_entropy(net(X), y)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert np.isfinite(losses).all(), losses
    # The first step is plain descent on a deterministic loss (BN uses the
    # batch's statistics); the last checks the next steps keep the gain.
    assert losses[1] < losses[0] and losses[-1] < losses[0] - 1e-3, \
        f"loss did not fall: {losses}"


def _assert_close(ours, theirs, what):
    """float64 agreement.  atol is relative to the tensor's largest entry: a
    gradient entry can be a sum of terms ~1e4 that cancel to ~10 (BN on a
    few values per channel is ill-conditioned), leaving rounding noise of
    ~1e-10 of the largest entry; an exactly-zero gradient (a conv bias
    followed by BN) compares as noise too.  A real bug is off by O(1)."""
    theirs = theirs.detach().numpy()
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-7,
                               atol=1e-8 * max(1.0, float(np.abs(theirs).max())),
                               err_msg=what)


def _compare_forward_backward(torch, ours, theirs, rng, input_shape):
    """Same input and upstream gradient through both: logits, input gradient
    and every parameter gradient (matched by name)."""
    ours.zero_grad()
    theirs.zero_grad()
    x = rng.standard_normal(input_shape)
    x_ours = tc.tensor(x, requires_grad=True)
    x_theirs = torch.from_numpy(x.copy()).requires_grad_()
    y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    _assert_close(y_ours.detach(), y_theirs, "logits")
    g = rng.standard_normal(tuple(y_theirs.shape))
    y_ours.backward(g)
    y_theirs.backward(torch.from_numpy(g))
    _assert_close(x_ours.grad, x_theirs.grad, "input gradient")
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        _assert_close(p.grad, theirs_params[name].grad, f"gradient of {name}")


def assert_torch_parity(build_ours, build_theirs, input_shape, seed=0):
    """Weights move both ways between our network and its PyTorch twin, and
    with the same weights both compute the same thing (float64):

    1. ours -> PyTorch; training mode (BN batch statistics): logits, input and
       parameter gradients, then the running statistics BN moved.
    2. PyTorch takes an SGD step (so its weights are no longer ours) and its
       state -> ours; eval mode (BN running statistics): logits and gradients.
    """
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    ours, theirs = build_ours().double(), build_theirs().double()
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(theirs_state), "state_dict keys or their order differ"
    assert count_parameters(ours) == sum(p.numel() for p in theirs.parameters())
    rng = np.random.default_rng(seed)

    theirs.load_state_dict({k: torch.from_numpy(v.numpy()) for k, v in ours_state.items()})
    _compare_forward_backward(torch, ours.train(), theirs.train(), rng, input_shape)
    theirs_state = theirs.state_dict()
    for name, value in ours.state_dict().items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            _assert_close(value, theirs_state[name], name)

    torch.optim.SGD(theirs.parameters(), lr=0.01).step()
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    _compare_forward_backward(torch, ours.eval(), theirs.eval(), rng, input_shape)


def assert_loads_float32_torch_state_dict(build_ours, build_theirs, input_shape):
    """The models issue's one-liner in the default float32: a PyTorch
    state_dict (BN statistics moved by a training-mode pass) loads with
    ``net.load_state_dict({k: v.numpy() ...})`` and gives PyTorch's eval logits."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    theirs = build_theirs()
    x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    with torch.no_grad():
        theirs(torch.from_numpy(x))
        expected = theirs.eval()(torch.from_numpy(x)).numpy()
    net = build_ours()
    net.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    with tc.no_grad():
        got = net.eval()(tc.tensor(x)).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4,
                               atol=1e-5 * max(1.0, float(np.abs(expected).max())))
