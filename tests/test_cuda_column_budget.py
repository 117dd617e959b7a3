"""tinygrad_cnn.cuda.column_budget: a GPU convolution's chunk bound from free GPU
memory, never below the CPU's; free_memory read through a fake CuPy."""
import types

import pytest

import kernels
from tinygrad_cnn import backend, cuda

pytestmark = pytest.mark.kernel_free      # arithmetic on memory figures: no kernel runs

GiB = 2**30


def test_a_quarter_of_free_memory_with_a_16_mb_floor():
    assert cuda.column_budget(free_bytes=100 * GiB) == 25 * GiB
    assert cuda.column_budget(free_bytes=10 * 2**20) == 16 * 2**20     # nearly full GPU
    assert cuda.column_budget(free_bytes=0, floor=1024) == 1024
    with pytest.raises(ValueError, match="free_bytes must be >= 0"):
        cuda.column_budget(free_bytes=-1)


class FakeDevice:
    def __init__(self, index):
        self.index = index

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_free_memory_is_the_drivers_free_memory_plus_the_pools_unused_blocks(monkeypatch):
    fake = types.SimpleNamespace(
        ndarray=type("FakeArray", (), {}),
        get_default_memory_pool=lambda: types.SimpleNamespace(free_bytes=lambda: 3 * GiB),
        cuda=types.SimpleNamespace(
            Device=FakeDevice,
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1,
                                          memGetInfo=lambda: (5 * GiB, 140 * GiB))))
    monkeypatch.setattr(backend, "cupy", fake)
    monkeypatch.setattr(kernels.arrays, "cupy", fake)
    assert cuda.free_memory() == 8 * GiB
    assert cuda.column_budget() == 2 * GiB


def test_a_devices_conv_budget_is_measured_once_and_again_on_refresh(monkeypatch):
    free = [5 * GiB]
    calls = []

    def mem_get_info():
        calls.append(1)
        return free[0], 140 * GiB
    fake = types.SimpleNamespace(
        ndarray=type("FakeArray", (), {}),
        get_default_memory_pool=lambda: types.SimpleNamespace(free_bytes=lambda: 3 * GiB),
        cuda=types.SimpleNamespace(
            Device=FakeDevice,
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, memGetInfo=mem_get_info)))
    monkeypatch.setattr(backend, "cupy", fake)
    monkeypatch.setattr(kernels.arrays, "cupy", fake)
    monkeypatch.setattr(cuda, "_conv_column_budgets", {})
    assert cuda.conv_column_budget(0) == 2 * GiB
    free[0] = 1 * GiB                               # the GPU filled up: not seen ...
    assert cuda.conv_column_budget(0) == 2 * GiB and len(calls) == 1
    assert cuda.conv_column_budget(0, refresh=True) == GiB     # ... until asked again
    assert cuda.conv_column_budget(0) == GiB and len(calls) == 2
