"""Elementwise kernels as compiled loops (Numba): the interface of ``elementwise_numpy``.

Same signatures and results as ``elementwise_numpy.py`` (bit for bit: the
loops do the reference's float operations in the same order and dtype), but
for the float32 sigmoid's forward, which computes σ its own way
(``_sigmoid_forward_float32_loop``): closer to the exact value, and in
vector registers where NumPy's float32 tanh has none.
The reference spends a pass through memory, and often a temporary, on each
NumPy expression: ``relu_backward`` builds a bool mask then selects (a
branch per element, which mispredicts on a ReLU's mask), ``sigmoid_backward``
makes three passes, and the SGD step with weight decay and Nesterov makes
five passes over the parameter-sized arrays and two temporaries.  Here each
is one loop over flat arrays that reads every input element once and
writes every output element once.  Where the engine allows it
(``overwrite_gy``), the backward loops write gx over gy instead of into a
new array: no allocation, and one stream of memory fewer.

Threads: these loops do a couple of float operations per 8-12 bytes moved,
so memory, not arithmetic, bounds them.  With ``parallel=True``/``prange``
they ran no faster on the largest activations, and slower on small arrays,
where waking the threads costs more than the loop itself -- and most SGD
parameters are small (the figures are in benchmarks/results.md, "Figures
behind design choices in kernels/").  Only ReLU and the sigmoid's backward
on arrays of tens of MB are cut into slices for the thread pool
(``threads.stream_slices``), each slice a one-thread loop with the GIL
released; the float32 sigmoid's forward, a polynomial per element, from
2 MB as the loops that compute more than they move; everything else runs
on the calling thread.

Exactness: scalar factors are cast to the arrays' dtype before the loop
(NumPy does the same with Python floats), and constants are written as
``np.float32(...)``, which is exact in either dtype and, unlike an int or
a float64 literal, does not turn float32 arithmetic into float64.  No
``fastmath``: contracting ``a·b + c`` into one fused multiply-add would
round differently from the reference.

What runs where: only NumPy float32/float64 arrays of one dtype reach the
loops; anything else (CuPy arrays, which live on the GPU; float16; mixed
dtypes) goes to the reference.  Inputs that are only read may have any
layout (a non-contiguous one is copied first); arrays updated in place (the
parameter and its momentum buffer) must be contiguous, else the reference
updates them.  Start-up: see ``kernels/jit.py`` (Numba is imported and the
loops compiled, or loaded from the disk cache, at the first call).
"""
import functools
import math
import time

import numpy as np

from . import elementwise_numpy, threads
from .jit import compilable, on_first_use, writable_over


# ---------------------------------------------------------------- the loops
# All arrays are 1-D and contiguous; the wrappers below flatten them.
def _relu_forward_loop(x, y):
    """y = 0 where x <= 0, else x: NaN stays NaN, -0.0 becomes 0.0 (as np.maximum(x, 0))."""
    for i in range(x.size):
        v = x[i]
        y[i] = np.float32(0) if v <= 0 else v


def _relu_backward_loop(gy, y, gx):
    """gx = 0 where y <= 0, else gy: a NaN y passes gy on (PyTorch's threshold_backward)."""
    for i in range(gy.size):
        gx[i] = np.float32(0) if y[i] <= 0 else gy[i]


def _sigmoid_backward_loop(gy, y, gx):
    """gx = ((1 - y)·y)·gy, the reference's order of operations."""
    for i in range(gy.size):
        v = y[i]
        gx[i] = (np.float32(1) - v) * v * gy[i]


# The two loops above with gx written over gy.  Called with gx and gy the same
# array, they would run element by element: the compiler vectorises a loop
# only behind a check that its output overlaps no input, and falls back to
# scalar code (a mispredicted branch per element for ReLU) when it does.
def _relu_backward_over_gy_loop(g, y):
    """g = 0 where y <= 0, else g (gy's memory holds gx)."""
    for i in range(g.size):
        g[i] = np.float32(0) if y[i] <= 0 else g[i]


def _sigmoid_backward_over_gy_loop(g, y):
    """g = ((1 - y)·y)·g (gy's memory holds gx)."""
    for i in range(g.size):
        v = y[i]
        g[i] = (np.float32(1) - v) * v * g[i]


def _sgd_loop(param, grad, buf, lr, has_momentum, momentum, dampening_factor,
              has_weight_decay, weight_decay, nesterov, first_step):
    """One SGD step per element, in place in ``param`` and ``buf``; see sgd_update.

    ``dampening_factor`` = 1 - dampening (1·d is exactly d when dampening is 0).
    ``buf`` is touched only with momentum, and not read on the first step.
    The has_* flags are decided on the Python values, as the reference does.
    """
    for i in range(param.size):
        d = grad[i]
        if has_weight_decay:
            d = param[i] * weight_decay + d
        if has_momentum:
            b = d if first_step else buf[i] * momentum + dampening_factor * d
            buf[i] = b
            d = b * momentum + d if nesterov else b
        param[i] = param[i] - lr * d


# The float32 sigmoid from e = exp(-|x|), which lies in (0, 1] and cannot overflow:
#     σ(x) = 1 / (1 + e) for x >= 0,    e / (1 + e) for x < 0,
# and e from Cody and Waite's reduction: -|x| = n·ln 2 + r with n an integer and
# |r| <= ln(2)/2, so e = 2ⁿ · exp(r), exp(r) a polynomial (Cephes' expf) and 2ⁿ
# built from its exponent bits.  Every step is plain arithmetic on the element,
# so the compiler runs the loop in vector registers (NumPy's float32 tanh, the
# reference's, has a vector loop only with AVX-512).
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)       # ln 2 in 9 bits: n · _LN2_HI is exact for |n| <= 150
_LN2_LO = np.float32(-2.12194440e-4)    # ln 2 - _LN2_HI
_ROUNDER = np.float32(12582912.0)       # 1.5 · 2²³: (v + it) - it rounds v to an integer
_LOWEST = np.float32(-104.0)            # exp(-104) rounds to float32's least subnormal or 0
_EXP = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                     4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))


def _sigmoid_forward_float32_loop(x, y):
    """y = σ(x) for float32 x, to within 3 units in the last place of the exact
    value (tests/kernels/test_elementwise_kernels.py); σ(inf) = 1, σ(-inf) = 0,
    σ(NaN) = NaN."""
    c5, c4, c3, c2, c1, c0 = _EXP
    one = np.float32(1)
    for i in range(x.size):
        v = x[i]
        t = -abs(v)
        t = _LOWEST if t < _LOWEST else t      # NaN passes: comparisons with it are false
        n = (t * _LOG2E + _ROUNDER) - _ROUNDER  # the integer nearest t / ln 2, -150..0
        r = (t - n * _LN2_HI) - n * _LN2_LO
        exp_r = (((((c5 * r + c4) * r + c3) * r + c2) * r + c1) * r + c0) * r * r + r + one
        k = np.int32(n)                         # 2ⁿ as two normal factors 2^(n/2): float32
        half = k >> 1                           # has no 2⁻¹⁵⁰, and a subnormal e needs it
        e = (exp_r * np.int32((half + 127) << 23).view(np.float32)
             * np.int32((k - half + 127) << 23).view(np.float32))
        y[i] = (one if v >= 0 else e) / (one + e)


_compiled = on_first_use(_relu_forward_loop, _relu_backward_loop, _sigmoid_backward_loop,
                         _relu_backward_over_gy_loop, _sigmoid_backward_over_gy_loop,
                         _sgd_loop, _sigmoid_forward_float32_loop, nogil=True,
                         error_model="numpy")   # no divide-by-zero check: a vector loop


def _compilable_alike(*arrays):
    """``compilable``, and all of one dtype and one shape (the flat loops do not
    broadcast, and would read past a smaller array)."""
    first = arrays[0]
    return compilable(*arrays) and all(a.dtype == first.dtype and a.shape == first.shape
                                       for a in arrays)


def _flat(a):
    """A 1-D contiguous view of ``a`` (a copy only if ``a`` is not contiguous)."""
    return np.ascontiguousarray(a).reshape(-1)


# ---------------------------------------------------------------- the interface
def relu_forward(x):
    """``elementwise_numpy.relu_forward``, compiled -> y = max(x, 0)."""
    if not _compilable_alike(x):
        return elementwise_numpy.relu_forward(x)
    y = np.empty(x.shape, dtype=x.dtype)
    threads.over_batch(_compiled().relu_forward, (_flat(x), y.reshape(-1)),
                       slices=threads.stream_slices)
    return y


def relu_backward(gy, y, overwrite_gy=False):
    """``elementwise_numpy.relu_backward``, compiled -> gx = 0 where y <= 0,
    else gy; written over gy where ``overwrite_gy`` allows it."""
    if not _compilable_alike(gy, y):
        return elementwise_numpy.relu_backward(gy, y)
    if writable_over(gy, overwrite_gy):
        threads.over_batch(_compiled().relu_backward_over_gy, (gy.reshape(-1), _flat(y)),
                           slices=threads.stream_slices)
        return gy
    gx = np.empty(y.shape, dtype=y.dtype)
    threads.over_batch(_compiled().relu_backward, (_flat(gy), _flat(y), gx.reshape(-1)),
                       slices=threads.stream_slices)
    return gx


def sigmoid_forward(x):
    """``elementwise_numpy.sigmoid_forward``: float32 through a loop of its own
    (``_sigmoid_forward_float32_loop``, a few units in the last place from the
    exact value, where the reference's ½ tanh(x/2) + ½ loses all digits of a
    small σ(x): 0 from x = -17 on), cut into slices over threads from 2 MB as
    the other loops that compute more than they move.

    float64 (gradient checks) gets the reference's values bit for bit: each
    slice runs NumPy's own expressions, which release the GIL (``_tanh_slices``)."""
    if not _compilable_alike(x):
        return elementwise_numpy.sigmoid_forward(x)
    if x.dtype == np.float32:
        y = np.empty(x.shape, dtype=x.dtype)
        threads.over_batch(_compiled().sigmoid_forward_float32, (_flat(x), y.reshape(-1)))
        return y
    if x.ndim == 0:
        return elementwise_numpy.sigmoid_forward(x)
    slices = _tanh_slices(x)
    if len(slices) == 1:
        return elementwise_numpy.sigmoid_forward(x)
    y = np.empty(x.shape, dtype=x.dtype)
    flat_x, flat_y = _flat(x), y.reshape(-1)
    threads.run_all([functools.partial(elementwise_numpy.sigmoid_forward_into, flat_x[lo:hi],
                                       flat_y[lo:hi]) for lo, hi in slices])
    return y


# Above this many seconds of tanh on one thread, handing half of it to a pool
# thread pays; at half of it, the hand-over ate the gain (benchmarks/results.md,
# "A third machine: AVX2 only").
TANH_SPLIT_SECONDS = 0.4e-3


def _tanh_slices(x):
    """``threads.batch_slices`` for NumPy's tanh over (float64) x: from 2 MB of
    x, as the other loops over the batch, or from TANH_SPLIT_SECONDS of work by
    what tanh costs here (``tanh_seconds_per_element``).  That cost is the
    machine's: NumPy 2.4's tanh runs in vector registers with AVX-512 and
    element by element without, so a layer's bytes alone do not tell its time."""
    slow = x.size * tanh_seconds_per_element(x.dtype) >= TANH_SPLIT_SECONDS
    # counted as enough work to split, whatever its bytes
    work = threads.PARALLEL_MIN_MULTIPLY_ADDS if slow else 0
    return threads.batch_slices(x.size, x.nbytes, work)


@functools.cache
def tanh_seconds_per_element(dtype):
    """Seconds NumPy's tanh takes per element of ``dtype`` on this machine, on
    one thread: the best of three passes over 2^16 elements, measured once."""
    x = np.linspace(-4, 4, 2**16, dtype=dtype)
    y = np.empty_like(x)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        np.tanh(x, out=y)
        best = min(best, time.perf_counter() - start)
    return best / x.size


def sigmoid_backward(gy, y, overwrite_gy=False):
    """``elementwise_numpy.sigmoid_backward``, compiled -> gx = gy·y·(1 - y);
    written over gy where ``overwrite_gy`` allows it."""
    if not _compilable_alike(gy, y):
        return elementwise_numpy.sigmoid_backward(gy, y)
    if writable_over(gy, overwrite_gy):
        threads.over_batch(_compiled().sigmoid_backward_over_gy, (gy.reshape(-1), _flat(y)),
                           slices=threads.stream_slices)
        return gy
    gx = np.empty(y.shape, dtype=y.dtype)
    threads.over_batch(_compiled().sigmoid_backward, (_flat(gy), _flat(y), gx.reshape(-1)),
                       slices=threads.stream_slices)
    return gx


def sgd_update(param, grad, momentum_buffer, lr, momentum, dampening, weight_decay,
               nesterov):
    """``elementwise_numpy.sgd_update``, compiled: updates ``param`` (and the
    momentum buffer) in place -> the momentum buffer (a new one on the first
    step, when None is given)."""
    has_momentum = momentum != 0
    first_step = has_momentum and momentum_buffer is None
    written = [param] + ([momentum_buffer] if has_momentum and not first_step else [])
    if not (_compilable_alike(grad, *written)
            and all(a.flags.c_contiguous and a.flags.writeable for a in written)):
        return elementwise_numpy.sgd_update(param, grad, momentum_buffer, lr, momentum,
                                            dampening, weight_decay, nesterov)
    buf = np.empty_like(param) if first_step else momentum_buffer
    flat_param = param.reshape(-1)      # a view: param is contiguous
    # the loop needs an array of param's type for buf even when it never touches it:
    # then an empty one, passed whole to every slice
    sliced = (flat_param, _flat(grad)) + ((buf.reshape(-1),) if has_momentum else ())
    unsliced = () if has_momentum else (flat_param[:0],)
    scalar = param.dtype.type           # factors in the arrays' dtype, as NumPy casts Python floats
    # slices of a large parameter side by side, as the other loops that stream memory
    threads.over_batch(_compiled().sgd, sliced, *unsliced, scalar(lr),
                       has_momentum, scalar(momentum), scalar(1 - dampening),
                       weight_decay != 0, scalar(weight_decay), bool(nesterov), first_step,
                       slices=threads.stream_slices)
    return buf


def sgd_update_multi(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay,
                     nesterov):
    """``elementwise_numpy.sgd_update_multi`` with this module's loop per parameter."""
    return [sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov)
            for p, g, buf in zip(params, grads, momentum_buffers)]
