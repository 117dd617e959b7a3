"""Which array module an array belongs to: NumPy (CPU) or CuPy (GPU).

Every reference kernel asks ``get_array_module(*arrays)`` and uses only that
module, so one code path serves both devices (the DeZero/Chainer
``get_array_module`` idea).  ``tinygrad_cnn.backend`` takes these names from
here: ``kernels`` sits below the engine and imports nothing from it.

CuPy is optional (the ``gpu`` extra).  It is imported once, here, when
``kernels`` is first imported: a CuPy array can only exist once CuPy is, and
the engine needs to know at start-up whether a GPU can be used anyway.
"""
import numpy as np

try:
    import cupy
    cupy_import_error = None
except Exception as exc:  # ImportError, or a CUDA runtime that fails to load
    cupy, cupy_import_error = None, exc


def get_array_module(*arrays):
    """``cupy`` if any of ``arrays`` is a CuPy array, else ``numpy``."""
    if cupy is not None:
        for a in arrays:
            if isinstance(a, cupy.ndarray):
                return cupy
    return np
