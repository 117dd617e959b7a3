"""The elementwise kernels: elementwise_numba against elementwise_numpy (the
reference), bit for bit, float32 and float64, on odd shapes, 0-d arrays and
non-contiguous views; ReLU's NaN rule and the SGD step against PyTorch.
tests/ops/test_elementwise.py gradchecks the ReLU and Sigmoid ops and
tests/test_optim.py the optimiser, under both kernel sets."""
import numpy as np
import pytest

pytest.importorskip("numba")

import kernels  # noqa: E402
from kernels import elementwise_numba, elementwise_numpy  # noqa: E402
from tinygrad_cnn.backend import to_device  # noqa: E402

DTYPES = [np.float32, np.float64]
SHAPES = {"0-d": (), "1-element": (1,), "odd-1d": (7,), "odd-3d": (3, 5, 7),
          "nchw": (2, 3, 4, 5), "empty": (0, 3)}
# How an array reaches the kernel: as it is, or as a non-contiguous view of a bigger one.
LAYOUTS = {
    "contiguous": lambda a: a,
    "transposed": lambda a: a.T,
    "strided": lambda a: np.repeat(a, 2, axis=-1)[..., ::2] if a.ndim else a,
}


def random_array(shape, dtype, seed, special=False):
    """Standard normal values; with ``special``, about one in four NaN, ±inf, +0.0 or -0.0."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape)
    if special:
        odd = rng.choice([np.nan, np.inf, -np.inf, 0.0, -0.0], size=shape)
        a = np.where(rng.random(shape) < 0.25, odd, a)
    return np.asarray(a, dtype=dtype)


def assert_identical(actual, expected):
    """Same dtype, shape and values: NaN where NaN, and the same sign of every
    number, zeros included (a NaN's sign bit depends on operand order, which
    the compiler may swap, so it is not compared)."""
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)
    numbers = ~np.isnan(expected)
    np.testing.assert_array_equal(np.signbit(actual[numbers]), np.signbit(expected[numbers]))


# ---------------------------------------------------------------- activations
# The float32 sigmoid has a loop of its own (exp(-|x|) by a polynomial), not the
# reference's ½ tanh(x/2) + ½: it is held to the exact value instead.
FORWARD_BIT_FOR_BIT = [("relu_forward", np.float32), ("relu_forward", np.float64),
                       ("sigmoid_forward", np.float64)]


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("name, dtype", FORWARD_BIT_FOR_BIT)
def test_activation_forward_equals_reference(name, dtype, shape, layout):
    x = layout(random_array(shape, dtype, seed=0, special=True))
    assert_identical(getattr(elementwise_numba, name)(x), getattr(elementwise_numpy, name)(x))


def exact_sigmoid(x):
    """σ(x) in float64 from exp(-|x|), no overflow: exact to float32's eye."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


def assert_sigmoid_within_ulps(y, x, ulps=3):
    """y, a float32 σ(x), within ``ulps`` units in the last place of the exact
    value (a subnormal's unit is float32's least subnormal), NaN where x is
    NaN; both printed where it is not."""
    assert y.dtype == np.float32 and y.shape == x.shape
    exact = exact_sigmoid(x)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(x))
    unit = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    with np.errstate(invalid="ignore"):
        error = np.where(np.isnan(x), 0, np.abs(y.astype(np.float64) - exact) / unit)
    worst = np.unravel_index(np.argmax(error), error.shape) if error.size else None
    assert error.size == 0 or error[worst] <= ulps, (
        f"sigmoid({x[worst]!r}) = {y[worst]!r}, exact {exact[worst]!r}: {error[worst]:.2f} ulps")


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_float32_sigmoid_within_3_ulps_of_exact(shape, layout):
    x = layout(random_array(shape, np.float32, seed=0, special=True))
    y = elementwise_numba.sigmoid_forward(x)
    assert isinstance(y, np.ndarray)
    assert_sigmoid_within_ulps(y, x)


def test_float32_sigmoid_over_its_whole_range():
    # every part of the reduction: 2^n down to a subnormal e, and below -104, where
    # σ rounds to 0; tanh's ½ tanh(x/2) + ½ is 0 from x = -17 on, this loop is not
    x = np.concatenate([np.linspace(-110, 30, 400_001, dtype=np.float32),
                        np.float32([-87.3, -87.4, -103.9, -103.95, -104, -104.1, 1e-30, -1e-30,
                                    88.8, 5e-8, -5e-8, 16.6, 17.0, 20.0, -20.0])])
    y = elementwise_numba.sigmoid_forward(x)
    assert_sigmoid_within_ulps(y, x)
    assert y[x == np.float32(-20.0)][0] > 0 == elementwise_numpy.sigmoid_forward(np.float32([-20.0]))[0]
    # and the reference, to within the two results' roundings together: 3 ulps of
    # this loop's near 1 and ½ tanh's 2⁻²⁴ make less than 2⁻²²
    np.testing.assert_allclose(y, elementwise_numpy.sigmoid_forward(x), rtol=0, atol=2.0**-22)


def test_float32_sigmoid_of_special_values():
    x = np.float32([np.inf, -np.inf, np.nan, 0.0, -0.0, 200, -200])
    y = elementwise_numba.sigmoid_forward(x)
    np.testing.assert_array_equal(y, np.float32([1, 0, np.nan, 0.5, 0.5, 1, 0]))
    assert not np.signbit(y[[1, 6]]).any()


def backward_inputs(name, shape, dtype, layout):
    """(gy, y) for ``name``'s backward: y a ReLU's or a sigmoid's output, an array
    of its dtype even when 0-d, as the ops save (NumPy 1.x makes 1 / (1 + a 0-d
    float32) float64)."""
    gy = layout(random_array(shape, dtype, seed=1, special=True))
    x = random_array(shape, dtype, seed=2, special=True)
    y = layout(np.asarray(elementwise_numpy.relu_forward(x) if name == "relu_backward"
                          else 1 / (1 + np.exp(-x)), dtype=dtype))
    return gy, y


@pytest.mark.parametrize("overwrite", [False, True], ids=["new-array", "over-gy"])
@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("name", ["relu_backward", "sigmoid_backward"])
def test_activation_backward_equals_reference(name, shape, dtype, layout, overwrite):
    # the reference's bits either way; with overwrite_gy, gx is written over a
    # C-contiguous gy, which comes back; otherwise (or over any other layout) gx is
    # a new array and gy stays as it was
    gy, y = backward_inputs(name, shape, dtype, layout)
    given = gy.copy()
    with np.errstate(invalid="ignore"):         # inf·0 in the reference: NaN, as in the loop
        expected = getattr(elementwise_numpy, name)(given, y)
    gx = getattr(elementwise_numba, name)(gy, y, overwrite_gy=overwrite)
    assert_identical(gx, expected)
    if overwrite and gy.flags.c_contiguous:
        assert gx is gy
    else:
        assert gx is not gy
        assert_identical(gy, given)


@pytest.mark.parametrize("module", [elementwise_numpy, elementwise_numba])
@pytest.mark.parametrize("name", ["relu_backward", "sigmoid_backward"])
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # inf·0 in the reference
def test_activation_backward_leaves_gy_alone_unless_allowed(name, module):
    # without overwrite_gy, and in the reference (and float16) whatever it says
    for dtype, overwrite in [(np.float32, False), (np.float64, False), (np.float16, True)]:
        gy, y = backward_inputs(name, (3, 5, 7), dtype, LAYOUTS["contiguous"])
        given = gy.copy()
        assert getattr(module, name)(gy, y, overwrite_gy=overwrite) is not gy
        assert_identical(gy, given)
    gy, y = backward_inputs(name, (3, 5, 7), np.float32, LAYOUTS["contiguous"])
    assert (getattr(module, name)(gy, y, overwrite_gy=True) is gy) == (module is elementwise_numba)


@pytest.mark.parametrize("seconds_per_element, split", [(3e-9, True), (0.3e-9, False)])
def test_a_slow_tanh_splits_a_sigmoid_that_a_fast_one_keeps_whole(seconds_per_element, split,
                                                                  monkeypatch):
    # float64, which goes through NumPy's tanh (float32 has a loop of its own):
    # 128 x 16 x 10 x 10, 1.6 MB, under the 2 MB that splits by bytes; ~0.6 ms of
    # tanh at 3 ns per element, ~0.06 ms at a tenth of that
    monkeypatch.setattr(elementwise_numba, "tanh_seconds_per_element",
                        lambda dtype: seconds_per_element)
    previous = kernels.threads.get_num_threads()
    kernels.threads.set_num_threads(2)
    try:
        if kernels.threads.numba_threads() < 2:
            pytest.skip("Numba's pool has one thread here")
        x = np.random.default_rng(0).standard_normal((128, 16, 10, 10))
        slices = 2 * kernels.threads.numba_threads() if split else 1
        assert len(elementwise_numba._tanh_slices(x)) == slices
        assert_identical(elementwise_numba.sigmoid_forward(x), elementwise_numpy.sigmoid_forward(x))
    finally:
        kernels.threads.set_num_threads(previous)


def test_tanh_cost_is_measured_once_per_dtype():
    cost = elementwise_numba.tanh_seconds_per_element(np.dtype(np.float32))
    assert 0 < cost < 1e-6 and cost == elementwise_numba.tanh_seconds_per_element(
        np.dtype(np.float32))


@pytest.fixture(params=[2, 3], ids=["2-threads", "3-threads"])
def every_array_sliced(request, monkeypatch):
    """2 or 3 threads, and every array cut into slices for the thread pool, even a
    small one (large ones are): yields the list of how many slices each
    ``run_all`` call got."""
    monkeypatch.setattr(kernels.threads, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(kernels.threads, "PARALLEL_MIN_BYTES", 0)
    jobs = []
    run_all = kernels.threads.run_all
    monkeypatch.setattr(kernels.threads, "run_all", lambda js: jobs.append(len(js)) or run_all(js))
    previous = kernels.threads.get_num_threads()
    kernels.threads.set_num_threads(request.param)
    yield jobs
    kernels.threads.set_num_threads(previous)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_cut_into_slices_equal_reference(dtype, every_array_sliced):
    # an odd number of elements over two slices per thread (the sigmoid's forward
    # runs NumPy's expressions on each slice, the others their compiled loops)
    x, gy = (random_array((3, 5, 7), dtype, seed=s, special=True) for s in (3, 4))
    y = elementwise_numpy.relu_forward(x)
    s = np.asarray(1 / (1 + np.exp(-random_array((3, 5, 7), dtype, seed=5))), dtype=dtype)
    assert_identical(elementwise_numba.relu_forward(x), y)
    assert_identical(elementwise_numba.relu_backward(gy, y),
                     elementwise_numpy.relu_backward(gy, y))
    with np.errstate(invalid="ignore"):
        expected = elementwise_numpy.sigmoid_backward(gy, s)
    assert_identical(elementwise_numba.sigmoid_backward(gy, s), expected)
    if dtype == np.float64:
        expected = elementwise_numpy.sigmoid_forward(x)
    else:                       # the float32 loop on the whole array, on this thread
        expected = np.empty_like(x)
        elementwise_numba._compiled().sigmoid_forward_float32(x.reshape(-1),
                                                              expected.reshape(-1))
    assert_identical(elementwise_numba.sigmoid_forward(x), expected)
    for name, out in [("relu_backward", y), ("sigmoid_backward", s)]:    # over gy
        with np.errstate(invalid="ignore"):
            expected = getattr(elementwise_numpy, name)(gy, out)
        given = gy.copy()
        assert_identical(getattr(elementwise_numba, name)(given, out, overwrite_gy=True),
                         expected)
    slices = 2 * kernels.threads.numba_threads()        # at most the cores Numba has
    assert every_array_sliced == [slices] * 6 and slices >= 4


@pytest.mark.parametrize("name", ["relu_backward", "sigmoid_backward"])
def test_activation_backward_reads_a_broadcast_gradient(name):
    # y.sum().backward() hands over a read-only, zero-stride view of ones.
    y = elementwise_numpy.relu_forward(random_array((4, 3, 5), np.float32, seed=3))
    gy = np.broadcast_to(np.float32(1.5), y.shape)
    assert_identical(getattr(elementwise_numba, name)(gy, y),
                     getattr(elementwise_numpy, name)(gy, y))


RELU_NAN_CASES = {     # (y, gy) -> gx, PyTorch's threshold_backward: 0 where y <= 0, else gy
    "nan-y-passes-gy": (np.nan, 5.0, 5.0),
    "nan-gy-alive": (2.0, np.nan, np.nan),
    "nan-gy-dead": (0.0, np.nan, 0.0),
    "inf-gy-dead": (0.0, np.inf, 0.0),
    "inf-y": (np.inf, 3.0, 3.0),
}


@pytest.mark.parametrize("module", [elementwise_numpy, elementwise_numba],
                         ids=["numpy", "numba"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward_nan_rule(module, dtype):
    y, gy, want = (np.array(column, dtype=dtype) for column in zip(*RELU_NAN_CASES.values()))
    np.testing.assert_array_equal(module.relu_backward(gy, y), want)


def test_relu_backward_nan_rule_is_pytorchs():
    torch = pytest.importorskip("torch")
    y, gy, want = (np.array(column, dtype=np.float32) for column in zip(*RELU_NAN_CASES.values()))
    from_torch = torch.ops.aten.threshold_backward(torch.from_numpy(gy), torch.from_numpy(y), 0)
    np.testing.assert_array_equal(from_torch.numpy(), want)


# ---------------------------------------------------------------- SGD
SGD_OPTIONS = {   # (lr, momentum, dampening, weight_decay, nesterov)
    "plain": (0.1, 0, 0, 0, False),
    "weight-decay": (0.1, 0, 0, 0.01, False),
    "momentum": (0.05, 0.9, 0, 0, False),
    "dampening": (0.05, 0.9, 0.3, 0, False),
    "dampening-weight-decay": (0.05, 0.5, 0.5, 0.02, False),
    "nesterov": (0.05, 0.8, 0, 0, True),
    "nesterov-weight-decay": (0.02, 0.9, 0, 0.1, True),
}
STEPS = 4


def sgd_steps(module, param, grads, options):
    """Run ``module.sgd_update`` over ``grads``; the momentum buffers after each step."""
    buf, buffers = None, []
    for grad in grads:
        buf = module.sgd_update(param, grad, buf, *options)
        buffers.append(None if buf is None else buf.copy())
    return buffers


def gradients(shape, dtype, seed=10):
    return [random_array(shape, dtype, seed + step) for step in range(STEPS)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("options", SGD_OPTIONS.values(), ids=SGD_OPTIONS.keys())
def test_sgd_update_equals_reference_step_by_step(options, shape, dtype):
    grads = gradients(shape, dtype)
    params = {name: random_array(shape, dtype, seed=4) for name in ("numpy", "numba")}
    buffers = {name: sgd_steps(module, params[name], grads, options) for name, module in
               (("numpy", elementwise_numpy), ("numba", elementwise_numba))}
    assert_identical(params["numba"], params["numpy"])
    for actual, expected in zip(buffers["numba"], buffers["numpy"]):
        if expected is None:
            assert actual is None            # no momentum: no buffer
        else:
            assert_identical(actual, expected)


@pytest.mark.parametrize("options", SGD_OPTIONS.values(), ids=SGD_OPTIONS.keys())
def test_sgd_update_cut_into_slices_equals_reference(options, every_array_sliced):
    # an odd number of elements over two slices per thread, with and without a
    # momentum buffer (which, without momentum, no slice touches)
    grads = gradients((3, 5, 7), np.float32)
    params = {name: random_array((3, 5, 7), np.float32, seed=4) for name in ("numpy", "numba")}
    buffers = {name: sgd_steps(module, params[name], grads, options) for name, module in
               (("numpy", elementwise_numpy), ("numba", elementwise_numba))}
    assert_identical(params["numba"], params["numpy"])
    for actual, expected in zip(buffers["numba"], buffers["numpy"]):
        assert (actual is None) == (expected is None)
        if expected is not None:
            assert_identical(actual, expected)
    slices = 2 * kernels.threads.numba_threads()        # at most the cores Numba has
    assert every_array_sliced == [slices] * STEPS and slices >= 4


@pytest.mark.parametrize("options", SGD_OPTIONS.values(), ids=SGD_OPTIONS.keys())
def test_sgd_update_reads_non_contiguous_gradients(options):
    shape = (3, 5, 4)
    # a broadcast gradient (zero strides, read-only), then transposed views
    grads = [np.broadcast_to(np.float32(0.5), shape)] + [
        g.T for g in gradients(shape[::-1], np.float32)]
    params = {name: random_array(shape, np.float32, seed=5) for name in ("numpy", "numba")}
    for name, module in (("numpy", elementwise_numpy), ("numba", elementwise_numba)):
        sgd_steps(module, params[name], grads, options)
    assert_identical(params["numba"], params["numpy"])


@pytest.mark.parametrize("options", SGD_OPTIONS.values(), ids=SGD_OPTIONS.keys())
def test_sgd_update_of_a_non_contiguous_parameter_is_in_place(options):
    # The loop writes only contiguous arrays; a view of a bigger array takes the
    # reference, which must still update the view (and nothing else) in place.
    whole = {name: random_array((4, 6), np.float64, seed=6) for name in ("numpy", "numba")}
    grads = gradients((4, 3), np.float64)
    for name, module in (("numpy", elementwise_numpy), ("numba", elementwise_numba)):
        sgd_steps(module, whole[name][:, ::2], grads, options)
    assert_identical(whole["numba"], whole["numpy"])
    np.testing.assert_array_equal(whole["numba"][:, 1::2],
                                  random_array((4, 6), np.float64, seed=6)[:, 1::2])


@pytest.mark.parametrize("module", [elementwise_numpy, elementwise_numba],
                         ids=["numpy", "numba"])
def test_sgd_first_buffer_is_a_copy_and_the_gradient_is_only_read(module):
    param, grad = random_array((5,), np.float32, 7), random_array((5,), np.float32, 8)
    grad_before = grad.copy()
    buf = module.sgd_update(param, grad, None, 0.1, 0.9, 0.5, 0, False)
    np.testing.assert_array_equal(buf, grad)        # d itself: no dampening on the first step
    assert not np.shares_memory(buf, grad)
    module.sgd_update(param, grad, buf, 0.1, 0.9, 0.5, 0, False)
    np.testing.assert_array_equal(grad, grad_before)


@pytest.mark.parametrize("options", SGD_OPTIONS.values(), ids=SGD_OPTIONS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update_matches_torch_optim_sgd(dtype, options):
    torch = pytest.importorskip("torch")
    lr, momentum, dampening, weight_decay, nesterov = options
    shape = (3, 7)
    grads = gradients(shape, dtype)
    param = random_array(shape, dtype, seed=9)
    theirs = torch.nn.Parameter(torch.from_numpy(param.copy()))
    opt = torch.optim.SGD([theirs], lr=lr, momentum=momentum, dampening=dampening,
                          weight_decay=weight_decay, nesterov=nesterov)
    for grad in grads:
        theirs.grad = torch.from_numpy(grad.copy())
        opt.step()
    sgd_steps(elementwise_numba, param, grads, options)
    # PyTorch may fuse a·b + c into one rounding: allow a few ulps.
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(param, theirs.detach().numpy(), rtol=rtol, atol=rtol)


# ---------------------------------------------------------------- what runs where
def test_other_dtypes_use_the_reference_without_compiling(monkeypatch):
    def no_numba():
        raise AssertionError("the compiled loops were asked for")
    monkeypatch.setattr(elementwise_numba, "_compiled", no_numba)
    x16, gy16 = (random_array((3, 4), np.float16, seed) for seed in (0, 1))
    for name in ("relu_backward", "sigmoid_backward"):
        assert_identical(getattr(elementwise_numba, name)(gy16, x16),
                         getattr(elementwise_numpy, name)(gy16, x16))
    assert_identical(elementwise_numba.relu_forward(x16), elementwise_numpy.relu_forward(x16))
    # mixed dtypes: a float64 gradient for a float32 parameter
    param = random_array((3, 4), np.float32, 2)
    expected = param.copy()
    elementwise_numpy.sgd_update(expected, gy16.astype(np.float64), None, 0.1, 0.9, 0, 0, False)
    buf = elementwise_numba.sgd_update(param, gy16.astype(np.float64), None, 0.1, 0.9, 0, 0,
                                       False)
    assert_identical(param, expected)
    assert buf.dtype == np.float64            # the reference's buffer: a copy of d


def test_gradients_of_another_shape_use_the_reference():
    # The flat loops cannot broadcast: a (1, 4) gradient for a (3, 4) parameter goes
    # to the reference, whichever array is smaller.
    grad, y = random_array((1, 4), np.float32, 0), random_array((3, 4), np.float32, 1)
    assert_identical(elementwise_numba.relu_backward(grad, y),
                     elementwise_numpy.relu_backward(grad, y))
    params = [random_array((3, 4), np.float32, 2) for _ in range(2)]
    for param, module in zip(params, (elementwise_numpy, elementwise_numba)):
        module.sgd_update(param, grad, None, 0.1, 0, 0, 0.01, False)
    assert_identical(params[1], params[0])


def test_the_kernel_set_chooses_the_elementwise_kernels(kernel_set):
    x = random_array((3, 4), np.float32, 0)
    for name in ("relu_forward", "relu_backward", "sigmoid_backward", "sgd_update"):
        assert kernels.which(name, x) == f"kernels.elementwise_{kernel_set}.{name}"


def test_device_arrays_stay_on_their_device(device):
    x, gy = (to_device(random_array((4, 3), np.float32, seed), device) for seed in (0, 1))
    y = elementwise_numba.relu_forward(x)
    for out in (y, elementwise_numba.relu_backward(gy, y),
                elementwise_numba.sigmoid_backward(gy, y)):
        assert type(out) is type(x)
    param = to_device(random_array((4, 3), np.float32, 2), device)
    buf = elementwise_numba.sgd_update(param, gy, None, 0.1, 0.9, 0, 0.01, True)
    assert type(buf) is type(param)
    expected = random_array((4, 3), np.float32, 2)
    elementwise_numpy.sgd_update(expected, to_device(gy, "cpu"), None, 0.1, 0.9, 0, 0.01, True)
    np.testing.assert_allclose(to_device(param, "cpu"), expected, rtol=1e-6)
