"""Winograd F(2x2, 3x3) and F(4x4, 3x3): the reference kernels against a
direct convolution (explicit loops) and against their own definitions as
adjoints, then the Numba kernels against the reference, float32 and float64,
on awkward geometries (output sizes that leave part-used tiles, one-sided and
no padding, a single tile, padding larger than the kernel's half), for
both tile sizes m."""
import numpy as np
import pytest

from kernels import winograd_numpy
from kernels.geometry import winograd_tiles

# (x shape (n, C, H, W), output channels, padding (top, bottom, left, right))
GEOMETRIES = {
    "pad1-even": ((2, 3, 6, 6), 4, (1, 1, 1, 1)),
    "pad1-odd-sizes": ((2, 3, 7, 5), 2, (1, 1, 1, 1)),
    "no-padding": ((1, 2, 5, 8), 3, (0, 0, 0, 0)),
    "one-sided": ((3, 4, 9, 9), 2, (0, 2, 1, 0)),
    "single-tile": ((2, 2, 2, 2), 3, (1, 1, 1, 1)),
    "pad-over-half-kernel": ((1, 2, 4, 3), 2, (2, 3, 3, 2)),
    "one-output-row": ((2, 3, 3, 9), 2, (0, 0, 1, 1)),
    "several-4x4-tiles": ((2, 5, 13, 10), 3, (1, 1, 1, 1)),
}
TILE_SIZES = winograd_numpy.TILE_SIZES          # m: F(m×m, 3×3)
DTYPES = [np.float32, np.float64]
RNG = np.random.default_rng(0)


def output_hw(x_shape, padding):
    top, bottom, left, right = padding
    return x_shape[2] + top + bottom - 2, x_shape[3] + left + right - 2


def tiles_of(out_hw, m=2):
    return tuple(winograd_tiles(size, m) for size in out_hw)


def direct_conv(x, W, padding):
    """y[n, o, h, w] = Σ_{c, i, j} W[o, c, i, j] · x_padded[n, c, h + i, w + j], by loops."""
    top, bottom, left, right = padding
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, C = x.shape[:2]
    OH, OW = output_hw(x.shape, padding)
    y = np.zeros((n, W.shape[0], OH, OW))
    for h in range(OH):
        for w in range(OW):
            window = xp[:, :, h:h + 3, w:w + 3]                    # (n, C, 3, 3)
            y[:, :, h, w] = np.einsum("ncij,ocij->no", window, W)
    return y


def winograd_conv(kernels, x, W, padding, m=2):
    """The whole forward: transform weights and input, α² products, transform back."""
    O, C = W.shape[:2]
    alpha = m + 2
    out_hw = output_hw(x.shape, padding)
    tiles = tiles_of(out_hw, m)
    U = kernels.winograd_weight(W, m).reshape(alpha * alpha, O, C)
    V = kernels.winograd_input(x, padding, tiles, m)
    M = U @ V.reshape(alpha * alpha, C, -1)
    return kernels.winograd_output(M.reshape((alpha, alpha, O, x.shape[0]) + tiles), out_hw)


@pytest.mark.parametrize("m", TILE_SIZES)
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_reference_winograd_convolution_equals_direct_loops(geometry, m):
    x_shape, O, padding = geometry
    x = RNG.standard_normal(x_shape)
    W = RNG.standard_normal((O, x_shape[1], 3, 3))
    np.testing.assert_allclose(winograd_conv(winograd_numpy, x, W, padding, m),
                               direct_conv(x, W, padding), rtol=1e-12, atol=1e-12)


def random_like(shape):
    return RNG.standard_normal(shape)


@pytest.mark.parametrize("m", TILE_SIZES)
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_each_backward_is_the_adjoint_of_its_transform(geometry, m):
    # <T u, v> = <u, T* v> for every u, v: the definition of the adjoint, which is
    # what backward must compute for a linear step.
    x_shape, O, padding = geometry
    n, C = x_shape[:2]
    alpha = m + 2
    out_hw = output_hw(x_shape, padding)
    tiles = tiles_of(out_hw, m)
    x, gV = random_like(x_shape), random_like((alpha, alpha, C, n) + tiles)
    V = winograd_numpy.winograd_input(x, padding, tiles, m)
    assert np.vdot(V, gV) == pytest.approx(
        np.vdot(x, winograd_numpy.winograd_input_backward(gV, x_shape, padding)), rel=1e-12)
    M, gy = random_like((alpha, alpha, O, n) + tiles), random_like((n, O) + out_hw)
    y = winograd_numpy.winograd_output(M, out_hw)
    assert np.vdot(y, gy) == pytest.approx(
        np.vdot(M, winograd_numpy.winograd_output_backward(gy, m)), rel=1e-12)
    W, gU = random_like((O, C, 3, 3)), random_like((alpha, alpha, O, C))
    U = winograd_numpy.winograd_weight(W, m)
    assert np.vdot(U, gU) == pytest.approx(
        np.vdot(W, winograd_numpy.winograd_weight_backward(gU)), rel=1e-12)


@pytest.mark.parametrize("m", TILE_SIZES)
def test_transform_matrices_make_one_tile_a_convolution(m):
    # The identity the algorithm rests on, for one α×α tile and one 3x3 kernel:
    # Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A = the m×m "valid" correlation of d with g.
    B_T, G, A_T = (np.array(winograd_numpy.transform(m, name), dtype=float)
                   for name in ("B_T", "G", "A_T"))
    assert B_T.shape == (m + 2, m + 2) and G.shape == (m + 2, 3) and A_T.shape == (m, m + 2)
    d, g = RNG.standard_normal((m + 2, m + 2)), RNG.standard_normal((3, 3))
    Y = A_T @ ((G @ g @ G.T) * (B_T @ d @ B_T.T)) @ A_T.T
    direct = [[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(m)] for i in range(m)]
    np.testing.assert_allclose(Y, direct, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", [0, 3, 6, "4"])
def test_other_tile_sizes_are_refused(m):
    with pytest.raises(ValueError, match=r"winograd: output tile size m must be one of \(2, 4\)"):
        winograd_numpy.winograd_weight(np.zeros((1, 1, 3, 3)), m)


# ---------------------------------------------------------------- Numba == reference
winograd_numba = pytest.importorskip("kernels.winograd_numba")


def assert_close(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    tolerance = 1e-5 if actual.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance)


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def thread_count(request):
    """One thread (the one-thread loops, one block of planes) or two (the
    parallel loops over blocks of planes)."""
    from kernels import threads
    previous = threads.get_num_threads()
    threads.set_num_threads(request.param)
    yield request.param
    threads.set_num_threads(previous)


@pytest.mark.parametrize("m", TILE_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_numba_kernels_equal_the_reference(geometry, dtype, m, thread_count):
    x_shape, O, padding = geometry
    n, C = x_shape[:2]
    alpha = m + 2
    out_hw = output_hw(x_shape, padding)
    tiles = tiles_of(out_hw, m)
    x = random_like(x_shape).astype(dtype)
    gV = random_like((alpha, alpha, C, n) + tiles).astype(dtype)
    M = random_like((alpha, alpha, O, n) + tiles).astype(dtype)
    gy = random_like((n, O) + out_hw).astype(dtype)
    W = random_like((O, C, 3, 3)).astype(dtype)
    gU = random_like((alpha, alpha, O, C)).astype(dtype)
    calls = {
        "winograd_input": (x, padding, tiles, m),
        "winograd_input_backward": (gV, x_shape, padding),
        "winograd_output": (M, out_hw),
        "winograd_output_backward": (gy, m),
        "winograd_weight": (W, m),
        "winograd_weight_backward": (gU,),
    }
    for name, args in calls.items():
        assert_close(getattr(winograd_numba, name)(*args),
                     getattr(winograd_numpy, name)(*args))


@pytest.mark.parametrize("m", TILE_SIZES)
def test_one_thread_runs_the_one_thread_loops(monkeypatch, m):
    # no parallel launch to pay for when there is one thread to launch
    from kernels import threads

    def refuse():
        raise AssertionError("the parallel loops were asked for")
    previous = threads.get_num_threads()
    threads.set_num_threads(1)
    try:
        monkeypatch.setattr(winograd_numba, "_compiled", refuse)
        x_shape, O, padding = GEOMETRIES["one-sided"]
        x = random_like(x_shape).astype(np.float32)
        tiles = tiles_of(output_hw(x_shape, padding), m)
        V = winograd_numba.winograd_input(x, padding, tiles, m)
        winograd_numba.winograd_input_backward(V, x_shape, padding)
        gM = winograd_numba.winograd_output_backward(winograd_numba.winograd_output(
            V[:, :, :O], output_hw(x_shape, padding)), m)
        assert gM.shape == V[:, :, :O].shape
        U = winograd_numba.winograd_weight(random_like((O, x_shape[1], 3, 3)).astype(np.float32),
                                           m)
        assert winograd_numba.winograd_weight_backward(U).shape == (O, x_shape[1], 3, 3)
    finally:
        threads.set_num_threads(previous)


@pytest.mark.parametrize("m", TILE_SIZES)
def test_small_weight_transforms_run_on_the_calling_thread(monkeypatch, m):
    # on 2 threads, below WEIGHT_PARALLEL_MIN_CELLS no parallel launch; from it on,
    # the parallel loops, with the same values
    from kernels import threads
    asked = []
    parallel = winograd_numba._compiled

    def watched():
        asked.append(True)
        return parallel()
    previous = threads.get_num_threads()
    threads.set_num_threads(2)
    try:
        if threads.numba_threads() < 2:
            pytest.skip("Numba's pool has one thread here")
        monkeypatch.setattr(winograd_numba, "_compiled", watched)
        W = random_like((5, 3, 3, 3)).astype(np.float32)
        alpha = m + 2
        cells = alpha * alpha * 5 * 3
        monkeypatch.setattr(winograd_numba, "WEIGHT_PARALLEL_MIN_CELLS", cells + 1)
        U = winograd_numba.winograd_weight(W, m)
        gW = winograd_numba.winograd_weight_backward(U)
        assert asked == []
        monkeypatch.setattr(winograd_numba, "WEIGHT_PARALLEL_MIN_CELLS", cells)
        np.testing.assert_array_equal(winograd_numba.winograd_weight(W, m), U)
        np.testing.assert_array_equal(winograd_numba.winograd_weight_backward(U), gW)
        assert asked == [True, True]
        assert_close(U, winograd_numpy.winograd_weight(W, m))
    finally:
        threads.set_num_threads(previous)


def test_the_one_thread_loops_run_the_planes_in_one_block(thread_count):
    # whichever way _loops chose them: one thread, or another thread holding Numba's pool
    from kernels import threads
    assert winograd_numba._blocks(64, winograd_numba._compiled_in_share()) == 1
    assert winograd_numba._blocks(64, winograd_numba._compiled()) == min(
        64, 4 * threads.numba_threads())


@pytest.mark.parametrize("m", TILE_SIZES)
def test_numba_kernels_read_non_contiguous_arrays(m):
    x = random_like((3, 2, 6, 7)).transpose(1, 0, 2, 3).astype(np.float32)   # (2, 3, 6, 7)
    padding = (1, 1, 1, 1)
    tiles = tiles_of(output_hw(x.shape, padding), m)
    assert not x.flags.c_contiguous
    assert_close(winograd_numba.winograd_input(x, padding, tiles, m),
                 winograd_numpy.winograd_input(x, padding, tiles, m))
    gy = random_like((4, 3, 6, 7))[:, ::2].astype(np.float32)
    assert_close(winograd_numba.winograd_output_backward(gy, m),
                 winograd_numpy.winograd_output_backward(gy, m))


@pytest.mark.parametrize("m", TILE_SIZES)
def test_whole_numba_convolution_equals_direct_loops_in_float32(m):
    x_shape, O, padding = GEOMETRIES["several-4x4-tiles"]
    x = random_like(x_shape)
    W = random_like((O, x_shape[1], 3, 3))
    y = winograd_conv(winograd_numba, x.astype(np.float32), W.astype(np.float32), padding, m)
    np.testing.assert_allclose(y, direct_conv(x, W, padding), rtol=1e-4, atol=1e-4)


def test_other_dtypes_use_the_reference(monkeypatch):
    x = random_like((1, 2, 4, 4)).astype(np.float16)
    monkeypatch.setattr(winograd_numba, "_compiled", lambda: pytest.fail("compiled float16"))
    V = winograd_numba.winograd_input(x, (1, 1, 1, 1), (2, 2))
    assert V.dtype == np.float16
    np.testing.assert_array_equal(V, winograd_numpy.winograd_input(x, (1, 1, 1, 1), (2, 2)))


@pytest.mark.parametrize("m", TILE_SIZES)
@pytest.mark.parametrize("module", ["reference", "numba"])
def test_outputs_go_into_a_given_array(module, m):
    # conv2d hands each chunk's slice of its output to these two, so that no
    # copy follows; a slice the loops cannot write into is filled by a copy.
    kernels = winograd_numpy if module == "reference" else winograd_numba
    x_shape, O, padding = GEOMETRIES["pad1-odd-sizes"]
    n, C = x_shape[:2]
    out_hw = output_hw(x_shape, padding)
    tiles = tiles_of(out_hw, m)
    M = random_like((m + 2, m + 2, O, n) + tiles).astype(np.float32)
    gV = random_like((m + 2, m + 2, C, n) + tiles).astype(np.float32)
    calls = {"winograd_output": ((M, out_hw), (n, O) + out_hw),
             "winograd_input_backward": ((gV, x_shape, padding), x_shape)}
    for name, (args, shape) in calls.items():
        expected = getattr(winograd_numpy, name)(*args)
        whole = np.zeros((2 * shape[0],) + shape[1:], dtype=np.float32)
        strided = np.zeros(shape[:3] + (2 * shape[3],), dtype=np.float32)[..., ::2]
        for out in (whole[shape[0]:], strided):
            result = getattr(kernels, name)(*args, out=out)
            assert result is out
            assert_close(out, expected)
        assert not whole[:shape[0]].any()          # nothing written outside the slice


@pytest.mark.parametrize("m", TILE_SIZES)
def test_transform_outputs_are_views_of_their_matrices_a_gap_apart(m):
    # the α² matrices of V and gM lie a cache line apart (not end to end), and the
    # (α², rows, columns) view the matrix products take is no copy
    x = random_like((3, 4, 6, 6)).astype(np.float32)
    tiles = tiles_of((6, 6), m)
    V = winograd_numba.winograd_input(x, (1, 1, 1, 1), tiles, m)
    gM = winograd_numba.winograd_output_backward(random_like((3, 5, 6, 6)).astype(np.float32), m)
    for stack, rows in ((V, 4), (gM, 5)):
        matrices = stack.reshape((m + 2) ** 2, rows, -1)
        assert np.shares_memory(matrices, stack)
        size = matrices[0].size
        assert matrices.strides[0] == (size + winograd_numba.STACK_GAP) * stack.itemsize
        assert all(m.flags.c_contiguous for m in matrices)
    assert_close(V, winograd_numpy.winograd_input(x, (1, 1, 1, 1), tiles, m))
