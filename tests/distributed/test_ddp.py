"""DistributedDataParallel on 2 ranks equals one process on the whole batch (float64)."""
import copy

import numpy as np
import pytest

import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from models.lenet import lenet
from models.resnet import Residual
from tinygrad_cnn import nn, optim

from .conftest import on_every_rank

# the distributed machinery is the same under every kernel set: run under the first set
# only (tests/conftest.py).
pytestmark = [pytest.mark.mpi, pytest.mark.kernel_free]


def whole_batch(shape, n=8, classes=10, seed=123):
    """The same global batch on every rank (2·n examples)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((2 * n,) + shape)
    y = rng.integers(0, classes, 2 * n)
    return X, y


def half(array, rank):
    return array[len(array) // 2 * rank: len(array) // 2 * (rank + 1)]


def train(net, X, y, steps, lr=0.1, momentum=0.9):
    opt = optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(tc.tensor(X)), tc.tensor(y)).backward()
        opt.step()


def assert_same_state(ddp_module, reference):
    ours, theirs = ddp_module.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    for key in theirs:
        np.testing.assert_allclose(ours[key].numpy(), theirs[key].numpy(), rtol=1e-10,
                                   atol=1e-12, err_msg=key)


def small_resnet(norm_sync):
    net = nn.Sequential(Residual(3, 4, use_1x1conv=True), nn.AdaptiveAvgPool2d((1, 1)),
                        nn.Flatten(), nn.Linear(4, 10))
    return nn.SyncBatchNorm.convert_sync_batchnorm(net) if norm_sync else net


@pytest.mark.parametrize("make, shape", [(lenet, (1, 28, 28)),
                                         (small_resnet, (3, 8, 8))], ids=["lenet", "resnet"])
def test_ddp_steps_on_half_batches_equal_one_process_on_the_whole(dist, make, shape):
    r = dist.rank()
    tc.manual_seed(10 + r)            # different weights per rank: the wrap must fix that
    net = (make(norm_sync=True) if make is small_resnet else make()).double()
    model = dist.DistributedDataParallel(net)
    reference = copy.deepcopy(net)    # rank 0's weights, after the broadcast
    if make is small_resnet:          # one process: the plain BatchNorm2d on the whole batch
        reference = small_resnet(norm_sync=False).double()
        reference.load_state_dict(net.state_dict())
    X, y = whole_batch(shape)
    train(model, half(X, r), half(y, r), steps=3)
    train(reference, X, y, steps=3)
    on_every_rank(dist, lambda: assert_same_state(model, reference))
    # and the replicas are identical
    gathered = dist.all_gather_object({k: v.numpy() for k, v in model.state_dict().items()})
    for key, value in gathered[0].items():
        np.testing.assert_array_equal(value, gathered[1][key])


def test_state_dict_keys_are_the_wrapped_modules(dist):
    net = lenet()
    model = dist.DistributedDataParallel(net)
    assert list(model.state_dict()) == list(net.state_dict())
    model.load_state_dict(net.state_dict())


def test_no_sync_accumulates_then_averages_the_sum(dist):
    r = dist.rank()
    tc.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    model = dist.DistributedDataParallel(net, bucket_cap_mb=1e-4)   # several buckets
    assert len(model._buckets) > 1
    reference = copy.deepcopy(net)
    X, y = whole_batch((5,), n=4, classes=3)
    X1, y1 = half(X, r), half(y, r)
    with model.no_sync():
        F.cross_entropy(model(tc.tensor(X1[:2])), tc.tensor(y1[:2])).backward()
    local = [p.grad.numpy().copy() for p in net.parameters()]
    F.cross_entropy(model(tc.tensor(X1[2:])), tc.tensor(y1[2:])).backward()
    # one process: the same four micro-batches' gradients summed, then halved
    for a, b in [(0, 2), (2, 4), (4, 6), (6, 8)]:
        F.cross_entropy(reference(tc.tensor(X[a:b])), tc.tensor(y[a:b])).backward()
    on_every_rank(dist, lambda: [
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy() / 2, rtol=1e-12)
        for p, q in zip(net.parameters(), reference.parameters())])
    # inside no_sync the ranks' gradients differed
    other = dist.all_gather_object(local)[1 - r]
    assert any(not np.allclose(a, b) for a, b in zip(local, other))


def test_mismatched_shapes_fail_at_wrap_on_every_rank(dist):
    net = nn.Sequential(nn.Linear(3, 4 + dist.rank()))
    with pytest.raises(ValueError, match=r"0\.weight: rank 0 has \[\(4, 3\), 'float32'\], "
                                         r"rank 1 has \[\(5, 3\)"):
        dist.DistributedDataParallel(net)


def test_a_parameter_without_gradient_is_named_at_the_next_forward(dist):
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model = dist.DistributedDataParallel(net, bucket_cap_mb=1e-5)
    net[0](tc.randn(2, 3)).sum().backward()         # the second layer takes no part
    with pytest.raises(RuntimeError, match="parameters without one: 1.weight, 1.bias"):
        model(tc.randn(2, 3))
    model(tc.randn(2, 3)).sum().backward()          # and it recovers
