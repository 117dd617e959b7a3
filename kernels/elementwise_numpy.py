"""Reference elementwise kernels: ReLU, the sigmoid's backward and the SGD
update, in NumPy (CuPy works too).

The ops that call them -- ``ReLU`` and ``Sigmoid`` in
``tinygrad_cnn/ops/elementwise.py``, ``SGD`` in ``tinygrad_cnn/optim.py`` --
state the math; here is only the array work.  Each is a few whole-array
NumPy expressions, so each makes a pass through memory (and often a
temporary) per expression; ``elementwise_numba.py`` does each in one pass.
The array module comes from the inputs, so the same code runs on NumPy and
CuPy arrays.

Scalar factors stay Python floats: NumPy casts a Python float to the
array's dtype, so float32 arrays are computed in float32.

Signatures
----------
relu_forward(x) -> y                       y = max(x, 0)
relu_backward(gy, y, overwrite_gy=False) -> gx       gx = 0 where y <= 0, else gy
sigmoid_forward(x) -> y                    y = σ(x) = ½ tanh(x/2) + ½
sigmoid_backward(gy, y, overwrite_gy=False) -> gx    gx = gy·y·(1 - y)
sgd_update(param, grad, momentum_buffer, lr, momentum, dampening, weight_decay, nesterov)
    -> momentum_buffer                     updates ``param`` (and the buffer) in place;
                                           None in, a new buffer out on the first step
sgd_update_multi(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay,
                 nesterov) -> momentum_buffers      the same for lists of parameters
adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps,
            weight_decay, amsgrad, decoupled_weight_decay) -> None     in place
adam_update_multi(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1,
                  beta2, eps, weight_decay, amsgrad, decoupled_weight_decay) -> None

``overwrite_gy`` allows, but does not ask, a backward kernel to write gx over
gy and return gy (the engine allows it where gy is its own scratch array:
``Function.may_overwrite_gy``); callers use the array returned.  The
reference always returns a new array; ``elementwise_numba.py`` takes the offer.

The ``*_multi`` kernels update every parameter of an optimizer's group in one
call: here a loop over the one-parameter kernel, so the results are the
loop's by construction; on the GPU one launch for all (``fused_cupy.py``).
"""
import math

from .arrays import get_array_module


def relu_forward(x):
    """y = max(x, 0), in x's dtype; a NaN x stays NaN."""
    return get_array_module(x).maximum(x, 0).astype(x.dtype, copy=False)


def relu_backward(gy, y, overwrite_gy=False):
    """gx = 0 where y <= 0, else gy  (y = max(x, 0), the forward's output).

    PyTorch's ``threshold_backward``, NaN included: a NaN y is not <= 0, so
    it passes gy on; a NaN gy is passed on only where y > 0 (or y is NaN),
    elsewhere the 0 wins.  (``gy * (y > 0)`` would be cheaper in NumPy but
    turns a NaN or inf gy into NaN where it should give 0.)
    """
    xp = get_array_module(gy)
    return xp.where(y <= 0, gy.dtype.type(0), gy)


def sigmoid_forward(x):
    """y = σ(x) = 1 / (1 + e⁻ˣ), computed as ½ tanh(x/2) + ½: no overflow in exp(-x)
    for very negative x.  In place in the one new array: activations are large, and
    each extra temporary is another pass through memory.  (A Python float keeps
    float32 float32; asarray because a 0-d x gives a NumPy scalar, which cannot be
    written into.)"""
    xp = get_array_module(x)
    y = xp.asarray(x * 0.5)
    return _half_tanh_plus_half(y).astype(x.dtype, copy=False)


def sigmoid_forward_into(x, y):
    """``sigmoid_forward`` written into ``y`` (x's shape and dtype): the same
    operations, for a caller that computes an array in parts."""
    xp = get_array_module(x)
    xp.multiply(x, 0.5, out=y)
    _half_tanh_plus_half(y)


def _half_tanh_plus_half(y):
    """y = ½ tanh(y) + ½, in place."""
    xp = get_array_module(y)
    xp.tanh(y, out=y)
    y *= 0.5
    y += 0.5
    return y


def sigmoid_backward(gy, y, overwrite_gy=False):
    """gx = gy·y·(1 - y)  (y = σ(x), the forward's output), computed as ((1 - y)·y)·gy."""
    gx = y.dtype.type(1) - y   # the one new array (in y's dtype: NumPy 1.x makes 1 - a 0-d
                               # float32 float64); the products go into it in place
    gx *= y
    gx *= gy
    return gx


def sgd_update(param, grad, momentum_buffer, lr, momentum, dampening, weight_decay,
               nesterov):
    """One step of ``torch.optim.SGD`` on ``param``, in place::

        d = grad + weight_decay·param
        buf = d  (first step: momentum_buffer is None),  else  momentum·buf + (1 - dampening)·d
        d = d + momentum·buf  (nesterov)  else  buf          (only when momentum ≠ 0)
        param = param - lr·d

    Returns the momentum buffer: a new one on the first step (None given),
    else the one given, updated in place (untouched when momentum is 0).
    ``grad`` is only read.
    """
    # In place wherever the array is ours (the momentum buffer, a temporary
    # made here), so a step allocates one temporary per parameter (two with
    # weight decay and Nesterov).
    # The factors in param's dtype: NumPy 1.x would compute a 0-d float32 parameter's
    # step (and its momentum buffer) in float64 when multiplied by a Python float.
    scalar = param.dtype.type
    d, d_is_ours = grad, False
    if weight_decay != 0:
        d = param * scalar(weight_decay)
        d += grad
        d_is_ours = True
    buf = momentum_buffer
    if momentum != 0:
        if buf is None:
            # own copy: the buffer must not share the gradient array (and
            # xp.array gives an array even where d is a 0-d product's scalar)
            buf = get_array_module(d).array(d)
        else:
            buf *= scalar(momentum)
            buf += d if dampening == 0 else scalar(1 - dampening) * d
        if nesterov:
            d_plus = buf * scalar(momentum)
            d_plus += d
            d, d_is_ours = d_plus, True
        else:
            d, d_is_ours = buf, False
    if d_is_ours:
        d *= scalar(lr)
        param -= d
    else:
        param -= scalar(lr) * d
    return buf


def sgd_update_multi(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay,
                     nesterov):
    """``sgd_update`` on each parameter of a list -> the list of momentum buffers."""
    return [sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov)
            for p, g, buf in zip(params, grads, momentum_buffers)]


def adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps,
                weight_decay, amsgrad, decoupled_weight_decay):
    """One step of ``torch.optim.Adam`` (``AdamW`` with ``decoupled_weight_decay``) on
    ``param``, in place in it and its moments; ``step`` counts this parameter's steps
    from 1 (``tinygrad_cnn/optim.py`` states the math).  ``max_exp_avg_sq`` is used
    (and updated) only with ``amsgrad``; ``grad`` is only read."""
    xp = get_array_module(param)
    if weight_decay != 0:
        if decoupled_weight_decay:
            param *= 1 - lr * weight_decay
        else:
            grad = grad + weight_decay * param
    # The moments are updated in place (they are ours); each line makes at
    # most one temporary, and Python-float factors keep float32 float32.
    exp_avg *= beta1
    exp_avg += (1 - beta1) * grad
    exp_avg_sq *= beta2
    square = grad * grad
    square *= 1 - beta2
    exp_avg_sq += square
    del square           # before the next temporary: one alive at a time
    second = exp_avg_sq
    if amsgrad:
        xp.maximum(max_exp_avg_sq, second, out=max_exp_avg_sq)
        second = max_exp_avg_sq
    # One new array (out=: an array even for a 0-d parameter) becomes the step.
    denom = xp.sqrt(second, out=xp.empty_like(second))
    denom /= math.sqrt(1 - beta2 ** step)
    denom += eps
    update = xp.divide(exp_avg, denom, out=denom)
    update *= lr / (1 - beta1 ** step)
    param -= update


def adam_update_multi(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1,
                      beta2, eps, weight_decay, amsgrad, decoupled_weight_decay):
    """``adam_update`` on each parameter of a list (``steps``: each one's step count)."""
    for i, param in enumerate(params):
        adam_update(param, grads[i], exp_avgs[i], exp_avg_sqs[i], max_exp_avg_sqs[i], steps[i],
                    lr, beta1, beta2, eps, weight_decay, amsgrad, decoupled_weight_decay)
