"""kernels/fused_cupy.py on the strict fake CuPy: the wrappers' dispatch, argument
packing (C types, contiguity, launch geometry: ``kernel_twins.py`` checks them
against the CUDA C signatures), their tables of device addresses, and how many
launches a kernel call and a training step take -- each kernel's NumPy twin
computing, compared with the NumPy reference.  That the CUDA C computes what the
twins do is tests/gpu/test_gpu_fused.py's, on a GPU."""
import json
import sys

import numpy as np
import pytest

import kernels
import models
import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from kernels import bn_numpy, elementwise_numpy, fused_cupy
from tinygrad_cnn import backend, optim
from tests.cupy_api import kernel_twins
from tests.cupy_api.strict_cupy import LAUNCHES, StrictCupy, StrictGpuArray

pytestmark = pytest.mark.kernel_free      # CuPy arrays: whatever the CPU set
DTYPES = [np.float32, np.float64]


@pytest.fixture
def cupy(monkeypatch):
    """The strict fake as CuPy, the GPU kernels chosen afresh by the dispatch's probes
    (numba.cuda's made to fail: it cannot launch on the fake)."""
    fake = StrictCupy()
    monkeypatch.setattr(kernels.arrays, "cupy", fake)
    monkeypatch.setattr(backend, "cupy", fake)
    monkeypatch.setattr(kernels, "_gpu_kernels", None)
    monkeypatch.setattr(kernels.cuda_probe, "why_not", lambda: "no numba.cuda on the fake")
    monkeypatch.setattr(fused_cupy, "_tables", {})
    with pytest.warns(UserWarning, match="numba.cuda"):
        kernels.gpu_kernels()
    kernel_twins.launches.clear()
    return fake


def launched():
    """The fused kernels' launches since the last call, by name, and clear."""
    counts = dict(kernel_twins.launches)
    kernel_twins.launches.clear()
    return counts


def assert_same(got, expected):
    """Bit for bit, NaNs in the same places, on the GPU."""
    assert isinstance(got, StrictGpuArray), type(got)
    got = np.asarray(got)
    # dtype and shape by hand: assert_array_equal's strict= needs NumPy 1.24
    assert (got.dtype, got.shape) == (expected.dtype, expected.shape)
    np.testing.assert_array_equal(got, expected)


def noncontiguous(a):
    """The same values in a transposed-then-back layout: not C-contiguous."""
    return np.ascontiguousarray(a.swapaxes(0, -1)).swapaxes(0, -1)


# ---------------------------------------------------------------- elementwise
def test_the_dispatch_chooses_the_fused_kernels_after_their_probe(cupy):
    assert kernels.which("relu_forward", cupy.zeros(3)) == "kernels.fused_cupy.relu_forward"
    assert fused_cupy.why_not() is None


def test_a_failing_compile_falls_back_with_one_warning_saying_why(cupy, monkeypatch):
    def broken(**_):
        raise RuntimeError("nvrtc: error: invalid option")
    monkeypatch.setattr(type(cupy), "RawModule", staticmethod(lambda code=None, **kw: broken()))
    monkeypatch.setattr(kernels, "_gpu_kernels", None)
    monkeypatch.setattr(fused_cupy, "_modules", {})
    with pytest.warns(UserWarning, match=r"fused CUDA C kernels cannot run here "
                                         r"\(RuntimeError: nvrtc: error: invalid option\)"):
        kernels.gpu_kernels()
    assert (kernels.which("relu_forward", cupy.zeros(3))
            == "kernels.elementwise_numpy.relu_forward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (3, 5, 11), (2, 3, 9, 13)])
@pytest.mark.parametrize("layout", ["contiguous", "non-contiguous"])
def test_relu_and_sigmoid_kernels_equal_the_reference(cupy, dtype, shape, layout):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[:4] = [np.nan, -0.0, 0.0, np.inf]       # the threshold rule's edge cases
    gy = rng.standard_normal(shape).astype(dtype)
    gy.flat[-3:] = [np.nan, np.inf, -np.inf]
    y = elementwise_numpy.relu_forward(x)
    s = (1 / (1 + np.exp(-x))).astype(dtype)
    arrange = noncontiguous if layout == "non-contiguous" and len(shape) > 1 else (lambda a: a)
    gx_, gy_, y_, s_ = (cupy.asarray(arrange(a)) for a in (x, gy, y, s))
    with np.errstate(invalid="ignore"):
        assert_same(kernels.relu_forward(gx_), y)
        assert_same(kernels.relu_backward(gy_, y_), elementwise_numpy.relu_backward(gy, y))
        assert_same(kernels.sigmoid_backward(gy_, s_),
                    elementwise_numpy.sigmoid_backward(gy, s))
        assert_same(kernels.sigmoid_forward(gx_), elementwise_numpy.sigmoid_forward(x))
    assert launched() == {"relu_forward": 1, "relu_backward": 1, "sigmoid_backward": 1,
                          "sigmoid_forward": 1}


def test_empty_arrays_launch_nothing(cupy):
    assert kernels.relu_forward(cupy.zeros((0, 3), dtype=np.float32)).shape == (0, 3)
    assert launched() == {}


def test_other_dtypes_go_to_the_reference(cupy):
    x = cupy.asarray(np.array([-1.0, 2.0], dtype=np.float16))
    assert_same(kernels.relu_forward(x), np.array([0.0, 2.0], dtype=np.float16))
    assert launched() == {}


# ---------------------------------------------------------------- batch norm
BN_SHAPES = [(5, 3), (4, 3, 7), (3, 5, 6, 7), (1, 2, 1, 1 + 300)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_forward_equals_the_reference(cupy, dtype, shape):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 3 + 100).astype(dtype)    # |mean| >> std
    gamma, beta = (rng.standard_normal(shape[1]).astype(dtype) for _ in range(2))
    got = kernels.batchnorm_forward_train(cupy.asarray(noncontiguous(x)), cupy.asarray(gamma),
                                          cupy.asarray(beta), 1e-5)
    expected = bn_numpy.batchnorm_forward_train(x, gamma, beta, 1e-5)
    for g, e in zip(got, expected):     # float64 sums in another order: to their rounding
        assert isinstance(g, StrictGpuArray) and g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(np.asarray(g), e, rtol=1e-6 if dtype == np.float32 else 1e-12)
    assert launched() == {"batchnorm_moments": 1, "batchnorm_apply": 1}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("with_dx", [True, False])
def test_batchnorm_backward_equals_the_reference(cupy, dtype, shape, with_dx):
    rng = np.random.default_rng(2)
    gy, x = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    mean, inv_std = rng.standard_normal(shape[1]).astype(dtype), rng.random(shape[1]).astype(dtype)
    scale = rng.standard_normal(shape[1]).astype(dtype) if with_dx else None
    got = kernels.batchnorm_backward(cupy.asarray(noncontiguous(gy)), cupy.asarray(noncontiguous(x)),
                                     cupy.asarray(mean), cupy.asarray(inv_std),
                                     None if scale is None else cupy.asarray(scale))
    expected = bn_numpy.batchnorm_backward(gy, x, mean, inv_std, scale)
    for g, e in zip(got, expected):
        if e is None:
            assert g is None
        else:
            np.testing.assert_allclose(np.asarray(g), e,
                                       rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-12)
    assert launched() == ({"batchnorm_backward_sums": 1, "batchnorm_backward_dx": 1}
                          if with_dx else {"batchnorm_backward_sums": 1})


# ---------------------------------------------------------------- the optimizers
SGD_OPTIONS = [(0.1, 0, 0, 0, False), (0.1, 0.9, 0, 0, False), (0.05, 0.9, 0.3, 1e-2, False),
               (0.1, 0.9, 0, 1e-2, True)]
SHAPES = [(3, 1, 5, 5), (3,), (), (10, 17), (1,)]
NUMPY_1_VALUE_CASTING = int(np.__version__.split(".")[0]) < 2


def parameters(dtype, seed, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s)).astype(dtype) for s in shapes]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", SGD_OPTIONS)
def test_one_sgd_launch_for_all_parameters_equals_the_loop(cupy, dtype, options):
    params = parameters(dtype, 0)
    on_gpu = [cupy.asarray(p) for p in params]
    buffers, gpu_buffers = [None] * len(params), [None] * len(params)
    for step in range(3):
        grads = parameters(dtype, 10 + step)
        grads[1] = grads[1].astype(dtype)[::-1]         # a non-contiguous gradient is read
        buffers = elementwise_numpy.sgd_update_multi(params, grads, buffers, *options)
        gpu_buffers = kernels.sgd_update_multi(on_gpu, [cupy.asarray(g) for g in grads],
                                               gpu_buffers, *options)
        assert launched() == {"sgd_multi": 1}
        for p, g in zip(on_gpu, params):
            assert_same(p, g)
        for b, e in zip(gpu_buffers, buffers):
            assert (b is None) == (e is None) and (b is None or np.array_equal(b, e))


def test_a_parameter_joining_later_starts_its_momentum_in_the_same_launch(cupy):
    params = parameters(np.float32, 0)
    on_gpu = [cupy.asarray(p) for p in params]
    grads = parameters(np.float32, 1)
    options = (0.1, 0.9, 0, 0, False)
    buffers = elementwise_numpy.sgd_update_multi(params[:2], grads[:2], [None] * 2, *options)
    gpu_buffers = kernels.sgd_update_multi(on_gpu[:2], [cupy.asarray(g) for g in grads[:2]],
                                           [None] * 2, *options)
    buffers = elementwise_numpy.sgd_update_multi(params, grads, buffers + [None] * 3, *options)
    gpu_buffers = kernels.sgd_update_multi(on_gpu, [cupy.asarray(g) for g in grads],
                                           gpu_buffers + [None] * 3, *options)
    assert launched() == {"sgd_multi": 2}
    for p, e, b, eb in zip(on_gpu, params, gpu_buffers, buffers):
        assert_same(p, e)
        np.testing.assert_array_equal(np.asarray(b), eb)


def test_mixed_dtypes_take_one_launch_each_and_odd_parameters_the_reference(cupy):
    params = parameters(np.float32, 0) + parameters(np.float64, 1)
    grads = parameters(np.float32, 2) + parameters(np.float64, 3)
    on_gpu = [cupy.asarray(p) for p in params]
    on_gpu[0] = cupy.asarray(noncontiguous(params[0]))        # updated in place: not ours
    params.append(np.arange(3, dtype=np.float16))
    grads.append(np.ones(3, dtype=np.float16))
    on_gpu.append(cupy.asarray(params[-1]))
    options = (0.1, 0.9, 0, 1e-3, True)
    expected = elementwise_numpy.sgd_update_multi(params, grads, [None] * len(params), *options)
    got = kernels.sgd_update_multi(on_gpu, [cupy.asarray(g) for g in grads],
                                   [None] * len(params), *options)
    assert launched() == {"sgd_multi": 2}
    for p, e in zip(on_gpu, params):
        assert_same(p, e)
    assert all(np.array_equal(b, e) for b, e in zip(got, expected))


def test_the_address_table_is_copied_to_the_gpu_only_when_it_changes(cupy):
    params = [cupy.asarray(p) for p in parameters(np.float32, 0)]
    grads = [cupy.asarray(g) for g in parameters(np.float32, 1)]
    buffers = kernels.sgd_update_multi(params, grads, [None] * 5, 0.1, 0.9, 0, 0, False)
    first = fused_cupy._tables[("sgd_multi", np.dtype(np.float32))].device
    kernels.sgd_update_multi(params, grads, buffers, 0.1, 0.9, 0, 0, False)
    second = fused_cupy._tables[("sgd_multi", np.dtype(np.float32))].device
    kernels.sgd_update_multi(params, grads, buffers, 0.1, 0.9, 0, 0, False)
    assert fused_cupy._tables[("sgd_multi", np.dtype(np.float32))].device is second
    assert second is not first       # the first step's table says "first step"


# lr, beta1, beta2, eps, weight_decay, amsgrad, decoupled (AdamW)
ADAM_OPTIONS = [(1e-3, 0.9, 0.999, 1e-8, 0, False, False),
                (1e-2, 0.8, 0.99, 1e-6, 1e-2, True, False),
                (1e-2, 0.9, 0.999, 1e-8, 1e-2, False, True),
                (1e-3, 0.9, 0.999, 1e-8, 0.1, True, True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", ADAM_OPTIONS)
def test_one_adam_launch_for_all_parameters_equals_the_loop(cupy, dtype, options):
    params = parameters(dtype, 0)
    state = [[np.zeros_like(p) for p in params] for _ in range(3)]
    on_gpu = [cupy.asarray(p) for p in params]
    gpu_state = [[cupy.asarray(a) for a in s] for s in state]
    for step in range(1, 4):
        grads = parameters(dtype, 10 + step)
        steps = [step] * 4 + [step + 5]            # a parameter with its own count
        elementwise_numpy.adam_update_multi(params, grads, *state, steps, *options)
        kernels.adam_update_multi(on_gpu, [cupy.asarray(g) for g in grads], *gpu_state, steps,
                                  *options)
        assert launched() == {"adam_multi": 1}
        for got, expected in zip(on_gpu + sum(gpu_state, []), params + sum(state, [])):
            if expected.ndim == 0 and NUMPY_1_VALUE_CASTING and dtype == np.float32:
                # NumPy before 2.0 computes a 0-d float32 array times a Python float in
                # float64 and rounds (value-based casting); the kernel stays in float32
                np.testing.assert_array_max_ulp(np.asarray(got), expected, maxulp=1)
            else:
                assert_same(got, expected)


# ---------------------------------------------------------------- whole steps
def training_step_launches(name, shape, optimizer_options, fused, optimizer="SGD"):
    """Kernel launches of one training step of ``name`` on the fake GPU (after one
    untimed step), the fused kernels on or off: the fused ones by name, and all
    (``LAUNCHES``' rules) as "all"; and the final weights."""
    if not fused:
        kernels._gpu_kernels = dict(kernels._reference)
    tc.manual_seed(0)
    net = models.get(name)
    net(tc.zeros(*shape))
    net.to("cuda")
    rng = np.random.default_rng(1)
    X = tc.Tensor(rng.standard_normal(shape).astype(np.float32)).to("cuda")
    y = tc.Tensor(rng.integers(0, 10, shape[0])).to("cuda")
    opt = getattr(optim, optimizer)(net.parameters(), **optimizer_options)
    counts = []
    for _ in range(2):
        kernel_twins.launches.clear()
        with LAUNCHES.counting() as counted:
            loss = F.cross_entropy(net(X), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        counts.append(dict(kernel_twins.launches, all=counted.count))
    return counts[-1], [np.asarray(p.data) for p in net.parameters()]


@pytest.mark.parametrize("name, shape", [("lenet", (4, 1, 28, 28)), ("lenet_bn", (4, 1, 28, 28)),
                                         ("resnet18", (2, 1, 32, 32))])
def test_a_training_step_launches_fewer_kernels_and_computes_the_same(cupy, name, shape):
    options = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)
    fused, fused_weights = training_step_launches(name, shape, options, fused=True)
    reference, reference_weights = training_step_launches(name, shape, options, fused=False)
    print(f"\n{name}: GPU launches per step (numba.cuda off): reference kernels "
          f"{reference['all']}, fused {fused['all']} {fused}")
    assert fused["sgd_multi"] == 1 and "sgd_multi" not in reference
    assert fused["all"] < reference["all"]
    for got, expected in zip(fused_weights, reference_weights):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_the_launch_cost_benchmark_reports_every_technology(cupy, monkeypatch, capsys):
    # the first GPU machine's check of the technology choice (benchmarks/gpu_launch.py,
    # a stage of benchmarks.gpu --verify): here only that it runs and reports every
    # technology, a figure or the error that stopped it (the fake has no ElementwiseKernel)
    from benchmarks import gpu_launch
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    gpu_launch.main(["--launches", "5", "--size", "300"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    per_launch = report["per_launch"]
    assert set(per_launch) == {"cupy-rawkernel", "fused-relu-wrapper", "cupy-elementwisekernel",
                               "cupy-ufunc", "numba-cuda"}
    assert per_launch["cupy-rawkernel"]["host_us"] > 0
    assert "ElementwiseKernel" in per_launch["cupy-elementwisekernel"]["error"]
    step = report["sgd_step_resnet18"]
    assert step["parameters"] == len(gpu_launch.RESNET18_SHAPES)
    net = models.get("resnet18")
    net(tc.zeros(2, 1, 32, 32))
    assert sorted(gpu_launch.RESNET18_SHAPES) == sorted(p.shape for p in net.parameters())
    assert step["one-launch-for-all"]["host_us"] > 0 and step["reference-loop"]["host_us"] > 0


@pytest.mark.parametrize("optimizer,options", [
    ("Adam", dict(lr=1e-3, weight_decay=1e-4, amsgrad=True)),
    ("AdamW", dict(lr=1e-3)), ("SGD", dict(lr=0.01, momentum=0.9, nesterov=True))])
def test_every_optimizer_steps_a_network_in_one_launch_as_the_reference(cupy, optimizer, options):
    fused, fused_weights = training_step_launches("lenet_bn", (4, 1, 28, 28), options,
                                                  fused=True, optimizer=optimizer)
    _, reference_weights = training_step_launches("lenet_bn", (4, 1, 28, 28), options,
                                                  fused=False, optimizer=optimizer)
    assert fused[{"SGD": "sgd_multi"}.get(optimizer, "adam_multi")] == 1
    for got, expected in zip(fused_weights, reference_weights):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_a_captured_step_with_the_fused_kernels_replays_the_eager_losses(cupy):
    # CUDA Graphs (tinygrad_cnn/cuda_graphs.py) on the fake: the fused ReLU/sigmoid/batch-norm
    # launches are captured and replayed like any kernel; the multi-tensor SGD step runs the
    # reference loop while capturing (a new address table would be a host-to-device copy)
    from tests.cupy_api.test_cuda_graphs import _batches, _setup, _step_of
    batches = _batches(5)
    losses = {}
    for graphed in (False, True):
        net, opt = _setup("lenet_bn")
        step = _step_of(net, opt)
        if graphed:
            X0, y0 = batches[0]
            step = tc.cuda.make_graphed_step(step, (X0.to("cuda"), y0.to("cuda")),
                                             num_warmup_iters=1, optimizer=opt)
        kernel_twins.launches.clear()
        losses[graphed] = [float(cupy.asnumpy(step(X.to("cuda"), y.to("cuda")).data))
                           for X, y in batches]
        if graphed:
            assert step.replays == len(batches) - 1      # all but the warm-up step
            assert kernel_twins.launches["batchnorm_apply"] > 0
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-6)
