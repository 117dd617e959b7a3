"""Write ``cupy_api.json``: the names CuPy defines and the keyword arguments its
functions take, which ``strict_cupy.py`` holds the engine to on the CPU.

    pip install --no-deps --target /tmp/cupy cupy-cuda12x cuda-pathfinder fastrlock
    PYTHONPATH=/tmp/cupy python tests/cupy_api/make_table.py

(``import cupy`` needs no GPU.)  For each module the engine reaches through
``xp`` (cupy, cupy.random, cupy.linalg, cupy.lib, cupy.lib.stride_tricks): every public
name, and for functions with a Python signature the parameter names (None:
no signature to read, e.g. a Cython function or ``**kwargs``, so any keyword
passes).  Also the attributes of ``cupy.ndarray``, of its ufuncs and of
``cupy.random.Generator``.
"""
import inspect
import json
import os
from pathlib import Path

import cupy

MODULES = {"": cupy, "random": cupy.random, "linalg": cupy.linalg, "lib": cupy.lib,
           "lib.stride_tricks": cupy.lib.stride_tricks}
OBJECTS = {"ndarray": cupy.ndarray, "ufunc": cupy.add,
           "random.Generator": cupy.random.Generator}


def keywords(function):
    """The parameter names a call may pass by keyword, or None when any may be."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return sorted(p.name for p in parameters
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def table():
    modules = {}
    for prefix, module in MODULES.items():
        names = {}
        for name in dir(module):
            if name.startswith("_"):
                continue
            value = getattr(module, name)
            names[name] = keywords(value) if callable(value) and not isinstance(value, type) \
                else None
        modules[prefix] = names
    objects = {label: sorted(n for n in dir(obj) if not n.startswith("_"))
               for label, obj in OBJECTS.items()}
    return {"cupy_version": cupy.__version__, "modules": modules, "objects": objects}


if __name__ == "__main__":
    target = Path(__file__).with_name("cupy_api.json")
    temporary = target.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(table(), indent=0, sort_keys=True) + "\n")
    os.replace(temporary, target)
    print(f"wrote {target}")
