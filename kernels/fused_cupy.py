"""Fused GPU kernels for CuPy arrays: CUDA C compiled by NVRTC, launched as CuPy ``RawKernel``s.

What runs here, one launch each (the reference's CuPy expressions take the
number in brackets):

- ``relu_forward`` (1), ``relu_backward`` (2: a mask, then ``where``),
  ``sigmoid_forward`` (4), ``sigmoid_backward`` (3);
- ``batchnorm_forward_train``: the per-channel statistics in one launch (one
  block per channel, mean then variance, float64 sums), then x̂ and y
  together in one elementwise launch: 2 (the reference: about 10);
- ``batchnorm_backward``: both per-channel sums in one launch, dx in one: 2
  (the reference: about 9);
- ``sgd_update`` (one parameter) and ``sgd_update_multi`` / ``adam_update_multi``:
  every parameter of a group in ONE launch, as PyTorch's fused optimizers
  (``multi_tensor_apply``): the kernel gets a device table of the tensors'
  addresses and their offsets in one virtual flat index, and each thread
  finds its tensor by binary search over the offsets.  The reference loops
  over the parameters (4-9 CuPy expressions each: ~62 parameters make a
  ResNet-18 step's update ~400 launches).

Why CuPy ``RawKernel`` and not numba.cuda (the other candidate, issue 12)
--------------------------------------------------------------------------
Launch cost, which is what a step with hundreds of small kernels pays.  On
the H200 trial each numba.cuda launch spent a large fraction of a millisecond
of host time preparing its arguments (``typeof`` and a
DLPack/``__cuda_array_interface__`` wrap per array argument, then the
dispatcher's type matching; issue 12 and benchmarks/results.md have the
figures).  A ``RawKernel`` launch passes each ``cupy.ndarray`` as its data
pointer and each NumPy scalar by value, through Cython, straight to
``cuLaunchKernel``: microseconds.  (``ElementwiseKernel`` adds broadcasting
and type matching on top, and its generated code needs CuPy's headers, so it cannot be compiled without CuPy; a ``RawKernel`` source
is plain CUDA C that NVRTC alone compiles, which ``tests/kernels/test_fused_cupy_compile.py``
does on any machine with the ``nvidia-cuda-nvrtc`` wheel.)  CuPy itself needs
NVRTC for every elementwise op, so where CuPy works these kernels can be built;
numba.cuda is a second, version-fragile stack (numba-cuda 0.30.4 did not
import under NumPy 2.5).  The figure that checks this decision on the first
GPU: ``python -m benchmarks.gpu_launch`` (host time per launch of a RawKernel,
an ElementwiseKernel, a CuPy ufunc and a numba.cuda kernel), a stage of
``python -m benchmarks.gpu --verify``.  Never measured yet: no GPU so far.

Why a table of addresses, not one flat buffer for all parameters
-----------------------------------------------------------------
A flat buffer (every parameter a view of one array, every gradient a view of
another) would make the step one plain elementwise kernel, but autograd makes
each gradient a fresh array, and ``Module.to``, ``load_state_dict`` and users
replace ``p.data``: keeping everything in one buffer would need the engine to
copy the gradients into it (a launch per parameter, what this saves) or to
allocate every gradient inside it.  The table reads the tensors where they are,
as PyTorch's ``multi_tensor_apply`` does; it is copied to the GPU (one small
host-to-device copy) only when an address changed since the last step
(``_Table``).  Only the state this module creates itself (the momentum buffers)
is one flat allocation.  While a CUDA graph is being captured the multi-tensor
steps run the reference loop instead: a new table would be a host-to-device
copy inside the capture, which CUDA refuses (a replayed graph would re-read a
staging buffer), and a graph's replay is one launch however many it holds.  (CuPy can also pass a struct by value, as PyTorch
passes its tensor lists, but a kernel's arguments are limited to 4 KB, which
Adam's five lists for ResNet-18's 76 parameters exceed.)

Exactness
---------
Compiled with ``--fmad=false``: NVRTC would otherwise contract ``a·b + c``
into one fused multiply-add, which rounds once where the NumPy reference
rounds twice.  Division and square root are IEEE-rounded (NVRTC's defaults,
``-prec-div=true -prec-sqrt=true``), no flush-to-zero.  Every kernel does the
reference's float operations in its order and dtype, so elementwise results
are bit for bit the reference's (but ``sigmoid_forward``: CUDA's ``tanh`` is
within 2 ulp, not NumPy's, so y agrees to a few ulp); per-channel sums accumulate in float64 as the
reference's do, but in another order (threads, then a tree), so they agree
to float64 rounding (float32 results almost always bit for bit).

Inputs: float32 or float64 arrays of one dtype; anything else goes to the
reference.  Inputs that are only read may have any layout (a non-contiguous
one is copied first: one more launch); the arrays an update writes in place
must be C-contiguous, else the reference updates them.

``why_not()`` builds both modules and launches one kernel, as
``cuda_probe.py`` does for numba.cuda: ``kernels.gpu_kernels()`` uses these
kernels only where that works, with one warning otherwise.
"""
import math

import numpy as np

from . import arrays, bn_numpy, elementwise_numpy

THREADS = 256               # threads per block: BN's block reduction assumes this size
MAX_BLOCKS = 65536          # elementwise grids are capped; the loops stride over the rest
OPTIONS = ("--std=c++11", "--fmad=false")
DTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

SOURCE = r"""
// real is float or double: the module is compiled once per dtype.
typedef __REAL__ real;
#define THREADS __THREADS__

__device__ long long first_index() { return (long long)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ long long grid_stride() { return (long long)gridDim.x * blockDim.x; }
__device__ float real_sqrt(float v) { return sqrtf(v); }
__device__ double real_sqrt(double v) { return sqrt(v); }
__device__ float real_tanh(float v) { return tanhf(v); }
__device__ double real_tanh(double v) { return tanh(v); }

// ------------------------------------------------------------ elementwise
extern "C" __global__ void relu_forward(const real* x, real* y, long long n) {
    // 0 where x <= 0, else x: NaN stays NaN, -0.0 becomes 0.0 (as np.maximum(x, 0))
    for (long long i = first_index(); i < n; i += grid_stride()) {
        real v = x[i];
        y[i] = v <= 0 ? (real)0 : v;
    }
}

extern "C" __global__ void relu_backward(const real* gy, const real* y, real* gx, long long n) {
    // PyTorch's threshold_backward: 0 where y <= 0, else gy (a NaN y passes gy on)
    for (long long i = first_index(); i < n; i += grid_stride())
        gx[i] = y[i] <= 0 ? (real)0 : gy[i];
}

extern "C" __global__ void sigmoid_forward(const real* x, real* y, long long n) {
    // 1/2 tanh(x/2) + 1/2, the reference's operations (CUDA's tanh is within 2 ulp of
    // the correctly rounded value, so y agrees with NumPy's to a few ulp, not bit for bit)
    for (long long i = first_index(); i < n; i += grid_stride())
        y[i] = real_tanh(x[i] * (real)0.5) * (real)0.5 + (real)0.5;
}

extern "C" __global__ void sigmoid_backward(const real* gy, const real* y, real* gx,
                                            long long n) {
    for (long long i = first_index(); i < n; i += grid_stride()) {
        real v = y[i];
        gx[i] = ((real)1 - v) * v * gy[i];
    }
}

// ------------------------------------------------------------ batch norm, x seen as (N, C, L)
__device__ double block_sum(double* shared, double value) {
    // the sum of value over the block's THREADS threads, returned to every thread
    int t = threadIdx.x;
    shared[t] = value;
    __syncthreads();
    for (int step = THREADS / 2; step > 0; step /= 2) {
        if (t < step) shared[t] += shared[t + step];
        __syncthreads();
    }
    double total = shared[0];
    __syncthreads();               // all have read it before shared is written again
    return total;
}

extern "C" __global__ void batchnorm_moments(const real* x, real* mean, real* var,
                                             real* inv_std, long long N, long long C,
                                             long long L, real eps) {
    // block c: channel c's mean, then the mean of squared deviations (two passes:
    // E[x^2] - mean^2 cancels), summed in double, each cast to real as the reference does
    __shared__ double shared[THREADS];
    long long c = blockIdx.x, m = N * L;
    double partial = 0;
    for (long long k = threadIdx.x; k < m; k += THREADS)
        partial += (double)x[((k / L) * C + c) * L + k % L];
    real mu = (real)(block_sum(shared, partial) / (double)m);
    partial = 0;
    for (long long k = threadIdx.x; k < m; k += THREADS) {
        real d = x[((k / L) * C + c) * L + k % L] - mu;
        partial += (double)(d * d);
    }
    real sigma2 = (real)(block_sum(shared, partial) / (double)m);
    if (threadIdx.x == 0) {
        mean[c] = mu;
        var[c] = sigma2;
        inv_std[c] = (real)1 / real_sqrt(sigma2 + eps);
    }
}

extern "C" __global__ void batchnorm_apply(const real* x, const real* mean,
                                           const real* inv_std, const real* gamma,
                                           const real* beta, real* y,
                                           long long C, long long L, long long n) {
    for (long long i = first_index(); i < n; i += grid_stride()) {
        long long c = (i / L) % C;
        real h = (x[i] - mean[c]) * inv_std[c];
        y[i] = gamma[c] * h + beta[c];
    }
}

extern "C" __global__ void batchnorm_backward_sums(const real* gy, const real* x,
                                                   const real* mean, const real* inv_std,
                                                   real* dgamma, real* dbeta, long long N,
                                                   long long C, long long L) {
    // block c: dbeta = sum gy, dgamma = sum gy*x_hat over channel c, in double,
    // x_hat = (x - mean)*inv_std computed again as the forward did
    __shared__ double shared[THREADS];
    long long c = blockIdx.x, m = N * L;
    double sum_gy = 0, sum_gy_xhat = 0;
    for (long long k = threadIdx.x; k < m; k += THREADS) {
        long long i = ((k / L) * C + c) * L + k % L;
        real g = gy[i];
        real h = (x[i] - mean[c]) * inv_std[c];
        sum_gy += (double)g;
        sum_gy_xhat += (double)(g * h);
    }
    real beta_sum = (real)block_sum(shared, sum_gy);
    real gamma_sum = (real)block_sum(shared, sum_gy_xhat);
    if (threadIdx.x == 0) {
        dbeta[c] = beta_sum;
        dgamma[c] = gamma_sum;
    }
}

extern "C" __global__ void batchnorm_backward_dx(const real* gy, const real* x,
                                                 const real* mean, const real* inv_std,
                                                 const real* scale, const real* dgamma,
                                                 const real* dbeta, real* gx, real m,
                                                 long long C, long long L, long long n) {
    // dx = scale*(dy - mean(dy) - x_hat*mean(dy*x_hat)), the reference's order
    for (long long i = first_index(); i < n; i += grid_stride()) {
        long long c = (i / L) % C;
        real h = (x[i] - mean[c]) * inv_std[c];
        gx[i] = scale[c] * ((gy[i] - dbeta[c] / m) - h * (dgamma[c] / m));
    }
}

// ------------------------------------------------------------ optimizers, all tensors at once
// table: count addresses per tensor list, then offsets[count + 1] (each tensor's start in
// one virtual flat index over all of them), then per-tensor entries (see each kernel).
__device__ int tensor_of(const long long* offsets, int count, long long i) {
    // the last t with offsets[t] <= i (tensors are non-empty, so it is i's tensor)
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (offsets[mid] <= i) lo = mid; else hi = mid - 1;
    }
    return lo;
}

extern "C" __global__ void sgd_multi(const long long* table, int count, long long total,
                                     real lr, real momentum, real dampening_factor,
                                     real weight_decay, int has_momentum,
                                     int has_weight_decay, int nesterov) {
    // table: params, grads, momentum buffers (count each), offsets, first_step flags
    const long long* offsets = table + 3 * count;
    const long long* first_step = offsets + count + 1;
    for (long long i = first_index(); i < total; i += grid_stride()) {
        int t = tensor_of(offsets, count, i);
        long long j = i - offsets[t];
        real* p = (real*)table[t];
        const real* g = (const real*)table[count + t];
        real* buf = (real*)table[2 * count + t];
        real d = g[j];
        if (has_weight_decay) d = p[j] * weight_decay + d;
        if (has_momentum) {
            real b = first_step[t] ? d : buf[j] * momentum + dampening_factor * d;
            buf[j] = b;
            d = nesterov ? b * momentum + d : b;
        }
        p[j] = p[j] - lr * d;
    }
}

extern "C" __global__ void adam_multi(const long long* table, int count, long long total,
                                      real beta1, real one_minus_beta1, real beta2,
                                      real one_minus_beta2, real eps, real weight_decay,
                                      int decoupled, real decay_factor, int amsgrad) {
    // table: params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq (count each), offsets, then
    // per tensor two doubles (bit patterns): sqrt(1 - beta2^t), lr / (1 - beta1^t), which
    // differ where the tensors' step counts t do; decay_factor = 1 - lr*weight_decay (AdamW)
    const long long* offsets = table + 5 * count;
    const double* scalars = (const double*)(offsets + count + 1);
    for (long long i = first_index(); i < total; i += grid_stride()) {
        int t = tensor_of(offsets, count, i);
        long long j = i - offsets[t];
        real* p = (real*)table[t];
        const real* g = (const real*)table[count + t];
        real* exp_avg = (real*)table[2 * count + t];
        real* exp_avg_sq = (real*)table[3 * count + t];
        real* max_exp_avg_sq = (real*)table[4 * count + t];
        real bias_correction2_sqrt = (real)scalars[2 * t];
        real step_size = (real)scalars[2 * t + 1];
        real pv = p[j], gv = g[j];
        if (decoupled) pv = pv * decay_factor;
        else if (weight_decay != 0) gv = gv + weight_decay * pv;
        real m = exp_avg[j] * beta1 + one_minus_beta1 * gv;
        real v = exp_avg_sq[j] * beta2 + (gv * gv) * one_minus_beta2;
        exp_avg[j] = m;
        exp_avg_sq[j] = v;
        real second = v;
        if (amsgrad) {             // np.maximum: a NaN on either side wins
            real old = max_exp_avg_sq[j];
            second = (old > v || old != old) ? old : v;
            max_exp_avg_sq[j] = second;
        }
        real denom = real_sqrt(second) / bias_correction2_sqrt + eps;
        p[j] = pv - m / denom * step_size;
    }
}
"""

FUNCTIONS = ("relu_forward", "relu_backward", "sigmoid_forward", "sigmoid_backward",
             "batchnorm_moments", "batchnorm_apply", "batchnorm_backward_sums",
             "batchnorm_backward_dx", "sgd_multi", "adam_multi")


def source(dtype):
    """The CUDA C of every kernel, for arrays of ``dtype`` (float32 or float64)."""
    return (SOURCE.replace("__REAL__", DTYPES[np.dtype(dtype)])
            .replace("__THREADS__", str(THREADS)))


# ---------------------------------------------------------------- compiling and launching
_modules = {}               # (id(cupy), dtype) -> (cupy, {name: RawKernel})


def _functions(dtype):
    """The compiled kernels for ``dtype``: built by NVRTC at the first call, then cached
    (CuPy also keeps the binary on disk, so a later process loads it)."""
    cupy = arrays.cupy
    key = (id(cupy), np.dtype(dtype))
    if key not in _modules:
        module = cupy.RawModule(code=source(dtype), options=OPTIONS)
        _modules[key] = (cupy, {name: module.get_function(name) for name in FUNCTIONS})
    return _modules[key][1]


def _grid(n):
    return (min(-(-n // THREADS), MAX_BLOCKS),)


def _launch_elementwise(name, n, *args):
    """Launch ``name`` over n elements (nothing to do for n = 0: an empty grid is an error)."""
    if n:
        dtype = args[0].dtype
        _functions(dtype)[name](_grid(n), (THREADS,), args + (np.int64(n),))


def _fusable(*inputs):
    """GPU arrays of one dtype, float32 or float64: what these kernels take."""
    cupy = arrays.cupy
    first = inputs[0]
    return all(isinstance(a, cupy.ndarray) and a.dtype == first.dtype for a in inputs) \
        and first.dtype in DTYPES


def _contiguous(a):
    return arrays.cupy.ascontiguousarray(a)


# ---------------------------------------------------------------- the elementwise kernels
def _activation_kernel(name, x, reference):
    if not _fusable(x):
        return reference(x)
    y = arrays.cupy.empty(x.shape, dtype=x.dtype)
    _launch_elementwise(name, x.size, _contiguous(x), y)
    return y


def relu_forward(x):
    """``elementwise_numpy.relu_forward`` in one launch -> y = max(x, 0)."""
    return _activation_kernel("relu_forward", x, elementwise_numpy.relu_forward)


def sigmoid_forward(x):
    """``elementwise_numpy.sigmoid_forward`` in one launch -> y = σ(x) (to a few ulp)."""
    return _activation_kernel("sigmoid_forward", x, elementwise_numpy.sigmoid_forward)


def _gradient_kernel(name, gy, y, reference):
    if not (_fusable(gy, y) and gy.shape == y.shape):
        return reference(gy, y)
    gx = arrays.cupy.empty(y.shape, dtype=y.dtype)
    _launch_elementwise(name, y.size, _contiguous(gy), _contiguous(y), gx)
    return gx


def relu_backward(gy, y, overwrite_gy=False):
    """``elementwise_numpy.relu_backward`` in one launch -> gx = 0 where y <= 0, else gy
    (a new array: ``overwrite_gy`` is not taken up on the GPU, never measured there)."""
    return _gradient_kernel("relu_backward", gy, y, elementwise_numpy.relu_backward)


def sigmoid_backward(gy, y, overwrite_gy=False):
    """``elementwise_numpy.sigmoid_backward`` in one launch -> gx = gy·y·(1 - y)
    (a new array, as relu_backward)."""
    return _gradient_kernel("sigmoid_backward", gy, y, elementwise_numpy.sigmoid_backward)


# ---------------------------------------------------------------- batch norm
def _ncl(shape):
    """(N, C, L): L = the product of the axes after the channel axis (1 for (N, C))."""
    return shape[0], shape[1], math.prod(shape[2:])


def batchnorm_forward_train(x, gamma, beta, eps):
    """``bn_numpy.batchnorm_forward_train`` in two launches -> (y, mean, var, inv_std)."""
    if not (_fusable(x, gamma, beta) and x.shape[0] * math.prod(x.shape[2:]) > 0):
        return bn_numpy.batchnorm_forward_train(x, gamma, beta, eps)
    cupy, real = arrays.cupy, x.dtype.type
    N, C, L = _ncl(x.shape)
    x = _contiguous(x)
    mean, var, inv_std = (cupy.empty(C, dtype=x.dtype) for _ in range(3))
    y = cupy.empty(x.shape, dtype=x.dtype)
    kernels = _functions(x.dtype)
    kernels["batchnorm_moments"]((C,), (THREADS,), (x, mean, var, inv_std, np.int64(N),
                                                   np.int64(C), np.int64(L), real(eps)))
    _launch_elementwise("batchnorm_apply", x.size, x, mean, inv_std, _contiguous(gamma),
                        _contiguous(beta), y, np.int64(C), np.int64(L))
    return y, mean, var, inv_std


def batchnorm_backward(gy, x, mean, inv_std, scale, overwrite_gy=False):
    """``bn_numpy.batchnorm_backward`` in two launches (one without dx) -> (gx, dgamma, dbeta)
    (gx a new array, as relu_backward)."""
    inputs = (gy, x, mean, inv_std) + (() if scale is None else (scale,))
    if not (_fusable(*inputs) and gy.shape == x.shape
            and gy.shape[0] * math.prod(gy.shape[2:]) > 0):
        return bn_numpy.batchnorm_backward(gy, x, mean, inv_std, scale)
    cupy = arrays.cupy
    N, C, L = _ncl(gy.shape)
    gy, x, mean, inv_std = (_contiguous(a) for a in (gy, x, mean, inv_std))
    dgamma, dbeta = cupy.empty(C, dtype=gy.dtype), cupy.empty(C, dtype=gy.dtype)
    kernels = _functions(gy.dtype)
    kernels["batchnorm_backward_sums"]((C,), (THREADS,), (gy, x, mean, inv_std, dgamma, dbeta,
                                                         np.int64(N), np.int64(C), np.int64(L)))
    if scale is None:
        return None, dgamma, dbeta
    gx = cupy.empty(gy.shape, dtype=gy.dtype)
    _launch_elementwise("batchnorm_backward_dx", gy.size, gy, x, mean, inv_std,
                        _contiguous(scale), dgamma, dbeta, gx, gy.dtype.type(N * L),
                        np.int64(C), np.int64(L))
    return gx, dgamma, dbeta


# ---------------------------------------------------------------- optimizers
class _Table:
    """The device copy of a multi-tensor kernel's table, copied again only when it changes.

    The addresses of the parameters and their state stay put from step to
    step, and CuPy's memory pool often hands the gradients the same blocks
    again, so most steps reuse the table on the device (no host-to-device
    copy): what a captured CUDA graph needs too."""

    def __init__(self):
        self.host = None
        self.device = None

    def __call__(self, host):
        if self.host is None or not np.array_equal(self.host, host):
            self.host, self.device = host, arrays.cupy.asarray(host)
        return self.device


_tables = {}                # kernel name -> _Table (one optimizer at a time is the usual case)


def _address(a):
    return a.data.ptr


def _groups_by_dtype(params):
    """Indices of the parameters the multi kernels take (non-empty, C-contiguous,
    float32/float64 GPU arrays), one list per dtype; and those they do not."""
    cupy = arrays.cupy
    by_dtype, rest = {}, []
    for i, p in enumerate(params):
        if (cupy is not None and isinstance(p, cupy.ndarray) and p.dtype in DTYPES
                and p.size and p.flags.c_contiguous):
            by_dtype.setdefault(p.dtype, []).append(i)
        else:
            rest.append(i)
    return by_dtype, rest


def _capturing():
    """Whether the current stream is capturing a CUDA graph (see the module docstring)."""
    return arrays.cupy.cuda.get_current_stream().is_capturing()


def _offsets(sizes):
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)


def sgd_update(param, grad, momentum_buffer, lr, momentum, dampening, weight_decay, nesterov):
    """``elementwise_numpy.sgd_update`` on one parameter, one launch -> the momentum buffer."""
    return sgd_update_multi([param], [grad], [momentum_buffer], lr, momentum, dampening,
                            weight_decay, nesterov)[0]


def sgd_update_multi(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay,
                     nesterov):
    """``elementwise_numpy.sgd_update_multi`` in one launch per dtype -> the momentum buffers.

    Buffers made on the first step are views of one new flat array (one
    allocation, not one per parameter)."""
    if _capturing():
        return elementwise_numpy.sgd_update_multi(params, grads, momentum_buffers, lr, momentum,
                                                  dampening, weight_decay, nesterov)
    cupy = arrays.cupy
    buffers = list(momentum_buffers)
    by_dtype, rest = _groups_by_dtype(params)
    has_momentum = momentum != 0
    for dtype, chosen in by_dtype.items():
        usable = [i for i in chosen if grads[i].dtype == dtype and grads[i].shape == params[i].shape
                  and (buffers[i] is None or buffers[i].flags.c_contiguous)]
        rest += [i for i in chosen if i not in usable]
        if not usable:
            continue
        grads_used = {i: _contiguous(grads[i]) for i in usable}
        sizes = [params[i].size for i in usable]
        first = [has_momentum and buffers[i] is None for i in usable]
        if has_momentum and any(first):
            fresh = cupy.empty(sum(s for s, f in zip(sizes, first) if f), dtype=dtype)
            start = 0
            for i, size, new in zip(usable, sizes, first):
                if new:
                    buffers[i] = fresh[start:start + size].reshape(params[i].shape)
                    start += size
        # without momentum the buffers are never touched: the parameters stand in
        bufs = [buffers[i] if has_momentum else params[i] for i in usable]
        host = np.concatenate([[_address(params[i]) for i in usable],
                               [_address(grads_used[i]) for i in usable],
                               [_address(b) for b in bufs],
                               _offsets(sizes), np.array(first, dtype=np.int64)]).astype(np.int64)
        table = _tables.setdefault(("sgd_multi", dtype), _Table())(host)
        real, total = dtype.type, int(sum(sizes))
        _functions(dtype)["sgd_multi"](
            _grid(total), (THREADS,),
            (table, np.int32(len(usable)), np.int64(total), real(lr), real(momentum),
             real(1 - dampening), real(weight_decay), np.int32(has_momentum),
             np.int32(weight_decay != 0), np.int32(bool(nesterov))))
    for i in sorted(rest):
        buffers[i] = elementwise_numpy.sgd_update(params[i], grads[i], buffers[i], lr, momentum,
                                                  dampening, weight_decay, nesterov)
    return buffers


def adam_update_multi(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr,
                      beta1, beta2, eps, weight_decay, amsgrad, decoupled_weight_decay):
    """``elementwise_numpy.adam_update_multi`` in one launch per dtype (updates in place)."""
    if _capturing():
        return elementwise_numpy.adam_update_multi(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2,
            eps, weight_decay, amsgrad, decoupled_weight_decay)
    by_dtype, rest = _groups_by_dtype(params)
    for dtype, chosen in by_dtype.items():
        state = [exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
        usable = [i for i in chosen if grads[i].dtype == dtype and grads[i].shape == params[i].shape
                  and all(s[i].dtype == dtype and s[i].flags.c_contiguous for s in state)]
        rest += [i for i in chosen if i not in usable]
        if not usable:
            continue
        grads_used = {i: _contiguous(grads[i]) for i in usable}
        maxima = max_exp_avg_sqs if amsgrad else params     # never touched without amsgrad
        scalars = np.array([[math.sqrt(1 - beta2 ** steps[i]), lr / (1 - beta1 ** steps[i])]
                            for i in usable], dtype=np.float64)
        host = np.concatenate([[_address(params[i]) for i in usable],
                               [_address(grads_used[i]) for i in usable],
                               [_address(exp_avgs[i]) for i in usable],
                               [_address(exp_avg_sqs[i]) for i in usable],
                               [_address(maxima[i]) for i in usable],
                               _offsets([params[i].size for i in usable]),
                               scalars.reshape(-1).view(np.int64)]).astype(np.int64)
        table = _tables.setdefault(("adam_multi", dtype), _Table())(host)
        real, total = dtype.type, int(sum(params[i].size for i in usable))
        _functions(dtype)["adam_multi"](
            _grid(total), (THREADS,),
            (table, np.int32(len(usable)), np.int64(total), real(beta1), real(1 - beta1),
             real(beta2), real(1 - beta2), real(eps), real(weight_decay),
             np.int32(bool(decoupled_weight_decay)), real(1 - lr * weight_decay),
             np.int32(bool(amsgrad))))
    for i in sorted(rest):
        elementwise_numpy.adam_update(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i],
                                      max_exp_avg_sqs[i], steps[i], lr, beta1, beta2, eps,
                                      weight_decay, amsgrad, decoupled_weight_decay)


# ---------------------------------------------------------------- can they run here?
PROBE = np.array([-2.0, -0.0, 0.5, 3.0] * 10, dtype=np.float32)   # 40: more than one warp


def why_not():
    """None when both modules compile and a launched kernel computes the right
    result on the GPU here; else why not, as ``"<ExceptionType>: <message>"``."""
    cupy = arrays.cupy
    if cupy is None:
        return f"CuPy is not importable ({arrays.cupy_import_error!r})"
    try:
        for dtype in DTYPES:
            _functions(dtype)
        got = cupy.asnumpy(relu_forward(cupy.asarray(PROBE)))
        if not np.array_equal(got, np.maximum(PROBE, 0)):
            raise RuntimeError(f"the probe kernel ran but computed {got[:4]}..., expected "
                               f"{np.maximum(PROBE, 0)[:4]}...")
    except Exception as exc:     # NVRTC missing or failing, no driver, launch failure...
        return " ".join(f"{type(exc).__name__}: {exc}".split())
    return None
