"""kernels/jit.py, the one helper the Numba modules compile through: which
inputs compile, names, compile-once, the prange switch and the disk cache."""
import re
import types
from pathlib import Path

import numpy as np
import pytest

from kernels import (bn_numba, conv_direct_numba, conv_numba, elementwise_numba, jit, pool_numba,
                     winograd_numba)

KERNELS_DIR = Path(jit.__file__).resolve().parent
NUMBA_LOOPS = {          # module -> its compiled-loops function, called with no arguments
    conv_numba: conv_numba._compiled, bn_numba: bn_numba._compiled,
    winograd_numba: winograd_numba._compiled, elementwise_numba: elementwise_numba._compiled,
    pool_numba: pool_numba._adaptive_loops}


@pytest.mark.parametrize("arrays, expected", [
    ((np.zeros(3, np.float32),), True),
    ((np.zeros(3, np.float64), np.zeros((2, 2), np.float32)), True),
    ((np.zeros(3, np.float16),), False),
    ((np.zeros(3, np.int64),), False),
    ((np.zeros(3, np.float32), [1.0, 2.0]), False),
    ((np.zeros(3, np.float32), None), False),
], ids=["float32", "float64-and-float32", "float16", "int64", "a-list", "None"])
def test_compilable_takes_numpy_float32_and_float64_only(arrays, expected):
    assert jit.compilable(*arrays) is expected


def test_loop_names_drop_the_underscore_and_the_loops_suffix():
    assert jit.loop_name(conv_numba._im2col_loops) == "im2col"
    assert jit.loop_name(elementwise_numba._sgd_loop) == "sgd"
    assert jit.loop_name(pool_numba._adaptive_max_backward_loop) == "adaptive_max_backward"


@pytest.mark.parametrize("module", NUMBA_LOOPS, ids=lambda m: m.__name__)
def test_every_module_gets_one_namespace_once_cached_on_disk(module):
    loops = NUMBA_LOOPS[module]()
    assert isinstance(loops, types.SimpleNamespace)
    assert NUMBA_LOOPS[module]() is loops               # compiled once per process
    for name, dispatcher in vars(loops).items():
        # cache=True: the machine code is kept next to the source, in kernels/__pycache__
        assert Path(dispatcher.stats.cache_path).resolve() == KERNELS_DIR / "__pycache__", name


def test_pool_loops_with_the_kernel_size_built_in_are_a_namespace_too():
    loops = pool_numba._loops(2, 2)
    assert isinstance(loops, types.SimpleNamespace)
    assert set(vars(loops)) == {"maxpool_forward", "maxpool_backward", "avgpool_forward",
                                "avgpool_backward", "avgpool_forward_tiled",
                                "avgpool_backward_tiled"}
    assert Path(loops.maxpool_forward.stats.cache_path).resolve() == KERNELS_DIR / "__pycache__"


def test_direct_convolution_loops_with_the_kernel_size_built_in_are_a_namespace_too():
    loops = conv_direct_numba._loops(5, 5, 4)
    assert isinstance(loops, types.SimpleNamespace)
    assert conv_direct_numba._loops(5, 5, 4) is loops
    assert conv_direct_numba._loops(5, 5, 3) is not loops       # a block size of its own
    assert set(vars(loops)) == {"forward", "backward_input", "backward_weight"}
    assert Path(loops.forward.stats.cache_path).resolve() == KERNELS_DIR / "__pycache__"


@pytest.mark.parametrize("module", [conv_numba, winograd_numba],
                         ids=lambda m: m.__name__)
def test_compiling_a_parallel_module_switches_its_prange(module):
    import numba
    module._compiled()
    assert module.prange is numba.prange
    assert all(dispatcher.targetoptions.get("parallel")
               for dispatcher in vars(module._compiled()).values())


def test_serial_modules_are_not_compiled_parallel():
    # the elementwise and pooling loops are memory-bound or threaded by hand
    # (benchmarks/results.md, "Figures behind design choices in kernels/"), and so
    # are the direct convolution's and batch norm's
    for loops in (elementwise_numba._compiled(), pool_numba._adaptive_loops(), bn_numba._compiled(),
                  pool_numba._loops(3, 3), conv_direct_numba._loops(5, 5, 4)):
        assert not any(d.targetoptions.get("parallel") for d in vars(loops).values())


# ---------------------------------------------------------------- comments
FIGURE = re.compile(r"\d+(\.\d+)?(-\d+(\.\d+)?)?x (slower|faster)|\d+(\.\d+)?\s?(µs|us|ms)\b"
                    r"|\d+(\.\d+)?%|seed \d")


def test_kernel_comments_say_why_without_measured_figures():
    # Figures belong in benchmarks/results.md ("Figures behind design choices in kernels/"):
    # in a comment they go stale while the code around them changes.
    found = [f"{path.name}:{number}: {line.strip()}"
             for path in sorted(KERNELS_DIR.glob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if FIGURE.search(line)]
    assert found == []
