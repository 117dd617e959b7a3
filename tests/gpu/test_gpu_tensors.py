"""Tensors, modules, data and training on a real GPU.  Needs CuPy and a GPU.

The op suite runs on the GPU too: every test in tests/ops/ that takes the
``device`` fixture runs once per device, 'cuda' included when one is there.
"""
import numpy as np
import pytest

import tinygrad_cnn as tc
from tinygrad_cnn import backend, nn
from tinygrad_cnn.data import DataLoader
from tinygrad_cnn.train import fit

# CuPy arrays go to the GPU kernels whatever the CPU set: run under the first kernel set only
# (tests/conftest.py).
pytestmark = [pytest.mark.kernel_free, pytest.mark.gpu,
              pytest.mark.skipif(not tc.cuda.is_available(), reason="needs CuPy and a GPU")]


def test_tensor_round_trip_and_device():
    import cupy
    x = tc.tensor([1.0, 2.0, 3.0]).to("cuda")
    assert x.device == "cuda:0" and isinstance(x.data, cupy.ndarray)
    assert x.cpu().device == "cpu"
    np.testing.assert_array_equal(x.numpy(), [1, 2, 3])


def test_gradient_flows_back_across_devices():
    x = tc.tensor([1.0, 2.0], requires_grad=True)
    (x.cuda() * 3).sum().backward()
    assert x.grad.device == "cpu"
    np.testing.assert_array_equal(x.grad.numpy(), [3, 3])


def test_mixed_devices_raise():
    with pytest.raises(ValueError, match=r"Add: .*input 0 on cuda:0, input 1 on cpu"):
        tc.ones(2).cuda() + tc.ones(2)


def test_module_and_loader_move_to_the_gpu():
    net = nn.Linear(2, 3).cuda()
    assert {p.device for p in net.parameters()} == {"cuda:0"}
    batches = list(DataLoader([(np.ones(2, np.float32), 1)] * 4, 2, device="cuda"))
    assert {(X.device, y.device) for X, y in batches} == {("cuda:0", "cuda:0")}
    assert net(batches[0][0]).device == "cuda:0"


def test_fit_trains_on_the_gpu():
    tc.manual_seed(0)
    data = [(np.random.default_rng(k).random(4, dtype=np.float32), k % 2) for k in range(16)]
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    history = fit(net, DataLoader(data, 8, device="cuda"), None, 3, 0.5, device="cuda",
                  progress=False, verbose=False)
    assert len(history) == 3 and np.isfinite(history[-1]["train_loss"])
    assert {p.device for p in net.parameters()} == {"cuda:0"}


def test_out_of_memory_becomes_advice():
    import cupy
    with pytest.raises(backend.OutOfMemoryError, match="smaller batch size"):
        with backend.explain_out_of_memory("test"):
            cupy.empty(1 << 50, dtype=cupy.uint8)     # a petabyte


def test_synchronize_and_memory_pool():
    x = tc.ones(1024, 1024, device="cuda")
    tc.cuda.synchronize()
    assert tc.cuda.memory_allocated() >= x.numel() * 4
    del x
    tc.cuda.empty_cache()
    assert tc.cuda.memory_reserved() >= tc.cuda.memory_allocated()
