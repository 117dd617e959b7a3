"""Devices without a GPU: tinygrad_cnn.cuda, the errors for a missing CuPy or
GPU, mixed devices, out-of-memory, and the kernels' CuPy dispatch.

CuPy is faked where a test needs it: ``FakeCupy`` holds an ndarray type (a
NumPy subclass, so that ops can still compute), a device count and CuPy's
out-of-memory class.  Only what the engine looks at is faked.
"""
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import kernels
import tinygrad_cnn as tc
from kernels import conv_numpy
from tinygrad_cnn import backend, nn
from tinygrad_cnn.autograd import DeviceMismatchError
from tinygrad_cnn.cli import main
from tinygrad_cnn.data import DataLoader
from tinygrad_cnn.train import evaluate, fit

# devices and errors call no kernel (the dispatch itself is tested under both sets in
# tests/kernels/test_dispatch.py): run under the first kernel set only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free


ROOT = Path(__file__).resolve().parents[1]


class FakeGpuArray(np.ndarray):
    """Stands for a cupy.ndarray on cuda:0."""
    device = types.SimpleNamespace(id=0)


class FakeOutOfMemoryError(MemoryError):
    pass


def fake_cupy(device_count=1, count_raises=False):
    def get_device_count():
        if count_raises:
            raise RuntimeError("cudaErrorNoDevice")     # what CuPy does without a driver
        return device_count
    cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=get_device_count),
        memory=types.SimpleNamespace(OutOfMemoryError=FakeOutOfMemoryError))
    return types.SimpleNamespace(ndarray=FakeGpuArray, cuda=cuda)


@pytest.fixture
def no_cupy(monkeypatch):
    monkeypatch.setattr(kernels.arrays, "cupy", None)
    monkeypatch.setattr(backend, "cupy", None)
    monkeypatch.setattr(backend, "cupy_import_error", ImportError("No module named 'cupy'"))


@pytest.fixture
def with_cupy(monkeypatch):
    """Install a fake CuPy (call with its settings) where the engine and the
    kernels look for it."""
    def install(**settings):
        cupy = fake_cupy(**settings)
        monkeypatch.setattr(kernels.arrays, "cupy", cupy)
        monkeypatch.setattr(backend, "cupy", cupy)
    return install


def pairs(n=4):
    """A data set of ``n`` (image, label) pairs: two features, classes 0 and 1."""
    return [(np.ones(2, np.float32), k % 2) for k in range(n)]


def on_gpu(array):
    return tc.Tensor(np.asarray(array, dtype=np.float32).view(FakeGpuArray))


# ---------------------------------------------------------------- tinygrad_cnn.cuda
def test_no_cupy_means_no_device(no_cupy):
    assert tc.cuda.device_count() == 0 and tc.cuda.is_available() is False
    assert tc.cuda.memory_allocated() == 0
    tc.cuda.empty_cache()       # nothing to free, and no error


@pytest.mark.parametrize("settings, count", [(dict(device_count=2), 2),
                                             (dict(device_count=0), 0),
                                             (dict(count_raises=True), 0)])
def test_device_count_asks_cupy(with_cupy, settings, count):
    with_cupy(**settings)
    assert tc.cuda.device_count() == count
    assert tc.cuda.is_available() is (count > 0)


def test_memory_figures_are_zero_without_a_gpu(with_cupy):
    with_cupy(device_count=0)      # the pool is not touched: CuPy would raise
    assert tc.cuda.memory_allocated() == 0 and tc.cuda.memory_reserved() == 0
    tc.cuda.empty_cache()


def test_tensors_report_their_device(with_cupy):
    with_cupy()
    assert tc.ones(2).device == "cpu"
    assert on_gpu([1.0, 2.0]).device == "cuda:0"


# ---------------------------------------------------------------- clear errors
CUPY_MISSING = r'needs CuPy, but CuPy is not installed: install the GPU extra with pip install -e "\.\[gpu\]"'


@pytest.mark.parametrize("move", [
    lambda: tc.ones(2).to("cuda"),
    lambda: tc.ones(2).cuda(),
    lambda: tc.zeros(2, device="cuda"),
    lambda: nn.Linear(2, 2).to("cuda"),
    lambda: DataLoader(pairs(), 2, device="cuda"),
    lambda: tc.cuda.synchronize(),
], ids=["Tensor.to", "Tensor.cuda", "creation", "Module.to", "DataLoader", "synchronize"])
def test_cuda_without_cupy_says_how_to_install(no_cupy, move):
    with pytest.raises(RuntimeError, match=CUPY_MISSING):
        move()


def test_a_cupy_that_fails_to_load_is_named(monkeypatch):
    monkeypatch.setattr(backend, "cupy", None)
    monkeypatch.setattr(backend, "cupy_import_error", OSError("libcudart.so.12: not found"))
    with pytest.raises(RuntimeError, match="CuPy failed to load.*libcudart"):
        tc.ones(2).to("cuda")


def test_a_missing_cupy_import_is_recorded():
    """The real import path: with ``import cupy`` failing, backend keeps the ImportError."""
    code = ("import sys; sys.modules['cupy'] = None\n"   # makes `import cupy` raise ImportError
            "from tinygrad_cnn import backend\n"
            "assert backend.cupy is None\n"
            "assert isinstance(backend.cupy_import_error, ImportError)\n"
            "try:\n    backend.require_device('cuda')\nexcept RuntimeError as e:\n"
            "    print(e)\n")
    # (cwd and PYTHONPATH: this checkout's tinygrad_cnn, not an installed one)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert "CuPy is not installed" in proc.stdout


@pytest.mark.parametrize("settings", [dict(device_count=0), dict(count_raises=True)])
def test_cupy_without_a_gpu_says_no_device_was_found(with_cupy, settings):
    with_cupy(**settings)
    with pytest.raises(RuntimeError, match="CuPy is installed but no CUDA device was found"):
        tc.ones(2).to("cuda")


def test_a_device_index_past_the_last_gpu(with_cupy):
    with_cupy(device_count=1)
    with pytest.raises(RuntimeError, match=r"'cuda:1' does not exist: CuPy sees 1 CUDA"):
        backend.require_device("cuda:1")
    assert backend.require_device("cuda") == "cuda:0"


def test_fit_checks_the_device_before_training(no_cupy):
    net = nn.Linear(2, 2)
    before = net.weight.data.copy()
    loader = DataLoader(pairs(), 2)
    with pytest.raises(RuntimeError, match=CUPY_MISSING):
        fit(net, loader, None, 1, 0.1, device="cuda", init=None, progress=False,
            verbose=False)
    np.testing.assert_array_equal(net.weight.data, before)


def test_cli_reports_a_missing_cupy_in_one_line(no_cupy, tmp_path, capsys):
    code = main(["train", "lenet", "--device", "cuda", "--data-dir", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 1
    assert "needs CuPy" in err and 'pip install -e ".[gpu]"' in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- mixed devices
@pytest.mark.parametrize("op, name", [
    (lambda a, b: a + b, "Add"),
    (lambda a, b: a * b, "Mul"),
    (lambda a, b: a.reshape(1, 4) @ b.reshape(4, 1), "MatMul"),
])
def test_mixed_devices_raise_naming_the_op_and_both_devices(with_cupy, op, name):
    with_cupy()
    gpu, cpu = on_gpu(np.ones(4)), tc.ones(4)
    for a, b, first, second in ((gpu, cpu, "cuda:0", "cpu"), (cpu, gpu, "cpu", "cuda:0")):
        with pytest.raises(ValueError) as info:
            op(a, b)
        message = str(info.value)
        assert isinstance(info.value, DeviceMismatchError)
        assert message.startswith(f"{name}: inputs are on different devices")
        assert f"input 0 on {first}, input 1 on {second}" in message


def test_mixed_devices_in_a_layer(with_cupy):
    with_cupy()
    layer = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="different devices.*cuda:0.*cpu"):
        layer(on_gpu(np.ones((1, 4))))


def test_same_device_inputs_pass_the_check(with_cupy):
    with_cupy()
    np.testing.assert_array_equal((tc.ones(3) + tc.ones(3)).numpy(), [2, 2, 2])


# ---------------------------------------------------------------- out of memory
class ExhaustsMemory(nn.Module):
    """A network whose forward runs out of (fake) GPU memory."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 2)

    def forward(self, x):
        raise FakeOutOfMemoryError("out of memory allocating 4,294,967,296 bytes")


def test_fit_turns_gpu_out_of_memory_into_advice(with_cupy):
    with_cupy()
    loader = DataLoader(pairs(), 2)
    with pytest.raises(backend.OutOfMemoryError) as info:
        fit(ExhaustsMemory(), loader, None, 1, 0.1, init=None, progress=False, verbose=False)
    message = str(info.value)
    assert message.startswith("fit: training in epoch 1: the GPU ran out of memory")
    assert "4,294,967,296 bytes" in message and "smaller batch size" in message
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value.__cause__, FakeOutOfMemoryError)


def test_evaluate_turns_gpu_out_of_memory_into_advice(with_cupy):
    with_cupy()
    loader = DataLoader(pairs(), 2)
    with pytest.raises(backend.OutOfMemoryError, match="^evaluate: the GPU ran out"):
        evaluate(ExhaustsMemory(), loader)


def test_other_errors_pass_through_unchanged(no_cupy):
    with pytest.raises(MemoryError) as info:
        with backend.explain_out_of_memory("step"):
            raise MemoryError("host memory")
    assert type(info.value) is MemoryError


# ---------------------------------------------------------------- kernel dispatch
X = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
GEOMETRY = dict(kernel_size=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1))


def test_without_cupy_numpy_arrays_run_the_sets_kernels(no_cupy, kernel_set):
    assert kernels.which("im2col", X) == f"kernels.conv_{kernel_set}.im2col"
    np.testing.assert_array_equal(kernels.im2col(X, **GEOMETRY),
                                  conv_numpy.im2col(X, **GEOMETRY))


def test_cupy_arrays_go_to_the_gpu_kernels(with_cupy, monkeypatch):
    with_cupy()
    calls = []

    def gpu_im2col(x, *args, **kwargs):
        calls.append(type(x))
        return "from the GPU kernel"
    monkeypatch.setattr(kernels, "_gpu_kernels", {"im2col": gpu_im2col})
    assert kernels.im2col(X.view(FakeGpuArray), **GEOMETRY) == "from the GPU kernel"
    np.testing.assert_array_equal(kernels.im2col(X, **GEOMETRY),
                                  conv_numpy.im2col(X, **GEOMETRY))
    assert calls == [FakeGpuArray]     # whatever the set: the test runs under both


ADAPTIVE = ("adaptive_avgpool2d_forward", "adaptive_avgpool2d_backward",
            "adaptive_maxpool2d_forward", "adaptive_maxpool2d_backward")
ELEMENTWISE = ("relu_forward", "relu_backward", "sigmoid_forward", "sigmoid_backward",
               "sgd_update",
               "sgd_update_multi", "adam_update", "adam_update_multi")
WINOGRAD = ("winograd_weight", "winograd_weight_backward", "winograd_input",
            "winograd_input_backward", "winograd_output", "winograd_output_backward")
CONV_DIRECT = ("conv_direct_forward", "conv_direct_backward_input", "conv_direct_backward_weight")


def test_gpu_kernels_fall_back_to_the_reference_without_numba_cuda(monkeypatch):
    monkeypatch.setattr(kernels, "_gpu_kernels", None)
    monkeypatch.setattr(kernels.cuda_probe, "why_not", lambda: "ImportError: no numba.cuda")
    with pytest.warns(UserWarning, match=r"\(ImportError: no numba.cuda\).*NumPy reference kernels on the GPU"):
        chosen = kernels.gpu_kernels()
    assert {name: f.__module__ for name, f in chosen.items()} == {
        "im2col": "kernels.conv_numpy", "col2im": "kernels.conv_numpy",
        "maxpool2d_forward": "kernels.pool_numpy", "maxpool2d_backward": "kernels.pool_numpy",
        "avgpool2d_forward": "kernels.pool_numpy", "avgpool2d_backward": "kernels.pool_numpy",
        "batchnorm_forward_train": "kernels.bn_numpy", "batchnorm_backward": "kernels.bn_numpy",
        "batchnorm_forward_eval": "kernels.bn_numpy",
        **{name: "kernels.pool_numpy" for name in ADAPTIVE},
        **{name: "kernels.elementwise_numpy" for name in ELEMENTWISE},
        **{name: "kernels.winograd_numpy" for name in WINOGRAD},
        **{name: "kernels.conv_direct_numpy" for name in CONV_DIRECT},
        "matmul": "kernels.shares_numpy", "matmuls": "kernels.shares_numpy",
        "map_chunks": "kernels.shares_numpy", "concatenate": "kernels.shares_numpy",
        "transpose": "kernels.shares_numpy"}


def test_gpu_kernels_are_the_cuda_ones_when_numba_reaches_the_gpu(monkeypatch):
    monkeypatch.setattr(kernels, "_gpu_kernels", None)
    monkeypatch.setattr(kernels.cuda_probe, "why_not", lambda: None)
    chosen = kernels.gpu_kernels()
    assert sorted(chosen) == sorted(kernels.KERNELS)
    assert {f.__module__ for name, f in chosen.items()
            if name not in ADAPTIVE + ELEMENTWISE + WINOGRAD + CONV_DIRECT
            + ("matmul", "matmuls", "map_chunks", "concatenate", "transpose",
               "batchnorm_forward_eval")} == {
        "kernels.conv_cuda", "kernels.pool_cuda", "kernels.bn_cuda"}
    # Adaptive pooling has no CUDA loops: its reference is matrix products
    # (cuBLAS on CuPy arrays) and, for the global pool, a mean.  Nor have the
    # elementwise kernels: CuPy runs each reference expression as one GPU kernel;
    # nor the Winograd transforms or the direct convolution (einsum on CuPy
    # arrays); the stacked products are cuBLAS's, through CuPy's matmul, and a
    # concatenation or a transposing copy is CuPy's.
    assert {chosen[name].__module__ for name in ADAPTIVE} == {"kernels.pool_numpy"}
    assert {chosen[name].__module__ for name in ("matmul", "matmuls", "map_chunks",
                                                 "concatenate", "transpose")} == {
        "kernels.shares_numpy"}
    assert {chosen[name].__module__ for name in ELEMENTWISE} == {"kernels.elementwise_numpy"}
    assert {chosen[name].__module__ for name in WINOGRAD} == {"kernels.winograd_numpy"}
    assert {chosen[name].__module__ for name in CONV_DIRECT} == {"kernels.conv_direct_numpy"}
