"""Reference batch-norm kernels: vectorised NumPy (CuPy works too).

The math and its derivation live with the op, ``tinygrad_cnn/ops/batchnorm.py``
(``BatchNorm``); here is only the array work.  x is (N, C), (N, C, L) or
(N, C, H, W), used in its own layout with no transposes: channel c's
statistics run over every x[n, c, ...], i.e. over axes (0, 2, 3, ...), with
``keepdims`` so they broadcast back against x.  m = N·L (or N·H·W) values
per channel.

Sums accumulate in float64 (``dtype=``), as PyTorch's CPU kernel does: a
float32 running sum over the hundreds of thousands of values of one channel
would lose digits.  Results come back in x's dtype.

Signatures
----------
batchnorm_forward_train(x, gamma, beta, eps)
    -> (y, mean, var, inv_std)
       y: like x;  mean, var (biased), inv_std = 1/√(var + eps): (C,)
       gamma, beta: (C,) in x's dtype
batchnorm_backward(gy, x, mean, inv_std, scale, overwrite_gy=False)
    -> (gx, dgamma, dbeta)
       gy, x: like x, with the forward's mean and inv_std, from which x̂ =
       (x - mean)·inv_std is computed again (the forward keeps x, not x̂: a
       pass that writes x̂ costs as much as one that writes y);
       scale = γ·inv_std (C,), or None when dx is not wanted (gx is then
       None);  dgamma = Σ gy·x̂, dbeta = Σ gy: (C,)
       overwrite_gy allows (does not ask) gx to be written over gy, as in
       ``elementwise_numpy``: here gx is always a new array
batchnorm_forward_eval(x, scale, shift)
    -> y = x·scale + shift per channel, like x
       inference: the running statistics folded into scale = γ/√(σ²_run + ε)
       and shift = β - scale·μ_run, (C,) in x's dtype
"""
import math

from .arrays import get_array_module


def _reduce_axes(ndim):
    """Every axis but the channel axis 1: (0,), (0, 2) or (0, 2, 3)."""
    return (0,) + tuple(range(2, ndim))


def _per_channel(v, ndim):
    """A (C,) vector as (1, C, 1, ...) so it broadcasts against an ndim-D array."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _channel_mean(a, dtype):
    """Per-channel mean of ``a`` over every axis but 1, summed in float64, as (1, C, 1, ...)."""
    xp = get_array_module(a)
    return a.mean(axis=_reduce_axes(a.ndim), dtype=xp.float64, keepdims=True).astype(dtype)


def _channel_sum(a):
    """Per-channel sum of ``a`` over every axis but 1, summed in float64, as (C,) in a's dtype."""
    xp = get_array_module(a)
    return a.sum(axis=_reduce_axes(a.ndim), dtype=xp.float64).astype(a.dtype)


def batchnorm_forward_train(x, gamma, beta, eps):
    """y = γ x̂ + β with x̂ = (x - μ)/√(σ² + ε), μ and σ² (biased) from the batch.

    Two passes for the statistics -- the mean, then the mean of squared
    deviations -- because E[x²] - μ² cancels catastrophically when |μ| ≫ σ.
    """
    xp = get_array_module(x)
    mean = _channel_mean(x, x.dtype)
    centered = x - mean
    var = _channel_mean(centered * centered, x.dtype)
    inv_std = 1 / xp.sqrt(var + x.dtype.type(eps))
    x_hat = centered * inv_std
    y = _per_channel(gamma, x.ndim) * x_hat + _per_channel(beta, x.ndim)
    return y, mean.reshape(-1), var.reshape(-1), inv_std.reshape(-1)


def batchnorm_backward(gy, x, mean, inv_std, scale, overwrite_gy=False):
    """The closed form: with x̂ = (x - μ)·inv_std (as the forward computed it),
    scale = γ·inv_std and means over a channel's m values,

        dx = scale·(dy - mean(dy) - x̂·mean(dy·x̂))      dγ = Σ dy·x̂      dβ = Σ dy
    """
    x_hat = (x - _per_channel(mean, x.ndim)) * _per_channel(inv_std, x.ndim)
    dbeta = _channel_sum(gy)
    dgamma = _channel_sum(gy * x_hat)
    if scale is None:
        return None, dgamma, dbeta
    ndim = gy.ndim
    m = gy.dtype.type(math.prod((gy.shape[0],) + tuple(gy.shape[2:])))
    gx = _per_channel(scale, ndim) * (gy - _per_channel(dbeta / m, ndim)
                                      - x_hat * _per_channel(dgamma / m, ndim))
    return gx, dgamma, dbeta


def batchnorm_forward_eval(x, scale, shift):
    """Inference: y = x·scale + shift per channel, in two passes over x and one
    new array (the op, ``BatchNormEval``, folds the running statistics, γ and β
    into ``scale`` and ``shift``)."""
    y = x * _per_channel(scale, x.ndim)
    y += _per_channel(shift, x.ndim)
    return y
