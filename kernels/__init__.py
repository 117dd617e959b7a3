"""Hot loops behind one interface.

Ops call ``kernels.im2col(...)``, ``kernels.maxpool2d_forward(...)`` and so
on through this module (attribute lookup at call time), and ``set_kernels``
decides which implementation answers:

- ``"numpy"``: the readable, vectorised NumPy reference versions
  (``*_numpy.py``).  They take their array module from the inputs, so they
  also run on CuPy arrays.
- ``"numba"``: JIT-compiled CPU loops (``*_numba.py``).  A name a Numba module
  does not provide falls back to the reference version.

The default is Numba; the environment variable ``TINYGRAD_CNN_KERNELS``
(``numpy`` or ``numba``) or ``tinygrad_cnn.set_kernels(name)`` switch sets.
"""
import importlib
import os

# Numba's parallel loops run on OpenMP threads, which by default busy-wait
# after each loop.  With as many threads as cores they then take the cores
# from the BLAS threads of the matrix product that comes next: ResNet-18's
# convolutions ran 2x slower on 2 cores, LeNet's training step 1.8x.  Passive
# threads sleep at once.  OpenMP reads the setting when it starts (the first
# parallel loop of any *_numba module), so it is set here, before any can
# run; a value already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# kernel set -> modules searched in order; later modules override earlier ones
_SETS = {
    "numpy": ("kernels.conv_numpy", "kernels.pool_numpy", "kernels.bn_numpy"),
    "numba": ("kernels.conv_numpy", "kernels.pool_numpy", "kernels.conv_numba",
              "kernels.bn_numpy", "kernels.pool_numba", "kernels.bn_numba"),
}

KERNELS = (
    "im2col", "col2im",
    "maxpool2d_forward", "maxpool2d_backward",
    "avgpool2d_forward", "avgpool2d_backward",
    "batchnorm_forward_train", "batchnorm_backward",
)

active = None


def available():
    return sorted(_SETS)


def set_kernels(name):
    """Select the kernel set used by every op from now on; returns the previous one."""
    global active
    if name not in _SETS:
        raise ValueError(f"unknown kernel set {name!r}; available: {available()}")
    found = {}
    for module_name in _SETS[name]:
        module = importlib.import_module(module_name)
        found.update({k: getattr(module, k) for k in KERNELS if hasattr(module, k)})
    missing = [k for k in KERNELS if k not in found]
    if missing:
        raise ImportError(f"kernel set {name!r} lacks {missing}")
    globals().update(found)
    previous, active = active, name
    return previous


set_kernels(os.environ.get("TINYGRAD_CNN_KERNELS", "numba"))
