"""CUDA Graphs' bookkeeping on the CPU (``tinygrad_cnn/cuda_graphs.py``).

The strict fake CuPy (``strict_cupy.py``) stands in for stream capture: it logs
the work queued while a stream captures, undoes it at ``end_capture`` (a real
capture runs nothing) and re-runs the log, into the same arrays, at each
``Graph.launch``; it raises CuPy's ``CUDARuntimeError`` where CUDA refuses (a
host read during capture).  So these tests check what the graph code decides:
static buffers, warm-up, capture, re-capture on an lr change, partial batches,
the errors, and that a replayed step gives the losses of the eager one.  That
CUDA itself accepts the capture is ``tests/gpu/test_gpu_graphs.py``'s to check.
"""
import json

import numpy as np
import pytest

import models
import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from tinygrad_cnn import backend, cli, nn, optim, train
from tinygrad_cnn.cuda_graphs import GraphCaptureError, GraphShapeError
from tinygrad_cnn.data import DataLoader
from tests.cupy_api.strict_cupy import CUDARuntimeError, StrictGpuArray, install
from tests.inputs import RandomImages

# The GPU path runs the reference kernels whatever the CPU set: first set only.
pytestmark = pytest.mark.kernel_free


@pytest.fixture
def strict_cupy(monkeypatch):
    return install(monkeypatch)


# ---------------------------------------------------------------- the fake's capture
def test_the_fake_capture_runs_nothing_and_replays_into_the_same_arrays(strict_cupy):
    xp = strict_cupy
    a, b = xp.zeros(3, dtype=xp.float32), xp.ones(3, dtype=xp.float32)
    stream = xp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        a += b                              # into a pre-existing array
        c = a * 2.0                         # a new one
        graph = stream.end_capture()
    assert (a == 0).all()                   # undone: a capture runs nothing
    graph.launch()
    graph.launch()
    np.testing.assert_array_equal(xp.asnumpy(a), [2, 2, 2])
    np.testing.assert_array_equal(xp.asnumpy(c), [4, 4, 4])   # the recorded output


def test_the_fake_refuses_what_a_capture_cannot_hold(strict_cupy):
    xp = strict_cupy
    a = xp.ones(3, dtype=xp.float32)
    with pytest.raises(CUDARuntimeError, match="legacy default stream"):
        xp.cuda.Stream.null.begin_capture()
    stream = xp.cuda.Stream(non_blocking=True)
    for host_read in (lambda: float(a.sum()), lambda: a.sum().item(), lambda: bool(a[0]),
                      lambda: int(a.max()), lambda: xp.asnumpy(a)):
        with stream:
            stream.begin_capture()
            with pytest.raises(CUDARuntimeError, match="cudaErrorStreamCaptureUnsupported"):
                host_read()
            stream.end_capture()
    with stream:
        stream.begin_capture()
        with pytest.raises(CUDARuntimeError, match="host-to-device"):
            xp.asarray(np.ones(3))
        with pytest.raises(CUDARuntimeError, match="host-to-device"):
            xp.asarray(2.0, dtype=xp.float32)
        stream.end_capture()
    assert isinstance(a.sum(), StrictGpuArray)   # a 0-d array, as CuPy's reductions give


# ---------------------------------------------------------------- a small network
def _batches(count, batch=4, shape=(1, 28, 28), last=None, seed=1):
    rng = np.random.default_rng(seed)
    sizes = [batch] * count + ([last] if last else [])
    return [(tc.Tensor(rng.standard_normal((n,) + shape).astype(np.float32)),
             tc.Tensor(rng.integers(0, 10, n))) for n in sizes]


def _setup(name="lenet_bn", optimizer="sgd"):
    tc.manual_seed(0)
    net = models.get(name) if isinstance(name, str) else name()
    net(tc.zeros(2, 1, 28, 28))
    net.to("cuda")
    opt = (optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
           if optimizer == "sgd" else optim.Adam(net.parameters(), lr=1e-3))
    return net, opt


def _step_of(net, opt):
    def step(X, y):
        loss = F.cross_entropy(net(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    return step


def _dropout_net():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(32, 10))


def _eager_losses(name, batches, lrs=None):
    net, opt = _setup(name)
    step = _step_of(net, opt)
    losses = []
    for i, (X, y) in enumerate(batches):
        if lrs:
            opt.param_groups[0]["lr"] = lrs[i]
        losses.append(float(step(X.to("cuda"), y.to("cuda")).item()))
    return losses, [backend.cupy.asnumpy(p.data) for p in net.parameters()]


def _graphed_losses(name, batches, warmup=2, lrs=None):
    net, opt = _setup(name)
    X0, y0 = batches[0]
    graphed = tc.cuda.make_graphed_step(_step_of(net, opt), (X0.to("cuda"), y0.to("cuda")),
                                        num_warmup_iters=warmup, optimizer=opt)
    losses = []
    for i, (X, y) in enumerate(batches):
        if lrs:
            opt.param_groups[0]["lr"] = lrs[i]
        losses.append(float(graphed(X, y).item()))
    return losses, [backend.cupy.asnumpy(p.data) for p in net.parameters()], graphed


@pytest.mark.parametrize("name", ["lenet_bn", "dropout"])
def test_a_replayed_step_gives_the_losses_and_weights_of_the_eager_one(strict_cupy, name):
    network = _dropout_net if name == "dropout" else name
    batches = _batches(6)
    eager, eager_weights = _eager_losses(network, batches)
    graphed, weights, step = _graphed_losses(network, batches, warmup=2)
    assert (step.warmups_done, step.captures, step.replays) == (2, 1, 4)
    np.testing.assert_allclose(graphed, eager, rtol=1e-6)
    assert len(set(np.round(graphed, 6))) == len(graphed)   # every replay a new step
    for ours, theirs in zip(weights, eager_weights):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)


def test_static_inputs_hold_the_batch_and_the_outputs_are_the_same_object(strict_cupy):
    net, opt = _setup()
    batches = _batches(4)
    X0, y0 = batches[0]
    step = tc.cuda.make_graphed_step(_step_of(net, opt), (X0.to("cuda"), y0.to("cuda")),
                                     num_warmup_iters=1, optimizer=opt)
    warm = step(*batches[0])
    assert step.captures == 0 and step.static_outputs is None
    assert warm is not None
    outputs = [step(X, y) for X, y in batches[1:]]
    assert outputs[0] is outputs[1] is outputs[2] is step.static_outputs
    X_last, y_last = batches[-1]
    np.testing.assert_array_equal(backend.cupy.asnumpy(step.static_inputs[0].data),
                                  X_last.data)
    np.testing.assert_array_equal(backend.cupy.asnumpy(step.static_inputs[1].data),
                                  y_last.data)


def test_capture_allocates_from_the_graphs_own_pool(strict_cupy):
    net, opt = _setup()
    batches = _batches(2)
    X0, y0 = batches[0]
    step = tc.cuda.make_graphed_step(_step_of(net, opt), (X0.to("cuda"), y0.to("cuda")),
                                     num_warmup_iters=1, optimizer=opt)
    step(*batches[0])
    step(*batches[1])
    pool = step._graph.pool()
    assert pool is not strict_cupy.get_default_memory_pool()
    assert step._graph._graph.allocators == {pool.malloc}
    assert not tc.cuda.is_current_stream_capturing()


def test_a_graph_no_longer_replayed_gives_back_its_unused_memory_only(strict_cupy):
    """CuPy's arrays do not keep their pool alive, and a capture's arrays (the
    gradients) outlive its graph: pools stay, only a retired graph's unused
    blocks are given back (before the next capture, and by empty_cache)."""
    import gc
    batches = _batches(5)
    lrs = [0.05, 0.05, 0.02, 0.02, 0.02]
    _, _, step = _graphed_losses("lenet_bn", batches, warmup=1, lrs=lrs)
    assert step.captures == 2
    first, current = [entry for entry in tc.cuda_graphs._POOLS][-2:]
    assert current.pool is step._graph.pool() and current.in_use and not first.in_use
    assert first.pool.released == 1 and current.pool.released == 0   # at the 2nd capture
    tc.cuda.empty_cache()
    assert first.pool.released == 2 and current.pool.released == 0
    del step
    gc.collect()
    tc.cuda.empty_cache()
    assert current.pool.released == 1 and not current.in_use


def test_a_changed_learning_rate_is_captured_again(strict_cupy):
    batches = _batches(6)
    lrs = [0.05, 0.05, 0.05, 0.02, 0.02, 0.01]
    eager, _ = _eager_losses("lenet_bn", batches, lrs)
    graphed, _, step = _graphed_losses("lenet_bn", batches, warmup=2, lrs=lrs)
    assert step.captures == 3               # at lr 0.05, 0.02 and 0.01
    np.testing.assert_allclose(graphed, eager, rtol=1e-6)


def test_a_batch_of_another_shape_cannot_replay(strict_cupy):
    net, opt = _setup()
    batches = _batches(2, last=3)
    X0, y0 = batches[0]
    step = tc.cuda.make_graphed_step(_step_of(net, opt), (X0.to("cuda"), y0.to("cuda")),
                                     num_warmup_iters=1, optimizer=opt)
    step(*batches[0])
    assert not step.accepts(*batches[2]) and step.accepts(*batches[1])
    with pytest.raises(GraphShapeError, match=r"input 0 has shape \(3, 1, 28, 28\).*"
                                              r"\(4, 1, 28, 28\).*drop_last"):
        step(*batches[2])


# ---------------------------------------------------------------- what cannot be captured
def test_a_host_read_in_the_step_is_a_clear_error(strict_cupy):
    net, opt = _setup()
    X, y = _batches(1)[0]

    def step(X, y):
        loss = _step_of(net, opt)(X, y)
        print(float(loss.item()))           # a host read: cannot be captured
        return loss

    graphed = tc.cuda.make_graphed_step(step, (X.to("cuda"), y.to("cuda")),
                                        num_warmup_iters=1, optimizer=opt)
    graphed(X, y)                           # the warm-up runs eagerly: fine
    with pytest.raises(GraphCaptureError, match=r"read a GPU value on the host \(loss.item"):
        graphed(X, y)
    assert not tc.cuda.is_current_stream_capturing()


def test_a_host_to_device_copy_in_the_step_is_a_clear_error(strict_cupy):
    net, opt = _setup()
    X, y = _batches(1)[0]

    def step(X, y):
        return _step_of(net, opt)(X, y) * tc.Tensor(np.float32(0.5)).to("cuda")

    graphed = tc.cuda.make_graphed_step(step, (X.to("cuda"), y.to("cuda")),
                                        num_warmup_iters=1, optimizer=opt)
    graphed(X, y)
    with pytest.raises(GraphCaptureError, match="copy host data to the GPU"):
        graphed(X, y)


def test_adams_host_step_count_is_refused(strict_cupy):
    net, opt = _setup(optimizer="adam")
    X, y = _batches(1)[0]
    graphed = tc.cuda.make_graphed_step(_step_of(net, opt), (X.to("cuda"), y.to("cuda")),
                                        num_warmup_iters=1, optimizer=opt)
    graphed(X, y)
    with pytest.raises(GraphCaptureError, match=r"parameter 0's 'step' is a host number.*"
                                                r"1 -> 2.*use SGD"):
        graphed(X, y)


def test_state_created_during_capture_needs_a_warm_up(strict_cupy):
    net, opt = _setup()
    X, y = _batches(1)[0]
    graphed = tc.cuda.make_graphed_step(_step_of(net, opt), (X.to("cuda"), y.to("cuda")),
                                        num_warmup_iters=0, optimizer=opt)
    with pytest.raises(GraphCaptureError, match=r"'momentum_buffer' was created during the "
                                                r"capture.*num_warmup_iters >= 1"):
        graphed(X, y)


class _ReplacingSGD(optim.SGD):
    """Plain SGD that makes a new parameter array each step (not in place)."""
    def _update(self, p, grad, group, state):
        p.data = p.data - group["lr"] * grad


def test_a_parameter_replaced_instead_of_updated_is_refused(strict_cupy):
    net, _ = _setup()
    opt = _ReplacingSGD(net.parameters(), lr=0.1)
    X, y = _batches(1)[0]
    graphed = tc.cuda.make_graphed_step(_step_of(net, opt), (X.to("cuda"), y.to("cuda")),
                                        num_warmup_iters=1, optimizer=opt)
    graphed(X, y)
    with pytest.raises(GraphCaptureError, match="parameter 0's array was replaced by a new "
                                                "array.*in place"):
        graphed(X, y)


def test_cross_entropy_skips_its_host_check_while_capturing(strict_cupy):
    """The target-range check reads the GPU (int(t.min())): inside a capture it
    stands aside (fit checks labels on the host instead).  Without that, this
    capture fails with the host-read error."""
    xp = strict_cupy
    logits = tc.Tensor(np.zeros((2, 3), np.float32)).to("cuda")
    target = tc.Tensor(np.array([0, 2])).to("cuda")
    g = tc.cuda.CUDAGraph()
    with tc.cuda.graph(g):
        assert tc.cuda.is_current_stream_capturing()
        loss = F.cross_entropy(logits, target)
    g.replay()
    assert float(xp.asnumpy(loss.data)) == pytest.approx(np.log(3))


def test_sample_inputs_must_be_cuda_tensors(strict_cupy):
    with pytest.raises(TypeError, match=r"sample_inputs\[0\] must be a CUDA Tensor, got a "
                                        "CPU Tensor"):
        tc.cuda.make_graphed_step(lambda x: x, (tc.zeros(2),))
    with pytest.raises(ValueError, match="num_warmup_iters must be an int >= 0"):
        tc.cuda.make_graphed_step(lambda x: x, (tc.zeros(2).to("cuda"),), num_warmup_iters=-1)


def test_replay_before_capture_is_an_error(strict_cupy):
    with pytest.raises(GraphCaptureError, match="nothing captured"):
        tc.cuda.CUDAGraph().replay()


# ---------------------------------------------------------------- fit and the CLI


def _fit(cuda_graph, epochs=3, n=60, labels=None, shuffle=True):
    tc.manual_seed(0)
    net = models.get("lenet_bn")
    net(tc.zeros(2, 1, 28, 28))
    data = RandomImages(n)
    if labels is not None:
        data.y = labels
    loader = DataLoader(data, 8, shuffle=shuffle, device="cuda")
    runs = []
    original = train._Run.train

    def keep(run):
        runs.append(run)
        return original(run)

    train._Run.train = keep
    try:
        history = train.fit(net, loader, None, epochs, 0.1, "cuda", momentum=0.9,
                            lr_schedule=train.cosine_schedule(0.1, epochs), seed=0,
                            progress=False, plot=False, verbose=False, cuda_graph=cuda_graph)
    finally:
        train._Run.train = original
    return history, runs[0]


def test_fit_with_a_cuda_graph_gives_the_same_loss_curve(strict_cupy):
    """60 examples in batches of 8: 7 full batches and a partial one (run
    uncaptured) per epoch, and a cosine schedule (a new lr, a new capture, per
    epoch)."""
    eager, _ = _fit(False)
    graphed, run = _fit(True)
    assert run.graphed.captures == 3 and run.uncaptured_steps == 3
    assert run.graphed.replays == 3 * 7 - train.GRAPH_WARMUP_STEPS
    for a, b in zip(eager, graphed):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["train_acc"] == b["train_acc"]


def test_fit_checks_labels_on_the_host_when_the_step_is_captured(strict_cupy):
    """The fifth batch (after 3 warm-up steps and the capture: a replay) holds a
    label out of range; the captured step itself cannot check it."""
    labels = np.random.default_rng(0).integers(0, 10, 40)
    labels[37] = 10
    with pytest.raises(ValueError, match=r"cross_entropy: target 10 is out of bounds for 10 "
                                         "classes"):
        _fit(True, epochs=1, n=40, labels=labels, shuffle=False)


def test_fit_stops_a_diverged_graphed_step_saying_the_update_is_in(strict_cupy):
    """A NaN image in the fifth batch (a replay): the loss read after the replay
    stops the run, and the message says the weights in memory include the step."""
    tc.manual_seed(0)
    net = models.get("lenet_bn")
    net(tc.zeros(2, 1, 28, 28))
    data = RandomImages(40)
    data.X[35] = np.nan
    loader = DataLoader(data, 8, shuffle=False, device="cuda")
    with pytest.raises(train.NonFiniteLossError, match=r"batch 5: loss is nan.*with "
                                                       r"cuda_graph=True the checks follow"):
        train.fit(net, loader, None, 1, 0.1, "cuda", progress=False, plot=False,
                  verbose=False, cuda_graph=True)


def test_fit_refuses_a_cuda_graph_on_the_cpu():
    with pytest.raises(ValueError, match="cuda_graph=True needs device 'cuda'"):
        train.fit(nn.Linear(2, 2), [], None, 1, 0.1, "cpu", cuda_graph=True, verbose=False)
    with pytest.raises(ValueError, match="does not go with distributed"):
        train.fit(nn.Linear(2, 2), [], None, 1, 0.1, "cpu", cuda_graph=True,
                  distributed=True, verbose=False)


def test_the_cli_trains_with_cuda_graph_and_the_same_losses(strict_cupy, tmp_path, capsys,
                                                             monkeypatch):
    """``tinygrad-cnn train --device cuda --cuda-graph`` on the fake GPU: the
    metrics of the run without the graph, and the graph really used."""
    from tests.data.make_files import fashion_split
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    fashion_split(tmp_path / "data", "train", 48, seed=0)
    fashion_split(tmp_path / "data", "test", 24, seed=1)
    captures = []
    original = tc.cuda_graphs.GraphedStep._capture

    def counted(step):
        captures.append(step)
        return original(step)

    monkeypatch.setattr(tc.cuda_graphs.GraphedStep, "_capture", counted)
    rows = {}
    for flags in ([], ["--cuda-graph"]):
        out = tmp_path / ("graph" if flags else "eager")
        assert cli.main(["train", "lenet", "--data-dir", str(tmp_path / "data"),
                         "--batch-size", "8", "--epochs", "2", "--no-progress", "--device",
                         "cuda", "--out", str(out)] + flags) == 0, capsys.readouterr().err
        rows[bool(flags)] = [json.loads(line) for line in
                             (out / "metrics.jsonl").read_text().splitlines()]
    assert len(captures) == 1                  # 6 batches an epoch, constant lr
    for eager, graphed in zip(rows[False], rows[True]):
        assert graphed["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-6)
        assert graphed["test_acc"] == eager["test_acc"]


def test_the_cli_refuses_cuda_graph_on_the_cpu(capsys):
    assert cli.main(["train", "lenet", "--cuda-graph", "--device", "cpu"]) == 2
    assert "--cuda-graph replays GPU work: it needs --device cuda, not --device cpu" in \
        capsys.readouterr().err


# ---------------------------------------------------------------- every chapter network
NETWORKS = [("lenet", (4, 1, 28, 28)), ("lenet_bn_scratch", (4, 1, 28, 28)),
            ("resnet18", (2, 1, 32, 32)), ("densenet", (2, 1, 32, 32)),
            ("googlenet", (2, 1, 32, 32)), ("nin", (2, 1, 96, 96)),
            ("alexnet_cifar10", (2, 3, 32, 32))]


@pytest.mark.parametrize("name, shape", NETWORKS, ids=[n for n, _ in NETWORKS])
def test_every_chapter_network_captures_and_replays_its_eager_losses(strict_cupy, name,
                                                                      shape):
    """Nothing in their steps reads the GPU on the host or copies host data to
    it (lenet_bn_scratch's ``x * 2.0``-style constants once did: asarray of a
    Python number, now a device fill); dropout's masks (nin, alexnet) follow
    the eager sequence."""
    def losses(graphed):
        tc.manual_seed(0)
        net = models.get(name)
        net(tc.zeros(*shape))
        net.to("cuda")
        opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        batches = _batches(3, batch=shape[0], shape=shape[1:])
        step = _step_of(net, opt)
        if not graphed:
            return [float(step(X.to("cuda"), y.to("cuda")).item()) for X, y in batches]
        X0, y0 = batches[0]
        graphed = tc.cuda.make_graphed_step(step, (X0.to("cuda"), y0.to("cuda")),
                                            num_warmup_iters=1, optimizer=opt)
        return [float(graphed(X, y).item()) for X, y in batches]

    np.testing.assert_allclose(losses(True), losses(False), rtol=1e-6)


def test_the_benchmarks_graphed_engine_replays_without_a_kernel_call(strict_cupy):
    """benchmarks/gpu.py's ``ours-gpu-graph`` row: after its untimed warm-up and
    capture, a step is a copy-in and a replay; no kernel is called from Python."""
    from benchmarks import gpu
    result = gpu.measure("ours-gpu-graph", "lenet", 8, steps=2, warmup=1)
    assert result["kernel_calls_per_step"] == 0 and result["device"] == "cuda"
