"""kernels/__init__.py: one function per kernel, one dispatch rule
(set -> device -> dtype), ``which`` naming what runs, and a package that
imports nothing from the engine above it."""
import ast
import importlib
import inspect
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import kernels

ROOT = Path(__file__).resolve().parents[2]
X = np.zeros((1, 2, 5, 5), dtype=np.float32)


class FakeGpuArray:
    """Stands for a cupy.ndarray: not a NumPy array, as CuPy's are not."""
    dtype = np.dtype(np.float32)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A fake CuPy whose arrays are FakeGpuArray; the GPU kernels chosen afresh."""
    monkeypatch.setattr(kernels.arrays, "cupy", types.SimpleNamespace(ndarray=FakeGpuArray))
    monkeypatch.setattr(kernels, "_gpu_kernels", None)
    return monkeypatch


# ---------------------------------------------------------------- the functions
@pytest.mark.parametrize("name", kernels.KERNELS)
def test_every_kernel_is_a_function_of_the_package_with_its_references_signature(name):
    dispatcher = getattr(kernels, name)
    assert dispatcher.__module__ == "kernels" and dispatcher.__name__ == name
    assert dispatcher.__doc__
    reference = kernels._reference[name]
    assert inspect.signature(dispatcher) == inspect.signature(reference)
    implementations = [module for overlays in [*kernels.OVERLAYS.values(), kernels.GPU_OVERLAYS,
                                               kernels.FUSED_OVERLAYS]
                       for module, names in overlays.items() if name in names]
    for module_name in implementations:
        function = getattr(importlib.import_module(module_name), name)
        assert inspect.signature(function) == inspect.signature(reference), module_name


def test_overlays_list_every_kernel_their_modules_define():
    # A kernel written in a *_numba.py module but not listed would never run.
    for module_name, names in kernels.OVERLAYS["numba"].items():
        module = importlib.import_module(module_name)
        defined = {name for name in kernels.KERNELS if hasattr(module, name)}
        assert defined == set(names), module_name


def test_the_numba_set_is_the_reference_with_its_overlays_laid_over(kernel_set):
    kernels.set_kernels("numba")
    overlaid = {name: module for module, names in kernels.OVERLAYS["numba"].items()
                for name in names}
    for name in kernels.KERNELS:
        expected = overlaid.get(name, kernels._reference[name].__module__)
        assert kernels.which(name, X) == f"{expected}.{name}"


def test_no_globals_update_in_the_package():
    source = (ROOT / "kernels" / "__init__.py").read_text()
    assert "globals()" not in source and "vars(" not in source


# ---------------------------------------------------------------- the rule
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_which_names_the_sets_kernel_for_float_arrays(kernel_set, dtype):
    col = np.zeros((1, 18, 25), dtype=dtype)
    assert kernels.which("col2im", col) == f"kernels.conv_{kernel_set}.col2im"
    assert (kernels.which("maxpool2d_forward", col)
            == f"kernels.pool_{kernel_set}.maxpool2d_forward")


@pytest.mark.parametrize("dtype", [np.float16, np.int64])
def test_other_dtypes_run_the_reference_under_every_set(kernel_set, dtype):
    x = X.astype(dtype)
    assert kernels.which("im2col", x) == "kernels.conv_numpy.im2col"
    assert kernels.which("relu_forward", x) == "kernels.elementwise_numpy.relu_forward"


def test_non_arrays_run_the_reference(kernel_set):
    assert kernels.which("relu_forward", [1.0, -2.0]) == "kernels.elementwise_numpy.relu_forward"


def test_the_dispatcher_runs_the_function_which_names(kernel_set, monkeypatch):
    calls = []
    chosen = kernels._cpu["im2col"]

    def spy(*args):
        calls.append(args[0])
        return chosen(*args)
    monkeypatch.setitem(kernels._cpu, "im2col", spy)
    args = ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    kernels.im2col(X, *args)
    kernels.im2col(X.astype(np.float16), *args)      # the reference: not the spy
    assert len(calls) == 1 and calls[0] is X


def test_gpu_arrays_go_to_the_reference_without_numba_cuda(fake_gpu, kernel_set):
    fake_gpu.setattr(kernels.cuda_probe, "why_not", lambda: "ImportError: no numba.cuda")
    fake_gpu.setattr(kernels.fused_cupy, "why_not", lambda: "CompileException: no NVRTC")
    with pytest.warns(UserWarning) as warned:
        assert kernels.which("col2im", FakeGpuArray()) == "kernels.conv_numpy.col2im"
    assert [str(w.message).split(" (")[1].split(")")[0] for w in warned] == [
        "ImportError: no numba.cuda", "CompileException: no NVRTC"]     # one each, saying why
    assert "NumPy reference kernels on the GPU" in str(warned[0].message)
    assert (kernels.which("relu_backward", FakeGpuArray())
            == "kernels.elementwise_numpy.relu_backward")
    assert (kernels.which("sgd_update_multi", FakeGpuArray())
            == "kernels.elementwise_numpy.sgd_update_multi")


def test_gpu_arrays_go_to_the_fused_kernels_where_only_they_run(fake_gpu, kernel_set):
    fake_gpu.setattr(kernels.cuda_probe, "why_not", lambda: "ImportError: no numba.cuda")
    fake_gpu.setattr(kernels.fused_cupy, "why_not", lambda: None)
    with pytest.warns(UserWarning, match="numba.cuda"):
        assert kernels.which("col2im", FakeGpuArray()) == "kernels.conv_numpy.col2im"
    for name in ("relu_forward", "relu_backward", "sigmoid_forward", "sigmoid_backward",
                 "batchnorm_forward_train",
                 "batchnorm_backward", "sgd_update", "sgd_update_multi", "adam_update_multi"):
        assert kernels.which(name, FakeGpuArray()) == f"kernels.fused_cupy.{name}"
    assert kernels.which("adam_update", FakeGpuArray()) == "kernels.elementwise_numpy.adam_update"


def test_gpu_arrays_go_to_the_cuda_kernels_whatever_the_set(fake_gpu, kernel_set):
    fake_gpu.setattr(kernels.cuda_probe, "why_not", lambda: None)
    fake_gpu.setattr(kernels.fused_cupy, "why_not", lambda: "CompileException: no NVRTC")
    assert kernels.which("col2im", FakeGpuArray()) == "kernels.conv_cuda.col2im"
    assert (kernels.which("batchnorm_backward", FakeGpuArray())
            == "kernels.bn_cuda.batchnorm_backward")
    # no CUDA version: the reference, which CuPy runs
    assert (kernels.which("winograd_input", FakeGpuArray())
            == "kernels.winograd_numpy.winograd_input")
    # a NumPy array still runs the CPU set
    assert kernels.which("col2im", X) == f"kernels.conv_{kernel_set}.col2im"


def test_which_rejects_an_unknown_kernel():
    with pytest.raises(ValueError, match="unknown kernel 'conv2d'"):
        kernels.which("conv2d", X)


def test_set_kernels_rejects_an_unknown_set():
    with pytest.raises(ValueError, match="unknown kernel set 'cuda'"):
        kernels.set_kernels("cuda")


# ---------------------------------------------------------------- layering
def test_importing_kernels_imports_nothing_from_tinygrad_cnn():
    modules = sorted(f"kernels.{path.stem}" for path in (ROOT / "kernels").glob("*.py")
                     if path.stem != "__init__")
    code = ("import sys, importlib\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "assert 'tinygrad_cnn' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith('tinygrad_cnn'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_kernels_module_names_tinygrad_cnn_in_an_import():
    for path in sorted((ROOT / "kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not any(n.split(".")[0] == "tinygrad_cnn" for n in names), (path.name, names)
