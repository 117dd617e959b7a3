"""Batch normalisation over every axis but the channel axis 1.

Works on (N, C), (N, C, L) and (N, C, H, W) in their own layout, no transposes: the
statistics of channel c are taken over all elements x[n, c, ...], i.e. over
axes (0, 2, 3, ...) with ``keepdims`` so they broadcast back against x
(Chainer's layout-agnostic formulation).  Per channel, with m = N·(L or H·W)
values::

    μ = mean(x)      σ² = mean((x - μ)²)      (biased: the batch is the population)
    x̂ = (x - μ) / √(σ² + ε)
    y = γ x̂ + β

``BatchNorm`` (training: batch statistics) and ``BatchNormEval`` (inference:
running statistics) have hand-written backward passes; ``batch_norm_simple``
computes the same with primitive Tensor ops so autograd derives the backward
— compare the two to see what the closed form saves.
"""
import math
import numbers

import kernels

from ..autograd import Function
from ..backend import get_array_module


def _reduce_axes(ndim):
    """Every axis but the channel axis 1: (0,), (0, 2) or (0, 2, 3)."""
    return (0,) + tuple(range(2, ndim))


def _values_per_channel(shape):
    """m = N·L or N·H·W: how many values each channel's statistics average."""
    return math.prod((shape[0],) + tuple(shape[2:]))


def _per_channel(v, ndim):
    """A (C,) vector as (1, C, 1, ...) so it broadcasts against an ndim-D input."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


class BatchNorm(Function):
    """Training-mode batch norm: y = γ x̂ + β with x̂ = (x - μ)/√(σ² + ε), μ, σ² from the batch.

    Inputs x (N, C, ...), γ (C,), β (C,).  When ``running_mean`` and
    ``running_var`` (C,) arrays are given, forward also updates them in place
    (outside the graph): running = (1 - momentum)·running + momentum·stat,
    with the unbiased variance σ²·m/(m - 1) for ``running_var`` (PyTorch's
    convention; the biased σ² is what normalises).

    Backward in closed form.  Write s = 1/√(σ² + ε), g = dy·γ = dL/dx̂, and
    let mean/Σ run over the m values of one channel.  x̂ depends on x through
    μ and σ² too, so by the chain rule::

        dL/dσ² = Σ g·(x - μ)·(-½ s³)               = -½ s² Σ g·x̂
        dL/dμ  = Σ g·(-s) + dL/dσ²·mean(-2(x - μ)) = -s Σ g        (the 2nd term is 0)
        dx     = g·s + dL/dσ²·2(x - μ)/m + dL/dμ/m
               = s·(g - mean(g) - x̂·mean(g·x̂))

    and since g = γ·dy with γ constant per channel::

        dx = (γ s)·(dy - mean(dy) - x̂·mean(dy·x̂))
        dγ = Σ dy·x̂        dβ = Σ dy

    The same two sums give dγ, dβ and the two means in dx, so backward
    needs x̂ (N, C, ...) and γ s (C,).  It keeps x, μ and s and computes x̂
    again, as PyTorch does: the forward would spend a pass over memory
    writing x̂ (a quarter of its traffic), and x̂ takes as much memory as x.

    The array work is in ``kernels.batchnorm_forward_train`` and
    ``kernels.batchnorm_backward`` (``kernels/bn_numpy.py`` is the readable
    reference; ``bn_numba.py`` fuses each direction into two passes over the batch).
    """
    def __init__(self, eps, running_mean=None, running_var=None, momentum=0.1):
        self.eps, self.momentum = eps, momentum
        self.running_mean, self.running_var = running_mean, running_var

    def forward(self, x, gamma, beta):
        gamma = gamma.astype(x.dtype, copy=False)
        y, mean, var, inv_std = kernels.batchnorm_forward_train(
            x, gamma, beta.astype(x.dtype, copy=False), self.eps)
        if self.running_mean is not None:
            _update_running_stats(self.running_mean, self.running_var, mean, var,
                                  _values_per_channel(x.shape), self.momentum)
        need_x, need_gamma, _ = self.needs_input_grad
        wanted = need_x or need_gamma
        self.save_for_backward(x if wanted else None, mean if wanted else None,
                               inv_std if wanted else None, gamma * inv_std if need_x else None)
        return y

    def backward(self, gy):
        x, mean, inv_std, scale = self.saved
        need_x, need_gamma, need_beta = self.needs_input_grad
        if x is None:                           # only dβ = Σ dy is wanted
            return None, None, gy.sum(axis=_reduce_axes(gy.ndim))
        gx, dgamma, dbeta = kernels.batchnorm_backward(gy, x, mean, inv_std, scale,
                                                       overwrite_gy=self.may_overwrite_gy)
        return gx, dgamma if need_gamma else None, dbeta if need_beta else None


class BatchNormEval(Function):
    """Inference-mode batch norm: y = γ x̂ + β with x̂ = (x - μ_run)·s, s = 1/√(σ²_run + ε).

    The running statistics are constants, so this is a per-channel affine
    map y = (γ s)·x + (β - γ s μ_run) and its backward is plain::

        dx = dy·γ s        dγ = Σ dy·x̂        dβ = Σ dy
    """
    def __init__(self, running_mean, running_var, eps):
        self.running_mean, self.running_var, self.eps = running_mean, running_var, eps

    def forward(self, x, gamma, beta):
        xp = get_array_module(x)
        dtype = x.dtype
        mean = self.running_mean.astype(dtype, copy=False)
        inv_std = 1 / xp.sqrt(self.running_var.astype(dtype, copy=False) + dtype.type(self.eps))
        scale = gamma.astype(dtype, copy=False) * inv_std           # γ s, per channel
        shift = beta.astype(dtype, copy=False) - mean * scale       # β - γ s μ_run
        need_x, need_gamma, _ = self.needs_input_grad
        x_hat = ((x - _per_channel(mean, x.ndim)) * _per_channel(inv_std, x.ndim)
                 if need_gamma else None)
        self.save_for_backward(x_hat, _per_channel(scale, x.ndim) if need_x else None)
        # One affine map, y = x·(γ s) + (β - γ s μ_run), as PyTorch's CPU inference
        # computes it (through x̂ it took four passes over x and four new arrays;
        # benchmarks/results.md, "Inference").
        return kernels.batchnorm_forward_eval(x, scale, shift)

    def backward(self, gy):
        x_hat, scale = self.saved
        need_x, need_gamma, need_beta = self.needs_input_grad
        axes = _reduce_axes(gy.ndim)
        return (gy * scale if need_x else None,
                (gy * x_hat).sum(axis=axes) if need_gamma else None,
                gy.sum(axis=axes) if need_beta else None)


def _update_running_stats(running_mean, running_var, mean, var, count, momentum):
    """running ← (1 - momentum)·running + momentum·batch statistic, in place.

    ``mean`` and ``var`` are the batch's (biased) statistics, any shape with
    C elements; the running variance gets the unbiased estimate var·m/(m - 1).
    Raw arrays, so nothing here is recorded in the graph.
    """
    unbiased_var = var.reshape(-1) * (count / (count - 1))
    running_mean[...] = (1 - momentum) * running_mean + momentum * mean.reshape(-1)
    running_var[...] = (1 - momentum) * running_var + momentum * unbiased_var


# ---------------------------------------------------------------- arguments
def _check_batch_norm_args(op, input, running_mean, running_var, weight, bias, training,
                           momentum):
    from ..tensor import Tensor
    if input.dtype.kind != "f":
        raise TypeError(f"{op}: expected a floating-point input, got dtype {input.dtype}")
    if input.ndim not in (2, 3, 4):
        raise ValueError(f"{op}: expected a 2-D (N, C), 3-D (N, C, L) or 4-D (N, C, H, W) "
                         f"input, got shape {input.shape}")
    C = input.shape[1]
    named = {"weight": weight, "bias": bias, "running_mean": running_mean,
             "running_var": running_var}
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor or None, got {type(t).__name__}")
        if t.dtype.kind != "f":
            raise TypeError(f"{op}: expected a floating-point {name}, got dtype {t.dtype}")
        if t.shape != (C,):
            raise ValueError(f"{op}: {name} of shape {t.shape} does not match the input's "
                             f"{C} channels (input shape {input.shape}); expected ({C},)")
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: pass both running_mean and running_var, or neither")
    if training:
        if _values_per_channel(input.shape) <= 1:
            raise ValueError(f"{op}: Expected more than 1 value per channel when training, "
                             f"got input size {input.shape}")
        if running_mean is not None and (isinstance(momentum, bool) or
                                         not isinstance(momentum, numbers.Real)):
            raise TypeError(f"{op}: momentum must be a float, got {momentum!r} (for a "
                            "cumulative moving average pass 1/num_batches_tracked, as the "
                            "BatchNorm layers do)")
    elif running_mean is None:
        raise ValueError(f"{op}: evaluation mode (training=False) normalises with the running "
                         "statistics, but running_mean and running_var are None")


def _affine_params(input, weight, bias):
    """γ and β, with γ = 1 and β = 0 (constants, no gradient) where they are None."""
    from ..tensor import Tensor
    xp = get_array_module(input.data)
    C = input.shape[1]
    if weight is None:
        weight = Tensor(xp.ones(C, dtype=input.dtype))
    if bias is None:
        bias = Tensor(xp.zeros(C, dtype=input.dtype))
    return weight, bias


# ---------------------------------------------------------------- functions
def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """PyTorch's ``F.batch_norm`` for (N, C), (N, C, L) or (N, C, H, W) input.

    ``training=True`` normalises with the batch's statistics and, when the
    running buffers (C,) are given, updates them in place (momentum: weight
    of the new batch; running_var gets the unbiased batch variance).
    ``training=False`` normalises with ``running_mean``/``running_var``.
    ``weight`` (γ) and ``bias`` (β), (C,) each, may be None: no scale/shift.
    ``momentum`` must be a float: the layers turn PyTorch's ``momentum=None``
    (cumulative average) into 1/num_batches_tracked before calling this.
    """
    _check_batch_norm_args("batch_norm", input, running_mean, running_var, weight, bias,
                           training, momentum)
    gamma, beta = _affine_params(input, weight, bias)
    if training:
        buffers = (running_mean.data, running_var.data) if running_mean is not None \
            else (None, None)
        return BatchNorm(eps, *buffers, momentum=momentum)(input, gamma, beta)
    return BatchNormEval(running_mean.data, running_var.data, eps)(input, gamma, beta)


def batch_norm_simple(input, running_mean, running_var, weight=None, bias=None,
                      training=False, momentum=0.1, eps=1e-5):
    """``batch_norm`` from primitive differentiable Tensor ops only (same arguments).

    Autograd records mean, subtract, multiply, sqrt, divide, ... and derives
    the backward by itself, keeping every intermediate (x - μ, its square,
    σ², √(σ² + ε), x̂, γ x̂) alive until backward; ``BatchNorm.backward``
    gets the same numbers from x̂ and 1/√(σ² + ε) alone.
    """
    _check_batch_norm_args("batch_norm_simple", input, running_mean, running_var, weight,
                           bias, training, momentum)
    gamma, beta = _affine_params(input, weight, bias)
    ndim, axes = input.ndim, _reduce_axes(input.ndim)
    if training:
        mean = input.mean(dim=axes, keepdim=True)                  # (1, C, 1, ...)
        centered = input - mean
        var = (centered * centered).mean(dim=axes, keepdim=True)   # biased
        if running_mean is not None:   # on raw arrays: not recorded in the graph
            _update_running_stats(running_mean.data, running_var.data, mean.data, var.data,
                                  _values_per_channel(input.shape), momentum)
    else:                              # the running statistics are constants here
        centered = input - _per_channel(running_mean.detach().to(input.dtype), ndim)
        var = _per_channel(running_var.detach().to(input.dtype), ndim)
    x_hat = centered / (var + eps).sqrt()
    return _per_channel(gamma, ndim) * x_hat + _per_channel(beta, ndim)
