"""Inside a CUDA graph capture the numba.cuda kernels launch on the capturing
stream (``kernels.cuda_common.launching_on``), without Numba's synchronize on
the stream a CuPy array names (a capturing stream cannot be synchronized).
Checked with a stand-in kernel: what a launch is given, not what a GPU does
with it (that is tests/gpu/test_gpu_graphs.py's)."""
import pytest
from numba.core import config

from kernels import cuda_common

# no kernel of the engine runs here: first kernel set only (tests/conftest.py)
pytestmark = pytest.mark.kernel_free


class _Kernel:
    """Records the launch configuration ``kernel[grid, block, stream]``."""
    def __init__(self):
        self.launches = []

    def __getitem__(self, configuration):
        def run(*args):
            self.launches.append((configuration, config.CUDA_ARRAY_INTERFACE_SYNC))
        return run


def test_kernels_launch_on_the_capturing_stream_inside_the_block(monkeypatch):
    monkeypatch.setattr(cuda_common.cuda, "external_stream", lambda ptr: ("stream", ptr))
    monkeypatch.setattr(config, "CUDA_ARRAY_INTERFACE_SYNC", True)
    kernel = _Kernel()
    cuda_common.launch(kernel, 10)
    with cuda_common.launching_on(1234):
        cuda_common.launch(kernel, 10)
        cuda_common.launch_blocks(kernel, 3)
    cuda_common.launch_blocks(kernel, 3)
    threads = min(cuda_common.THREADS, 10)
    blocks = (10 + threads - 1) // threads
    assert kernel.launches == [
        ((blocks, threads, 0), True),                          # the default stream
        ((blocks, threads, ("stream", 1234)), False),          # the capture's, no sync
        ((3, cuda_common.THREADS, ("stream", 1234)), False),
        ((3, cuda_common.THREADS, 0), True)]                   # all put back
    assert cuda_common._stream == 0 and config.CUDA_ARRAY_INTERFACE_SYNC is True


def test_the_default_stream_stays_on_an_error(monkeypatch):
    monkeypatch.setattr(cuda_common.cuda, "external_stream", lambda ptr: ("stream", ptr))
    with pytest.raises(KeyError):
        with cuda_common.launching_on(99):
            raise KeyError("inside")
    assert cuda_common._stream == 0
