"""A stand-in for CuPy that holds the engine to CuPy's API, on the CPU.

``StrictCupy`` computes with NumPy but lets through only what CuPy has, as
recorded from CuPy itself in ``cupy_api.json`` (``make_table.py``): a name
CuPy lacks (``xp.seterr``, ``xp.errstate``) raises AttributeError, a keyword
argument a CuPy function does not take (``xp.indices(shape, sparse=True)``)
raises TypeError, and so do array methods and ufunc methods CuPy's arrays
lack.  Its arrays are ``StrictGpuArray``, a NumPy subclass that the engine
takes for a GPU array, so every op, kernel reference and optimizer on the
CuPy path asks this module for its functions.  Functions CuPy implements in
Cython carry no signature; their keywords go unchecked (None in the table).

Beyond the table, the fake has the few CuPy internals the engine uses, each
checked against CuPy 14.2's source: ``cuda.runtime.memGetInfo`` and the
pool's ``free_bytes`` (the GPU column budget), the cuBLAS math mode and
``_core._routines_linalg``'s compute type (TF32, ``tinygrad_cnn/backends/tf32.py``),
which it records so tests can see what was set when each product ran.

It also counts, in ``LAUNCHES`` (``with LAUNCHES.counting():``), the GPU kernels
CuPy would launch for what the engine asks of it (``LaunchCounter`` says by
which rules).
"""
import contextlib
import json
import time
import types
from pathlib import Path

import numpy as np

API = json.loads(Path(__file__).with_name("cupy_api.json").read_text())
CUPY = f"CuPy {API['cupy_version']}"


def _lacks(what, name):
    return AttributeError(f"{what} has no attribute {name!r} in {CUPY} (a NumPy-only name "
                          "on the CuPy path)")


class LaunchCounter:
    """How many GPU kernels CuPy would launch, counted by rules (an estimate:
    CuPy fuses nothing unasked, so each call below is at least one kernel, and
    cuBLAS may add a kernel to a product):

    - a ufunc call on a GPU array (arithmetic, ``@``, a reduction such as
      ``.sum()``): one kernel;
    - a ``cupy.<function>`` call: one, except the ones that make views or
      only allocate (``VIEWS``), and ``ascontiguousarray``/``asarray`` of an
      array that needs no copy; what a function does inside is not counted
      again;
    - ``a[...] = b``, ``a.astype``, ``a.copy``, ``a.fill``, fancy indexing
      ``a[index_array]``: one each.

    A view (slicing, reshape of a contiguous array, transpose) launches none.

    ``device_seconds`` adds up the time spent inside these operations (and
    inside ``paused`` blocks): the array work a GPU would do, which leaves the
    rest of a step's time as the host's (``benchmarks/launches.py``).
    """
    VIEWS = {"empty", "empty_like", "reshape", "transpose", "swapaxes", "moveaxis",
             "expand_dims", "squeeze", "broadcast_to", "lib.stride_tricks.as_strided",
             "result_type", "may_share_memory", "shares_memory", "dtype", "promote_types",
             "can_cast", "ndim", "shape", "size", "isscalar", "random.default_rng",
             "asnumpy", "get_array_module"}

    def __init__(self):
        self.count, self.active, self.depth, self.device_seconds = 0, False, 0, 0.0

    @contextlib.contextmanager
    def counting(self):
        """Count the launches (and device time) inside the block, from 0."""
        self.count, self.active, self.depth, self.device_seconds = 0, True, 0, 0.0
        try:
            yield self
        finally:
            self.active = False

    @contextlib.contextmanager
    def inside(self, launches=1):
        """One operation of ``launches`` kernels; what it calls is not counted."""
        outermost = self.active and self.depth == 0
        if outermost:
            self.count += launches
            start = time.perf_counter()
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if outermost:
                self.device_seconds += time.perf_counter() - start

    def paused(self):
        """Nothing inside is counted (its time is device time)."""
        return self.inside(0)


LAUNCHES = LaunchCounter()


def _as_numpy(value):
    if isinstance(value, StrictGpuArray):
        return value.view(np.ndarray)
    if isinstance(value, tuple):
        return tuple(_as_numpy(v) for v in value)
    return value


def _needs_copy(array, dtype=None):
    """Whether ascontiguousarray/asarray of ``array`` copies."""
    if not isinstance(array, np.ndarray):
        return True
    return not array.flags.c_contiguous or (dtype is not None and np.dtype(dtype) != array.dtype)


class StrictGpuArray(np.ndarray):
    """Stands for a cupy.ndarray on cuda:0: only CuPy's array attributes."""
    device = types.SimpleNamespace(id=0)

    def __getattribute__(self, name):
        if not name.startswith("_") and name not in API["objects"]["ndarray"]:
            raise _lacks("cupy.ndarray", name)
        return super().__getattribute__(name)

    # ---- what launches kernels (LaunchCounter); results as NumPy's, on the fake GPU
    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        if out is not None:
            kwargs["out"] = _as_numpy(out)
        if ufunc is np.matmul:
            StrictGpuArray._fake.record_product()
        with LAUNCHES.inside():
            result = getattr(ufunc, method)(*_as_numpy(inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return on_gpu(result)

    def __setitem__(self, index, value):
        with LAUNCHES.inside():
            super().__setitem__(index, value)

    def __getitem__(self, index):
        fancy = any(isinstance(i, (np.ndarray, list))
                    for i in (index if isinstance(index, tuple) else (index,)))
        with LAUNCHES.inside(1 if fancy else 0):
            return super().__getitem__(index)

    def astype(self, *args, **kwargs):
        with LAUNCHES.inside():
            return super().astype(*args, **kwargs)

    def copy(self, *args, **kwargs):
        with LAUNCHES.inside():
            return super().copy(*args, **kwargs)

    def fill(self, value):
        with LAUNCHES.inside():
            return super().fill(value)


def on_gpu(value):
    """NumPy results as the fake's arrays (and generators), as CuPy returns its own."""
    if isinstance(value, np.ndarray) and not isinstance(value, StrictGpuArray):
        return value.view(StrictGpuArray)
    if isinstance(value, np.random.Generator):
        return StrictObject("random.Generator", value)
    if isinstance(value, tuple):
        return tuple(on_gpu(v) for v in value)
    if isinstance(value, list):
        return [on_gpu(v) for v in value]
    return value


def strict_function(qualified_name, function, keywords):
    """``function`` that refuses the keyword arguments CuPy's version does not take."""
    def call(*args, **kwargs):
        if keywords is not None:
            unknown = sorted(set(kwargs) - set(keywords))
            if unknown:
                raise TypeError(f"cupy.{qualified_name}() takes no keyword argument(s) "
                                f"{unknown} in {CUPY}; it takes {keywords}")
        launches = 0 if qualified_name in LaunchCounter.VIEWS else 1
        if qualified_name in ("ascontiguousarray", "asarray") and args:
            launches = int(_needs_copy(args[0], args[1] if len(args) > 1
                                       else kwargs.get("dtype")))
        with LAUNCHES.inside(launches):
            return on_gpu(function(*args, **kwargs))
    call.__name__ = qualified_name
    return call


class StrictObject:
    """A ufunc or a random Generator with only the methods CuPy's has."""
    def __init__(self, kind, wrapped):
        self._kind, self._wrapped = kind, wrapped

    def __call__(self, *args, **kwargs):
        return on_gpu(self._wrapped(*args, **kwargs))

    def __getattr__(self, name):
        if name not in API["objects"][self._kind]:
            raise _lacks(f"cupy {self._kind} {getattr(self._wrapped, '__name__', '')}", name)
        value = getattr(self._wrapped, name)
        return strict_function(f"{self._kind}.{name}", value, None) if callable(value) \
            else value


class StrictModule:
    """numpy (or one of its submodules) seen through CuPy's list of names."""
    def __init__(self, prefix, numpy_module):
        self._prefix, self._numpy = prefix, numpy_module

    def __getattr__(self, name):
        names = API["modules"][self._prefix]
        qualified = f"{self._prefix}.{name}".lstrip(".")
        if name not in names:
            raise _lacks(f"cupy{'.' if self._prefix else ''}{self._prefix}", name)
        value = getattr(self._numpy, name)
        if isinstance(value, types.ModuleType):
            return StrictModule(qualified, value)
        if isinstance(value, type):             # dtypes, exceptions: as they are
            return value
        if isinstance(value, np.ufunc):
            return StrictObject("ufunc", value)
        if callable(value):
            return strict_function(qualified, value, names[name])
        return value


class _Device:
    def __init__(self, index=0):
        self.id = index

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


class OutOfMemoryError(MemoryError):
    pass


class FakeCublas:
    """``cupy.cuda.cublas`` (cupy_backends.cuda.libs.cublas): the math mode of
    a handle, ``getMathMode``/``setMathMode`` as CuPy 14.2 has them."""
    CUBLAS_DEFAULT_MATH = 0
    CUBLAS_TENSOR_OP_MATH = 1
    HANDLE = 1234                       # cupy.cuda.device.get_cublas_handle()'s int

    def __init__(self):
        self.math_mode = {self.HANDLE: self.CUBLAS_DEFAULT_MATH}

    def getMathMode(self, handle):
        return self.math_mode[handle]

    def setMathMode(self, handle, mode):
        self.math_mode[handle] = mode


class FakeRoutinesLinalg:
    """``cupy._core._routines_linalg``: the compute type per dtype."""
    COMPUTE_TYPE_TBD, COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_PEDANTIC = 0, 1, 2
    COMPUTE_TYPE_TF32 = 7

    def __init__(self):
        self.compute_types = {}

    def get_compute_type(self, dtype):
        return self.compute_types.setdefault(np.dtype(dtype).char, self.COMPUTE_TYPE_DEFAULT)

    def set_compute_type(self, dtype, compute_type):
        self.compute_types[np.dtype(dtype).char] = compute_type


class StrictCupy(StrictModule):
    """The module the engine finds in place of ``cupy``: one GPU, cuda:0, with
    ``free_gpu_bytes`` free (driver) and ``pool_free_bytes`` cached by the pool.

    ``products`` records, for every matrix product of GPU arrays, the cuBLAS
    math mode and float32 compute type in force when it ran."""
    ndarray = StrictGpuArray
    GiB = 2**30

    def __init__(self, free_gpu_bytes=100 * GiB, pool_free_bytes=0, compute_capability="90"):
        super().__init__("", np)
        self.free_gpu_bytes, self.pool_free_bytes = free_gpu_bytes, pool_free_bytes
        self.mem_get_info_calls = 0
        cublas = FakeCublas()
        self._core = types.SimpleNamespace(_routines_linalg=FakeRoutinesLinalg())
        device = type("Device", (_Device,), {"compute_capability": compute_capability})
        self.cuda = types.SimpleNamespace(
            Device=device, cublas=cublas,
            device=types.SimpleNamespace(get_cublas_handle=lambda: FakeCublas.HANDLE),
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1,
                                          memGetInfo=self._mem_get_info),
            memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError))
        self.products = []
        StrictGpuArray._fake = self

    def _mem_get_info(self):
        self.mem_get_info_calls += 1
        return self.free_gpu_bytes, 141 * self.GiB

    def record_product(self):
        """The TF32 state a product sees now: (math mode, float32 compute type)."""
        linalg = self._core._routines_linalg
        self.products.append((self.cuda.cublas.getMathMode(FakeCublas.HANDLE),
                              linalg.compute_types.get("f", linalg.COMPUTE_TYPE_DEFAULT)))

    @staticmethod
    def asnumpy(array):
        return np.array(array).view(np.ndarray)

    def get_default_memory_pool(self):
        return types.SimpleNamespace(used_bytes=lambda: 0, total_bytes=lambda: 0,
                                     free_bytes=lambda: self.pool_free_bytes,
                                     free_all_blocks=lambda: None)
