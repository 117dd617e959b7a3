"""Every chapter network computes the same on the GPU as on the CPU: logits,
loss and every parameter's gradient, one training-mode step at the network's
d2l input size (batch 2).  Needs CuPy and a GPU."""
import numpy as np
import pytest

import models
import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from tinygrad_cnn import nn
from tests.gpu.compare import gradient_mismatches

# CuPy arrays go to the GPU kernels whatever the CPU set: run under the first kernel set only
# (tests/conftest.py).
pytestmark = [pytest.mark.kernel_free, pytest.mark.gpu,
              pytest.mark.skipif(not tc.cuda.is_available(), reason="needs CuPy and a GPU")]


def one_step(name, device, X, y):
    tc.manual_seed(0)           # the same weights on both devices
    net = models.get(name).to(device)
    net.train()
    for module in net.modules():
        # Dropout masks come from each device's own generator, so they differ:
        # dropout off, batch norm still on batch statistics (training mode).
        if isinstance(module, nn.Dropout):
            module.eval()
    logits = net(tc.tensor(X, device=device))
    loss = F.cross_entropy(logits, tc.tensor(y, device=device))
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in net.named_parameters()}
    return logits.detach().numpy(), float(loss.item()), grads


@pytest.mark.parametrize("name", models.names())
def test_gpu_matches_cpu(name):
    shape = models.spec(name).input_shape
    rng = np.random.default_rng(0)
    X = rng.random((2,) + shape, dtype=np.float32)
    y = np.array([1, 7])
    cpu, gpu = one_step(name, "cpu", X, y), one_step(name, "cuda", X, y)
    np.testing.assert_allclose(gpu[0], cpu[0], rtol=1e-3, atol=1e-4)
    assert gpu[1] == pytest.approx(cpu[1], rel=1e-4)
    # absolute tolerance from the network's largest gradient (tests/gpu/compare.py says why)
    assert gradient_mismatches(gpu[2], cpu[2], rtol=1e-3, atol_fraction=1e-3) == []
