"""The GPU convolution's plan, on the strict fake CuPy (issue 12): the whole
batch's columns and one product per convolution, a budget from free GPU memory
(measured once, again after an out-of-memory error), Winograd off under 'auto',
and TF32 set as PyTorch's flags say around each product."""
import warnings

import numpy as np
import pytest

import kernels
import tinygrad_cnn as tc
from tinygrad_cnn import backend, backends, cuda
from tinygrad_cnn.ops import conv as conv_module
from tinygrad_cnn.ops.conv import conv2d
from tests.cupy_api.strict_cupy import LAUNCHES, OutOfMemoryError, StrictCupy

# CuPy arrays run the reference kernels whatever the CPU set: first set only
pytestmark = pytest.mark.kernel_free


def use_fake(monkeypatch, **settings):
    fake = StrictCupy(**settings)
    monkeypatch.setattr(kernels.arrays, "cupy", fake)
    monkeypatch.setattr(backend, "cupy", fake)
    monkeypatch.setattr(kernels, "_gpu_kernels", dict(kernels._reference))
    monkeypatch.setattr(cuda, "_conv_column_budgets", {})
    return fake


@pytest.fixture
def fake(monkeypatch):
    return use_fake(monkeypatch)


@pytest.fixture
def restore_settings():
    previous = (conv_module.algorithm, conv_module.column_budget,
                backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32)
    yield
    conv_module.set_algorithm(previous[0])
    conv_module.set_column_budget(previous[1])
    backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = previous[2:]


def inputs(shape, weight_shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape).astype(np.float32),
            rng.standard_normal(weight_shape).astype(np.float32),
            rng.standard_normal(weight_shape[0]).astype(np.float32))


def run(device, x, w, b, **kwargs):
    """y and the three gradients, as NumPy, and y's Function."""
    x, w, b = (tc.Tensor(a).to(device).requires_grad_() for a in (x, w, b))
    y = conv2d(x, w, b, **kwargs)
    g = np.random.default_rng(9).standard_normal(y.shape).astype(np.float32)
    y.backward(tc.Tensor(g).to(device).data)
    return [np.asarray(backend.to_device(t, "cpu")) for t in
            (y.data, x.grad.data, w.grad.data, b.grad.data)], y.grad_fn


def on_cpu(x, w, b, **kwargs):
    saved = kernels.arrays.cupy, backend.cupy
    kernels.arrays.cupy = backend.cupy = None
    try:
        return run("cpu", x, w, b, **kwargs)[0]
    finally:
        kernels.arrays.cupy, backend.cupy = saved


def assert_close(ours, expected, tolerance=2e-5):
    for a, e in zip(ours, expected):
        np.testing.assert_allclose(a, e, rtol=tolerance, atol=tolerance)


# ---------------------------------------------------------------- whole batch, one product
def test_gpu_conv_is_one_im2col_one_product_per_pass_whatever_the_cpu_budget(
        fake, monkeypatch, restore_settings):
    # a CPU budget of one byte would cut the batch into single images
    monkeypatch.setattr(conv_module, "DEFAULT_COLUMN_BUDGET", 1)
    x, w, b = inputs((6, 4, 9, 9), (8, 4, 3, 3))
    expected = on_cpu(x, w, b, stride=2, padding=1)
    with kernels.counting() as calls:
        ours, fn = run("cuda", x, w, b, stride=2, padding=1)
    assert fn.name == "Conv2d[im2col]" and len(fn.chunks) == 1
    # forward im2col, backward im2col (for dW) and col2im: once each for the batch;
    # the three products too (W @ col, dy @ colᵀ, Wᵀ @ dy)
    assert calls == {"im2col": 2, "col2im": 1, "matmul": 3, "map_chunks": 2}
    assert len(fake.products) == 3          # W @ col, dy @ colᵀ, Wᵀ @ dy
    assert_close(ours, expected)
    # on the CPU the same budget rule cuts it per image
    saved = kernels.arrays.cupy, backend.cupy
    kernels.arrays.cupy = backend.cupy = None
    try:
        assert len(run("cpu", x, w, b, stride=2, padding=1)[1].chunks) == 6
    finally:
        kernels.arrays.cupy, backend.cupy = saved


def test_the_budget_is_measured_once_per_device(fake, restore_settings):
    x, w, b = inputs((2, 3, 8, 8), (4, 3, 3, 3))
    for _ in range(3):
        run("cuda", x, w, b, padding=1)
    assert fake.mem_get_info_calls == 1
    assert cuda._conv_column_budgets == {0: cuda.column_budget(fake.free_gpu_bytes)}


def test_out_of_memory_measures_again_and_retries_in_smaller_chunks(fake, monkeypatch,
                                                                    restore_settings):
    x, w, b = inputs((4, 3, 8, 8), (4, 3, 3, 3))
    expected = on_cpu(x, w, b, padding=1)
    per_image = 3 * 9 * 64 * 4
    im2col = kernels.im2col

    def full_gpu(images, *args, **kwargs):
        if len(images) > 2:            # the GPU filled up since the budget was measured
            fake.free_gpu_bytes = 4 * 2 * per_image     # a quarter of it: two images
            raise OutOfMemoryError("out of memory allocating columns")
        return im2col(images, *args, **kwargs)
    monkeypatch.setattr(kernels, "im2col", full_gpu)
    monkeypatch.setattr(cuda, "column_budget",       # without the CPU budget's floor
                        lambda free, floor=None: int(free * cuda.GPU_COLUMN_FRACTION))
    ours, fn = run("cuda", x, w, b, padding=1)
    # measured at the start and after the error; backward starts from the new budget
    assert fake.mem_get_info_calls == 2 and len(fn.chunks) == 2
    assert_close(ours, expected)


def test_out_of_memory_stands_where_smaller_chunks_cannot_help(fake, monkeypatch,
                                                               restore_settings):
    def no_memory(*args, **kwargs):
        raise OutOfMemoryError("out of memory")
    monkeypatch.setattr(kernels, "im2col", no_memory)
    x, w, b = inputs((1, 3, 8, 8), (4, 3, 3, 3))        # one image: nothing to split
    with pytest.raises(OutOfMemoryError):
        run("cuda", x, w, b, padding=1)
    conv_module.set_column_budget(10**9)                 # the user's bound: not re-measured
    x, w, b = inputs((4, 3, 8, 8), (4, 3, 3, 3))
    with pytest.raises(OutOfMemoryError):
        run("cuda", x, w, b, padding=1)


def test_pointwise_conv_on_the_gpu_is_one_product_per_pass(fake, monkeypatch,
                                                          restore_settings):
    monkeypatch.setattr(conv_module, "DEFAULT_COLUMN_BUDGET", 1)
    x, w, b = inputs((5, 6, 4, 4), (8, 3, 1, 1))           # groups=2
    expected = on_cpu(x, w, b, groups=2)
    ours, fn = run("cuda", x, w, b, groups=2)
    assert fn.name == "Conv2d[pointwise]"
    assert len(fake.products) == 3          # y, dx (batched over images) and dW (one)
    assert_close(ours, expected)


# ---------------------------------------------------------------- Winograd
def test_auto_never_picks_winograd_on_the_gpu(fake, restore_settings):
    x, w, b = inputs((2, 16, 8, 8), (16, 16, 3, 3))
    cpu_saved = kernels.arrays.cupy, backend.cupy
    kernels.arrays.cupy = backend.cupy = None
    try:        # the same layer on the CPU: Winograd, 4x4 tiles
        assert conv2d(tc.Tensor(x, requires_grad=True), tc.Tensor(w),
                      padding=1).grad_fn.name == "Conv2d[winograd4x4]"
    finally:
        kernels.arrays.cupy, backend.cupy = cpu_saved
    assert run("cuda", x, w, b, padding=1)[1].name == "Conv2d[im2col]"


# ---------------------------------------------------------------- direct, dense, taps
# algorithm -> (x shape, weight shape, padding, tolerance): layers the CPU runs with its own
# loops or products, which on a GPU would be many small kernels or no better than im2col's one
# product.  The taps' outputs are float32 sums of 1,600 terms, about 40 in size: the GPU's
# im2col and the CPU's taps add them in different orders.
CPU_ONLY = {
    "direct": ((2, 1, 12, 12), (6, 1, 5, 5), 2, 2e-5),        # LeNet's first convolution
    "dense": ((2, 16, 3, 3), (8, 16, 3, 3), 1, 2e-5),         # DenseNet's last block: a 3x3 map
    "taps": ((2, 64, 6, 6), (64, 64, 5, 5), 2, 1e-4),         # a 5x5 kernel on a 6x6 map
}


@pytest.mark.parametrize("algorithm", CPU_ONLY)
def test_auto_never_picks_the_cpu_only_algorithms_on_the_gpu(algorithm, fake, restore_settings):
    x_shape, w_shape, padding, tolerance = CPU_ONLY[algorithm]
    x, w, b = inputs(x_shape, w_shape)
    cpu_saved = kernels.arrays.cupy, backend.cupy
    kernels.arrays.cupy = backend.cupy = None
    try:        # the same layer on the CPU
        assert conv2d(tc.Tensor(x, requires_grad=True), tc.Tensor(w),
                      padding=padding).grad_fn.name == f"Conv2d[{algorithm}]"
    finally:
        kernels.arrays.cupy, backend.cupy = cpu_saved
    ours, fn = run("cuda", x, w, b, padding=padding)
    assert fn.name == "Conv2d[im2col]"
    assert_close(ours, on_cpu(x, w, b, padding=padding), tolerance)


@pytest.mark.parametrize("name", ["winograd", "winograd4x4"])
def test_set_algorithm_winograd_on_the_gpu_runs_it_with_a_warning(name, fake, restore_settings):
    x, w, b = inputs((2, 16, 8, 8), (16, 16, 3, 3))
    conv_module.set_algorithm(name)
    expected = on_cpu(x, w, b, padding=1)
    with pytest.warns(UserWarning, match=rf"set_algorithm\('{name}'\) on a GPU .* slower "
                                         r"than im2col"):
        ours, fn = run("cuda", x, w, b, padding=1)
    assert fn.name == f"Conv2d[{name}]"
    # two orders of float32 rounding: F(4×4, 3×3)'s error is 5-28 times im2col's (docs/conv.md)
    assert_close(ours, expected, 2e-5 if name == "winograd" else 2e-4)
    with warnings.catch_warnings():                 # and no warning on the CPU
        warnings.simplefilter("error")
        on_cpu(x, w, b, padding=1)


def test_set_algorithm_taps_on_the_gpu_runs_it_from_the_same_code(fake, restore_settings):
    # never run on a real GPU: the fake CuPy checks every call is one CuPy has
    x, w, b = inputs((3, 8, 3, 3), (6, 8, 3, 3))
    conv_module.set_algorithm("taps")
    ours, fn = run("cuda", x, w, b, padding=1)
    assert fn.name == "Conv2d[taps]"
    assert_close(ours, on_cpu(x, w, b, padding=1))


# ---------------------------------------------------------------- TF32
TF32_MODE, DEFAULT_MODE = 3, 0
TF32_TYPE, DEFAULT_TYPE = 7, 1


def linear_step(device):
    x = tc.Tensor(np.ones((3, 4), np.float32)).to(device).requires_grad_()
    lin = tc.nn.Linear(4, 2).to(device)
    lin(x).sum().backward()


def test_defaults_are_pytorchs():
    assert backends.cudnn.allow_tf32 is True
    assert backends.cuda.matmul.allow_tf32 is False


@pytest.mark.parametrize("conv_tf32, matmul_tf32", [(True, False), (False, True)])
def test_each_flag_sets_tf32_for_its_products_and_puts_the_state_back(
        fake, restore_settings, conv_tf32, matmul_tf32):
    backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = conv_tf32, matmul_tf32
    x, w, b = inputs((2, 3, 8, 8), (4, 3, 3, 3))
    run("cuda", x, w, b, padding=1)
    conv_products, fake.products = fake.products, []
    linear_step("cuda")
    linear_products = fake.products
    expected = {True: (TF32_MODE, TF32_TYPE), False: (DEFAULT_MODE, DEFAULT_TYPE)}
    assert conv_products == [expected[conv_tf32]] * 3
    assert linear_products == [expected[matmul_tf32]] * 3     # y, dx, dW
    # outside our products, the state is what it was
    assert fake.cuda.cublas.math_mode[1234] == DEFAULT_MODE
    assert fake._core._routines_linalg.get_compute_type(np.float32) == DEFAULT_TYPE


def test_off_overrides_cupy_tf32_inside_and_restores_it_after(fake, restore_settings):
    # CUPY_TF32=1 makes TF32 CuPy's starting compute type for float32
    fake._core._routines_linalg.set_compute_type(np.float32, TF32_TYPE)
    backends.cudnn.allow_tf32 = False
    x, w, b = inputs((2, 3, 8, 8), (4, 3, 3, 3))
    run("cuda", x, w, b, padding=1)
    assert fake.products == [(DEFAULT_MODE, DEFAULT_TYPE)] * 3
    assert fake._core._routines_linalg.get_compute_type(np.float32) == TF32_TYPE


def test_no_tf32_before_compute_capability_8(monkeypatch, restore_settings):
    fake = use_fake(monkeypatch, compute_capability="75")
    monkeypatch.setattr(backends.tf32, "_has_tf32", {})
    x, w, b = inputs((2, 3, 8, 8), (4, 3, 3, 3))
    run("cuda", x, w, b, padding=1)         # cudnn.allow_tf32 is True by default
    assert fake.products == [(DEFAULT_MODE, DEFAULT_TYPE)] * 3


def test_float64_products_are_left_alone(fake, restore_settings):
    x, w, b = (a.astype(np.float64) for a in inputs((2, 3, 8, 8), (4, 3, 3, 3)))
    run("cuda", x, w, b, padding=1)
    assert fake.products == [(DEFAULT_MODE, DEFAULT_TYPE)] * 3
    assert fake._core._routines_linalg.compute_types == {}      # never asked


def test_the_cpu_path_never_touches_cupy(fake, restore_settings):
    x, w, b = inputs((2, 3, 8, 8), (4, 3, 3, 3))
    results = []
    for flag in (True, False):
        backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = flag
        results.append(on_cpu(x, w, b, padding=1))
        saved = kernels.arrays.cupy, backend.cupy
        kernels.arrays.cupy = backend.cupy = None
        try:
            linear_step("cpu")
        finally:
            kernels.arrays.cupy, backend.cupy = saved
    assert fake.products == [] and fake._core._routines_linalg.compute_types == {}
    assert fake.cuda.cublas.math_mode == {1234: DEFAULT_MODE}
    for a, b_ in zip(*results):
        np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("value", [1, "yes", None])
def test_flags_take_bools_only(value, restore_settings):
    with pytest.raises(TypeError, match="tinygrad_cnn.backends.cudnn.allow_tf32 must be a bool"):
        backends.cudnn.allow_tf32 = value
    with pytest.raises(TypeError, match="backends.cuda.matmul.allow_tf32 must be a bool"):
        backends.cuda.matmul.allow_tf32 = value


def test_the_launch_counter_counts_what_cupy_launches(fake):
    xp = fake
    a = xp.ones((4, 4), dtype=xp.float32)
    with LAUNCHES.counting() as counter:
        b = a.T                         # view: none
        c = xp.ascontiguousarray(b)     # copy: 1
        xp.ascontiguousarray(c)         # already contiguous: none
        d = c @ a                       # 1
        d.sum(axis=0)                   # 1
        d[0] = 1.0                      # 1
        xp.pad(d, 1)                    # 1 (what it does inside is not counted again)
        xp.empty((3,))                  # none
    assert counter.count == 5
