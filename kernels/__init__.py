"""Hot loops behind one interface.

Ops (and ``optim.SGD``) call ``kernels.im2col(...)``,
``kernels.maxpool2d_forward(...)`` and so on: the functions defined at the
end of this file, one per kernel, each with the signature of its NumPy
reference.  Each one asks ``_implementation`` which version to run, by one
rule, decided on its first array argument:

1. **The kernel set** (``set_kernels``): ``"numpy"`` runs the readable,
   vectorised NumPy references (``*_numpy.py``, listed in ``REFERENCE``);
   ``"numba"`` (the default) is the same set with the compiled CPU loops of
   the ``*_numba.py`` modules laid over it (``OVERLAYS["numba"]`` names
   which kernel each module replaces).  The environment variable
   ``TINYGRAD_CNN_KERNELS`` (``numpy`` or ``numba``) chooses the set at
   start-up; ``tinygrad_cnn.set_kernels(name)`` switches later.
2. **The device**: a GPU (CuPy) array goes to the GPU kernels whatever the
   set, laid over the references in two layers, each where its probe runs
   (else with one warning that says why): the ``numba.cuda`` kernels of the
   ``*_cuda.py`` modules (``GPU_OVERLAYS``: convolution, pooling, batch norm;
   ``cuda_probe.py``), then the fused CUDA C kernels of ``fused_cupy.py``
   (``FUSED_OVERLAYS``: ReLU, the sigmoid, batch norm, the optimizers'
   multi-tensor steps; ``fused_cupy.why_not``), which take batch norm over
   from numba.cuda (their launches cost far less host time: that module says
   why).  The Winograd, direct-convolution and adaptive-pooling kernels
   have no GPU version: CuPy runs their references' expressions as GPU kernels, and
   so it runs every reference whose layers cannot run.
3. **The dtype**: compiled CPU loops take NumPy float32 and float64 arrays
   only (``kernels/jit.py``); any other dtype (float16, integers) runs the
   reference.

``which(name, array)`` names the function that rule picks, e.g.
``which("col2im", col) == "kernels.conv_numba.col2im"``.  A Numba kernel may
still hand an input its loops do not cover to its reference (a mixed-dtype
SGD step, a non-contiguous parameter, a non-global adaptive average pool's
backward), as its module explains.

Threads: the compiled loops (Numba) and the matrix products (OpenBLAS) take
turns on the cores; ``kernels/threads.py`` keeps each pool asleep between its
turns and gives both one thread count (``set_num_threads``).  Work made of
small pieces is dealt out whole instead (``shares_threads.py``): a stack of
products, a convolution's chunks of the batch, each thread running its
share alone.

``kernels`` imports nothing from ``tinygrad_cnn``: the engine sits on top of
it (``kernels/arrays.py`` answers which array module an array belongs to).
"""
import collections
import contextlib
import functools
import importlib
import os
import sys
import warnings

import numpy as np

from . import arrays, cuda_probe, fused_cupy, heap, threads
from .jit import COMPILED_DTYPES

# OpenBLAS's threads, started when NumPy was imported, spin after every matrix
# product and take the cores from the compiled loops that come next: restart
# them so they sleep at once (kernels/threads.py says how, and how to opt out).
threads.quiet_openblas()
# No more BLAS threads than a container's CPU quota allows (unless you chose a count).
threads.fit_cpu_quota()
# Keep a step's freed arrays in the heap for the next step instead of taking
# them from the OS again, page fault by page fault (kernels/heap.py; opt-out there).
heap.keep_freed_memory()

# ---------------------------------------------------------------- the sets
CONV = ("im2col", "col2im")
WINOGRAD = ("winograd_weight", "winograd_weight_backward", "winograd_input",
            "winograd_input_backward", "winograd_output", "winograd_output_backward")
CONV_DIRECT = ("conv_direct_forward", "conv_direct_backward_input",
               "conv_direct_backward_weight")
POOL = ("maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward")
ADAPTIVE_POOL = ("adaptive_avgpool2d_forward", "adaptive_avgpool2d_backward",
                 "adaptive_maxpool2d_forward", "adaptive_maxpool2d_backward")
BATCHNORM = ("batchnorm_forward_train", "batchnorm_backward")
# inference: the reference's two CuPy expressions serve GPU arrays
BATCHNORM_EVAL = ("batchnorm_forward_eval",)
ELEMENTWISE = ("relu_forward", "relu_backward", "sigmoid_forward", "sigmoid_backward",
               "sgd_update")
# the optimizers' steps over all parameters of a group at once (one launch on the GPU)
MULTI_TENSOR = ("sgd_update_multi", "adam_update", "adam_update_multi")
# work split into shares over threads: stacked matrix products, independent ones,
# a batch's chunks, joins, transposing copies
SHARES = ("matmul", "matmuls", "map_chunks", "concatenate", "transpose")

# Every kernel, in the reference module that defines it.
REFERENCE = {
    "kernels.conv_numpy": CONV,
    "kernels.winograd_numpy": WINOGRAD,
    "kernels.conv_direct_numpy": CONV_DIRECT,
    "kernels.pool_numpy": POOL + ADAPTIVE_POOL,
    "kernels.bn_numpy": BATCHNORM + BATCHNORM_EVAL,
    "kernels.elementwise_numpy": ELEMENTWISE + MULTI_TENSOR,
    "kernels.shares_numpy": SHARES,
}
KERNELS = tuple(name for names in REFERENCE.values() for name in names)

# kernel set -> the modules laid over the reference, and which kernels each replaces
OVERLAYS = {
    "numpy": {},
    "numba": {
        "kernels.conv_numba": CONV,
        "kernels.winograd_numba": WINOGRAD,
        "kernels.conv_direct_numba": CONV_DIRECT,
        "kernels.pool_numba": POOL + ADAPTIVE_POOL,
        "kernels.bn_numba": BATCHNORM + BATCHNORM_EVAL,
        # sigmoid_forward: NumPy's expressions, on slices of a large array side by side
        "kernels.elementwise_numba": ("relu_forward", "relu_backward", "sigmoid_forward",
                                      "sigmoid_backward", "sgd_update", "sgd_update_multi"),
        # not compiled loops: stacks of products, and chunks, split over threads
        "kernels.shares_threads": SHARES,
    },
}

# The numba.cuda kernels laid over the reference for GPU arrays (imported only
# when the first GPU array arrives: importing numba.cuda is slow).
GPU_OVERLAYS = {
    "kernels.conv_cuda": CONV,
    "kernels.pool_cuda": POOL,
    "kernels.bn_cuda": BATCHNORM,
}

# The CUDA C kernels CuPy compiles (NVRTC) and launches, laid over those.
FUSED_OVERLAYS = {
    "kernels.fused_cupy": ELEMENTWISE + BATCHNORM + ("sgd_update_multi", "adam_update_multi"),
}

active = None           # the name of the CPU kernel set in use
_reference = {}         # kernel name -> reference function
_cpu = {}               # kernel name -> the active set's function for float32/float64
_gpu_kernels = None     # kernel name -> function for GPU arrays, chosen at the first one


def available():
    return sorted(OVERLAYS)


def _collect(modules):
    """{module name: kernel names} -> {kernel name: function}, importing the modules."""
    found = {}
    for module_name, names in modules.items():
        module = importlib.import_module(module_name)
        missing = [name for name in names if not hasattr(module, name)]
        if missing:
            raise ImportError(f"{module_name} lacks the kernels {missing} it is listed for")
        found.update((name, getattr(module, name)) for name in names)
    return found


def set_kernels(name):
    """Select the kernel set used by every op from now on; returns the previous one."""
    global active, _cpu
    if name not in OVERLAYS:
        raise ValueError(f"unknown kernel set {name!r}; available: {available()}")
    _cpu = {**_reference, **_collect(OVERLAYS[name])}
    previous, active = active, name
    return previous


def gpu_kernels():
    """The kernels GPU arrays go to: the references, with the numba.cuda ones
    laid over them where a probe kernel compiles, launches and computes right
    (``kernels/cuda_probe.py``), and the fused CUDA C ones over those where
    they do (``fused_cupy.why_not``); one warning for each layer that cannot
    run, saying why."""
    global _gpu_kernels
    if _gpu_kernels is None:
        chosen = dict(_reference)
        why = cuda_probe.why_not()
        if why is None:
            try:
                chosen.update(_collect(GPU_OVERLAYS))
            except Exception as exc:     # the probe passed, a kernel module did not import
                why = f"{type(exc).__name__}: {exc}"
        if why is not None:
            warnings.warn(f"the numba.cuda kernels cannot run here ({why}); convolution "
                          "and pooling run the NumPy reference kernels on the GPU instead, "
                          "which is slower", stacklevel=4)
        if arrays.cupy is not None:     # else no GPU arrays for them (Numba's CUDA simulator)
            why = fused_cupy.why_not()
            if why is None:
                chosen.update(_collect(FUSED_OVERLAYS))
            else:
                warnings.warn(f"the fused CUDA C kernels cannot run here ({why}); ReLU, the "
                              "sigmoid, batch norm and the optimizers' steps run slower "
                              "kernels on the GPU instead", stacklevel=4)
        _gpu_kernels = chosen
    return _gpu_kernels


def numba_cuda_works():
    """Whether the numba.cuda kernels can run here: a probe kernel compiled,
    launched and computed the right result (``kernels/cuda_probe.py``)."""
    return cuda_probe.why_not() is None


# ---------------------------------------------------------------- the rule
def _implementation(name, array):
    """The function that runs kernel ``name`` when ``array`` is its first
    argument: set -> device -> dtype (see the module docstring).  Called on
    every kernel call, so it is kept to a few tests and one dict lookup.
    ``arrays.cupy`` is read on each call: it is None without CuPy (and the
    tests put a fake there)."""
    cupy = arrays.cupy
    if cupy is not None and isinstance(array, cupy.ndarray):
        return gpu_kernels()[name]
    if isinstance(array, np.ndarray) and array.dtype in COMPILED_DTYPES:
        return _cpu[name]
    return _reference[name]     # other dtypes; a list or a scalar: the reference converts it


def which(name, array):
    """The function ``kernels.<name>(array, ...)`` would run now, by its full
    name: ``which("col2im", col)`` -> ``"kernels.conv_numba.col2im"``."""
    if name not in _reference:
        raise ValueError(f"kernels.which: unknown kernel {name!r}; kernels: {list(KERNELS)}")
    function = _implementation(name, array)
    return f"{function.__module__}.{function.__name__}"


# ---------------------------------------------------------------- the kernels
# One function per kernel, with its reference's signature: what it computes
# is documented there (named in each docstring), how it is chosen above.
def im2col(x, kernel_size, stride, padding, dilation, merge_batch=False):
    """x (N, C, H, W) -> columns (N, C·KH·KW, OH·OW), or (C·KH·KW, N·OH·OW)
    with ``merge_batch`` (``conv_numpy.im2col``)."""
    return _implementation("im2col", x)(x, kernel_size, stride, padding, dilation, merge_batch)


def col2im(col, x_shape, kernel_size, stride, padding, dilation, merge_batch=False):
    """The adjoint of ``im2col``: columns -> x (N, C, H, W), overlapping
    windows summed (``conv_numpy.col2im``)."""
    return _implementation("col2im", col)(col, x_shape, kernel_size, stride, padding,
                                          dilation, merge_batch)


def winograd_weight(W, m=2):
    """W (O, C, 3, 3) -> U = G W Gᵀ (α, α, O, C), α = m + 2, for F(m×m, 3×3)
    (``winograd_numpy.winograd_weight``)."""
    return _implementation("winograd_weight", W)(W, m)


def winograd_weight_backward(gU):
    """gU (α, α, O, C) -> gW = Gᵀ gU G (O, C, 3, 3)
    (``winograd_numpy.winograd_weight_backward``)."""
    return _implementation("winograd_weight_backward", gU)(gU)


def winograd_input(x, padding, tiles, m=2):
    """x (n, C, H, W) -> V = Bᵀ d B per α×α tile d (α, α, C, n, TH, TW)
    (``winograd_numpy.winograd_input``)."""
    return _implementation("winograd_input", x)(x, padding, tiles, m)


def winograd_input_backward(gV, x_shape, padding, out=None):
    """gV (α, α, C, n, TH, TW) -> gx (n, C, H, W), overlapping tiles summed
    (``winograd_numpy.winograd_input_backward``)."""
    return _implementation("winograd_input_backward", gV)(gV, x_shape, padding, out)


def winograd_output(M, out_hw, out=None):
    """M (α, α, O, n, TH, TW) -> y = Aᵀ M A per tile (n, O, OH, OW)
    (``winograd_numpy.winograd_output``)."""
    return _implementation("winograd_output", M)(M, out_hw, out)


def winograd_output_backward(gy, m=2):
    """gy (n, O, OH, OW) -> gM = A gy Aᵀ per m×m block (α, α, O, n, TH, TW)
    (``winograd_numpy.winograd_output_backward``)."""
    return _implementation("winograd_output_backward", gy)(gy, m)


def conv_direct_forward(x, W, stride, padding, dilation, b=None):
    """x (N, C, H, W), W (O, C, KH, KW), b (O,) or None -> y (N, O, OH, OW), each
    output summed directly, then + b (``conv_direct_numpy.conv_direct_forward``)."""
    return _implementation("conv_direct_forward", x)(x, W, stride, padding, dilation, b)


def conv_direct_backward_input(gy, W, x_shape, stride, padding, dilation):
    """gy (N, O, OH, OW), W -> gx (N, C, H, W)
    (``conv_direct_numpy.conv_direct_backward_input``)."""
    return _implementation("conv_direct_backward_input", gy)(gy, W, x_shape, stride, padding,
                                                             dilation)


def conv_direct_backward_weight(gy, x, kernel_size, stride, padding, dilation, with_bias=False):
    """gy (N, O, OH, OW), x (N, C, H, W) -> gW (O, C, KH, KW), or with
    ``with_bias`` (gW, gb = Σ gy per channel)
    (``conv_direct_numpy.conv_direct_backward_weight``)."""
    return _implementation("conv_direct_backward_weight", gy)(gy, x, kernel_size, stride,
                                                              padding, dilation, with_bias)


def maxpool2d_forward(x, kernel_size, stride, padding, ceil_mode=False, dilation=(1, 1)):
    """x (N, C, H, W) -> (y, argmax) (N, C, OH, OW) (``pool_numpy.maxpool2d_forward``)."""
    return _implementation("maxpool2d_forward", x)(x, kernel_size, stride, padding, ceil_mode,
                                                   dilation)


def maxpool2d_backward(gy, argmax, x_shape, kernel_size, stride, padding, dilation=(1, 1)):
    """gy, argmax (N, C, OH, OW) -> gx (N, C, H, W) (``pool_numpy.maxpool2d_backward``)."""
    return _implementation("maxpool2d_backward", gy)(gy, argmax, x_shape, kernel_size, stride,
                                                     padding, dilation)


def avgpool2d_forward(x, kernel_size, stride, padding, ceil_mode=False, count_include_pad=True,
                      divisor_override=None):
    """x (N, C, H, W) -> y (N, C, OH, OW) (``pool_numpy.avgpool2d_forward``)."""
    return _implementation("avgpool2d_forward", x)(x, kernel_size, stride, padding, ceil_mode,
                                                   count_include_pad, divisor_override)


def avgpool2d_backward(gy, x_shape, kernel_size, stride, padding, count_include_pad=True,
                       divisor_override=None):
    """gy (N, C, OH, OW) -> gx (N, C, H, W) (``pool_numpy.avgpool2d_backward``)."""
    return _implementation("avgpool2d_backward", gy)(gy, x_shape, kernel_size, stride, padding,
                                                     count_include_pad, divisor_override)


def adaptive_avgpool2d_forward(x, output_size):
    """x (N, C, H, W) -> y (N, C, OH, OW), the mean over each bin
    (``pool_numpy.adaptive_avgpool2d_forward``)."""
    return _implementation("adaptive_avgpool2d_forward", x)(x, output_size)


def adaptive_avgpool2d_backward(gy, x_shape):
    """gy (N, C, OH, OW) -> gx (N, C, H, W) (``pool_numpy.adaptive_avgpool2d_backward``)."""
    return _implementation("adaptive_avgpool2d_backward", gy)(gy, x_shape)


def adaptive_maxpool2d_forward(x, output_size):
    """x (N, C, H, W) -> (y, indices) (N, C, OH, OW), the max over each bin
    (``pool_numpy.adaptive_maxpool2d_forward``)."""
    return _implementation("adaptive_maxpool2d_forward", x)(x, output_size)


def adaptive_maxpool2d_backward(gy, indices, x_shape):
    """gy, indices (N, C, OH, OW) -> gx (N, C, H, W)
    (``pool_numpy.adaptive_maxpool2d_backward``)."""
    return _implementation("adaptive_maxpool2d_backward", gy)(gy, indices, x_shape)


def batchnorm_forward_train(x, gamma, beta, eps):
    """x (N, C, ...) -> (y, mean, var, inv_std) with batch statistics
    (``bn_numpy.batchnorm_forward_train``)."""
    return _implementation("batchnorm_forward_train", x)(x, gamma, beta, eps)


def batchnorm_backward(gy, x, mean, inv_std, scale, overwrite_gy=False):
    """gy, x (N, C, ...) and the forward's mean, inv_std (C,) -> (gx or None,
    dgamma, dbeta) (``bn_numpy.batchnorm_backward``); with ``overwrite_gy`` gx
    may be written over gy."""
    return _implementation("batchnorm_backward", gy)(gy, x, mean, inv_std, scale,
                                                     overwrite_gy)


def batchnorm_forward_eval(x, scale, shift):
    """x (N, C, ...), scale, shift (C,) -> y = x·scale + shift per channel
    (``bn_numpy.batchnorm_forward_eval``)."""
    return _implementation("batchnorm_forward_eval", x)(x, scale, shift)


def relu_forward(x):
    """y = max(x, 0) (``elementwise_numpy.relu_forward``)."""
    return _implementation("relu_forward", x)(x)


def relu_backward(gy, y, overwrite_gy=False):
    """gx = 0 where y <= 0, else gy (``elementwise_numpy.relu_backward``);
    with ``overwrite_gy`` gx may be written over gy (see there)."""
    return _implementation("relu_backward", gy)(gy, y, overwrite_gy)


def sigmoid_forward(x):
    """y = σ(x) = ½ tanh(x/2) + ½ (``elementwise_numpy.sigmoid_forward``)."""
    return _implementation("sigmoid_forward", x)(x)


def sigmoid_backward(gy, y, overwrite_gy=False):
    """gx = gy·y·(1 - y) (``elementwise_numpy.sigmoid_backward``); with
    ``overwrite_gy`` gx may be written over gy."""
    return _implementation("sigmoid_backward", gy)(gy, y, overwrite_gy)


def sgd_update(param, grad, momentum_buffer, lr, momentum, dampening, weight_decay, nesterov):
    """One ``torch.optim.SGD`` step on ``param``, in place -> the momentum
    buffer (``elementwise_numpy.sgd_update``)."""
    return _implementation("sgd_update", param)(param, grad, momentum_buffer, lr, momentum,
                                                dampening, weight_decay, nesterov)


def sgd_update_multi(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay,
                     nesterov):
    """``sgd_update`` on every parameter of a list, one launch for all on the GPU -> the
    momentum buffers (``elementwise_numpy.sgd_update_multi``); chosen by ``params[0]``."""
    return _implementation("sgd_update_multi", params[0])(
        params, grads, momentum_buffers, lr, momentum, dampening, weight_decay, nesterov)


def adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps,
                weight_decay, amsgrad, decoupled_weight_decay):
    """One ``torch.optim.Adam``/``AdamW`` step on ``param`` and its moments, in place
    (``elementwise_numpy.adam_update``)."""
    return _implementation("adam_update", param)(
        param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps,
        weight_decay, amsgrad, decoupled_weight_decay)


def adam_update_multi(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1,
                      beta2, eps, weight_decay, amsgrad, decoupled_weight_decay):
    """``adam_update`` on every parameter of a list, one launch for all on the GPU
    (``elementwise_numpy.adam_update_multi``); chosen by ``params[0]``."""
    return _implementation("adam_update_multi", params[0])(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps,
        weight_decay, amsgrad, decoupled_weight_decay)


def matmul(a, b, out=None):
    """a (..., M, K) @ b (..., K, N) over stacks of matrices, broadcast as
    NumPy's ``matmul`` (``shares_numpy.matmul``)."""
    return _implementation("matmul", a)(a, b, out)


def matmuls(pairs):
    """``[matmul(a, b) for a, b in pairs]`` for products that do not depend on
    each other (``shares_numpy.matmuls``); chosen by the first pair's a."""
    pairs = tuple(pairs)
    return _implementation("matmuls", pairs[0][0])(pairs) if pairs else []


def map_chunks(x, work, chunks, combine=None):
    """``[work(chunk) for chunk in chunks]`` over the chunks of batch ``x``
    (index slices), in the chunks' order; with ``combine``, the results folded
    into one in that order instead (``shares_numpy.map_chunks``)."""
    return _implementation("map_chunks", x)(x, work, chunks, combine)


def concatenate(arrays, axis=0):
    """The arrays joined along ``axis``, as ``torch.cat`` (``shares_numpy.concatenate``)."""
    arrays = tuple(arrays)
    return _implementation("concatenate", arrays[0])(arrays, axis)


def transpose(a):
    """aᵀ of a 2-D array as a new C-ordered array (``shares_numpy.transpose``)."""
    return _implementation("transpose", a)(a)


# ---------------------------------------------------------------- counting
@contextlib.contextmanager
def counting():
    """Count the kernel calls made inside the block::

        with kernels.counting() as calls:
            train_step()
        calls  # Counter({'relu_forward': 17, 'im2col': 12, ...})

    Each kernel function of this module is replaced by a counting wrapper for
    the duration of the block and put back after it, so nothing is counted,
    or paid, outside one.  The ops look the kernels up on this module at
    every call (``kernels.im2col(...)``), which is what lets the wrappers see
    them.  On a GPU each call is at least one kernel launch (more where a
    reference kernel is several CuPy expressions); the CuPy expressions the ops
    run themselves are not kernel-interface calls and are not counted."""
    calls = collections.Counter()
    module = sys.modules[__name__]
    originals = {name: getattr(module, name) for name in KERNELS}

    def counted(name, function):
        @functools.wraps(function)
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return call
    for name, function in originals.items():
        setattr(module, name, counted(name, function))
    try:
        yield calls
    finally:
        for name, function in originals.items():
            setattr(module, name, function)


_reference = _collect(REFERENCE)
set_kernels(os.environ.get("TINYGRAD_CNN_KERNELS", "numba"))
