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
"""
import json
import types
from pathlib import Path

import numpy as np

API = json.loads(Path(__file__).with_name("cupy_api.json").read_text())
CUPY = f"CuPy {API['cupy_version']}"


def _lacks(what, name):
    return AttributeError(f"{what} has no attribute {name!r} in {CUPY} (a NumPy-only name "
                          "on the CuPy path)")


class StrictGpuArray(np.ndarray):
    """Stands for a cupy.ndarray on cuda:0: only CuPy's array attributes."""
    device = types.SimpleNamespace(id=0)

    def __getattribute__(self, name):
        if not name.startswith("_") and name not in API["objects"]["ndarray"]:
            raise _lacks("cupy.ndarray", name)
        return super().__getattribute__(name)


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


class StrictCupy(StrictModule):
    """The module the engine finds in place of ``cupy``: one GPU, cuda:0."""
    ndarray = StrictGpuArray

    def __init__(self):
        super().__init__("", np)
        self.cuda = types.SimpleNamespace(
            Device=_Device,
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
            memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError))

    @staticmethod
    def asnumpy(array):
        return np.array(array).view(np.ndarray)

    @staticmethod
    def get_default_memory_pool():
        return types.SimpleNamespace(used_bytes=lambda: 0, total_bytes=lambda: 0,
                                     free_all_blocks=lambda: None)
