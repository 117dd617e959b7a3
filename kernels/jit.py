"""Compiling the ``*_numba.py`` loops: one helper for the five modules.

Each Numba module writes its loops as plain Python functions over NumPy
arrays and hands them to ``on_first_use``, which gives back ``_compiled``:
call it to get the compiled loops as a namespace, ``_compiled().im2col`` for
the function ``_im2col_loops`` (the name without its leading ``_`` and its
``_loops``/``_loop`` suffix).  What every module gets the same way:

- **Compile on first use.**  ``import numba`` alone is slow (a noticeable
  part of a second, benchmarks/results.md), so nothing here imports it
  until a loop is first needed; until
  then the loops are ordinary Python (which also lets you step through them
  in a debugger, slowly).  ``import tinygrad_cnn`` never imports Numba.
- **The on-disk cache.**  Every loop is compiled with ``cache=True``: Numba
  keeps the machine code in ``kernels/__pycache__`` and later processes load
  it instead of compiling again.
- **The prange switch.**  A parallel module declares ``prange = range`` at
  its top and writes ``for i in prange(n)`` for the loop to split over
  threads; compiling with ``parallel=True`` sets that module's ``prange`` to
  ``numba.prange`` first, so the compiled loop runs on all cores (and the
  uncompiled one stays a plain ``range`` loop).
- **Which inputs compile.**  ``compilable(*arrays)``: only NumPy float32 and
  float64 arrays reach the loops.  Anything else (CuPy arrays, which live on
  the GPU; float16; integer arrays) is handed by each kernel to its NumPy
  reference, which runs on every device and dtype.
"""
import functools
import types

import numpy as np

from . import threads

COMPILED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def compilable(*arrays):
    """Whether every one of ``arrays`` is a NumPy float32/float64 array."""
    for a in arrays:
        if not (isinstance(a, np.ndarray) and a.dtype in COMPILED_DTYPES):
            return False
    return True


def writable_over(gy, overwrite_gy):
    """Whether a backward loop may write its result over ``gy``: allowed
    (``overwrite_gy``), and gy a C-contiguous writable array (the loops walk
    it flat, or as an (N, C, L) view of it)."""
    return overwrite_gy and gy.flags.c_contiguous and gy.flags.writeable


def compile_loops(*loops, parallel=False, **options):
    """Import Numba and compile ``loops`` -> a namespace of the compiled functions.

    ``parallel`` turns on Numba's parallel loops (and the ``prange`` switch,
    see the module docstring); ``options`` go to ``numba.njit`` as they are
    (``nogil``, ``fastmath``, ``error_model``).  Every loop is cached on disk.
    """
    import numba
    # Before anything starts Numba's threads: its threading layer and thread
    # count (kernels/threads.py).
    threads.apply_to_numba()
    if parallel:
        for loop in loops:
            if "prange" in loop.__globals__:
                loop.__globals__["prange"] = numba.prange   # read when the loop compiles
    jit = numba.njit(cache=True, parallel=parallel, **options)
    return types.SimpleNamespace(**{loop_name(loop): jit(loop) for loop in loops})


def on_first_use(*loops, parallel=False, **options):
    """A function that compiles ``loops`` at its first call (``compile_loops``)
    and returns the same namespace from then on."""
    @functools.cache
    def compiled():
        return compile_loops(*loops, parallel=parallel, **options)
    compiled.__doc__ = ("The compiled loops " + ", ".join(map(loop_name, loops)) + " (compiled "
                        "at the first call; later processes load Numba's disk cache).")
    return compiled


def for_shares(*loops, **options):
    """``on_first_use`` of the same loops compiled for one thread with the GIL
    released: what a parallel module's kernel runs inside a share of split
    work (``threads.in_share()``, ``shares_threads.map_chunks``), where
    several threads each run a whole chunk.  (``prange`` is ``range`` when
    ``parallel`` is off.)  Each loop is compiled as a copy whose qualified
    name ends in ``_in_share``: Numba's disk cache files a loop under its
    name, and would otherwise hand one version's machine code to the other."""
    return on_first_use(*map(_in_share_copy, loops), nogil=True, **options)


def _in_share_copy(loop):
    copy = types.FunctionType(loop.__code__, loop.__globals__, loop.__name__,
                              loop.__defaults__, loop.__closure__)
    copy.__qualname__ = loop.__qualname__ + "_in_share"
    copy.__doc__ = loop.__doc__
    return copy


def loop_name(loop):
    """``_im2col_loops`` -> ``im2col``: how the namespace names a compiled loop."""
    name = loop.__name__.lstrip("_")
    for suffix in ("_loops", "_loop"):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name
