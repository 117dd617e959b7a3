"""The Numba im2col/col2im against the NumPy reference kernels (which
test_conv_kernels.py checks against explicit loops and torch), in both
column layouts, float32 and float64, on awkward geometries."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba")

from kernels import conv_numba, conv_numpy  # noqa: E402
from tinygrad_cnn.backend import to_device  # noqa: E402

# (x shape, kernel, stride, padding (top, bottom, left, right), dilation)
GEOMETRIES = {
    "3x3-pad1": ((2, 3, 5, 6), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    "pad-over-half-kernel": ((2, 2, 4, 5), (3, 3), (1, 1), (2, 3, 3, 2), (1, 1)),
    "pad-over-kernel": ((1, 2, 3, 4), (2, 2), (2, 1), (3, 3, 2, 4), (1, 1)),
    "stride-over-kernel": ((2, 2, 9, 11), (2, 2), (4, 3), (1, 0, 0, 1), (1, 1)),
    "1x1-output": ((3, 2, 5, 4), (5, 4), (1, 1), (0, 0, 0, 0), (1, 1)),
    "1x1-output-strided": ((2, 3, 7, 7), (3, 3), (5, 5), (0, 0, 0, 0), (1, 1)),
    "batch1-odd": ((1, 3, 7, 9), (3, 5), (2, 1), (1, 1, 2, 2), (1, 1)),
    "dilation": ((2, 2, 9, 10), (2, 3), (2, 3), (1, 0, 0, 2), (3, 2)),
    "1x1-kernel": ((2, 4, 3, 5), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    "1x1-kernel-stride2": ((2, 3, 5, 6), (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),
    "7x7-stride2-pad3": ((2, 1, 11, 12), (7, 7), (2, 2), (3, 3, 3, 3), (1, 1)),
}
DTYPES = [np.float32, np.float64]
LAYOUTS = {"unfold": False, "merged": True}


def random_input(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def assert_sums_equal(actual, expected):
    # Both kernels add a pixel's taps in the same (i, j) order; allow rounding anyway.
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    rtol = 1e-6 if actual.dtype == np.float32 else 1e-14
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("merge_batch", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_im2col_equals_reference(geometry, dtype, merge_batch):
    x_shape, *args = geometry
    x = random_input(x_shape, dtype)
    col = conv_numba.im2col(x, *args, merge_batch=merge_batch)
    expected = conv_numpy.im2col(x, *args, merge_batch=merge_batch)
    assert col.dtype == dtype and col.shape == expected.shape
    np.testing.assert_array_equal(col, expected)


@pytest.mark.parametrize("merge_batch", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_col2im_equals_reference(geometry, dtype, merge_batch):
    x_shape, *args = geometry
    col_shape = conv_numpy.im2col(np.zeros(x_shape), *args, merge_batch=merge_batch).shape
    col = random_input(col_shape, dtype, seed=1)
    assert_sums_equal(conv_numba.col2im(col, x_shape, *args, merge_batch=merge_batch),
                      conv_numpy.col2im(col, x_shape, *args, merge_batch=merge_batch))


@pytest.mark.parametrize("seed", range(8))
def test_random_geometries(seed):
    rng = np.random.default_rng(100 + seed)
    kernel = tuple(int(k) for k in rng.integers(1, 5, 2))
    stride = tuple(int(s) for s in rng.integers(1, 5, 2))
    dilation = tuple(int(d) for d in rng.integers(1, 3, 2))
    padding = tuple(int(p) for p in rng.integers(0, 4, 4))
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    x_shape = (int(rng.integers(1, 4)), int(rng.integers(1, 4)),
               max(1, span[0] - padding[0] - padding[1]) + int(rng.integers(0, 6)),
               max(1, span[1] - padding[2] - padding[3]) + int(rng.integers(0, 6)))
    args = (kernel, stride, padding, dilation)
    merge_batch = bool(seed % 2)
    x = random_input(x_shape, np.float64, seed)
    col = conv_numba.im2col(x, *args, merge_batch=merge_batch)
    np.testing.assert_array_equal(col, conv_numpy.im2col(x, *args, merge_batch=merge_batch))
    y = random_input(col.shape, np.float64, seed + 1)
    assert_sums_equal(conv_numba.col2im(y, x_shape, *args, merge_batch=merge_batch),
                      conv_numpy.col2im(y, x_shape, *args, merge_batch=merge_batch))


NON_CONTIGUOUS = {
    "transposed": lambda a: a.transpose(1, 0, 3, 2).copy().transpose(1, 0, 3, 2),
    "reversed": lambda a: a[:, :, ::-1, ::-1],
    "sliced": lambda a: np.repeat(np.repeat(a, 2, axis=0), 2, axis=2)[::2, :, ::2],
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", NON_CONTIGUOUS)
def test_non_contiguous_inputs(layout, dtype):
    x_shape, *args = GEOMETRIES["batch1-odd"]
    x = NON_CONTIGUOUS[layout](random_input(x_shape, dtype))
    assert not x.flags.c_contiguous
    for merge_batch in LAYOUTS.values():
        col = conv_numba.im2col(x, *args, merge_batch=merge_batch)
        np.testing.assert_array_equal(col, conv_numpy.im2col(x, *args, merge_batch=merge_batch))
        # a column matrix seen through a strided view, as a transposed product hands it over
        col_view = np.asfortranarray(col)
        assert not col_view.flags.c_contiguous
        assert_sums_equal(conv_numba.col2im(col_view, x_shape, *args, merge_batch=merge_batch),
                          conv_numpy.col2im(col, x_shape, *args, merge_batch=merge_batch))


def test_other_dtypes_use_the_reference_without_compiling(monkeypatch):
    # float16 (and CuPy arrays, see the next test) must never reach the compiled loops.
    def no_numba():
        raise AssertionError("the compiled loops were asked for")
    monkeypatch.setattr(conv_numba, "_compiled", no_numba)
    x_shape, *args = GEOMETRIES["3x3-pad1"]
    x = random_input(x_shape, np.float16)
    col = conv_numba.im2col(x, *args)
    assert col.dtype == np.float16
    np.testing.assert_array_equal(col, conv_numpy.im2col(x, *args))
    back = conv_numba.col2im(col, x_shape, *args, merge_batch=False)
    np.testing.assert_array_equal(back, conv_numpy.col2im(col, x_shape, *args))


def test_one_thread_runs_the_one_thread_loops(monkeypatch):
    # no parallel launch to pay for when there is one thread to launch
    from kernels import threads

    def refuse():
        raise AssertionError("the parallel loops were asked for")
    x_shape, *args = GEOMETRIES["3x3-pad1"]
    x = random_input(x_shape, np.float32)
    previous = threads.get_num_threads()
    threads.set_num_threads(1)
    try:
        monkeypatch.setattr(conv_numba, "_compiled", refuse)
        col = conv_numba.im2col(x, *args, merge_batch=True)
        gx = conv_numba.col2im(col, x_shape, *args, merge_batch=True)
    finally:
        threads.set_num_threads(previous)
    np.testing.assert_array_equal(col, conv_numpy.im2col(x, *args, merge_batch=True))
    assert_sums_equal(gx, conv_numpy.col2im(col, x_shape, *args, merge_batch=True))


def test_device_arrays_stay_on_their_device(device):
    x_shape, *args = GEOMETRIES["dilation"]
    x = random_input(x_shape, np.float64)
    col = conv_numba.im2col(to_device(x, device), *args, merge_batch=True)
    back = conv_numba.col2im(col, x_shape, *args, merge_batch=True)
    assert type(col) is type(to_device(x, device)) and type(back) is type(col)
    np.testing.assert_array_equal(to_device(col, "cpu"),
                                  conv_numpy.im2col(x, *args, merge_batch=True))
    assert_sums_equal(to_device(back, "cpu"),
                      conv_numpy.col2im(to_device(col, "cpu"), x_shape, *args, merge_batch=True))


def test_rejects_a_kernel_larger_than_the_input():
    with pytest.raises(ValueError, match=r"im2col: kernel 5x5 .* output would be 0x0"):
        conv_numba.im2col(np.zeros((1, 1, 4, 4)), (5, 5), (1, 1), (0, 0, 0, 0), (1, 1))


@pytest.mark.parametrize("stride, pad, size, out_size", [(1, 1, 5, 5), (2, 3, 7, 6), (3, 0, 4, 2),
                                                         (1, 4, 2, 7)])
def test_inside_ranges_match_a_scan(stride, pad, size, out_size):
    ranges = conv_numba._inside(3, 2, pad, stride, size, out_size)
    for tap, (lo, hi) in enumerate(ranges):
        inside = [o for o in range(out_size) if 0 <= o * stride + tap * 2 - pad < size]
        assert list(range(lo, hi)) == inside


def test_the_loops_run_as_plain_python():
    # Uncompiled (as you would step through them in a debugger), same numbers.
    x_shape, *args = GEOMETRIES["stride-over-kernel"]
    x = random_input(x_shape, np.float64)
    (OH, OW), geometry = conv_numba._loop_arguments(x_shape, *args)
    col = np.empty((x_shape[1] * 4, x_shape[0], OH * OW))
    conv_numba._im2col_loops(x, col, *geometry)
    expected = conv_numpy.im2col(x, *args, merge_batch=True)
    np.testing.assert_array_equal(col.reshape(expected.shape), expected)
    back = np.empty(x_shape)
    conv_numba._col2im_loops(col, back, *geometry)
    assert_sums_equal(back, conv_numpy.col2im(expected, x_shape, *args, merge_batch=True))


@pytest.mark.parametrize("geometry", ["1x1-output", "stride-over-kernel", "3x3-pad1",
                                      "pad-over-kernel", "7x7-stride2-pad3"])
def test_im2col_writes_every_entry_of_a_garbage_buffer(geometry):
    # im2col zeroes a row only where its tap touches the padding; a row whose
    # reads all fall inside must still be written whole (the buffer is np.empty).
    x_shape, *args = GEOMETRIES[geometry]
    x = random_input(x_shape, np.float32)
    (OH, OW), loop_geometry = conv_numba._loop_arguments(x_shape, *args)
    rows = x_shape[1] * args[0][0] * args[0][1]
    col = np.full((rows, x_shape[0], OH * OW), np.nan, dtype=np.float32)
    with conv_numba._loops() as loops:
        loops.im2col(x, col, *loop_geometry)
    np.testing.assert_array_equal(col.reshape(rows, -1),
                                  conv_numpy.im2col(x, *args, merge_batch=True))


def test_import_does_not_import_numba():
    # Numba's import costs ~0.5 s: it waits for the first kernel call.
    code = ("import sys, kernels.conv_numba; "
            "assert 'numba' not in sys.modules, 'numba imported at import time'")
    result = subprocess.run([sys.executable, "-c", code], env={"TINYGRAD_CNN_KERNELS": "numpy"},
                            capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr
