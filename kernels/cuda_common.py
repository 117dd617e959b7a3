"""What the ``*_cuda.py`` kernels share: launching one thread per element.

The kernels are written with ``numba.cuda``.  They take CuPy arrays without
a copy (Numba reads CuPy's ``__cuda_array_interface__``) and, under Numba's
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), NumPy arrays: that is how the
tests check them on a machine without a GPU.  CuPy and Numba both queue work
on the legacy default stream, so a kernel sees every CuPy operation before it.
(Numba also synchronizes the stream a CuPy array names before each launch,
``CUDA_ARRAY_INTERFACE_SYNC``: safe, maybe slow; not yet measured on a GPU.)
"""
import contextlib

from numba import config, cuda

# Threads per block.  A multiple of the warp size (32) and a power of two (the
# batch-norm reductions halve it).  The simulator runs every thread of a block
# as a Python thread, and a block's threads wait for each other at every
# syncthreads: there one warp keeps the tests fast (the code is the same).
THREADS = 32 if config.ENABLE_CUDASIM else 128


# The stream the kernels go to: 0, the default stream, except inside
# ``launching_on`` (a CUDA graph capture on a CuPy stream: a launch elsewhere
# would break the capture).
_stream = 0


@contextlib.contextmanager
def launching_on(stream_ptr):
    """Launch every kernel on the CUDA stream ``stream_ptr`` inside the block,
    with Numba's synchronize on the stream a CuPy array names turned off: it
    would synchronize a capturing stream (an error), and the kernels run on
    that same stream, so nothing is reordered."""
    global _stream
    previous = _stream, config.CUDA_ARRAY_INTERFACE_SYNC
    _stream = cuda.external_stream(stream_ptr) if stream_ptr else 0
    config.CUDA_ARRAY_INTERFACE_SYNC = False
    try:
        yield
    finally:
        _stream, config.CUDA_ARRAY_INTERFACE_SYNC = previous


def launch(kernel, total, *args):
    """Run ``kernel(*args)`` with at least ``total`` threads in a 1-D grid
    (the kernel skips indices >= total).  Nothing to do for ``total == 0``."""
    if total == 0:
        return
    threads = min(THREADS, total)
    kernel[(total + threads - 1) // threads, threads, _stream](*args)


def launch_blocks(kernel, blocks, *args):
    """Run ``kernel(*args)`` with ``blocks`` blocks of ``THREADS`` threads each
    (a block per channel, for the batch-norm sums)."""
    kernel[blocks, THREADS, _stream](*args)


@cuda.jit(device=True)
def unravel4(index, shape):
    """(n, c, h, w) of the row-major flat ``index`` into a 4-D ``shape``."""
    w = index % shape[3]
    index //= shape[3]
    h = index % shape[2]
    index //= shape[2]
    return index // shape[1], index % shape[1], h, w


@cuda.jit(device=True)
def window_reading(position, tap, stride, padding, dilation, out_size):
    """Along one axis: the output index o whose window reads input ``position``
    with its tap ``tap`` (o*stride - padding + tap*dilation == position), or -1.

    The backward kernels gather with it: the thread of one input pixel visits
    the (at most kernel-size many) windows that read it and adds up their
    gradients.  Every thread writes its own pixel, so no atomic adds are
    needed, and the sum comes out in a fixed order (deterministic).
    """
    offset = position + padding - tap * dilation
    if offset < 0 or offset % stride != 0:
        return -1
    o = offset // stride
    return o if o < out_size else -1
