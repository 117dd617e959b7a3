"""CUDA Graphs on a real GPU (``tinygrad_cnn/cuda_graphs.py``): CUDA accepts the
capture of a whole training step (CuPy ops, cuBLAS, the numba.cuda kernels on
the capturing stream, the private pool), replays it with the eager step's
losses, draws new dropout masks per replay, and refuses a host read with
``GraphCaptureError``.  The same bookkeeping is checked on the CPU through the
fake CuPy (tests/cupy_api/test_cuda_graphs.py); only this says CUDA agrees.
Needs CuPy and a GPU."""
import numpy as np
import pytest

import models
import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from tinygrad_cnn import nn, optim
from tinygrad_cnn.cuda_graphs import GraphCaptureError
from tests.inputs import RandomImages

# CuPy arrays go to the GPU kernels whatever the CPU set: first kernel set only
pytestmark = [pytest.mark.kernel_free, pytest.mark.gpu,
              pytest.mark.skipif(not tc.cuda.is_available(), reason="needs CuPy and a GPU")]


def _losses(name, shape, graphed, steps=6, warmup=2):
    tc.manual_seed(0)
    net = models.get(name) if isinstance(name, str) else name()
    net(tc.zeros(*shape))
    net.to("cuda")
    opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(1)
    batches = [(tc.Tensor(rng.standard_normal(shape).astype(np.float32)),
                tc.Tensor(rng.integers(0, 10, shape[0]))) for _ in range(steps)]

    def step(X, y):
        loss = F.cross_entropy(net(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    if not graphed:
        return [float(step(X.to("cuda"), y.to("cuda")).item()) for X, y in batches], None
    X0, y0 = batches[0]
    run = tc.cuda.make_graphed_step(step, (X0.to("cuda"), y0.to("cuda")),
                                    num_warmup_iters=warmup, optimizer=opt)
    return [float(run(X, y).item()) for X, y in batches], run


@pytest.mark.parametrize("name, shape", [("lenet_bn", (32, 1, 28, 28)),
                                         ("resnet18", (16, 1, 96, 96))])
def test_a_replayed_step_gives_the_eager_losses_on_the_gpu(name, shape):
    eager, _ = _losses(name, shape, graphed=False)
    graphed, run = _losses(name, shape, graphed=True)
    assert run.captures == 1 and run.replays == 4
    # the same kernels in the same order; cuBLAS may pick another algorithm on the
    # capture stream, hence a tolerance
    np.testing.assert_allclose(graphed, eager, rtol=1e-4)


def test_dropout_draws_new_masks_at_each_replay():
    def net():
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Dropout(0.5),
                             nn.Linear(64, 10))
    eager, _ = _losses(net, (32, 1, 28, 28), graphed=False)
    graphed, _ = _losses(net, (32, 1, 28, 28), graphed=True)
    np.testing.assert_allclose(graphed, eager, rtol=1e-4)


def test_a_host_read_inside_the_capture_is_refused_on_the_gpu():
    x = tc.ones(4).to("cuda")
    g = tc.cuda.CUDAGraph()
    with pytest.raises(GraphCaptureError, match="read a GPU value on the host"):
        with tc.cuda.graph(g):
            float((x * 2).sum().item())
    assert not tc.cuda.is_current_stream_capturing()
    assert float((x * 2).sum().item()) == 8.0       # the device still works afterwards


def test_fit_with_a_cuda_graph_gives_the_eager_loss_curve_on_the_gpu():
    """fit's captured step (its loss, gradient norm and accuracy read after the
    replay: vdot, stack, argmax inside the graph), a partial batch and a cosine
    schedule (one capture per epoch)."""
    from tinygrad_cnn import train
    from tinygrad_cnn.data import DataLoader

    def curve(cuda_graph):
        tc.manual_seed(0)
        net = models.get("lenet_bn")
        net(tc.zeros(2, 1, 28, 28))             # lazy layers take their shapes
        loader = DataLoader(RandomImages(600), 64, shuffle=True, device="cuda")
        history = train.fit(net, loader, None, 3, 0.1, "cuda", momentum=0.9,
                            lr_schedule=train.cosine_schedule(0.1, 3), seed=0,
                            progress=False, plot=False, verbose=False, cuda_graph=cuda_graph)
        return [row["train_loss"] for row in history], [row["train_acc"] for row in history]

    eager, graphed = curve(False), curve(True)
    np.testing.assert_allclose(graphed[0], eager[0], rtol=1e-4)
    np.testing.assert_allclose(graphed[1], eager[1], atol=2 / 600)
