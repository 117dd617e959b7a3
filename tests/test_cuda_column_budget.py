"""tinygrad_cnn.cuda.column_budget: a GPU convolution's chunk bound from free GPU
memory, never below the CPU's; free_memory read through a fake CuPy."""
import types

import pytest

import kernels
from tinygrad_cnn import backend, cuda

pytestmark = pytest.mark.kernel_free      # arithmetic on memory figures: no kernel runs

GiB = 2**30


def test_a_quarter_of_free_memory_with_the_cpu_budget_as_floor():
    assert cuda.column_budget(free_bytes=100 * GiB) == 25 * GiB
    assert cuda.column_budget(free_bytes=10 * 2**20) == 16 * 2**20     # nearly full GPU
    assert cuda.column_budget(free_bytes=0, cpu_budget=1024) == 1024
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
