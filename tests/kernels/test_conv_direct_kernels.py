"""Direct convolution kernels: the reference against explicit loops and its
backward kernels against the forward's adjoint, then the Numba kernels against
the reference, float32 and float64, on awkward geometries (padding on some
sides, dilation, odd and non-square sizes, a batch of one, a kernel as large as
the padded input), and what they hand to the reference (other strides, dtypes)."""
import numpy as np
import pytest

import kernels
from kernels import conv_direct_numpy
from kernels.geometry import conv_output_hw

# (x shape (N, C, H, W), output channels, kernel, stride, padding (t, b, l, r), dilation)
GEOMETRIES = {
    "lenet-conv1": ((3, 1, 12, 12), 6, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),
    "lenet-conv2": ((2, 6, 9, 9), 16, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1)),
    "3x3-pad-one-side": ((2, 3, 7, 5), 4, (3, 3), (1, 1), (0, 2, 1, 0), (1, 1)),
    "odd-kernel-batch1": ((1, 2, 6, 9), 3, (2, 4), (1, 1), (1, 0, 0, 3), (1, 1)),
    "dilation": ((2, 2, 9, 8), 3, (3, 2), (1, 1), (1, 1, 2, 0), (2, 3)),
    "kernel=padded-input": ((2, 2, 3, 4), 2, (5, 4), (1, 1), (1, 1, 0, 0), (1, 1)),
    "one-output-column": ((3, 1, 6, 3), 2, (2, 3), (1, 1), (0, 0, 0, 0), (1, 1)),
    # wider than dW's DW_TAPS taps per pass; 5 output channels, 3 input (blocks of 3)
    "7-wide-kernel": ((2, 3, 5, 11), 5, (2, 7), (1, 1), (0, 1, 1, 2), (1, 1)),
    # padded planes of 40 x 42 = 1680 elements: dx takes them in TILE-long stretches
    "planes-past-a-tile": ((2, 2, 37, 41), 7, (3, 3), (1, 1), (1, 2, 0, 1), (1, 1)),
    "stride2": ((2, 2, 8, 7), 3, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    "stride-mixed-dilation": ((1, 3, 9, 10), 2, (2, 3), (2, 1), (1, 0, 0, 2), (2, 2)),
}
DTYPES = [np.float32, np.float64]
RNG = np.random.default_rng(0)


def operands(geometry, dtype=np.float64):
    """x, W and an output gradient gy for a geometry."""
    x_shape, O, kernel, stride, padding, dilation = geometry
    out_hw = conv_output_hw(x_shape, kernel, stride, padding, dilation)
    x = RNG.standard_normal(x_shape).astype(dtype)
    W = RNG.standard_normal((O, x_shape[1]) + kernel).astype(dtype)
    gy = RNG.standard_normal((x_shape[0], O) + out_hw).astype(dtype)
    return x, W, gy


def conv_loops(x, W, stride, padding, dilation):
    """y[n, o, oh, ow] = Σ_{c, i, j} W[o, c, i, j] · x[n, c, h, w], one term at a
    time, skipping taps on the padding."""
    N, C, H, Wd = x.shape
    O, _, KH, KW = W.shape
    (SH, SW), (DH, DW), (top, _, left, _) = stride, dilation, padding
    OH, OW = conv_output_hw(x.shape, (KH, KW), stride, padding, dilation)
    y = np.zeros((N, O, OH, OW))
    for n in range(N):
        for o in range(O):
            for oh in range(OH):
                for ow in range(OW):
                    for c in range(C):
                        for i in range(KH):
                            for j in range(KW):
                                h, w = oh * SH + i * DH - top, ow * SW + j * DW - left
                                if 0 <= h < H and 0 <= w < Wd:
                                    y[n, o, oh, ow] += W[o, c, i, j] * x[n, c, h, w]
    return y


def geometry_of(geometry):
    return geometry[3:]      # stride, padding, dilation


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_reference_forward_equals_explicit_loops(geometry):
    x, W, _ = operands(geometry)
    np.testing.assert_allclose(conv_direct_numpy.conv_direct_forward(x, W, *geometry_of(geometry)),
                               conv_loops(x, W, *geometry_of(geometry)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_reference_forward_adds_the_bias_per_output_channel(geometry):
    x, W, _ = operands(geometry)
    b = np.random.default_rng(7).standard_normal(W.shape[0])
    expected = conv_loops(x, W, *geometry_of(geometry)) + b.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(conv_direct_numpy.conv_direct_forward(x, W, *geometry_of(geometry),
                                                                     b),
                               expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_reference_backward_kernels_are_the_forwards_adjoints(geometry):
    # y = conv(x, W) is linear in x and in W: <conv(x, W), gy> = <x, gx> = <W, gW>
    # for every gy is what the two backward kernels must compute.
    x, W, gy = operands(geometry)
    stride, padding, dilation = geometry_of(geometry)
    y = conv_direct_numpy.conv_direct_forward(x, W, stride, padding, dilation)
    gx = conv_direct_numpy.conv_direct_backward_input(gy, W, x.shape, stride, padding, dilation)
    gW = conv_direct_numpy.conv_direct_backward_weight(gy, x, W.shape[2:], stride, padding,
                                                       dilation)
    assert gx.shape == x.shape and gW.shape == W.shape
    assert np.vdot(y, gy) == pytest.approx(np.vdot(x, gx), rel=1e-12)
    assert np.vdot(y, gy) == pytest.approx(np.vdot(W, gW), rel=1e-12)


# ---------------------------------------------------------------- Numba == reference
conv_direct_numba = pytest.importorskip("kernels.conv_direct_numba")


def all_three(module, x, W, gy, stride, padding, dilation):
    return (module.conv_direct_forward(x, W, stride, padding, dilation),
            module.conv_direct_backward_input(gy, W, x.shape, stride, padding, dilation),
            module.conv_direct_backward_weight(gy, x, W.shape[2:], stride, padding, dilation))


def assert_close(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    tolerance = 1e-4 if actual.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance)


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request, monkeypatch):
    """1 or 2 threads; with 2, even these small arrays are cut into slices."""
    monkeypatch.setattr(kernels.threads, "PARALLEL_MIN_BYTES", 0)
    previous = kernels.threads.get_num_threads()
    kernels.threads.set_num_threads(request.param)
    yield request.param
    kernels.threads.set_num_threads(previous)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_numba_kernels_equal_the_reference(geometry, dtype, threads):
    x, W, gy = operands(geometry, dtype)
    for actual, expected in zip(all_three(conv_direct_numba, x, W, gy, *geometry_of(geometry)),
                                all_three(conv_direct_numpy, x, W, gy, *geometry_of(geometry))):
        assert_close(actual, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_numba_forward_with_bias_equals_the_reference(geometry, dtype, threads):
    # the bias is added in the loop as each output is written; each thread pads its own images
    x, W, _ = operands(geometry, dtype)
    b = np.random.default_rng(8).standard_normal(W.shape[0]).astype(dtype)
    stride, padding, dilation = geometry_of(geometry)
    assert_close(conv_direct_numba.conv_direct_forward(x, W, stride, padding, dilation, b),
                 conv_direct_numpy.conv_direct_forward(x, W, stride, padding, dilation, b))


def test_a_bias_of_another_dtype_goes_to_the_reference(monkeypatch):
    geometry = GEOMETRIES["3x3-pad-one-side"]
    x, W, _ = operands(geometry, np.float32)
    b = np.arange(W.shape[0], dtype=np.float64)
    called = []
    reference = conv_direct_numpy.conv_direct_forward
    monkeypatch.setattr(conv_direct_numpy, "conv_direct_forward",
                        lambda *args: called.append(1) or reference(*args))
    y = conv_direct_numba.conv_direct_forward(x, W, *geometry_of(geometry), b)
    assert called == [1] and y.dtype == np.float32


def test_stride_1_runs_the_loops_other_strides_the_reference(monkeypatch):
    # The compiled loops are stride-1 loops; the geometries above check both routes
    # give the reference's numbers, this that each route is the one taken.
    def refuse(*args):
        raise AssertionError("the reference ran")
    for name in ("conv_direct_forward", "conv_direct_backward_input",
                 "conv_direct_backward_weight"):
        monkeypatch.setattr(conv_direct_numpy, name, refuse)
    x, W, gy = operands(GEOMETRIES["dilation"], np.float32)
    all_three(conv_direct_numba, x, W, gy, *geometry_of(GEOMETRIES["dilation"]))
    with pytest.raises(AssertionError, match="the reference ran"):
        conv_direct_numba.conv_direct_forward(x, W, (2, 1), (0, 0, 0, 0), (1, 1))


@pytest.mark.parametrize("dtypes", [(np.float16, np.float16), (np.float32, np.float64),
                                    (np.float64, np.float32)],
                         ids=["float16", "mixed", "mixed-the-other-way"])
def test_numba_kernels_hand_other_dtypes_to_the_reference(dtypes):
    geometry = GEOMETRIES["3x3-pad-one-side"]
    stride, padding, dilation = geometry_of(geometry)
    x, W, gy = operands(geometry)
    first, second = dtypes          # each kernel's two inputs get one dtype each
    calls = [lambda m: m.conv_direct_forward(x.astype(first), W.astype(second), stride, padding,
                                             dilation),
             lambda m: m.conv_direct_backward_input(gy.astype(first), W.astype(second), x.shape,
                                                    stride, padding, dilation),
             lambda m: m.conv_direct_backward_weight(gy.astype(first), x.astype(second),
                                                     W.shape[2:], stride, padding, dilation)]
    for call in calls:
        actual, expected = call(conv_direct_numba), call(conv_direct_numpy)
        assert actual.dtype == expected.dtype
        np.testing.assert_array_equal(actual, expected)


def test_planes_past_a_tile_are_taken_in_stretches():
    x_shape, _, kernel, _, padding, _ = GEOMETRIES["planes-past-a-tile"]
    padded = (x_shape[2] + padding[0] + padding[1]) * (x_shape[3] + padding[2] + padding[3])
    assert padded > conv_direct_numba.TILE and padded % conv_direct_numba.TILE


@pytest.mark.parametrize("channels, block", [(1, 1), (2, 2), (3, 3), (4, 4), (5, 3), (6, 3),
                                             (7, 4), (16, 4), (64, 4)])
def test_channels_go_in_the_blocks_with_the_fewest_padded_passes(channels, block):
    # LeNet: 6 channels as 2 blocks of 3 (not 2 of 4, two of them zeros), 16 as 4 of 4
    assert conv_direct_numba.block_for(channels) == block


@pytest.mark.parametrize("registers, blocks", [(32, [1, 2, 3, 4, 3, 3, 4, 4]),
                                               (16, [1, 2, 2, 2, 2, 2, 2, 2])])
def test_dW_takes_at_most_two_channels_per_pass_with_16_vector_registers(registers, blocks,
                                                                         monkeypatch):
    # 4 channels x 5 taps of sums do not fit in AVX2's 16 registers: they spill
    monkeypatch.setattr(conv_direct_numba, "vector_registers", lambda: registers)
    assert [conv_direct_numba.dw_block_for(c) for c in (1, 2, 3, 4, 5, 6, 7, 16)] == blocks


def test_the_host_has_16_or_32_vector_registers():
    assert conv_direct_numba.vector_registers() in (16, 32)


@pytest.mark.parametrize("registers", [16, 32])
@pytest.mark.parametrize("geometry", [GEOMETRIES[g] for g in ("lenet-conv1", "lenet-conv2",
                                                              "7-wide-kernel")],
                         ids=["lenet-conv1", "lenet-conv2", "7-wide-kernel"])
def test_dW_in_either_block_equals_the_reference(geometry, registers, monkeypatch):
    # the blocks of either kind of CPU, whichever this one is
    monkeypatch.setattr(conv_direct_numba, "vector_registers", lambda: registers)
    for dtype in DTYPES:
        x, W, gy = operands(geometry, dtype)
        args = (W.shape[2:],) + geometry_of(geometry)
        gW, gb = conv_direct_numba.conv_direct_backward_weight(gy, x, *args, with_bias=True)
        assert_close(gW, conv_direct_numpy.conv_direct_backward_weight(gy, x, *args))
        assert_close(gb, bias_gradient_by_loops(gy).astype(dtype))


def test_two_threads_cut_the_batch_but_small_loops_run_as_one_slice(threads, monkeypatch):
    x, y = np.zeros((5, 1, 8, 8), np.float32), np.zeros((5, 2, 6, 6), np.float32)
    multiply_adds = y.size * 1 * 3 * 3
    monkeypatch.setattr(kernels.threads, "PARALLEL_MIN_BYTES", 0)
    assert len(conv_direct_numba._batch_slices(y, x, (3, 3))) == (1 if threads == 1 else 4)
    monkeypatch.setattr(kernels.threads, "PARALLEL_MIN_BYTES", x.nbytes + y.nbytes + 1)
    monkeypatch.setattr(kernels.threads, "PARALLEL_MIN_MULTIPLY_ADDS", multiply_adds + 1)
    assert conv_direct_numba._batch_slices(y, x, (3, 3)) == [(0, 5)]
    # few bytes, but enough multiply-adds (C·KH·KW per output) to split
    monkeypatch.setattr(kernels.threads, "PARALLEL_MIN_MULTIPLY_ADDS", multiply_adds)
    assert len(conv_direct_numba._batch_slices(y, x, (3, 3))) == (1 if threads == 1 else 4)


def test_weight_gradient_is_the_same_every_run(threads):
    # per-slice partial sums, added in slice order: no dependence on which thread
    # finishes first
    x, W, gy = operands(((32, 3, 10, 10), 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)), np.float32)
    first = conv_direct_numba.conv_direct_backward_weight(gy, x, (3, 3), (1, 1), (1, 1, 1, 1),
                                                          (1, 1))
    for _ in range(5):
        np.testing.assert_array_equal(
            conv_direct_numba.conv_direct_backward_weight(gy, x, (3, 3), (1, 1), (1, 1, 1, 1),
                                                          (1, 1)), first)


def test_float32_weight_gradient_is_accurate_over_a_large_batch(threads):
    # dW sums N·OH·OW products per weight (here 200,704).  One float32 running sum
    # over them drifts by about 3e-8 of the products' summed magnitudes on these
    # numbers; the loops keep each image's dot in vector partial sums and add the
    # images in float64: about 1e-9.
    x, W, gy = operands(((256, 1, 28, 28), 6, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)))
    geometry = geometry_of(((256, 1, 28, 28), 6, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)))
    exact = conv_direct_numpy.conv_direct_backward_weight(gy, x, (5, 5), *geometry)
    magnitude = conv_direct_numpy.conv_direct_backward_weight(abs(gy), abs(x), (5, 5), *geometry)
    actual = conv_direct_numba.conv_direct_backward_weight(
        gy.astype(np.float32), x.astype(np.float32), (5, 5), *geometry)
    error = abs(actual - exact) / magnitude
    assert actual.dtype == np.float32
    assert error.max() < 1e-8, error.max()


def test_scratch_columns_never_reach_the_result():
    # The loops compute each output row at the padded width and drop the extra
    # columns, which read past the row's end: huge values there must not leak
    # into y, nor into dx and dW, where the output gradient's scratch columns are zeros.
    x, W, gy = operands(((2, 1, 6, 8), 2, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1)))
    x[:, :, :, -1] = 1e30                       # tap j=0 reads this column only as scratch
    geometry = ((1, 1), (0, 0, 0, 0), (1, 1))
    for actual, expected in zip(all_three(conv_direct_numba, x, W, gy, *geometry),
                                all_three(conv_direct_numpy, x, W, gy, *geometry)):
        np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("where", ["x", "W"])
def test_inf_in_scratch_reads_gives_the_references_result(where):
    # 0 · inf in a scratch column would be a NaN where the sum has a number:
    # the loops hand non-finite factors to the reference
    x, W, gy = operands(((2, 1, 6, 8), 2, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1)))
    if where == "x":
        x[:, :, :, -1] = np.inf
    else:
        W[0, 0, 0, 0] = np.inf
    geometry = ((1, 1), (0, 0, 0, 0), (1, 1))
    with np.errstate(invalid="ignore"):             # inf - inf in the sums: NaN, as meant
        actual = all_three(conv_direct_numba, x, W, gy, *geometry)
        expected = all_three(conv_direct_numpy, x, W, gy, *geometry)
    for a, e in zip(actual, expected):     # NaN where, and only where, it is
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
    assert np.isfinite(expected[2 if where == "x" else 1]).any()


# ---------------------------------------------------------------- the bias's gradient with dW
def bias_gradient_by_loops(gy):
    """db[o] = Σ_{n, oh, ow} gy[n, o, oh, ow], an explicit float64 loop over the channels."""
    return np.array([gy[:, o].astype(np.float64).sum() for o in range(gy.shape[1])])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_with_bias_dW_comes_with_the_bias_gradient(geometry, dtype, threads):
    # the compiled loops sum db as they copy each image's gy for dW
    x, W, gy = operands(geometry, dtype)
    args = (W.shape[2:],) + geometry_of(geometry)
    for module in (conv_direct_numpy, conv_direct_numba):
        gW, gb = module.conv_direct_backward_weight(gy, x, *args, with_bias=True)
        np.testing.assert_array_equal(gW, module.conv_direct_backward_weight(gy, x, *args))
        assert gb.dtype == dtype and gb.shape == (W.shape[0],)
        assert_close(gb, bias_gradient_by_loops(gy).astype(dtype))


def test_finite_inputs_never_reach_the_reference_for_dW(monkeypatch):
    # no pass over x checks it first: the loops' own result says whether it was finite
    def refuse(*args):
        raise AssertionError("the reference ran")
    monkeypatch.setattr(conv_direct_numpy, "conv_direct_backward_weight", refuse)
    geometry = GEOMETRIES["lenet-conv1"]
    x, W, gy = operands(geometry, np.float32)
    conv_direct_numba.conv_direct_backward_weight(gy, x, W.shape[2:], *geometry_of(geometry),
                                                  with_bias=True)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(AssertionError, match="the reference ran"):
        conv_direct_numba.conv_direct_backward_weight(gy, x, W.shape[2:],
                                                      *geometry_of(geometry))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_gy_gives_the_references_dW_and_db(bad, threads):
    geometry = GEOMETRIES["lenet-conv2"]
    x, W, gy = operands(geometry, np.float32)
    gy[1, 3, 2, 4] = bad
    args = (W.shape[2:],) + geometry_of(geometry)
    with np.errstate(invalid="ignore"):             # inf · 0 in the sums: NaN, as meant
        actual = conv_direct_numba.conv_direct_backward_weight(gy, x, *args, with_bias=True)
        expected = conv_direct_numpy.conv_direct_backward_weight(gy, x, *args, with_bias=True)
    for a, e in zip(actual, expected):              # NaN and inf where, and only where, they are
        np.testing.assert_array_equal(a, e)
    assert not np.isfinite(actual[1][3]) and np.isfinite(np.delete(actual[1], 3)).all()


def test_a_dW_past_float32s_range_is_the_references(monkeypatch):
    # finite factors whose sums overflow float32: the float64 partial sums are finite,
    # their float32 total is not, and that sends the work to the reference
    geometry = GEOMETRIES["lenet-conv2"]
    x, W, gy = operands(geometry, np.float32)
    x *= np.float32(1e20)
    gy *= np.float32(1e20)
    args = (W.shape[2:],) + geometry_of(geometry)
    reference, called = conv_direct_numpy.conv_direct_backward_weight, []
    monkeypatch.setattr(conv_direct_numpy, "conv_direct_backward_weight",
                        lambda *a: called.append(1) or reference(*a))
    with np.errstate(over="ignore", invalid="ignore"):
        actual = conv_direct_numba.conv_direct_backward_weight(gy, x, *args)
        expected = reference(gy, x, *args)
    assert called == [1] and not np.isfinite(expected).all()
    np.testing.assert_array_equal(actual, expected)
