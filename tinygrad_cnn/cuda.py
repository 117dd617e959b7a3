"""``tinygrad_cnn.cuda``: is there a GPU, and waiting for it (``torch.cuda``'s names).

    import tinygrad_cnn as tc
    device = "cuda" if tc.cuda.is_available() else "cpu"
    net.to(device)

The GPU backend is CuPy (``pip install -e ".[gpu]"``).  Without it, or
without an NVIDIA GPU, ``is_available()`` is False and moving a tensor to
``'cuda'`` raises a RuntimeError saying which of the two is missing.

GPU work is asynchronous: a CuPy call returns once the kernel is queued.
Timing code must call ``synchronize()`` before reading the clock.

Memory comes from CuPy's default memory pool (``cupy.get_default_memory_pool()``):
a freed array's block is kept for the next allocation of that size, so after the
first training step no step asks the driver for memory.  ``empty_cache()`` gives
the unused blocks back (to another process, say); ``memory_allocated()`` and
``memory_reserved()`` read the pool.
"""
from . import backend


def device_count():
    """Number of CUDA devices CuPy sees (0 without CuPy, a driver or a GPU)."""
    return backend.cuda_device_count()


def is_available():
    """Whether ``'cuda'`` can be used: CuPy is installed and sees a GPU."""
    return device_count() > 0


def synchronize(device="cuda"):
    """Wait until every kernel queued on ``device`` has finished."""
    device = backend.require_device(device)
    with backend.cupy.cuda.Device(int(device.split(":")[1])):
        backend.cupy.cuda.Device().synchronize()


def _memory_pool():
    """CuPy's default memory pool, or None where there is no GPU (CuPy then
    raises CUDARuntimeError on any use of it)."""
    return backend.cupy.get_default_memory_pool() if is_available() else None


def empty_cache():
    """Give the memory pool's unused blocks back to the driver (no-op without a GPU)."""
    pool = _memory_pool()
    if pool is not None:
        pool.free_all_blocks()
        release_graph_memory()          # and those of CUDA graphs no longer replayed


def memory_allocated():
    """Bytes held by live GPU arrays (0 without a GPU)."""
    pool = _memory_pool()
    return 0 if pool is None else pool.used_bytes()


def memory_reserved():
    """Bytes the pool holds from the driver, live arrays and cached blocks (0 without a GPU)."""
    pool = _memory_pool()
    return 0 if pool is None else pool.total_bytes()


# A GPU convolution should build its columns for the whole batch at once and
# run one matrix product: every chunk costs kernel launches and host time, and
# the CPU's bound (a cache-sized 4 MB per chunk) would split a GPU convolution
# into many.  A chunk's columns are live together with about as much again (the
# product's output; in backward the column gradient), so a quarter of what is
# free is the bound, and never less than 16 MB (``floor``, the CPU's bound
# before it was measured per thread).
GPU_COLUMN_FRACTION = 0.25


def column_budget(free_bytes=None, floor=16 * 2**20):
    """Bytes of im2col columns (or Winograd tiles) one GPU convolution chunk may
    build: ``GPU_COLUMN_FRACTION`` of the GPU memory free now (the driver's
    free memory plus the blocks CuPy's pool holds unused), at least
    ``floor``.  ``free_bytes`` overrides the measurement (for tests)."""
    if free_bytes is None:
        free_bytes = free_memory()
    if free_bytes < 0:
        raise ValueError(f"column_budget: free_bytes must be >= 0, got {free_bytes}")
    return max(int(free_bytes * GPU_COLUMN_FRACTION), floor)


def free_memory(device="cuda"):
    """Bytes a new GPU array can take on ``device`` without an out-of-memory
    error: free driver memory plus the pool's unused blocks."""
    device = backend.require_device(device)
    with backend.cupy.cuda.Device(int(device.split(":")[1])):
        driver_free, _ = backend.cupy.cuda.runtime.memGetInfo()
        return int(driver_free) + int(backend.cupy.get_default_memory_pool().free_bytes())


# ---------------------------------------------------------------- GPU convolutions' budget
# Measured once per device, then kept: a driver call and a pool query per
# convolution would cost host time on every layer, and worse, chunks that
# follow what the pool happens to hold would change from step to step (other
# allocation sizes, other kernels: no fixed sequence for a CUDA graph to
# capture).  The first measure comes early, at the first convolution, when
# most memory is free; a convolution that then runs out of memory measures
# again (``refresh=True``, ops/conv.py ``run_in_chunks``) and retries with
# the smaller budget.
_conv_column_budgets = {}       # device id -> bytes


def conv_column_budget(device_id=0, refresh=False):
    """The column budget of convolutions on GPU ``device_id``: ``column_budget()``
    of its free memory, measured at the first call (or with ``refresh``) and kept."""
    if refresh or device_id not in _conv_column_budgets:
        _conv_column_budgets[device_id] = column_budget(free_memory(f"cuda:{device_id}"))
    return _conv_column_budgets[device_id]


# CUDA Graphs (tinygrad_cnn/cuda_graphs.py): torch.cuda's names.
from .cuda_graphs import (CUDAGraph, GraphCaptureError, GraphedStep,  # noqa: E402,F401
                          GraphShapeError, graph, is_current_stream_capturing,
                          make_graphed_step, release_graph_memory)
