"""Batch-norm kernels as compiled loops (Numba): the interface of ``bn_numpy``.

Same signatures and results as ``bn_numpy.py`` (the math is derived in
``tinygrad_cnn/ops/batchnorm.py``).  The reference makes a separate pass
over the whole batch for every step -- mean, x - μ, its square, their mean,
x̂, γ x̂, + β -- each one a full-size temporary.  Here each channel is one
thread's job (``prange`` over C), and its values are read twice:

- forward: one pass sums x and x² (shifted, see below) for μ and σ², one
  pass writes x̂ and y;
- backward: one pass sums dy and dy·x̂, one pass writes dx.

x is viewed as (N, C, L) -- L = 1 for (N, C) input, H·W for images -- so
one channel is N contiguous runs of L values.  Channels never share an
output element, so the threads never race.

Accuracy: the sums run in float64 whatever x's dtype (as PyTorch's CPU
kernel does).  The one-pass variance uses the *shifted* sums
Σ(x - K) and Σ(x - K)² with K = the channel's first value: σ² =
mean((x-K)²) - mean(x-K)² is exact in exact arithmetic for any K, and with K
near μ the two terms stay small, so nothing large cancels (the plain
E[x²] - μ² loses every digit when |μ| ≫ σ).

What runs where, and start-up: ``kernels/jit.py`` (only NumPy
float32/float64 arrays reach the loops, others go to the reference; Numba
is imported and the loops compiled, or loaded from the disk cache, at the
first call).
"""
import math

import numpy as np

from . import bn_numpy
from .jit import compilable, on_first_use

prange = range          # numba.prange once the loops compile (kernels/jit.py)


# ---------------------------------------------------------------- the loops
def _forward_loops(x, gamma, beta, eps, y, x_hat, mean, var, inv_std):
    """x, y, x_hat: (N, C, L); gamma, beta, mean, var, inv_std: (C,).  Writes all but x."""
    N, C, L = x.shape
    m = N * L
    for c in prange(C):
        shift = np.float64(x[0, c, 0])
        total = 0.0                     # float64 accumulators
        total_sq = 0.0
        for n in range(N):
            for l in range(L):
                d = x[n, c, l] - shift   # in float64
                total += d
                total_sq += d * d
        mu_shifted = total / m
        v = max(total_sq / m - mu_shifted * mu_shifted, 0.0)   # rounding may dip below 0
        mu = shift + mu_shifted
        s = 1.0 / math.sqrt(v + eps)
        g, b = gamma[c], beta[c]
        for n in range(N):
            for l in range(L):
                xh = (x[n, c, l] - mu) * s
                x_hat[n, c, l] = xh
                y[n, c, l] = g * xh + b
        mean[c], var[c], inv_std[c] = mu, v, s


def _channel_sums_loops(gy, x_hat, sums):
    """sums[0, c] = Σ gy·x_hat (dγ),  sums[1, c] = Σ gy (dβ) over channel c of
    (N, C, L) arrays; sums is float64 (2, C)."""
    N, C, L = gy.shape
    for c in prange(C):
        sum_gy = 0.0                    # float64 accumulators
        sum_gy_xhat = 0.0
        for n in range(N):
            for l in range(L):
                g = np.float64(gy[n, c, l])
                sum_gy += g
                sum_gy_xhat += g * x_hat[n, c, l]
        sums[0, c], sums[1, c] = sum_gy_xhat, sum_gy


def _input_grad_loops(gy, x_hat, scale, sums, gx):
    """gx = scale·(gy - mean(gy) - x_hat·mean(gy·x_hat)), the means per channel
    from the float64 ``sums`` of _channel_sums_loops."""
    N, C, L = gy.shape
    m = N * L
    for c in prange(C):
        k = scale[c]
        mean_gy_xhat = sums[0, c] / m
        mean_gy = sums[1, c] / m
        for n in range(N):
            for l in range(L):
                gx[n, c, l] = k * (gy[n, c, l] - mean_gy - x_hat[n, c, l] * mean_gy_xhat)


# reassoc lets the compiler split each running sum into several (vectorised)
# partial sums, which is faster and no less accurate (benchmarks/results.md);
# NaN and inf still propagate.
_compiled = on_first_use(_forward_loops, _channel_sums_loops, _input_grad_loops,
                         parallel=True, fastmath={"reassoc", "contract"})


def _as_ncl(a):
    """(N, C, ...) -> a C-contiguous (N, C, L) view (a copy only if ``a`` is not contiguous)."""
    return np.ascontiguousarray(a).reshape(a.shape[0], a.shape[1], -1)


# ---------------------------------------------------------------- the interface
def batchnorm_forward_train(x, gamma, beta, eps):
    """``bn_numpy.batchnorm_forward_train``, compiled -> (y, x_hat, mean, var, inv_std)."""
    if not compilable(x, gamma, beta):
        return bn_numpy.batchnorm_forward_train(x, gamma, beta, eps)
    forward = _compiled().forward
    y, x_hat = np.empty(x.shape, dtype=x.dtype), np.empty(x.shape, dtype=x.dtype)
    mean, var, inv_std = (np.empty(x.shape[1], dtype=x.dtype) for _ in range(3))
    forward(_as_ncl(x), np.ascontiguousarray(gamma, dtype=x.dtype),
            np.ascontiguousarray(beta, dtype=x.dtype), float(eps), _as_ncl(y), _as_ncl(x_hat),
            mean, var, inv_std)
    return y, x_hat, mean, var, inv_std


def batchnorm_backward(gy, x_hat, scale):
    """``bn_numpy.batchnorm_backward``, compiled -> (gx or None, dgamma, dbeta)."""
    if not compilable(gy, x_hat) or not (scale is None or compilable(scale)):
        return bn_numpy.batchnorm_backward(gy, x_hat, scale)
    loops = _compiled()
    channel_sums, input_grad = loops.channel_sums, loops.input_grad
    gy3, x_hat3 = _as_ncl(gy), _as_ncl(x_hat.astype(gy.dtype, copy=False))
    sums = np.empty((2, gy.shape[1]), dtype=np.float64)
    channel_sums(gy3, x_hat3, sums)
    dgamma, dbeta = sums.astype(gy.dtype)
    if scale is None:
        return None, dgamma, dbeta
    gx = np.empty(gy.shape, dtype=gy.dtype)
    input_grad(gy3, x_hat3, np.ascontiguousarray(scale, dtype=gy.dtype), sums, _as_ncl(gx))
    return gx, dgamma, dbeta
