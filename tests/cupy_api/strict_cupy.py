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
which rules); a graph's replay is one launch.

As in CuPy, reductions (``a.sum()``, ``xp.vdot``) give 0-d arrays, not NumPy
scalars, so reading one on the host goes through the array (``float(a)``).

Stream capture (CUDA Graphs, ``cupy.cuda.Stream.begin_capture`` /
``end_capture`` / ``cupy.cuda.Graph.launch``) is stood in for by recording:
while a stream captures, every call that computes on the fake's arrays (module
functions, ufuncs and operators, the array methods that copy or write) is run
as usual *and* logged with the very array objects it read and wrote (the
"device pointers" of a real graph) and its Python scalars (a kernel's frozen
arguments).  ``end_capture`` then puts back every array that existed before the
capture (a real capture runs nothing), and ``Graph.launch`` re-runs the log,
writing each result into the array recorded for it.  What a real capture
refuses raises here too: reading a GPU value on the host (``float()``,
``int()``, ``bool()``, ``.item()``, ``.tolist()``, ``asnumpy``) raises CuPy's
``CUDARuntimeError`` (cudaErrorStreamCaptureUnsupported), work queued on
another stream while a capture is under way raises
cudaErrorStreamCaptureImplicit, and so does capturing on the legacy default
stream.  Stricter than CuPy: a host-to-device copy (``xp.asarray`` of a NumPy
array or a Python number, a NumPy array as an operand or index) raises during
capture, since a graph would re-read a staging buffer whose contents are gone.
Not modelled: memory reuse (the log keeps every array alive), timing, and
anything numba.cuda launches (the fake path runs the reference kernels).

``RawModule`` builds CUDA C kernels as NumPy twins (``kernel_twins.py``) that
check their arguments against the C signatures, count one launch each (in
``LAUNCHES``, and by kernel name in ``kernel_twins.launches``), are logged by a
capture like any other call, and compute; an array's ``data.ptr`` is its host
address, which the twins of the multi-tensor kernels read their tables of
addresses with.
"""
import contextlib
import json
import threading
import time
import types
from pathlib import Path

import numpy as np

from tests.cupy_api import kernel_twins

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


class CUDARuntimeError(RuntimeError):
    """``cupy.cuda.runtime.CUDARuntimeError``: a CUDA call failed."""


# ---------------------------------------------------------------- stream capture
class _State(threading.local):
    """The fake GPU's streams, per thread as CuPy's: the current one, and whether
    a logged call (or a replay) is running, whose inner calls are not logged
    again; and (for every thread) the capture under way."""
    def __init__(self):
        self.current = None          # None: the legacy default stream
        self.depth = 0
        self.allocator = None        # set by cupy.cuda.using_allocator

    def reset(self):
        self.__init__()
        self.capture = None

    @property
    def capture(self):
        return _CAPTURE[0]

    @capture.setter
    def capture(self, recording):
        _CAPTURE[0] = recording


_CAPTURE = [None]


_STATE = _State()


def _capture_error(code, what):
    return CUDARuntimeError(f"{code}: operation not permitted when stream is capturing "
                            f"(strict fake CuPy: {what})")


def _host_read(what):
    """A GPU value read on the host: a synchronisation, refused during capture."""
    if _STATE.capture is not None and _STATE.depth == 0:
        raise _capture_error("cudaErrorStreamCaptureUnsupported", f"{what} reads a GPU "
                             "value on the host")


def _root(array):
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


class _Recording:
    """The calls logged by one capture, and the pre-existing arrays to put back."""
    def __init__(self, stream):
        self.stream, self.calls = stream, []
        self.saved = {}               # id(root) -> (root, copy before the capture)
        self.created = {}             # id(root) -> root of an array made during capture
        self.allocators = set()
        self.generators = {}
        self.host_copying = False

    def before(self, args, kwargs):
        for value in _flat(args, kwargs):
            if isinstance(value, StrictGpuArray):
                root = _root(value)
                if id(root) not in self.created and id(root) not in self.saved:
                    self.saved[id(root)] = (root, np.ndarray.copy(root))
            elif isinstance(value, np.ndarray) or (isinstance(value, (int, float)) and
                                                   self.host_copying):
                raise _capture_error("cudaErrorStreamCaptureUnsupported",
                                     "a host-to-device copy during capture (a graph would "
                                     "re-read a staging buffer that is gone)")

    def after(self, result):
        for value in _flat((result,), {}):
            if isinstance(value, StrictGpuArray):
                root = _root(value)
                if id(root) not in self.saved:
                    self.created.setdefault(id(root), root)

    def keep_generator(self, generator):
        """CuPy's Generator keeps its state on the GPU: a capture does not advance it."""
        self.generators.setdefault(id(generator), (generator, generator.bit_generator.state))

    def restore(self):
        for root, before in self.saved.values():
            np.copyto(root, before)
        for generator, state in self.generators.values():
            generator.bit_generator.state = state


def _flat(args, kwargs):
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, (tuple, list)):
            yield from value
        else:
            yield value


# CuPy functions that copy host data to the GPU when given it
_HOST_COPYING = {"asarray", "array", "asanyarray", "ascontiguousarray"}


def _run(function, args, kwargs, name=""):
    """``function(*args, **kwargs)``; while a capture records, logged (outermost
    calls only: the inner ones are part of it)."""
    recording = _STATE.capture
    if recording is None or _STATE.depth:
        return function(*args, **kwargs)
    if _STATE.current is not recording.stream:
        if recording.stream.is_non_blocking:   # (relaxed mode) not captured: runs as usual
            return function(*args, **kwargs)
        raise _capture_error("cudaErrorStreamCaptureImplicit", f"{name or 'work'} queued on "
                             "the legacy default stream while a blocking stream captures")
    recording.host_copying = name.split(".")[-1] in _HOST_COPYING
    recording.before(args, kwargs)
    _STATE.depth += 1
    try:
        result = function(*args, **kwargs)
    finally:
        _STATE.depth -= 1
    recording.after(result)
    if _STATE.allocator is not None:
        recording.allocators.add(_STATE.allocator)
    recording.calls.append((function, args, kwargs, result))
    return result


def _replay(calls):
    _STATE.depth += 1
    try:
        with LAUNCHES.inside(1):            # cudaGraphLaunch: one launch for them all
            for function, args, kwargs, result in calls:
                again = function(*args, **kwargs)
                for old, new in zip(_flat((result,), {}), _flat((again,), {})):
                    if isinstance(old, np.ndarray) and old is not new:
                        np.copyto(old, new)
    finally:
        _STATE.depth -= 1


def _plain(value):
    return value.view(np.ndarray) if isinstance(value, StrictGpuArray) else value


def _apply_ufunc(ufunc, method, *inputs, **kwargs):
    out = kwargs.get("out")
    if out is not None:
        kwargs["out"] = tuple(_plain(o) for o in (out if isinstance(out, tuple) else (out,)))
    if ufunc is np.matmul:
        StrictGpuArray._fake.record_product()
    with LAUNCHES.inside():
        result = getattr(ufunc, method)(*(_plain(x) for x in inputs), **kwargs)
    if out is not None:
        outs = out if isinstance(out, tuple) else (out,)
        return outs[0] if len(outs) == 1 else outs
    return on_gpu(result)


def _getitem(array, index):
    return on_gpu(np.ndarray.__getitem__(array, index))     # CuPy: a[0] is a 0-d array


# ndarray methods that compute (copy or write) without going through a ufunc
_LOGGED_METHODS = {"astype", "copy", "argmax", "argmin", "take", "repeat", "flatten",
                   "ravel", "reshape", "fill", "sort", "dot", "put"}   # reshape: copies when it must


class StrictGpuArray(np.ndarray):
    """Stands for a cupy.ndarray on cuda:0: only CuPy's array attributes."""
    device = types.SimpleNamespace(id=0)

    def __getattribute__(self, name):
        if not name.startswith("_") and name not in API["objects"]["ndarray"]:
            raise _lacks("cupy.ndarray", name)
        if name in ("item", "tolist"):
            _host_read(f"ndarray.{name}()")
        if name in _LOGGED_METHODS and _STATE.capture is not None:
            method = getattr(StrictGpuArray, name)    # self among the logged arguments
            return lambda *args, **kwargs: _run(method, (self,) + args, kwargs,
                                                f"ndarray.{name}")
        return super().__getattribute__(name)

    # NumPy before 2.0 turns `a ** b` with a 0-d exponent into float(b) (its fast scalar
    # power); CuPy runs its power kernel, reading nothing on the host.
    def __pow__(self, other):
        return np.power(self, other)

    def __rpow__(self, other):
        return np.power(other, self)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _run(_apply_ufunc, (ufunc, method) + inputs, kwargs, ufunc.__name__)

    def __array_wrap__(self, array, context=None, return_scalar=False):
        return super().__array_wrap__(array, context, False)   # CuPy: 0-d arrays

    def __getitem__(self, index):
        fancy = any(isinstance(i, (np.ndarray, list))
                    for i in (index if isinstance(index, tuple) else (index,)))
        with LAUNCHES.inside(1 if fancy else 0):
            return _run(_getitem, (self, index), {}, "ndarray.__getitem__")

    def __setitem__(self, index, value):
        with LAUNCHES.inside():
            return _run(np.ndarray.__setitem__, (self, index, value), {},
                        "ndarray.__setitem__")

    # ---- what launches kernels (LaunchCounter)
    def astype(self, *args, **kwargs):
        with LAUNCHES.inside():
            return super().astype(*args, **kwargs)

    def copy(self, *args, **kwargs):
        with LAUNCHES.inside():
            return super().copy(*args, **kwargs)

    def fill(self, value):
        with LAUNCHES.inside():
            return super().fill(value)

    def __float__(self):
        _host_read("float()")
        return super().__float__()

    def __int__(self):
        _host_read("int()")
        return super().__int__()

    def __index__(self):
        _host_read("operator.index()")
        return super().__index__()

    def __bool__(self):
        _host_read("bool()")
        return super().__bool__()

    @property
    def data(self):
        """CuPy's MemoryPointer: ``.ptr`` is the address of the first element."""
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])


def on_gpu(value):
    """NumPy results as the fake's arrays (and generators), as CuPy returns its own
    (a 0-d array where NumPy gives a scalar)."""
    if isinstance(value, np.generic) and not isinstance(value, (np.str_, np.bytes_)):
        return np.asarray(value).view(StrictGpuArray)
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
            return on_gpu(_run(function, args, kwargs, qualified_name))
    call.__name__ = qualified_name
    return call


class StrictObject:
    """A ufunc or a random Generator with only the methods CuPy's has."""
    def __init__(self, kind, wrapped):
        self._kind, self._wrapped = kind, wrapped

    def __call__(self, *args, **kwargs):
        return on_gpu(_run(self._wrapped, args, kwargs, self._kind))

    def __getattr__(self, name):
        if name not in API["objects"][self._kind]:
            raise _lacks(f"cupy {self._kind} {getattr(self._wrapped, '__name__', '')}", name)
        if self._kind == "random.Generator" and _STATE.capture is not None:
            _STATE.capture.keep_generator(self._wrapped)
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
        _host_read("Device.synchronize()")


class OutOfMemoryError(MemoryError):
    pass


class Stream:
    """``cupy.cuda.Stream``: ``with stream:`` makes it current; it can capture."""
    null = None                       # the legacy default stream (set below)

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self.ptr = 0 if null else id(self)
        self.is_non_blocking = non_blocking
        self._previous = []

    def __enter__(self):
        self._previous.append(_STATE.current)
        _STATE.current = None if self.ptr == 0 else self
        return self

    def __exit__(self, *exc):
        _STATE.current = self._previous.pop()
        return False

    def synchronize(self):
        _host_read("Stream.synchronize()")

    def is_capturing(self):
        return _STATE.capture is not None and _STATE.capture.stream is self

    def begin_capture(self, mode=None):
        if self.ptr == 0:
            raise CUDARuntimeError("cudaErrorStreamCaptureUnsupported: operation not "
                                   "permitted when stream is capturing (strict fake CuPy: "
                                   "capture on the legacy default stream)")
        if _STATE.capture is not None:
            raise CUDARuntimeError("cudaErrorIllegalState: a capture is already under way")
        _STATE.capture = _Recording(self)

    def end_capture(self):
        recording = _STATE.capture
        if recording is None or recording.stream is not self:
            raise CUDARuntimeError("cudaErrorIllegalState: this stream is not capturing")
        _STATE.capture = None
        recording.restore()
        return Graph(recording)


Stream.null = Stream(null=True)


class Graph:
    """``cupy.cuda.Graph``: made by ``end_capture``; ``launch()`` replays the work."""
    def __init__(self, recording):
        self._recording = recording
        self.launches = 0

    @property
    def allocators(self):
        """(fake only) the allocators in use while the capture allocated"""
        return self._recording.allocators

    def launch(self, stream=None):
        if _STATE.capture is not None:
            raise _capture_error("cudaErrorStreamCaptureUnsupported",
                                 "a graph launched while a capture is under way")
        _replay(self._recording.calls)
        self.launches += 1


class MemoryPool:
    """``cupy.cuda.MemoryPool``: the fake keeps no memory; ``malloc`` is its identity;
    ``released`` (fake only) counts ``free_all_blocks`` calls."""
    def __init__(self, allocator=None):
        self.released = 0

    def malloc(self, size):
        raise NotImplementedError("the strict fake allocates with NumPy")

    def free_all_blocks(self, stream=None):
        _host_read("MemoryPool.free_all_blocks()")     # a cudaFree: not while capturing
        self.released += 1

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_bytes(self):
        return 0


@contextlib.contextmanager
def using_allocator(allocator=None):
    """``cupy.cuda.using_allocator``: the allocator new arrays come from in the block."""
    previous, _STATE.allocator = _STATE.allocator, allocator
    try:
        yield
    finally:
        _STATE.allocator = previous


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
    RawModule = kernel_twins.TwinModule
    GiB = 2**30

    def __init__(self, free_gpu_bytes=100 * GiB, pool_free_bytes=0, compute_capability="90"):
        super().__init__("", np)
        _STATE.reset()                    # a new fake GPU: no stream current, no capture
        self.free_gpu_bytes, self.pool_free_bytes = free_gpu_bytes, pool_free_bytes
        self.mem_get_info_calls = 0
        cublas = FakeCublas()
        self._core = types.SimpleNamespace(_routines_linalg=FakeRoutinesLinalg())
        device = type("Device", (_Device,), {"compute_capability": compute_capability})
        self.cuda = types.SimpleNamespace(
            Device=device, cublas=cublas,
            device=types.SimpleNamespace(get_cublas_handle=lambda: FakeCublas.HANDLE),
            Stream=Stream, Graph=Graph, MemoryPool=MemoryPool,
            using_allocator=using_allocator,
            get_current_stream=lambda: _STATE.current or Stream.null,
            runtime=types.SimpleNamespace(
                getDeviceCount=lambda: 1, memGetInfo=self._mem_get_info,
                CUDARuntimeError=CUDARuntimeError,
                streamCaptureModeGlobal=0, streamCaptureModeThreadLocal=1,
                streamCaptureModeRelaxed=2),
            memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError))
        self.products = []
        StrictGpuArray._fake = self
        self._default_pool = MemoryPool()
        self._default_pool.free_bytes = lambda: self.pool_free_bytes

    def _mem_get_info(self):
        self.mem_get_info_calls += 1
        return self.free_gpu_bytes, 141 * self.GiB

    def record_product(self):
        """The TF32 state a product sees now: (math mode, float32 compute type)."""
        linalg = self._core._routines_linalg
        self.products.append((self.cuda.cublas.getMathMode(FakeCublas.HANDLE),
                              linalg.compute_types.get("f", linalg.COMPUTE_TYPE_DEFAULT)))

    def asarray(self, a, dtype=None, order=None, *, blocking=False):
        """As CuPy's, and a host array is copied (a transfer, not a kernel), as CuPy
        copies it to the device: never sharing memory with the NumPy array."""
        result = StrictModule.__getattr__(self, "asarray")(a, dtype=dtype, order=order)
        if isinstance(a, np.ndarray) and np.may_share_memory(result, a) \
                and not isinstance(a, StrictGpuArray):
            result = np.ndarray.copy(result).view(StrictGpuArray)
        return result

    @staticmethod
    def asnumpy(array):
        _host_read("cupy.asnumpy()")
        return np.array(array).view(np.ndarray)

    def get_default_memory_pool(self):
        return self._default_pool


def install(monkeypatch):
    """A new ``StrictCupy`` where the engine looks for CuPy, with the reference
    kernels for its arrays (what the dispatch gives them when the numba.cuda
    probe fails); returns it."""
    import kernels
    from tinygrad_cnn import backend
    cupy = StrictCupy()
    monkeypatch.setattr(kernels.arrays, "cupy", cupy)
    monkeypatch.setattr(backend, "cupy", cupy)
    monkeypatch.setattr(kernels, "_gpu_kernels", dict(kernels._reference))
    return cupy
