"""SyncBatchNorm on 2 ranks equals BatchNorm2d on the concatenated batch (float64):
forward, backward, running statistics; and a gradient check across the ranks."""
import numpy as np
import pytest

import tinygrad_cnn as tc
from tinygrad_cnn import nn

from .conftest import on_every_rank

# the distributed machinery is the same under every kernel set: run under the first set
# only (tests/conftest.py).
pytestmark = [pytest.mark.mpi, pytest.mark.kernel_free]


def global_batch(shape=(6, 3, 4, 5), seed=5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2 + 3          # mean ≠ 0, var ≠ 1
    weights = rng.standard_normal(shape)            # L = Σ weights·y: a non-trivial dy
    return x, weights


def halves(array, rank, sizes):
    """Unequal shares: rank 0 takes sizes[0] examples, rank 1 the rest."""
    return array[:sizes[0]] if rank == 0 else array[sizes[0]:]


def layers(momentum):
    tc.manual_seed(0)
    sync = nn.SyncBatchNorm(3, momentum=momentum).double()
    plain = nn.BatchNorm2d(3, momentum=momentum).double()
    rng = np.random.default_rng(1)
    for layer in (sync, plain):
        layer.weight.data[...] = rng.standard_normal(3) if layer is sync else sync.weight.data
        layer.bias.data[...] = np.array([0.5, -1.0, 2.0])
    return sync, plain


@pytest.mark.parametrize("sizes", [(3, 3), (2, 4)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_forward_backward_and_running_stats_equal_batchnorm_on_the_whole_batch(
        dist, sizes, momentum):
    r = dist.rank()
    sync, plain = layers(momentum)
    x, w = global_batch()
    for step in range(2):                           # two steps: running stats compound
        xs = tc.tensor(halves(x + step, r, sizes), requires_grad=True)
        ys = sync(xs)
        (ys * tc.tensor(halves(w, r, sizes))).sum().backward()
        xa = tc.tensor(x + step, requires_grad=True)
        ya = plain(xa)
        (ya * tc.tensor(w)).sum().backward()
        on_every_rank(dist, lambda: (
            np.testing.assert_allclose(ys.detach().numpy(), halves(ya.detach().numpy(), r,
                                                                   sizes), rtol=1e-12,
                                       atol=1e-12),
            np.testing.assert_allclose(xs.grad.numpy(), halves(xa.grad.numpy(), r, sizes),
                                       rtol=1e-10, atol=1e-12)))
    totals = {name: dist.all_reduce(getattr(sync, name).grad.numpy().copy())
              for name in ("weight", "bias")}

    def same_statistics_and_parameter_gradients():
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            np.testing.assert_allclose(getattr(sync, name).numpy(),
                                       getattr(plain, name).numpy(), rtol=1e-12, err_msg=name)
        # dγ, dβ: each rank's own sums (DDP averages them); their sum is the whole batch's
        for name, total in totals.items():
            np.testing.assert_allclose(total, getattr(plain, name).grad.numpy(), rtol=1e-10)
    on_every_rank(dist, same_statistics_and_parameter_gradients)
    # eval mode: the running statistics, no communication
    sync.eval(), plain.eval()
    np.testing.assert_allclose(sync(tc.tensor(x[:2])).detach().numpy(),
                               plain(tc.tensor(x[:2])).detach().numpy(),
                               rtol=1e-12)


def test_gradcheck_across_ranks(dist):
    """d(global loss)/d(x on rank k) by central differences, perturbing one element of
    one rank at a time while every rank runs forward (the statistics are shared)."""
    r = dist.rank()
    sync, _ = layers(0.1)
    rng = np.random.default_rng(7 + r)
    x = rng.standard_normal((2, 3, 2, 2)) + 1
    w = rng.standard_normal((2, 3, 2, 2))

    def global_loss(x_local):
        with tc.no_grad():
            local = float((sync(tc.tensor(x_local)) * tc.tensor(w)).sum().item())
        return float(dist.all_reduce(np.array([local]))[0])

    xt = tc.tensor(x, requires_grad=True)
    (sync(xt) * tc.tensor(w)).sum().backward()
    analytic = xt.grad.numpy()
    eps = 1e-6
    for k in range(2):
        numeric = np.zeros_like(x)
        for i in range(x.size):
            values = []
            for sign in (1, -1):
                shifted = x.copy()
                if r == k:
                    shifted.flat[i] += sign * eps
                values.append(global_loss(shifted))
            numeric.flat[i] = (values[0] - values[1]) / (2 * eps)
        on_every_rank(dist, lambda: r != k or np.testing.assert_allclose(
            analytic, numeric, rtol=1e-6, atol=1e-8))


def test_one_all_reduce_forward_and_one_backward(dist, monkeypatch):
    from tinygrad_cnn.distributed import process_group
    calls = []
    real = process_group.all_reduce
    monkeypatch.setattr(process_group, "all_reduce",
                        lambda t, *a, **k: calls.append(t.shape) or real(t, *a, **k))
    sync, _ = layers(0.1)
    x = tc.tensor(global_batch()[0][:3], requires_grad=True)
    y = sync(x)
    assert calls == [(7,)]                        # S1, S2 per channel, and the count
    y.sum().backward()
    assert calls == [(7,), (6,)]                  # Σ dy and Σ dy·x̂ per channel
