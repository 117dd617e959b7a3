"""NumPy twins of the CUDA C kernels of ``kernels/fused_cupy.py``, for the strict fake CuPy.

``StrictCupy.RawModule(code=...).get_function(name)`` gives a ``TwinKernel``:
launched as CuPy launches a ``RawKernel`` -- ``kernel(grid, block, args)`` --
it checks every argument against the kernel's C signature, parsed from the
source (a ``real*`` must be a C-contiguous fake GPU array of the module's
dtype, a ``long long`` a ``numpy.int64``, an ``int`` a ``numpy.int32``, a
``real`` a NumPy scalar of the dtype: what CuPy would pass to the kernel
bit for bit, where a Python int or a float64 scalar would be read as garbage),
checks the launch geometry the kernel assumes, counts the launch, and runs the
twin: the kernel's arithmetic in NumPy, in its order and dtype.  The
multi-tensor kernels' twins read their tables of device addresses as the GPU
does: each address is turned back into an array over the same memory.

So the wrappers' dispatch, argument packing, tables and launch counts are
tested on the CPU; whether the CUDA C computes what its twin does only a GPU
can say (tests/gpu/test_gpu_fused.py).
"""
import collections
import ctypes
import re

import numpy as np

SIGNATURE = re.compile(r'extern "C" __global__ void (\w+)\(([^)]*)\)')
CTYPES = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}

launches = collections.Counter()     # kernel name -> launches, since the last clear()
# (strict_cupy.LAUNCHES counts them too, with every other kernel CuPy would launch)


def signatures(code):
    """{kernel name: [C parameter types]} of the extern "C" kernels of ``code``."""
    return {name: [" ".join(p.split()[:-1]) for p in params.split(",")]
            for name, params in SIGNATURE.findall(code)}


def real_dtype(code):
    return np.dtype({"float": np.float32, "double": np.float64}[
        re.search(r"typedef (\w+) real;", code).group(1)])


def _check_argument(kernel, position, ctype, value, real):
    """The value CuPy would pass for a parameter of C type ``ctype``, or a TypeError."""
    from tests.cupy_api.strict_cupy import StrictGpuArray
    where = f"{kernel} argument {position} ({ctype})"
    if ctype.endswith("*"):
        wanted = {"real": real, "long long": np.dtype(np.int64)}[
            ctype.replace("const ", "").rstrip("*").strip()]
        if not isinstance(value, StrictGpuArray):
            raise TypeError(f"{where}: expected a GPU array, got {type(value).__name__}")
        if value.dtype != wanted or not value.flags.c_contiguous:
            raise TypeError(f"{where}: expected a C-contiguous {wanted} array, got "
                            f"{value.dtype}, contiguous={value.flags.c_contiguous}")
        return value.view(np.ndarray).reshape(-1)
    wanted = {"real": real, "long long": np.dtype(np.int64), "int": np.dtype(np.int32)}[ctype]
    if not isinstance(value, np.generic) or value.dtype != wanted:
        raise TypeError(f"{where}: expected a numpy {wanted} scalar, got {value!r} "
                        f"({type(value).__name__})")
    return value


def _tensor(address, size, dtype):
    """The array of ``size`` ``dtype`` values at device (here: host) ``address``."""
    return np.ctypeslib.as_array((CTYPES[dtype] * int(size)).from_address(int(address)))


# ---------------------------------------------------------------- the twins
def relu_forward(x, y, n):
    y[:n] = np.where(x[:n] <= 0, x.dtype.type(0), x[:n])


def relu_backward(gy, y, gx, n):
    gx[:n] = np.where(y[:n] <= 0, gy.dtype.type(0), gy[:n])


def sigmoid_forward(x, y, n):
    y[:n] = np.tanh(x[:n] * x.dtype.type(0.5)) * x.dtype.type(0.5) + x.dtype.type(0.5)


def sigmoid_backward(gy, y, gx, n):
    v = y[:n]
    gx[:n] = (y.dtype.type(1) - v) * v * gy[:n]


def batchnorm_moments(x, mean, var, inv_std, N, C, L, eps):
    x3 = x[:N * C * L].reshape(N, C, L)
    mu = x3.sum(axis=(0, 2), dtype=np.float64) / (N * L)
    mean[:] = mu.astype(x.dtype)
    d = x3 - mean[None, :, None]
    var[:] = ((d * d).sum(axis=(0, 2), dtype=np.float64) / (N * L)).astype(x.dtype)
    inv_std[:] = x.dtype.type(1) / np.sqrt(var + eps)


def _channel(a, C, L, n):
    """(C,) -> per element of an (N, C, L) array of n elements."""
    return np.broadcast_to(a[None, :, None], (n // (C * L), C, L)).reshape(-1)


def _x_hat(x, mean, inv_std, C, L, n):
    """x̂ = (x - mean)·inv_std per element, as the kernels compute it again from x."""
    return (x[:n] - _channel(mean, C, L, n)) * _channel(inv_std, C, L, n)


def batchnorm_apply(x, mean, inv_std, gamma, beta, y, C, L, n):
    y[:n] = _channel(gamma, C, L, n) * _x_hat(x, mean, inv_std, C, L, n) \
        + _channel(beta, C, L, n)


def batchnorm_backward_sums(gy, x, mean, inv_std, dgamma, dbeta, N, C, L):
    n = N * C * L
    g3, h3 = gy[:n].reshape(N, C, L), _x_hat(x, mean, inv_std, C, L, n).reshape(N, C, L)
    dbeta[:] = g3.sum(axis=(0, 2), dtype=np.float64).astype(gy.dtype)
    dgamma[:] = (g3 * h3).sum(axis=(0, 2), dtype=np.float64).astype(gy.dtype)


def batchnorm_backward_dx(gy, x, mean, inv_std, scale, dgamma, dbeta, gx, m, C, L, n):
    gx[:n] = _channel(scale, C, L, n) * ((gy[:n] - _channel(dbeta / m, C, L, n))
                                         - _x_hat(x, mean, inv_std, C, L, n)
                                         * _channel(dgamma / m, C, L, n))


def _tensors(table, lists, count, dtype):
    """The ``lists`` address lists of a multi-tensor table as arrays, and the offsets."""
    offsets = table[lists * count: lists * count + count + 1]
    sizes = np.diff(offsets)
    assert offsets[0] == 0 and (sizes > 0).all(), f"bad offsets {offsets}"
    return [[_tensor(table[k * count + t], sizes[t], dtype) for t in range(count)]
            for k in range(lists)], offsets


def sgd_multi(table, count, total, lr, momentum, dampening_factor, weight_decay, has_momentum,
              has_weight_decay, nesterov):
    (params, grads, bufs), offsets = _tensors(table, 3, count, lr.dtype)
    assert offsets[-1] == total
    first_step = table[4 * count + 1: 5 * count + 1]
    for t in range(count):
        p, g, buf = params[t], grads[t], bufs[t]
        d = g.copy()
        if has_weight_decay:
            d = p * weight_decay + d
        if has_momentum:
            b = d if first_step[t] else buf * momentum + dampening_factor * d
            buf[:] = b
            d = b * momentum + d if nesterov else b
        p[:] = p - lr * d


def adam_multi(table, count, total, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
               weight_decay, decoupled, decay_factor, amsgrad):
    real = beta1.dtype
    (params, grads, exp_avgs, exp_avg_sqs, maxima), offsets = _tensors(table, 5, count, real)
    assert offsets[-1] == total
    scalars = table[6 * count + 1: 8 * count + 1].view(np.float64).reshape(count, 2)
    for t in range(count):
        p, g = params[t], grads[t]
        bias_correction2_sqrt, step_size = scalars[t].astype(real)
        pv, gv = p.copy(), g.copy()
        if decoupled:
            pv = pv * decay_factor
        elif weight_decay != 0:
            gv = gv + weight_decay * pv
        m = exp_avgs[t] * beta1 + one_minus_beta1 * gv
        v = exp_avg_sqs[t] * beta2 + (gv * gv) * one_minus_beta2
        exp_avgs[t][:], exp_avg_sqs[t][:] = m, v
        second = v
        if amsgrad:
            second = np.maximum(maxima[t], v)
            maxima[t][:] = second
        denom = np.sqrt(second) / bias_correction2_sqrt + eps
        p[:] = pv - m / denom * step_size


# kernels that assume one block per channel of THREADS threads: (grid argument, block)
PER_CHANNEL = {"batchnorm_moments": "C", "batchnorm_backward_sums": "C"}


class TwinKernel:
    """Stands for a ``cupy.RawKernel``: checks, counts and runs the twin of ``name``."""

    def __init__(self, name, parameters, real):
        self.name, self.parameters, self.real = name, parameters, real
        self.twin = globals()[name]

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None,
                 enable_cooperative_groups=False):
        from tests.cupy_api.strict_cupy import LAUNCHES, _run
        launches[self.name] += 1
        # one launch, whatever the twin does; the checks are the fake's, not the host's
        # time (CuPy's argument passing is Cython: microseconds).  A capture logs the
        # launch with its arguments and a replay runs it again (what a twin reaches
        # only through a table of addresses a capture cannot see: those kernels are not
        # launched while capturing, kernels/fused_cupy.py says why).
        with LAUNCHES.inside():
            _run(lambda *a: self.twin(*self._checked(grid, block, a)), args, {}, self.name)

    def _checked(self, grid, block, args):
        """The arguments as the kernel would read them, or a TypeError/ValueError."""
        from kernels.fused_cupy import MAX_BLOCKS, THREADS
        if not (isinstance(grid, tuple) and isinstance(block, tuple) and isinstance(args, tuple)):
            raise TypeError(f"{self.name}: grid, block and args must be tuples, as CuPy's")
        if len(args) != len(self.parameters):
            raise TypeError(f"{self.name} takes {len(self.parameters)} arguments "
                            f"({self.parameters}), got {len(args)}")
        values = [_check_argument(self.name, i, ctype, value, self.real)
                  for i, (ctype, value) in enumerate(zip(self.parameters, args))]
        if block != (THREADS,) or not 1 <= grid[0] <= MAX_BLOCKS or len(grid) != 1:
            raise ValueError(f"{self.name}: launch geometry grid={grid}, block={block}")
        if self.name in PER_CHANNEL:
            channels = values[self.parameters.index("long long") + 1]   # N, C, L: C
            if grid[0] != channels:
                raise ValueError(f"{self.name}: one block per channel, got grid {grid} "
                                 f"for {channels} channels")
        return values


class TwinModule:
    """Stands for a ``cupy.RawModule`` built from ``code``."""

    def __init__(self, code=None, *, path=None, options=(), backend="nvrtc",
                 translate_cucomplex=False, enable_cooperative_groups=False,
                 name_expressions=None, jitify=False):
        self.code, self.options = code, options
        self.signatures, self.real = signatures(code), real_dtype(code)

    def get_function(self, name):
        if name not in self.signatures:
            raise AttributeError(f"the module has no kernel {name!r}")  # CuPy: CUDADriverError
        return TwinKernel(name, self.signatures[name], self.real)
