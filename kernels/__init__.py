"""Hot loops behind one interface.

Ops (and ``optim.SGD``) call ``kernels.im2col(...)``,
``kernels.maxpool2d_forward(...)`` and so on through this module (attribute
lookup at call time), and ``set_kernels`` decides which implementation
answers:

- ``"numpy"``: the readable, vectorised NumPy reference versions
  (``*_numpy.py``).  They take their array module from the inputs, so they
  also run on CuPy arrays.
- ``"numba"``: JIT-compiled CPU loops (``*_numba.py``).  A name a Numba module
  does not provide falls back to the reference version.

The default is Numba; the environment variable ``TINYGRAD_CNN_KERNELS``
(``numpy`` or ``numba``) or ``tinygrad_cnn.set_kernels(name)`` switch sets.

CuPy (GPU) arrays go elsewhere, whatever the set: to the ``numba.cuda``
kernels (``*_cuda.py``) when Numba can compile for the GPU, else (with a
warning) to the NumPy reference, which runs on CuPy arrays as it is.  The
elementwise kernels (ReLU, the sigmoid's backward, the SGD step) have no
CUDA version: CuPy arrays always take their reference.  Only
when CuPy is installed is each kernel wrapped to look at its first argument;
without CuPy there can be no GPU arrays, and the set's functions are called
directly.
"""
import functools
import importlib
import os
import warnings

# How the compiled loops share the cores with OpenBLAS, the matrix products'
# library.  Both settings are environment variables that a library reads once,
# when it starts, so they are set here, before either can start; a value
# already in the environment wins.
THREAD_ENVIRONMENT = {
    # Numba's parallel loops run on OpenMP threads, which by default busy-wait
    # after each loop.  With as many threads as cores they then take the cores
    # from the BLAS threads of the matrix product that comes next: ResNet-18's
    # convolutions ran 2x slower on 2 cores, LeNet's training step 1.8x.
    # Passive threads sleep at once.  (OpenMP starts at the first parallel
    # loop of any *_numba module.)
    "OMP_WAIT_POLICY": "PASSIVE",
    # The other way round: after every matrix product OpenBLAS's worker
    # threads busy-wait for 2^28 CPU cycles (about 0.1 s), taking a core from
    # the im2col or pooling loop that comes next.  In a ResNet-18 training
    # step that spinning was 22% of all CPU samples (perf); 2^4 cycles makes
    # them sleep at once, and the step ran faster in each of 12 paired runs
    # (by 1-26%, median 10%).  OpenBLAS reads it when NumPy loads it:
    # ``tinygrad_cnn`` imports this module before NumPy for that reason (a
    # program that imports NumPy first must set the variable itself; see the
    # README's Speed section).
    "OPENBLAS_THREAD_TIMEOUT": "4",
}
for _name, _value in THREAD_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)

# kernel set -> modules searched in order; later modules override earlier ones
_SETS = {
    "numpy": ("kernels.conv_numpy", "kernels.winograd_numpy", "kernels.pool_numpy",
              "kernels.bn_numpy", "kernels.elementwise_numpy"),
    "numba": ("kernels.conv_numpy", "kernels.pool_numpy", "kernels.conv_numba",
              "kernels.winograd_numpy", "kernels.winograd_numba",
              "kernels.bn_numpy", "kernels.pool_numba", "kernels.bn_numba",
              "kernels.elementwise_numpy", "kernels.elementwise_numba"),
}

# For CuPy arrays, in the same override order: the references, which run on
# CuPy arrays, then the CUDA kernels.  The elementwise and Winograd kernels
# have no CUDA version: CuPy runs each of the reference's expressions (einsum
# included) as GPU kernels.
_GPU_REFERENCE_MODULES = ("kernels.conv_numpy", "kernels.winograd_numpy", "kernels.pool_numpy",
                          "kernels.bn_numpy", "kernels.elementwise_numpy")
_GPU_MODULES = _GPU_REFERENCE_MODULES + ("kernels.conv_cuda", "kernels.pool_cuda",
                                         "kernels.bn_cuda")

KERNELS = (
    "im2col", "col2im",
    "winograd_weight", "winograd_weight_backward", "winograd_input", "winograd_input_backward",
    "winograd_output", "winograd_output_backward",
    "maxpool2d_forward", "maxpool2d_backward",
    "avgpool2d_forward", "avgpool2d_backward",
    "adaptive_avgpool2d_forward", "adaptive_avgpool2d_backward",
    "adaptive_maxpool2d_forward", "adaptive_maxpool2d_backward",
    "batchnorm_forward_train", "batchnorm_backward",
    "relu_forward", "relu_backward", "sigmoid_backward", "sgd_update",
)

active = None


def available():
    return sorted(_SETS)


def _collect(module_names):
    """Kernel name -> function, later modules overriding earlier ones."""
    found = {}
    for module_name in module_names:
        module = importlib.import_module(module_name)
        found.update({k: getattr(module, k) for k in KERNELS if hasattr(module, k)})
    return found


def set_kernels(name):
    """Select the kernel set used by every op from now on; returns the previous one."""
    global active
    if name not in _SETS:
        raise ValueError(f"unknown kernel set {name!r}; available: {available()}")
    found = _collect(_SETS[name])
    missing = [k for k in KERNELS if k not in found]
    if missing:
        raise ImportError(f"kernel set {name!r} lacks {missing}")
    # Imported here, not at the top: tinygrad_cnn's __init__ imports this module.
    from tinygrad_cnn import backend
    if backend.cupy is not None:
        found = {k: _dispatching(k, f, backend.cupy.ndarray) for k, f in found.items()}
    globals().update(found)
    previous, active = active, name
    return previous


# ---------------------------------------------------------------- GPU arrays
_gpu_kernels = None     # name -> function for CuPy arrays, chosen at the first one


def gpu_kernels():
    """The kernels CuPy arrays go to: the numba.cuda ones, or the NumPy
    reference where Numba cannot compile for the GPU."""
    global _gpu_kernels
    if _gpu_kernels is None:
        if numba_cuda_works():
            _gpu_kernels = _collect(_GPU_MODULES)
        else:
            warnings.warn("Numba cannot compile CUDA kernels here (it needs NVIDIA's NVVM "
                          "library: a CUDA toolkit, or pip install numba-cuda[cu12]); "
                          "convolution, pooling and batch norm run the NumPy reference "
                          "kernels on the GPU instead, which is slower", stacklevel=3)
            _gpu_kernels = _collect(_GPU_REFERENCE_MODULES)
    return _gpu_kernels


def numba_cuda_works():
    """Whether Numba can compile and launch CUDA kernels: it sees a GPU (or is
    its simulator) and finds NVVM, NVIDIA's compiler library, which CuPy's
    wheels do not bring."""
    try:
        from numba import config, cuda
        if config.ENABLE_CUDASIM:
            return True
        from numba.cuda.cudadrv import nvvm
        return bool(cuda.is_available()) and bool(nvvm.is_available())
    except Exception:      # ImportError, or a CUDA library Numba cannot load
        return False


def _dispatching(name, cpu_kernel, gpu_array_type):
    """``cpu_kernel``, except that a CuPy first argument goes to the GPU kernel."""
    @functools.wraps(cpu_kernel)
    def kernel(array, *args, **kwargs):
        if isinstance(array, gpu_array_type):
            return gpu_kernels()[name](array, *args, **kwargs)
        return cpu_kernel(array, *args, **kwargs)
    return kernel


set_kernels(os.environ.get("TINYGRAD_CNN_KERNELS", "numba"))
