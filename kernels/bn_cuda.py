"""Batch-norm (training mode) as ``numba.cuda`` kernels, for CuPy arrays.

Same signatures and results as the reference (``bn_numpy.py``; the math is
in ``tinygrad_cnn/ops/batchnorm.py``).  x is seen as (N, C, L): L = H*W, or
L = 1 for (N, C) input, so one set of kernels serves 2-, 3- and 4-D input.

Two kinds of kernel:

- per-channel sums: one thread block per channel.  Each thread adds up a
  strided share of the channel's N*L values, then the block adds the
  threads' partial sums in shared memory (a tree: halve, add, repeat).
  Sums are float64, as the reference's.
- elementwise: one thread per value, with the channel's statistics.

The (C,)-sized arithmetic between them (dividing by m, 1/sqrt(var + eps))
is left to the array module: it is C numbers, not worth a kernel.
"""
import math

from numba import cuda, float64

from kernels.cuda_common import THREADS, launch, launch_blocks
from .arrays import get_array_module


@cuda.jit(device=True)
def _block_sum(shared, value):
    """Sum of ``value`` over the threads of the block (every thread gets it)."""
    t = cuda.threadIdx.x
    shared[t] = value
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if t < step:
            shared[t] += shared[t + step]
        cuda.syncthreads()
        step //= 2
    total = shared[0]
    cuda.syncthreads()        # everyone has read it before ``shared`` is reused
    return total


@cuda.jit
def _moments_kernel(x3, mean, var):
    """Block c: channel c's mean and biased variance, in two passes (the mean,
    then the mean of squared deviations: E[x²] - μ² would cancel)."""
    c, t = cuda.blockIdx.x, cuda.threadIdx.x
    N, C, L = x3.shape
    m = N * L
    shared = cuda.shared.array(THREADS, float64)
    partial = 0.0
    for k in range(t, m, THREADS):
        partial += x3[k // L, c, k % L]
    mu = _block_sum(shared, partial) / m
    partial = 0.0
    for k in range(t, m, THREADS):
        d = x3[k // L, c, k % L] - mu
        partial += d * d
    sigma2 = _block_sum(shared, partial) / m
    if t == 0:
        mean[c] = mu
        var[c] = sigma2


@cuda.jit
def _normalise_kernel(x3, mean, inv_std, gamma, beta, y):
    index = cuda.grid(1)
    if index >= x3.size:
        return
    N, C, L = x3.shape
    n, c, l = index // (C * L), (index // L) % C, index % L
    centered = (x3[n, c, l] - mean[c]) * inv_std[c]
    y[n, c, l] = gamma[c] * centered + beta[c]


@cuda.jit
def _grad_sums_kernel(gy3, x3, mean, inv_std, dbeta, dgamma):
    """Block c: Σ gy and Σ gy·x̂ over channel c, x̂ = (x - mean)·inv_std."""
    c, t = cuda.blockIdx.x, cuda.threadIdx.x
    N, C, L = gy3.shape
    shared = cuda.shared.array(THREADS, float64)
    sum_gy, sum_gy_xhat = 0.0, 0.0
    for k in range(t, N * L, THREADS):
        g = gy3[k // L, c, k % L]
        sum_gy += g
        sum_gy_xhat += g * ((x3[k // L, c, k % L] - mean[c]) * inv_std[c])
    sum_gy = _block_sum(shared, sum_gy)
    sum_gy_xhat = _block_sum(shared, sum_gy_xhat)
    if t == 0:
        dbeta[c] = sum_gy
        dgamma[c] = sum_gy_xhat


@cuda.jit
def _input_grad_kernel(gy3, x3, mean, inv_std, scale, mean_gy, mean_gy_xhat, gx):
    index = cuda.grid(1)
    if index >= gy3.size:
        return
    N, C, L = gy3.shape
    n, c, l = index // (C * L), (index // L) % C, index % L
    x_hat = (x3[n, c, l] - mean[c]) * inv_std[c]
    gx[n, c, l] = scale[c] * (gy3[n, c, l] - mean_gy[c] - x_hat * mean_gy_xhat[c])


def _as_ncl(a):
    """(N, C, ...) as (N, C, L) (a view when the layout allows)."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def batchnorm_forward_train(x, gamma, beta, eps):
    """y, mean, biased var, 1/√(var + ε) from the batch (see bn_numpy)."""
    xp = get_array_module(x)
    x3, C = _as_ncl(x), x.shape[1]
    mean64, var64 = xp.empty(C, xp.float64), xp.empty(C, xp.float64)
    launch_blocks(_moments_kernel, C, x3, mean64, var64)
    mean, var = mean64.astype(x.dtype), var64.astype(x.dtype)
    inv_std = 1 / xp.sqrt(var + x.dtype.type(eps))
    y = xp.empty(x3.shape, x.dtype)
    launch(_normalise_kernel, x3.size, x3, mean, inv_std, gamma, beta, y)
    return y.reshape(x.shape), mean, var, inv_std


def batchnorm_backward(gy, x, mean, inv_std, scale, overwrite_gy=False):
    """gx = scale·(gy - mean(gy) - x̂·mean(gy·x̂)), dγ = Σ gy·x̂, dβ = Σ gy with
    x̂ = (x - mean)·inv_std (see bn_numpy; gx a new array whatever
    ``overwrite_gy`` allows)."""
    xp = get_array_module(gy)
    gy3, x3, C = _as_ncl(gy), _as_ncl(x), gy.shape[1]
    dbeta64, dgamma64 = xp.empty(C, xp.float64), xp.empty(C, xp.float64)
    launch_blocks(_grad_sums_kernel, C, gy3, x3, mean, inv_std, dbeta64, dgamma64)
    dbeta, dgamma = dbeta64.astype(gy.dtype), dgamma64.astype(gy.dtype)
    if scale is None:
        return None, dgamma, dbeta
    m = gy.dtype.type(math.prod(gy3.shape) // C)
    gx = xp.empty(gy3.shape, gy.dtype)
    launch(_input_grad_kernel, gy3.size, gy3, x3, mean, inv_std, scale, dbeta / m,
           dgamma / m, gx)
    return gx.reshape(gy.shape), dgamma, dbeta
