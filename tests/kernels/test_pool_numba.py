"""The Numba pooling kernels against the NumPy reference kernels (which
test_pool_kernels.py checks against explicit loops), float32 and float64, on
awkward geometries and awkward values (ties, all-negative, NaN and ±inf)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba")

from kernels import geometry, pool_numba, pool_numpy, threads as kernel_threads  # noqa: E402
from tinygrad_cnn.backend import to_device  # noqa: E402

# (x shape, kernel, stride, padding, dilation, ceil_mode); padding at most half the
# kernel, as max_pool2d / avg_pool2d allow
GEOMETRIES = {
    "2x2-non-overlapping": ((2, 3, 6, 8), (2, 2), (2, 2), (0, 0), (1, 1), False),
    "3x3-s2-p1-resnet": ((2, 3, 9, 8), (3, 3), (2, 2), (1, 1), (1, 1), False),
    "overlap-stride1": ((2, 2, 6, 5), (3, 3), (1, 1), (1, 1), (1, 1), False),
    "pad-half-kernel": ((2, 2, 6, 7), (4, 4), (1, 3), (2, 2), (1, 1), False),
    "pad-half-kernel-ceil": ((1, 2, 7, 5), (4, 2), (3, 2), (2, 1), (1, 1), True),
    "stride-over-kernel": ((2, 2, 9, 11), (2, 2), (4, 3), (1, 0), (1, 1), False),
    "stride-over-kernel-ceil": ((2, 2, 9, 11), (2, 3), (4, 5), (1, 1), (1, 1), True),
    "ceil-past-edge": ((1, 3, 6, 6), (3, 3), (2, 2), (0, 0), (1, 1), True),
    "ceil-drop-last": ((1, 1, 5, 5), (2, 2), (2, 2), (1, 1), (1, 1), True),
    "1x1-output": ((3, 2, 5, 4), (5, 4), (1, 1), (0, 0), (1, 1), False),
    "1x1-output-strided": ((2, 3, 3, 3), (3, 3), (5, 5), (1, 1), (1, 1), False),
    "batch1-odd": ((1, 3, 7, 9), (3, 5), (2, 1), (1, 2), (1, 1), False),
    "1x1-kernel-stride2": ((2, 3, 5, 6), (1, 1), (2, 2), (0, 0), (1, 1), False),
    "many-planes": ((4, 16, 9, 9), (3, 3), (1, 1), (1, 1), (1, 1), True),  # several per thread
    # stride == kernel, no padding: average backward's tiled loop; odd sizes leave
    # cells past the last window (floor) or make part windows (ceil)
    "tiled-odd-floor": ((2, 3, 7, 9), (2, 2), (2, 2), (0, 0), (1, 1), False),
    "tiled-odd-ceil": ((2, 3, 7, 9), (2, 2), (2, 2), (0, 0), (1, 1), True),
    "tiled-3x2-batch1": ((1, 4, 8, 7), (3, 2), (3, 2), (0, 0), (1, 1), False),
    "tiled-3x2-ceil": ((1, 4, 8, 7), (3, 2), (3, 2), (0, 0), (1, 1), True),
    "dilation": ((2, 2, 9, 10), (2, 3), (2, 3), (1, 1), (3, 2), False),
    "dilation-ceil": ((1, 2, 8, 7), (3, 2), (2, 2), (1, 1), (2, 2), True),
}
AVG_GEOMETRIES = {name: g for name, g in GEOMETRIES.items() if g[4] == (1, 1)}
DTYPES = [np.float32, np.float64]
MAX_VALUES = ["normal", "ties", "negative", "nan-inf"]
AVG_VARIANTS = {"include-pad": (True, None), "exclude-pad": (False, None),
                "divisor-override": (True, 3)}


def make_input(kind, shape, dtype, seed=0):
    """'ties': few distinct values; 'negative': all < 0, so -inf padding must not
    win; 'nan-inf': about one cell in five NaN, +inf or -inf."""
    rng = np.random.default_rng(seed)
    if kind == "ties":
        return rng.integers(-2, 3, size=shape).astype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    if kind == "negative":
        return -np.abs(x) - 1
    if kind == "nan-inf":
        special = rng.choice([np.nan, np.inf, -np.inf], size=shape)
        return np.where(rng.random(shape) < 0.2, special, x).astype(dtype)
    return x


@pytest.fixture(autouse=True)
def threads_even_for_small_arrays(monkeypatch):
    """The test arrays are small, and arrays this small run on the calling
    thread (``PARALLEL_MIN_BYTES``); the threaded path, where races would
    show, is the one to check."""
    monkeypatch.setattr(kernel_threads, "PARALLEL_MIN_BYTES", 0)


def assert_close(actual, expected):
    # The kernels may add a cell's contributions in another order: allow rounding.
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    rtol = 1e-5 if actual.dtype == np.float32 else 1e-13
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("values", MAX_VALUES)
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_maxpool2d_equals_reference(geometry, values, dtype):
    shape, k, s, p, d, ceil_mode = geometry
    x = make_input(values, shape, dtype)
    y, argmax = pool_numba.maxpool2d_forward(x, k, s, p, ceil_mode, d)
    expected_y, expected_argmax = pool_numpy.maxpool2d_forward(x, k, s, p, ceil_mode, d)
    assert y.dtype == dtype and argmax.dtype == np.int64
    np.testing.assert_array_equal(y, expected_y)            # NaN == NaN here
    np.testing.assert_array_equal(argmax, expected_argmax)  # same winner, ties and NaN too

    gy = make_input("normal", y.shape, dtype, seed=1)
    assert_close(pool_numba.maxpool2d_backward(gy, argmax, shape, k, s, p, d),
                 pool_numpy.maxpool2d_backward(gy, argmax, shape, k, s, p, d))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", AVG_VARIANTS.values(), ids=AVG_VARIANTS.keys())
@pytest.mark.parametrize("geometry", AVG_GEOMETRIES.values(), ids=AVG_GEOMETRIES.keys())
def test_avgpool2d_equals_reference(geometry, variant, dtype):
    shape, k, s, p, _, ceil_mode = geometry
    count_include_pad, divisor_override = variant
    x = make_input("normal", shape, dtype)
    y = pool_numba.avgpool2d_forward(x, k, s, p, ceil_mode, count_include_pad, divisor_override)
    assert_close(y, pool_numpy.avgpool2d_forward(x, k, s, p, ceil_mode, count_include_pad,
                                                 divisor_override))
    gy = make_input("normal", y.shape, dtype, seed=1)
    assert_close(
        pool_numba.avgpool2d_backward(gy, shape, k, s, p, count_include_pad, divisor_override),
        pool_numpy.avgpool2d_backward(gy, shape, k, s, p, count_include_pad, divisor_override))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("values", ["normal", "nan-inf", "negative-zero"])
@pytest.mark.parametrize("name", ["2x2-non-overlapping", "tiled-odd-floor", "tiled-3x2-batch1"])
def test_avgpool_forward_tiled_is_the_general_loop_bit_for_bit(name, values, dtype):
    # windows that tile the input take the loop without bounds checks; it adds
    # each window's cells in the same order from the same 0 (so -0.0 sums to
    # +0.0 in both), which the general loop's results must show bit for bit
    shape, k, s, p, _, ceil_mode = GEOMETRIES[name]
    x = (np.full(shape, -0.0, dtype) if values == "negative-zero"
         else make_input(values, shape, dtype))
    out_hw = geometry.pool_output_hw(shape, k, s, p, (1, 1), ceil_mode)
    assert pool_numba._tiles(shape, out_hw, k, s, p)
    divisor = pool_numpy.avgpool_divisors(shape, out_hw, k, s, p, True, None, dtype, np)
    loops = pool_numba._loops(*k)
    general = np.empty(shape[:2] + out_hw, dtype)
    loops.avgpool_forward(x, general, divisor, *s, *p)
    tiled = np.empty_like(general)
    loops.avgpool_forward_tiled(x.reshape((-1,) + shape[2:]), tiled.reshape((-1,) + out_hw),
                                divisor)
    assert tiled.tobytes() == general.tobytes()


@pytest.mark.parametrize("name", ["tiled-odd-ceil", "tiled-3x2-ceil", "3x3-s2-p1-resnet",
                                  "stride-over-kernel"])
def test_part_windows_padding_and_other_strides_take_the_general_loop(name):
    shape, k, s, p, _, ceil_mode = GEOMETRIES[name]
    out_hw = geometry.pool_output_hw(shape, k, s, p, (1, 1), ceil_mode)
    assert not pool_numba._tiles(shape, out_hw, k, s, p)


def test_avgpool2d_propagates_nan_and_inf_like_the_reference():
    shape, k, s, p, _, ceil_mode = GEOMETRIES["overlap-stride1"]
    x = make_input("nan-inf", shape, np.float64)
    y = pool_numba.avgpool2d_forward(x, k, s, p, ceil_mode)
    assert np.isnan(y).any() and np.isinf(y).any()
    with np.errstate(invalid="ignore"):      # inf - inf in the reference's sums
        expected = pool_numpy.avgpool2d_forward(x, k, s, p, ceil_mode)
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("kernel", ["max", "avg"])
def test_non_contiguous_arrays(kernel):
    # a transposed view, as a backward may hand over: the kernels read any strides
    shape, k, s, p, d, ceil_mode = GEOMETRIES["3x3-s2-p1-resnet"]
    x = make_input("normal", shape[::-1], np.float64).transpose(3, 2, 1, 0)
    assert not x.flags.c_contiguous
    if kernel == "max":
        y, argmax = pool_numba.maxpool2d_forward(x, k, s, p, ceil_mode, d)
        gy = np.asfortranarray(make_input("normal", y.shape, np.float64, seed=1))
        expected = pool_numpy.maxpool2d_forward(x, k, s, p, ceil_mode, d)
        np.testing.assert_array_equal(y, expected[0])
        assert_close(pool_numba.maxpool2d_backward(gy, argmax, shape, k, s, p, d),
                     pool_numpy.maxpool2d_backward(gy, argmax, shape, k, s, p, d))
    else:
        y = pool_numba.avgpool2d_forward(x, k, s, p, ceil_mode)
        gy = np.asfortranarray(make_input("normal", y.shape, np.float64, seed=1))
        assert_close(y, pool_numpy.avgpool2d_forward(x, k, s, p, ceil_mode))
        assert_close(pool_numba.avgpool2d_backward(gy, shape, k, s, p),
                     pool_numpy.avgpool2d_backward(gy, shape, k, s, p))


def test_other_dtypes_use_the_reference_without_compiling(monkeypatch):
    # float16 (and CuPy arrays, see the next test) must never reach the compiled loops.
    def no_numba(*kernel_size):
        raise AssertionError("the compiled loops were asked for")
    monkeypatch.setattr(pool_numba, "_loops", no_numba)
    shape, k, s, p, d, ceil_mode = GEOMETRIES["3x3-s2-p1-resnet"]
    x = make_input("normal", shape, np.float16)
    y, argmax = pool_numba.maxpool2d_forward(x, k, s, p, ceil_mode, d)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, pool_numpy.maxpool2d_forward(x, k, s, p, ceil_mode, d)[0])
    gx = pool_numba.maxpool2d_backward(y, argmax, shape, k, s, p, d)
    assert gx.dtype == np.float16 and gx.shape == shape
    y = pool_numba.avgpool2d_forward(x, k, s, p, ceil_mode)
    assert y.dtype == np.float16
    assert pool_numba.avgpool2d_backward(y, shape, k, s, p).dtype == np.float16


def test_device_arrays_stay_on_their_device(device):
    shape, k, s, p, d, ceil_mode = GEOMETRIES["dilation-ceil"]
    x = make_input("normal", shape, np.float64)
    x_dev = to_device(x, device)
    y, argmax = pool_numba.maxpool2d_forward(x_dev, k, s, p, ceil_mode, d)
    gx = pool_numba.maxpool2d_backward(y, argmax, shape, k, s, p, d)
    avg = pool_numba.avgpool2d_forward(x_dev, k, s, p, ceil_mode)
    gx_avg = pool_numba.avgpool2d_backward(avg, shape, k, s, p)
    for array in (y, argmax, gx, avg, gx_avg):
        assert type(array) is type(x_dev)
    np.testing.assert_array_equal(to_device(y, "cpu"),
                                  pool_numpy.maxpool2d_forward(x, k, s, p, ceil_mode, d)[0])


def test_import_does_not_import_numba():
    # Numba's import costs ~0.5 s: it waits for the first kernel call, even with
    # the Numba kernel set selected (the default).
    code = ("import sys, tinygrad_cnn, kernels, kernels.pool_numba, kernels.bn_numba; "
            "assert kernels.active == 'numba', kernels.active; "
            "assert 'numba' not in sys.modules, 'numba imported at import time'")
    env = {k: v for k, v in os.environ.items() if k != "TINYGRAD_CNN_KERNELS"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr


def test_a_forked_child_gets_its_own_threads():
    # A child forked after the thread pool started inherits the pool object but not its
    # threads; reusing it would wait forever.  Run in a subprocess with a timeout.
    code = """if True:
        import os, numpy as np
        from kernels import pool_numba, threads
        threads.PARALLEL_MIN_BYTES = 0           # threads even for this small array
        x = np.random.default_rng(0).standard_normal((8, 2, 6, 6))
        expected = pool_numba.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))[0]
        pid = os.fork()
        if pid == 0:
            y = pool_numba.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))[0]
            os._exit(0 if np.array_equal(y, expected) else 1)
        assert os.waitpid(pid, 0)[1] == 0, "the child computed something else"
    """
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("threads", [False, True], ids=["calling-thread", "threads"])
def test_small_arrays_stay_on_the_calling_thread(monkeypatch, threads):
    x = make_input("normal", (4, 3, 6, 6), np.float32)
    monkeypatch.setattr(kernel_threads, "PARALLEL_MIN_BYTES", 0 if threads else x.nbytes * 4)
    submitted = []
    pool = kernel_threads.thread_pool()
    real_submit = pool.submit
    monkeypatch.setattr(pool, "submit", lambda *a: submitted.append(a) or real_submit(*a))
    y, argmax = pool_numba.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))
    gx = pool_numba.maxpool2d_backward(y, argmax, x.shape, (2, 2), (2, 2), (0, 0))
    expected_y, expected_argmax = pool_numpy.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))
    assert_close(y, expected_y)
    assert_close(gx, pool_numpy.maxpool2d_backward(y, expected_argmax, x.shape, (2, 2),
                                                   (2, 2), (0, 0)))
    assert bool(submitted) == threads


# ---------------------------------------------------------------- adaptive pooling
# (x shape, output size): bins that split evenly, overlap (5 -> 3: neighbours share a
# cell), repeat cells (output larger than the input), the global pool, batch 1, odd sizes
ADAPTIVE_GEOMETRIES = {
    "even-split": ((2, 3, 8, 6), (4, 3)),
    "overlapping-5to3": ((2, 2, 5, 5), (3, 3)),
    "overlapping-odd": ((3, 2, 7, 9), (4, 5)),
    "larger-than-input": ((2, 2, 3, 4), (5, 7)),
    "global-1x1": ((3, 4, 5, 7), (1, 1)),
    "1x1-input": ((2, 3, 1, 1), (2, 3)),
    "batch1-odd": ((1, 5, 9, 7), (2, 5)),
    "many-planes": ((4, 16, 7, 7), (3, 3)),     # several planes per thread
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", ADAPTIVE_GEOMETRIES.values(),
                         ids=ADAPTIVE_GEOMETRIES.keys())
def test_adaptive_avgpool2d_equals_reference(geometry, dtype):
    shape, out = geometry
    x = make_input("normal", shape, dtype)
    assert_close(pool_numba.adaptive_avgpool2d_forward(x, out),
                 pool_numpy.adaptive_avgpool2d_forward(x, out))
    gy = make_input("normal", shape[:2] + out, dtype, seed=1)
    assert_close(pool_numba.adaptive_avgpool2d_backward(gy, shape),
                 pool_numpy.adaptive_avgpool2d_backward(gy, shape))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("values", MAX_VALUES)
@pytest.mark.parametrize("geometry", ADAPTIVE_GEOMETRIES.values(),
                         ids=ADAPTIVE_GEOMETRIES.keys())
def test_adaptive_maxpool2d_equals_reference(geometry, values, dtype):
    shape, out = geometry
    x = make_input(values, shape, dtype)
    y, indices = pool_numba.adaptive_maxpool2d_forward(x, out)
    expected_y, expected_indices = pool_numpy.adaptive_maxpool2d_forward(x, out)
    assert y.dtype == dtype and indices.dtype == np.int64
    np.testing.assert_array_equal(y, expected_y)                # NaN == NaN here
    np.testing.assert_array_equal(indices, expected_indices)    # same winner, ties and NaN too

    gy = make_input("normal", y.shape, dtype, seed=1)
    assert_close(pool_numba.adaptive_maxpool2d_backward(gy, indices, shape),
                 pool_numpy.adaptive_maxpool2d_backward(gy, indices, shape))


def test_adaptive_maxpool2d_ties_go_to_the_first_cell_of_each_bin():
    # all cells equal: every bin's max is its top-left cell; the overlapping bins of
    # 5 -> 3 ([0, 2), [1, 4), [3, 5)) start at rows and columns 0, 1, 3
    x = np.zeros((1, 1, 5, 5), dtype=np.float32)
    _, indices = pool_numba.adaptive_maxpool2d_forward(x, (3, 3))
    starts = np.array([0, 1, 3])
    np.testing.assert_array_equal(indices[0, 0], starts[:, None] * 5 + starts[None, :])
    # a cell that wins several overlapping bins collects all their gradients
    # (1, 1) lies in bins (0..1, 0..1), (3, 3) in bins (1..2, 1..2); bin (1, 1) holds
    # both, tied, and goes to (1, 1), first in row-major order
    x[0, 0, 1, 1] = x[0, 0, 3, 3] = 1.0
    _, indices = pool_numba.adaptive_maxpool2d_forward(x, (3, 3))
    gx = pool_numba.adaptive_maxpool2d_backward(np.ones((1, 1, 3, 3), np.float32), indices,
                                                x.shape)
    assert (gx[0, 0, 1, 1], gx[0, 0, 3, 3], gx.sum()) == (4, 3, 9)


def test_adaptive_kernels_read_non_contiguous_arrays():
    shape, out = ADAPTIVE_GEOMETRIES["overlapping-odd"]
    x = make_input("normal", shape[::-1], np.float64).transpose(3, 2, 1, 0)
    gy = np.asfortranarray(make_input("normal", shape[:2] + out, np.float64, seed=1))
    assert not x.flags.c_contiguous and not gy.flags.c_contiguous
    assert_close(pool_numba.adaptive_avgpool2d_forward(x, out),
                 pool_numpy.adaptive_avgpool2d_forward(x, out))
    assert_close(pool_numba.adaptive_avgpool2d_backward(gy, shape),
                 pool_numpy.adaptive_avgpool2d_backward(gy, shape))
    y, indices = pool_numba.adaptive_maxpool2d_forward(x, out)
    np.testing.assert_array_equal(y, pool_numpy.adaptive_maxpool2d_forward(x, out)[0])
    assert_close(pool_numba.adaptive_maxpool2d_backward(gy, np.asfortranarray(indices), shape),
                 pool_numpy.adaptive_maxpool2d_backward(gy, indices, shape))


def test_adaptive_kernels_leave_other_dtypes_and_devices_to_the_reference(monkeypatch,
                                                                         device):
    def no_numba():
        raise AssertionError("the compiled loops were asked for")
    monkeypatch.setattr(pool_numba, "_adaptive_loops", no_numba)
    shape, out = ADAPTIVE_GEOMETRIES["overlapping-5to3"]
    dtypes = [np.float16] + ([np.float64] if device != "cpu" else [])
    for dtype in dtypes:
        x = to_device(make_input("normal", shape, dtype), device)
        y = pool_numba.adaptive_avgpool2d_forward(x, out)
        gx = pool_numba.adaptive_avgpool2d_backward(y, shape)
        y_max, indices = pool_numba.adaptive_maxpool2d_forward(x, out)
        gx_max = pool_numba.adaptive_maxpool2d_backward(y_max, indices, shape)
        for array in (y, gx, y_max, gx_max):
            assert type(array) is type(x) and array.dtype == dtype
