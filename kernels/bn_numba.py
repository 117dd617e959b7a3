"""Batch-norm kernels as compiled loops (Numba): the interface of ``bn_numpy``.

Same signatures and results as ``bn_numpy.py`` (the math is derived in
``tinygrad_cnn/ops/batchnorm.py``).  The reference makes a separate pass
over the whole batch for every step -- mean, x - μ, its square, their mean,
x̂, γ x̂, + β -- each one a full-size temporary.  Here every value is read
twice:

- forward: one pass sums x and x² per channel (shifted, see below) for μ and
  σ², one pass writes y (x̂ is not written: the backward computes it again
  from x, μ and σ⁻¹, which costs arithmetic, where writing and reading x̂
  back cost a pass over memory);
- backward: one pass sums dy and dy·x̂ per channel, one pass writes dx
  (over dy, where the engine allows it: ``overwrite_gy``);
- inference: one pass writes y = x·scale + shift.

x is viewed as (N, C, L) -- L = 1 for (N, C) input, H·W for images -- and
walked in its own order, image after image, so each pass streams through
memory.  With L = 1 each loop runs over the channels innermost instead (a
row of x), which the compiler vectorises; a loop over one value per channel
would not be.

**Threads: slices of the batch.**  Each pass over many MB is cut along the
batch (``threads.stream_slices``) and the slices run side by side on
``threads.thread_pool()``, each a one-thread loop with the GIL released.
Splitting over channels instead, with Numba's ``prange``, cost more per
launch than a whole (256, 120) batch norm takes, and left each thread
reading short runs scattered over the whole array when L is small
(benchmarks/results.md, "Batch norm over slices of the batch").
The sums of a pass are kept per *block* of images, and the blocks' sums added
in block order afterwards; the blocks depend on the shape only (at most
``BLOCKS`` of them), not on how many threads run them, so the statistics and
gradients come out the same bit for bit on any number of threads.

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
import functools

import numpy as np

from . import bn_numpy, threads
from .jit import compilable, on_first_use, writable_over

# The most blocks a batch's sums are kept in: enough for 16 threads to share
# out evenly, few enough that adding them up costs nothing.
BLOCKS = 32


# ---------------------------------------------------------------- the loops
def _shifted_sums_loop(bounds, first, last, sums, x, shift):
    """For blocks b = first..last-1 (images bounds[b]..bounds[b+1]-1):
    sums[b, 0, c] = Σ (x - shift[c]),  sums[b, 1, c] = Σ (x - shift[c])², in float64.
    x: (N, C, L); shift: float64 (C,); sums: float64 (blocks, 2, C)."""
    C, L = x.shape[1:]
    for b in range(first, last):
        sums[b] = 0.0
        for n in range(bounds[b], bounds[b + 1]):
            if L == 1:                      # (N, C) input: the channels are the row
                for c in range(C):
                    d = x[n, c, 0] - shift[c]
                    sums[b, 0, c] += d
                    sums[b, 1, c] += d * d
                continue
            for c in range(C):
                k = shift[c]
                total = 0.0                 # float64 accumulators
                total_sq = 0.0
                for l in range(L):
                    d = x[n, c, l] - k      # in float64
                    total += d
                    total_sq += d * d
                sums[b, 0, c] += total
                sums[b, 1, c] += total_sq


def _normalize_loop(x, y, mean, inv_std, gamma, beta):
    """y = γ x̂ + β with x̂ = (x - mean)·inv_std (mean, inv_std float64 (C,))."""
    N, C, L = x.shape
    for n in range(N):
        if L == 1:                          # (N, C) input: the channels are the row
            for c in range(C):
                y[n, c, 0] = gamma[c] * ((x[n, c, 0] - mean[c]) * inv_std[c]) + beta[c]
            continue
        for c in range(C):
            mu, s, g, b = mean[c], inv_std[c], gamma[c], beta[c]
            for l in range(L):
                y[n, c, l] = g * ((x[n, c, l] - mu) * s) + b


def _affine_loop(x, y, scale, shift):
    """y = x·scale + shift per channel: inference, one pass."""
    N, C, L = x.shape
    for n in range(N):
        if L == 1:                          # (N, C) input: the channels are the row
            for c in range(C):
                y[n, c, 0] = x[n, c, 0] * scale[c] + shift[c]
            continue
        for c in range(C):
            a, b = scale[c], shift[c]
            for l in range(L):
                y[n, c, l] = x[n, c, l] * a + b


def _gradient_sums_loop(bounds, first, last, sums, gy, x, mean, inv_std):
    """For blocks b = first..last-1: sums[b, 0, c] = Σ gy·x̂ (dγ),
    sums[b, 1, c] = Σ gy (dβ), in float64, x̂ = (x - mean)·inv_std (float64 (C,))."""
    C, L = gy.shape[1:]
    for b in range(first, last):
        sums[b] = 0.0
        for n in range(bounds[b], bounds[b + 1]):
            if L == 1:                      # (N, C) input: the channels are the row
                for c in range(C):
                    g = np.float64(gy[n, c, 0])
                    sums[b, 0, c] += g * ((x[n, c, 0] - mean[c]) * inv_std[c])
                    sums[b, 1, c] += g
                continue
            for c in range(C):
                mu, s = mean[c], inv_std[c]
                sum_gy = 0.0                # float64 accumulators
                sum_gy_xhat = 0.0
                for l in range(L):
                    g = np.float64(gy[n, c, l])
                    sum_gy += g
                    sum_gy_xhat += g * ((x[n, c, l] - mu) * s)
                sums[b, 0, c] += sum_gy_xhat
                sums[b, 1, c] += sum_gy


def _input_grad_loop(gy, x, gx, mean, inv_std, scale, mean_gy, mean_gy_xhat):
    """gx = scale·(gy - mean(gy) - x̂·mean(gy·x̂)), x̂ = (x - mean)·inv_std; mean,
    inv_std and the two means float64 (C,)."""
    N, C, L = gy.shape
    for n in range(N):
        if L == 1:                          # (N, C) input: the channels are the row
            for c in range(C):
                x_hat = (x[n, c, 0] - mean[c]) * inv_std[c]
                gx[n, c, 0] = scale[c] * (gy[n, c, 0] - mean_gy[c] - x_hat * mean_gy_xhat[c])
            continue
        for c in range(C):
            mu, s, k, a, b = mean[c], inv_std[c], scale[c], mean_gy[c], mean_gy_xhat[c]
            for l in range(L):
                gx[n, c, l] = k * (gy[n, c, l] - a - ((x[n, c, l] - mu) * s) * b)


def _input_grad_over_gy_loop(g, x, mean, inv_std, scale, mean_gy, mean_gy_xhat):
    """_input_grad_loop with gx written over gy (g), the same operations: called
    with gx and gy the same array, that loop would not be vectorised (see
    elementwise_numba's over-gy loops)."""
    N, C, L = g.shape
    for n in range(N):
        if L == 1:
            for c in range(C):
                x_hat = (x[n, c, 0] - mean[c]) * inv_std[c]
                g[n, c, 0] = scale[c] * (g[n, c, 0] - mean_gy[c] - x_hat * mean_gy_xhat[c])
            continue
        for c in range(C):
            mu, s, k, a, b = mean[c], inv_std[c], scale[c], mean_gy[c], mean_gy_xhat[c]
            for l in range(L):
                g[n, c, l] = k * (g[n, c, l] - a - ((x[n, c, l] - mu) * s) * b)


# reassoc lets the compiler split each running sum into several (vectorised)
# partial sums, which is faster and no less accurate (benchmarks/results.md);
# NaN and inf still propagate.
_compiled = on_first_use(_shifted_sums_loop, _normalize_loop, _affine_loop,
                         _gradient_sums_loop, _input_grad_loop, _input_grad_over_gy_loop,
                         nogil=True,
                         fastmath={"reassoc", "contract"})


def _as_ncl(a):
    """(N, C, ...) -> a C-contiguous (N, C, L) view (a copy only if ``a`` is not contiguous)."""
    return np.ascontiguousarray(a).reshape(a.shape[0], a.shape[1], -1)


def _block_sums(loop, batch_arrays, *args):
    """(2, C) float64: ``loop``'s two per-channel sums over ``batch_arrays``
    (N, C, L), kept per block of images and added in block order (module
    docstring); ``args`` go to every block unchanged."""
    N, C = batch_arrays[0].shape[:2]
    nbytes = sum(a.nbytes for a in batch_arrays)
    blocks = 1 if nbytes < threads.STREAM_MIN_BYTES else min(N, BLOCKS)
    bounds = np.array([N * i // blocks for i in range(blocks + 1)], dtype=np.int64)
    sums = np.empty((blocks, 2, C), dtype=np.float64)
    threads.run_all([functools.partial(loop, bounds, first, last, sums, *batch_arrays, *args)
                     for first, last in threads.stream_slices(blocks, nbytes)])
    total = sums[0].copy()
    for block in sums[1:]:          # in block order, whichever thread summed it
        total += block
    return total


# ---------------------------------------------------------------- the interface
def batchnorm_forward_train(x, gamma, beta, eps):
    """``bn_numpy.batchnorm_forward_train``, compiled -> (y, mean, var, inv_std)."""
    if not compilable(x, gamma, beta):
        return bn_numpy.batchnorm_forward_train(x, gamma, beta, eps)
    loops = _compiled()
    x3 = _as_ncl(x)
    m = x3.shape[0] * x3.shape[2]
    shift = x3[0, :, 0].astype(np.float64)
    total, total_sq = _block_sums(loops.shifted_sums, (x3,), shift)
    mean_shifted = total / m
    var = np.maximum(total_sq / m - mean_shifted * mean_shifted, 0.0)  # rounding may dip below 0
    mean = shift + mean_shifted
    inv_std = 1.0 / np.sqrt(var + eps)
    y = np.empty(x.shape, dtype=x.dtype)
    threads.over_batch(loops.normalize, (x3, _as_ncl(y)), mean, inv_std,
                       np.ascontiguousarray(gamma, dtype=x.dtype),
                       np.ascontiguousarray(beta, dtype=x.dtype), slices=threads.stream_slices)
    return y, mean.astype(x.dtype), var.astype(x.dtype), inv_std.astype(x.dtype)


def batchnorm_backward(gy, x, mean, inv_std, scale, overwrite_gy=False):
    """``bn_numpy.batchnorm_backward``, compiled -> (gx or None, dgamma, dbeta);
    gx written over gy (after the sums have read it) where ``overwrite_gy``
    allows it."""
    if not (compilable(gy, x) and gy.shape == x.shape) \
            or not (scale is None or compilable(scale)):
        return bn_numpy.batchnorm_backward(gy, x, mean, inv_std, scale)
    loops = _compiled()
    gy3, x3 = _as_ncl(gy), _as_ncl(x.astype(gy.dtype, copy=False))
    statistics = (np.asarray(mean, dtype=np.float64), np.asarray(inv_std, dtype=np.float64))
    sums = _block_sums(loops.gradient_sums, (gy3, x3), *statistics)
    dgamma, dbeta = sums.astype(gy.dtype)
    if scale is None:
        return None, dgamma, dbeta
    m = gy3.shape[0] * gy3.shape[2]
    factors = (*statistics, np.ascontiguousarray(scale, dtype=gy.dtype), sums[1] / m, sums[0] / m)
    if writable_over(gy, overwrite_gy):
        threads.over_batch(loops.input_grad_over_gy, (gy3, x3), *factors,
                           slices=threads.stream_slices)
        return gy, dgamma, dbeta
    gx = np.empty(gy.shape, dtype=gy.dtype)
    threads.over_batch(loops.input_grad, (gy3, x3, _as_ncl(gx)), *factors,
                       slices=threads.stream_slices)
    return gx, dgamma, dbeta


def batchnorm_forward_eval(x, scale, shift):
    """``bn_numpy.batchnorm_forward_eval``, compiled: one pass over x."""
    if not compilable(x, scale, shift):
        return bn_numpy.batchnorm_forward_eval(x, scale, shift)
    y = np.empty(x.shape, dtype=x.dtype)
    threads.over_batch(_compiled().affine, (_as_ncl(x), _as_ncl(y)),
                       np.ascontiguousarray(scale, dtype=x.dtype),
                       np.ascontiguousarray(shift, dtype=x.dtype), slices=threads.stream_slices)
    return y
