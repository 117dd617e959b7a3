"""The CuPy path calls only what CuPy has: training steps of chapter networks
run on ``StrictCupy`` (``strict_cupy.py``), which computes with NumPy but
refuses every name, keyword argument and method CuPy lacks.  Issue 12: on a
real GPU ``F.cross_entropy`` stopped at ``cupy.indices(..., sparse=True)``."""
import numpy as np
import pytest

import kernels
import models
import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from tinygrad_cnn import backend, cuda, optim
from tinygrad_cnn.ops import conv as conv_module
from tests.cupy_api.strict_cupy import StrictCupy, StrictGpuArray

# The CuPy path runs the reference kernels whatever the CPU set (the numba.cuda
# kernels are checked under the simulator, tests/kernels_cuda): first set only.
pytestmark = pytest.mark.kernel_free


@pytest.fixture
def strict_cupy(monkeypatch):
    cupy = StrictCupy()
    monkeypatch.setattr(kernels.arrays, "cupy", cupy)
    monkeypatch.setattr(backend, "cupy", cupy)
    # what the dispatch gives CuPy arrays when the numba.cuda probe fails
    monkeypatch.setattr(kernels, "_gpu_kernels", dict(kernels._reference))
    monkeypatch.setattr(cuda, "_conv_column_budgets", {})      # measured on this fake
    return cupy


# ---------------------------------------------------------------- the fake itself
def test_the_fake_refuses_what_cupy_lacks(strict_cupy):
    xp = strict_cupy
    with pytest.raises(TypeError, match=r"cupy.indices\(\) takes no keyword argument.*sparse"):
        xp.indices((2, 3), sparse=True)
    with pytest.raises(AttributeError, match="'seterr'"):
        xp.seterr(divide="ignore")
    with pytest.raises(AttributeError, match="'errstate'"):
        xp.errstate
    a = xp.zeros((2, 2))
    assert isinstance(a, StrictGpuArray) and isinstance(xp.indices((2, 3)), StrictGpuArray)
    with pytest.raises(AttributeError, match="'setflags'"):
        a.setflags                                  # cupy.ndarray has no setflags
    with pytest.raises(AttributeError, match="'normal'"):
        xp.random.default_rng(0).normal             # cupy's Generator has no normal
    xp.add.at(a, (np.array([0]), np.array([1])), 1.0)   # what CuPy has passes
    assert a[0, 1] == 1.0


# ---------------------------------------------------------------- the engine on it
NETWORKS = [("lenet", (4, 1, 28, 28)), ("lenet_bn", (4, 1, 28, 28)),
            ("lenet_bn_scratch", (4, 1, 28, 28)), ("resnet18", (2, 1, 32, 32)),
            ("densenet", (2, 1, 32, 32)), ("googlenet", (2, 1, 32, 32)),
            ("nin", (2, 1, 96, 96)), ("alexnet_cifar10", (2, 3, 32, 32)),
            ("vgg11_small", (2, 1, 224, 224))]

WITH_DROPOUT = {"nin", "alexnet_cifar10", "vgg11_small"}


# Batch norm over two values (a batch of 2 on DenseNet's and GoogLeNet's last 1x1 maps)
# divides by their distance: float32 sums rounded an ulp apart (products of other shapes,
# which OpenBLAS may run with other kernels) came out 2e-4 apart in the loss and 3e-4 in a
# weight after two steps on an AVX2 machine.  Their two paths are compared in float64, where
# they differed by under 1e-14.
ILL_CONDITIONED = {"densenet", "googlenet"}


def steps(name, shape, optimizer, device, dtype=np.float32):
    """Two training steps of ``name`` on ``device`` in ``dtype``: the losses and final weights."""
    tc.manual_seed(0)
    net = models.get(name)
    net(tc.zeros(*shape))                           # lazy layers take their shapes
    if dtype == np.float64:
        net.double()
    net.to(device)
    rng = np.random.default_rng(1)
    X = tc.Tensor(rng.standard_normal(shape).astype(dtype)).to(device)
    y = tc.Tensor(rng.integers(0, 10, shape[0])).to(device)
    opt = (optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
           if optimizer == "sgd" else optim.Adam(net.parameters(), lr=1e-3, amsgrad=True))
    losses = []
    for _ in range(2):
        loss = F.cross_entropy(net(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
    weights = [np.asarray(backend.to_device(p.data, "cpu")) for p in net.parameters()]
    return losses, weights


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("name, shape", NETWORKS, ids=[n for n, _ in NETWORKS])
def test_training_steps_call_only_what_cupy_has(strict_cupy, name, shape, optimizer):
    losses, weights = steps(name, shape, optimizer, "cuda")
    assert all(isinstance(p.data, StrictGpuArray) for p in models.get(name).to("cuda")
               .parameters() if p.data is not None)
    assert np.isfinite(losses).all()
    if name in WITH_DROPOUT:    # the GPU draws its masks from its own generator
        return
    dtype = np.float64 if name in ILL_CONDITIONED else np.float32
    if dtype == np.float64:
        losses, weights = steps(name, shape, optimizer, "cuda", dtype)
    # the same arithmetic as the CPU's reference kernels (the ones the fake GPU ran) and
    # im2col (what 'auto' runs on a GPU): the fake changes which functions are allowed,
    # not the math
    kernels.arrays.cupy = backend.cupy = None
    previous = kernels.set_kernels("numpy"), conv_module.set_algorithm("im2col")
    try:
        cpu_losses, cpu_weights = steps(name, shape, optimizer, "cpu", dtype)
    finally:
        kernels.set_kernels(previous[0])
        conv_module.set_algorithm(previous[1])
    np.testing.assert_allclose(losses, cpu_losses, rtol=1e-5)
    for ours, cpu in zip(weights, cpu_weights):
        np.testing.assert_allclose(ours, cpu, rtol=1e-4, atol=1e-6)
