"""Hot loops behind one interface.

Ops call ``kernels.im2col(...)``, ``kernels.maxpool2d_forward(...)`` and so
on through this module; which implementation answers is chosen here.
Today there is one set, the readable vectorised NumPy reference versions
(``conv_numpy``, ``pool_numpy``), which also run on CuPy arrays because they
take their array module from the inputs.  Faster versions (Numba on the
CPU) plug in later by providing the same names.
"""
import importlib

# kernel set name -> modules that together provide every name in KERNELS
_SETS = {"numpy": ("kernels.conv_numpy", "kernels.pool_numpy")}

KERNELS = (
    "im2col", "col2im",
    "maxpool2d_forward", "maxpool2d_backward",
    "avgpool2d_forward", "avgpool2d_backward",
)

active = None


def set_kernels(name):
    """Select the kernel set (``'numpy'``) used by every op from now on."""
    global active
    if name not in _SETS:
        raise ValueError(f"unknown kernel set {name!r}; available: {sorted(_SETS)}")
    found = {}
    for module_name in _SETS[name]:
        module = importlib.import_module(module_name)
        found.update({k: getattr(module, k) for k in KERNELS if hasattr(module, k)})
    missing = [k for k in KERNELS if k not in found]
    if missing:
        raise ImportError(f"kernel set {name!r} lacks {missing}")
    globals().update(found)
    active = name


set_kernels("numpy")
