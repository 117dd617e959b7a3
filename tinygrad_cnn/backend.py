"""Array modules, devices, dtypes and the random generator.

Every op asks ``get_array_module(*arrays)`` which module its inputs live in
(NumPy on the CPU, CuPy on the GPU) and uses only that module, so one code
path serves both devices (the DeZero/Chainer ``get_array_module`` idea).
"""
import contextlib

import numpy as np

# CuPy is optional: the GPU backend is an extra (pip install -e ".[gpu]").  kernels/
# imports it (or records why it could not) and decides which module an array
# belongs to; the engine asks the same question through these names.
from kernels.arrays import cupy, cupy_import_error, get_array_module  # noqa: F401

default_float = np.float32


def device_of(array):
    """The device name of an array: ``'cpu'`` or ``'cuda:N'``."""
    if cupy is not None and isinstance(array, cupy.ndarray):
        return f"cuda:{array.device.id}"
    return "cpu"


def parse_device(device):
    """Normalise ``'cpu'``, ``'cuda'``, ``'cuda:1'`` to ``'cpu'`` / ``'cuda:N'``."""
    name = str(device)
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        index = int(name.split(":")[1]) if ":" in name else 0
        return f"cuda:{index}"
    raise ValueError(f"unknown device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")


def cuda_device_count():
    """How many CUDA devices CuPy sees: 0 without CuPy, or without a driver or GPU."""
    if cupy is None:
        return 0
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:   # CUDARuntimeError: no driver, or no device
        return 0


def require_device(device):
    """``parse_device(device)``, checked to exist: a clear error, before any
    work, for ``'cuda'`` on a machine that cannot run it."""
    device = parse_device(device)
    if device == "cpu":
        return device
    if cupy is None:
        reason = ("CuPy is not installed" if isinstance(cupy_import_error, ImportError)
                  else f"CuPy failed to load ({cupy_import_error})")
        raise RuntimeError(
            f"device '{device}' needs CuPy, but {reason}: install the GPU extra with "
            'pip install -e ".[gpu]" (CuPy for CUDA 12, cupy-cuda12x) on a machine '
            "with an NVIDIA GPU, or use device 'cpu'")
    count = cuda_device_count()
    if count == 0:
        raise RuntimeError(f"device '{device}': CuPy is installed but no CUDA device was "
                           "found (no NVIDIA GPU, or no driver); use device 'cpu'")
    index = int(device.split(":")[1])
    if index >= count:
        raise RuntimeError(f"device '{device}' does not exist: CuPy sees {count} CUDA "
                           f"device(s), cuda:0 to cuda:{count - 1}")
    return device


def to_device(array, device):
    """Copy ``array`` to ``device`` (no copy when it is already there).

    GPU arrays come from CuPy's default memory pool: freed arrays go back to
    the pool, not to the driver, so nvidia-smi shows the pool's size, and
    allocations after the first step cost almost nothing.
    ``tinygrad_cnn.cuda.empty_cache()`` hands the unused blocks back.
    """
    device = parse_device(device)
    if device == device_of(array):
        return array
    if device == "cpu":
        return cupy.asnumpy(array)
    require_device(device)
    with cupy.cuda.Device(int(device.split(":")[1])):
        return cupy.asarray(array)


# Whether a CUDA graph capture is under way (tinygrad_cnn/cuda_graphs.py sets it):
# the engine's checks that read a GPU value on the host step aside meanwhile.
_capturing = False


def is_current_stream_capturing():
    """Whether a CUDA graph capture is under way (``torch.cuda``'s name)."""
    return _capturing


def set_capturing(flag):
    global _capturing
    _capturing = bool(flag)


class OutOfMemoryError(RuntimeError):
    """The GPU ran out of memory: raised instead of CuPy's error, with advice."""


def out_of_memory_errors():
    """The exception classes meaning "GPU memory ran out" (none without CuPy)."""
    return () if cupy is None else (cupy.cuda.memory.OutOfMemoryError,)


@contextlib.contextmanager
def explain_out_of_memory(what):
    """Turn CuPy's out-of-memory error inside the block into ``OutOfMemoryError``
    naming ``what`` was running and what to do.  Free when nothing is raised:
    the ``except`` clause is only evaluated for an exception."""
    try:
        yield
    except out_of_memory_errors() as exc:
        raise OutOfMemoryError(
            f"{what}: the GPU ran out of memory ({exc}); use a smaller batch size "
            "(--batch-size), a smaller input size or a smaller network") from exc


# ---------------------------------------------------------------- dtypes
_DTYPE_NAMES = {
    "float32": np.float32, "float": np.float32, "float64": np.float64,
    "double": np.float64, "float16": np.float16, "half": np.float16,
    "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32,
    "uint8": np.uint8, "bool": np.bool_,
}
float32, float64, float16 = np.float32, np.float64, np.float16
int64, int32, uint8, bool_ = np.int64, np.int32, np.uint8, np.bool_


def as_dtype(dtype):
    """Accept a NumPy dtype, a type or a name like ``'float32'``."""
    if isinstance(dtype, str):
        if dtype not in _DTYPE_NAMES:
            raise TypeError(f"unknown dtype {dtype!r}")
        dtype = _DTYPE_NAMES[dtype]
    return np.dtype(dtype)


def is_float(array):
    return array.dtype.kind == "f"


# ---------------------------------------------------------------- randomness
class _RandomState:
    """One seeded generator per array module, reset together by ``manual_seed``."""

    def __init__(self, seed=None):
        self.seed(seed)

    def seed(self, seed):
        self._seed = seed
        self.numpy = np.random.default_rng(seed)
        self._cupy = None

    def generator(self, xp=np):
        if xp is np:
            return self.numpy
        if self._cupy is None:
            self._cupy = xp.random.default_rng(self._seed)
        return self._cupy


random_state = _RandomState()


def manual_seed(seed):
    """Seed every random draw of the engine (init, rand/randn, dropout)."""
    random_state.seed(int(seed))
    return random_state


def rng(xp=np):
    """The engine's random generator for array module ``xp``."""
    return random_state.generator(xp)


def get_rng_state():
    """The engine's generator state as plain JSON-serialisable data (for
    checkpoints): the seed and the NumPy generator's bit-generator state.

    The CuPy generator is not included: after ``set_rng_state`` it starts
    again from the seed, so GPU draws (dropout masks) are not resumed exactly.
    """
    return {"seed": random_state._seed, "numpy": random_state.numpy.bit_generator.state}


def set_rng_state(state):
    """Put the engine's generator back where ``get_rng_state`` found it."""
    if state["seed"] != random_state._seed:
        random_state.seed(state["seed"])
    random_state.numpy.bit_generator.state = state["numpy"]
