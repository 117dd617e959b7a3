"""Batch norm whose statistics are taken over the batch of every rank together.

Each rank holds m_r values of a channel; the global batch has M = Σ m_r.  The
statistics are sums, and sums can be added across ranks, so forward needs one
all-reduce of three per-channel quantities (see docs/batchnorm.md,
"Synchronised batch norm")::

    S1 = Σ x        S2 = Σ x²        M = Σ m_r       (one all-reduce of [S1, S2, m_r])
    μ = S1 / M      σ² = S2 / M - μ²

and backward, ``dx = γ s (dy - mean(dy) - x̂ · mean(dy·x̂))`` with the means over
the global batch, one all-reduce of the two sums Σ dy and Σ dy·x̂.  dγ = Σ dy·x̂
and dβ = Σ dy are returned as *this rank's* sums: DistributedDataParallel
averages parameter gradients over the ranks, as PyTorch's SyncBatchNorm leaves it.

S2/M - μ² cancels when |μ| ≫ σ; the sums are accumulated in float64 whatever
the input's dtype, which keeps float32 activations (|μ|/σ up to ~1e3) exact
to float32's precision.
"""
from ..autograd import Function
from ..backend import get_array_module
from ..distributed import process_group as pg
from .batchnorm import _per_channel, _reduce_axes, _update_running_stats, \
    _values_per_channel


class SyncBatchNorm(Function):
    """Training-mode batch norm over every rank's batch; inputs x (N, C, ...), γ, β (C,).

    ``running_mean``/``running_var`` (C,) arrays, when given, move towards the
    global statistics (unbiased variance on the global count M), identically on
    every rank.
    """

    def __init__(self, eps, running_mean=None, running_var=None, momentum=0.1):
        self.eps, self.momentum = eps, momentum
        self.running_mean, self.running_var = running_mean, running_var

    def forward(self, x, gamma, beta):
        xp = get_array_module(x)
        axes, C = _reduce_axes(x.ndim), x.shape[1]
        stats = xp.empty(2 * C + 1, dtype=xp.float64)
        stats[:C] = x.sum(axis=axes, dtype=xp.float64)
        stats[C:2 * C] = (x * x).sum(axis=axes, dtype=xp.float64)
        stats[2 * C] = _values_per_channel(x.shape)
        pg.all_reduce(stats)                                     # the one forward message
        count = float(stats[2 * C])
        if count <= 1:
            raise ValueError(f"SyncBatchNorm: Expected more than 1 value per channel when "
                             f"training over all ranks, got {int(count)}")
        mean = stats[:C] / count
        var = xp.maximum(stats[C:2 * C] / count - mean * mean, 0.0)
        inv_std = 1 / xp.sqrt(var + self.eps)
        x_hat = (x - _per_channel(mean.astype(x.dtype), x.ndim)) \
            * _per_channel(inv_std.astype(x.dtype), x.ndim)
        gamma, beta = gamma.astype(x.dtype, copy=False), beta.astype(x.dtype, copy=False)
        if self.running_mean is not None:
            _update_running_stats(self.running_mean, self.running_var, mean, var, count,
                                  self.momentum)
        need_x, need_gamma, _ = self.needs_input_grad
        self.save_for_backward(x_hat if need_x or need_gamma else None,
                               gamma * inv_std.astype(x.dtype) if need_x else None, count)
        return _per_channel(gamma, x.ndim) * x_hat + _per_channel(beta, x.ndim)

    def backward(self, gy):
        x_hat, scale, count = self.saved
        need_x, need_gamma, need_beta = self.needs_input_grad
        xp = get_array_module(gy)
        axes, C = _reduce_axes(gy.ndim), gy.shape[1]
        sum_dy = gy.sum(axis=axes)
        if x_hat is None:                       # only dβ is wanted: nothing global
            return None, None, sum_dy
        sum_dy_xhat = (gy * x_hat).sum(axis=axes)
        gx = None
        if need_x:
            sums = xp.concatenate([sum_dy, sum_dy_xhat]).astype(xp.float64)
            pg.all_reduce(sums)                                  # the one backward message
            mean_dy = _per_channel((sums[:C] / count).astype(gy.dtype), gy.ndim)
            mean_dy_xhat = _per_channel((sums[C:] / count).astype(gy.dtype), gy.ndim)
            gx = _per_channel(scale, gy.ndim) * (gy - mean_dy - x_hat * mean_dy_xhat)
        return gx, sum_dy_xhat if need_gamma else None, sum_dy if need_beta else None
