"""TF32 for the float32 matrix products CuPy runs, switched per product.

CuPy has no per-call TF32 argument.  Two pieces of state decide, and cupy.matmul
reads both each time it is called:

- the **math mode of CuPy's cuBLAS handle** (one per device and thread,
  ``cupy.cuda.device.get_cublas_handle()``; ``cupy.cuda.cublas.setMathMode``):
  ``CUBLAS_TF32_TENSOR_OP_MATH`` lets single-precision products use TF32.
  Batched products (3-D and more: every convolution product here) go to
  ``cublasGemmStridedBatchedEx`` / ``cublasSgemmBatched`` with the plain
  float32 compute type, which only this mode changes.  (PyTorch switches
  ``allow_tf32`` the same way, on its own handle.)
- CuPy's **compute type for float32** (``cupy._core._routines_linalg.set_compute_type``,
  process-wide; the ``CUPY_TF32`` environment variable only sets its first
  value): 2-D products (``cupy.dot``) ask cuBLAS for ``CUBLAS_COMPUTE_32F_FAST_TF32``
  when it is ``COMPUTE_TYPE_TF32``.

``TF32(array, allowed)`` sets both around a block of products and puts back
what it found, so a product outside our ops keeps the user's (or CUPY_TF32's)
setting.  Both are host-side state read when a product is queued, so the switch
holds per call even though the GPU runs the product later.  The compute type is
per process: a product another thread queues inside the block sees ours.
Accumulation stays float32 either way.
"""
import numpy as np

from kernels import arrays

# cublas_api.h's value; CuPy's cublas module names only DEFAULT_MATH (0) and TENSOR_OP_MATH (1)
CUBLAS_DEFAULT_MATH = 0
CUBLAS_TF32_TENSOR_OP_MATH = 3

_TF32_DTYPES = (np.dtype(np.float32), np.dtype(np.complex64))
_has_tf32 = {}          # device id -> compute capability >= 8.0 (CuPy warns below)


class Flag:
    """A bool attribute that refuses anything but a bool, as PyTorch's flags do."""

    def __init__(self, name, default):
        self.name, self.value = name, default

    def __get__(self, owner, owner_type=None):
        return self.value

    def __set__(self, owner, value):
        if not isinstance(value, bool):
            raise TypeError(f"{self.name} must be a bool, got {value!r}")
        self.value = value


class TF32:
    """``with TF32(array, allowed):`` the float32 products of CuPy arrays queued
    inside may use TF32 (``allowed``) or may not.  No-op on NumPy arrays and for
    other dtypes (nothing is called)."""

    __slots__ = ("cupy", "allowed", "saved")

    def __init__(self, array, allowed):
        cupy = arrays.cupy
        on_gpu = (cupy is not None and isinstance(array, cupy.ndarray)
                  and array.dtype in _TF32_DTYPES)
        self.cupy, self.allowed = (cupy if on_gpu else None), allowed

    def __enter__(self):
        if self.cupy is None:
            return self
        linalg, cublas = self.cupy._core._routines_linalg, self.cupy.cuda.cublas
        handle = self.cupy.cuda.device.get_cublas_handle()
        self.saved = (handle, cublas.getMathMode(handle), linalg.get_compute_type(np.float32))
        tf32 = self.allowed and _device_has_tf32(self.cupy)
        cublas.setMathMode(handle, CUBLAS_TF32_TENSOR_OP_MATH if tf32 else CUBLAS_DEFAULT_MATH)
        linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if tf32
                                else linalg.COMPUTE_TYPE_DEFAULT)
        return self

    def __exit__(self, *exc):
        if self.cupy is not None:
            handle, mode, compute_type = self.saved
            self.cupy.cuda.cublas.setMathMode(handle, mode)
            self.cupy._core._routines_linalg.set_compute_type(np.float32, compute_type)
        return False


def _device_has_tf32(cupy):
    """Whether the current device has TF32 (compute capability 8.0 or later),
    asked once per device: CuPy warns on every COMPUTE_TYPE_TF32 set below it."""
    device = cupy.cuda.Device()
    if device.id not in _has_tf32:
        _has_tf32[device.id] = int(device.compute_capability) >= 80
    return _has_tf32[device.id]
