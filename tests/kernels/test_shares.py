"""The matrix product kernel: shares_threads (a stack, or a single product's
rows, split over threads, BLAS on one thread in each) against shares_numpy
(NumPy's matmul), on the stacks the convolutions make -- Winograd's
(16, M, K) @ (16, K, N), a 1×1 convolution's (G, M, K) broadcast against
(N, G, K, L), transposed views -- and the single products of fully connected
layers and dense convolutions, in float32 and float64; which calls are split
and which go to the reference; errors and BLAS's thread count after the call."""
import threading
import time

import numpy as np
import pytest

import kernels
from kernels import shares_numpy, shares_threads, threads

# The thread count is process-wide: each test sets what it needs and restores it.
pytestmark = pytest.mark.kernel_free

DTYPES = [np.float32, np.float64]
# name -> (a's shape, b's shape, transpose b's last two axes)
STACKS = {
    "winograd": ((16, 24, 20), (16, 20, 300), False),
    "winograd-dW": ((16, 24, 300), (16, 20, 300), True),      # gM @ Vᵀ
    "pointwise": ((2, 12, 8), (40, 2, 8, 36), False),          # W broadcast over the batch
    "odd-stack": ((5, 30, 40), (5, 40, 50), False),             # not a multiple of the threads
    "broadcast-b": ((9, 30, 40), (40, 50), False),
    "length-1-axis": ((1, 30, 40), (7, 40, 50), False),
    # single products, cut into shares of the larger operand: a's rows, b's columns
    "rows": ((51, 40), (40, 30), False),                       # an odd number of rows
    "rows-times-Wt": ((64, 90), (30, 90), True),               # x @ Wᵀ, a Linear's forward
    "columns": ((30, 40), (40, 51), False),                    # an odd number of columns
    "columns-of-bT": ((16, 40), (90, 40), True),               # few rows: each share reordered
}


@pytest.fixture
def two_threads(monkeypatch):
    """Two threads, and every stack worth splitting (the size rule is tested below)."""
    before = threads.get_num_threads()
    threads.set_num_threads(2)
    monkeypatch.setattr(shares_threads, "MIN_MULTIPLY_ADDS_PER_THREAD", 0)
    monkeypatch.setattr(shares_threads, "MIN_MULTIPLY_ADDS_PER_PRODUCT_SHARE", 0)
    yield
    threads.set_num_threads(before)


def operands(name, dtype, seed=0):
    a_shape, b_shape, transpose = STACKS[name]
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(a_shape).astype(dtype)
    b = rng.standard_normal(b_shape).astype(dtype)
    return a, (b.swapaxes(-1, -2) if transpose else b)


def split_calls(monkeypatch):
    """Record the shares handed to the thread pool."""
    submitted = []
    pool = threads.thread_pool()
    real_submit = pool.submit
    monkeypatch.setattr(pool, "submit", lambda *args: submitted.append(args) or real_submit(*args))
    return submitted


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", STACKS)
def test_split_stack_equals_numpys_matmul(two_threads, monkeypatch, name, dtype):
    a, b = operands(name, dtype)
    submitted = split_calls(monkeypatch)
    y = shares_threads.matmul(a, b)
    expected = np.matmul(a, b)
    assert y.dtype == expected.dtype and y.shape == expected.shape
    if a.ndim > 2:
        # each product is BLAS's own, only on one thread: the same sums in the same order
        np.testing.assert_allclose(y, expected, rtol=1e-6 if dtype == np.float32 else 1e-13)
    else:
        # a share's rows may go through other BLAS kernels than the whole
        # product's: equal up to rounding, relative to the sums' size
        tolerance = (1e-5 if dtype == np.float32 else 1e-12) * np.abs(expected).max()
        np.testing.assert_allclose(y, expected, rtol=0, atol=tolerance)
    assert len(submitted) == 1, "two threads: one share to the pool, one on the calling thread"


@pytest.mark.parametrize("name", ["winograd", "pointwise"])
def test_out_receives_the_product(two_threads, name):
    a, b = operands(name, np.float32)
    out = np.full(np.matmul(a, b).shape, np.nan, np.float32)
    assert shares_threads.matmul(a, b, out=out) is out
    np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-6)


@pytest.mark.parametrize("case", ["one-small-matrix", "stack-of-1", "float16", "mixed-dtypes",
                                  "strided-out", "tiny"])
def test_what_goes_to_the_reference(monkeypatch, case):
    threads.set_num_threads(2)
    a, b = operands("winograd", np.float32)
    out = None
    if case == "one-small-matrix":                 # too small for two row shares
        a, b = a[0], b[0]
    elif case == "stack-of-1":
        a, b = a[:1], b[:1]
    elif case == "float16":
        a, b = a.astype(np.float16), b.astype(np.float16)
    elif case == "mixed-dtypes":
        b = b.astype(np.float64)
    elif case == "tiny":                            # below MIN_MULTIPLY_ADDS_PER_THREAD
        a, b = a[:4, :3, :5], b[:4, :5, :6]
    elif case == "strided-out":
        out = np.empty((16, 24, 600), np.float32)[:, :, ::2]
    submitted = split_calls(monkeypatch)
    reference = []
    monkeypatch.setattr(shares_numpy, "matmul",
                        lambda *args, **kw: reference.append(1) or np.matmul(*args, **kw))
    expected = np.matmul(a, b)
    y = shares_threads.matmul(a, b, out=out)
    np.testing.assert_allclose(y, expected, rtol=1e-3, atol=1e-4)   # a strided out: NumPy 1.x sums otherwise
    assert (submitted, reference) == ([], [1])


# a (M, K) @ b (K, N), b a transposed view or not -> whether ``product`` reorders it
THIN = {
    "dW-of-a-thin-layer": ((16, 600), (150, 600), True, True),       # dy @ colᵀ, LeNet-like
    "stacked-thin": ((4, 8, 90), (4, 40, 90), True, True),           # Winograd's gM @ Vᵀ, few rows
    "b-not-transposed": ((16, 600), (600, 150), False, False),
    "as-many-rows-as-columns": ((40, 90), (40, 90), True, False),
    "FEW_ROWS-rows": ((shares_threads.FEW_ROWS, 60), (200, 60), True, False),
}


def thin_operands(name, dtype):
    a_shape, b_shape, transpose, _ = THIN[name]
    rng = np.random.default_rng(1)
    a = rng.standard_normal(a_shape).astype(dtype)
    b = rng.standard_normal(b_shape).astype(dtype)
    return a, (b.swapaxes(-1, -2) if transpose else b)


@pytest.mark.parametrize("with_out", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", THIN)
def test_thin_products_with_a_transposed_b_run_reordered(monkeypatch, name, dtype, with_out):
    a, b = thin_operands(name, dtype)
    expected = np.matmul(a, b)
    seen, real = [], np.matmul
    monkeypatch.setattr(shares_threads.np, "matmul",
                        lambda x, y, **kw: seen.append((x.shape, y.shape)) or real(x, y, **kw))
    out = np.full(expected.shape, np.nan, dtype) if with_out else None
    y = shares_threads.product(a, b, out=out)
    reordered = THIN[name][3]
    assert seen == [((b.shape[:-2] + b.shape[:-3:-1]), a.shape[:-2] + a.shape[:-3:-1])
                    if reordered else (a.shape, b.shape)]
    assert y is out if with_out else y.flags.c_contiguous
    assert y.shape == expected.shape and y.dtype == expected.dtype
    # BLAS sums the other way round: equal up to rounding, relative to the sums' size
    tol = (1e-5 if dtype == np.float32 else 1e-12) * np.abs(expected).max()
    np.testing.assert_allclose(y, expected, rtol=0, atol=tol)


def test_a_thin_product_with_a_wrong_out_gets_numpys_error():
    a, b = thin_operands("dW-of-a-thin-layer", np.float32)
    with pytest.raises(ValueError):
        shares_threads.product(a, b, out=np.empty((150, 16), np.float32))


def blas_threads_seen(monkeypatch):
    """Record the thread count of NumPy's BLAS at every np.matmul call (not
    of a BLAS loaded later, as SciPy's own, which runs none of these)."""
    seen, real = [], np.matmul

    def recording(*args, **kwargs):
        seen.append(max(lib.num_threads for lib in threads.numpy_blas_libraries()))
        return real(*args, **kwargs)
    monkeypatch.setattr(shares_threads.np, "matmul", recording)
    return seen


def test_a_small_product_runs_with_blas_on_the_calling_thread(monkeypatch):
    before = threads.get_num_threads()
    threads.set_num_threads(2)
    try:
        seen = blas_threads_seen(monkeypatch)
        rng = np.random.default_rng(2)
        a, b = rng.standard_normal((64, 50)), rng.standard_normal((50, 40))  # 128,000
        np.testing.assert_allclose(shares_threads.matmul(a, b), a @ b, rtol=1e-13)
        monkeypatch.setattr(shares_threads, "BLAS_MIN_MULTIPLY_ADDS", 64 * 50 * 40)
        shares_threads.matmul(a, b)                 # at the bound: BLAS's own threads
        assert seen == [1, 2]
        assert all(lib.num_threads == 2 for lib in threads.blas_libraries())   # restored
    finally:
        threads.set_num_threads(before)


def test_a_single_product_is_cut_into_shares_of_its_larger_operand(monkeypatch):
    # On 2 threads two shares, each with BLAS on one thread: of a's rows in
    # GoogLeNet's (384, 288) @ (288, 192) (21M multiply-adds), of b's columns in
    # a dense convolution's x @ W_denseᵀ, (64, 1368) @ (1368, 288) (25M) -- each
    # share's BLAS call copies all of the other operand.  LeNet's first fully
    # connected layer (12M), below two shares of
    # MIN_MULTIPLY_ADDS_PER_PRODUCT_SHARE, and a stack of one run whole; a
    # product from BLAS_MIN_MULTIPLY_ADDS runs on BLAS's threads.
    before = threads.get_num_threads()
    threads.set_num_threads(2)
    try:
        rng = np.random.default_rng(3)
        g, h = rng.standard_normal((384, 288), np.float32), rng.standard_normal((288, 192), np.float32)
        x, W_dense = (rng.standard_normal((64, 1368), np.float32),
                      rng.standard_normal((288, 1368), np.float32))
        x1, W1 = rng.standard_normal((256, 400), np.float32), rng.standard_normal((120, 400), np.float32)
        calls, real = [], np.matmul             # (a's shape, b's shape, BLAS's threads) per call
        monkeypatch.setattr(shares_threads.np, "matmul", lambda p, q, **kw: calls.append(
            (p.shape, q.shape, max(lib.num_threads for lib in threads.numpy_blas_libraries())))
            or real(p, q, **kw))
        for (a, b), shares in [
                ((g, h), [((192, 288), (288, 192), 1)] * 2),
                # (each share run as (bᵀ @ aᵀ)ᵀ: few rows, b a transposed view; ``product``)
                ((x, W_dense.T), [((144, 1368), (1368, 64), 1)] * 2),
                ((x1, W1.T), [((256, 400), (400, 120), 1)]),
                ((x1[None], W1.T[None]), [((1, 256, 400), (1, 400, 120), 1)])]:
            expected = real(a, b)   # (on BLAS's threads: rounded a little otherwise)
            calls.clear()
            np.testing.assert_allclose(shares_threads.matmul(a, b), expected, rtol=0,
                                       atol=1e-5 * np.abs(expected).max())
            assert calls == shares
        monkeypatch.setattr(shares_threads, "BLAS_MIN_MULTIPLY_ADDS", 384 * 288 * 192)
        calls.clear()
        shares_threads.matmul(g, h)
        assert calls == [((384, 288), (288, 192), 2)]
    finally:
        threads.set_num_threads(before)


def test_shares_are_as_many_as_threads_and_no_smaller_than_the_bound(monkeypatch):
    # on 16 threads a stack of 2.3M multiply-adds makes two shares of at least
    # MIN_MULTIPLY_ADDS_PER_THREAD (2^20), not none as the all-or-nothing rule did
    monkeypatch.setattr(threads, "numba_threads", lambda: 16)
    stack = (16, 24, 300)
    assert shares_threads._parts(stack, 0, 16 * 24 * 20 * 300, None, np.float32) == 2
    assert shares_threads._parts(stack, 0, 16 * 2**20, None, np.float32) == 16
    assert shares_threads._parts(stack, 0, 64 * 2**20, None, np.float32) == 16   # as many as threads
    assert shares_threads._parts((3, 24, 300), 0, 64 * 2**20, None, np.float32) == 3  # the stack's length
    assert shares_threads._parts(stack, 0, 2**20 - 1, None, np.float32) == 1
    single = shares_threads.MIN_MULTIPLY_ADDS_PER_PRODUCT_SHARE
    assert shares_threads._parts((256, 4096), 1, 3 * single, None, np.float32) == 3
    assert shares_threads._parts((256, 4096), 1, shares_threads.BLAS_MIN_MULTIPLY_ADDS,
                                 None, np.float32) == 1                      # BLAS's threads


def test_one_thread_and_small_stacks_are_not_split(monkeypatch):
    a, b = operands("winograd", np.float32)         # 16·24·20·300 = 2.3M multiply-adds
    submitted = split_calls(monkeypatch)
    before = threads.get_num_threads()
    try:
        threads.set_num_threads(1)
        shares_threads.matmul(a, b)
        assert submitted == []
        threads.set_num_threads(2)
        monkeypatch.setattr(shares_threads, "MIN_MULTIPLY_ADDS_PER_THREAD", 2 * 10**6)
        shares_threads.matmul(a, b)                 # 1.15M per thread: below the bound
        assert submitted == []
        monkeypatch.setattr(shares_threads, "MIN_MULTIPLY_ADDS_PER_THREAD", 10**6)
        shares_threads.matmul(a, b)
        assert len(submitted) == 1
    finally:
        threads.set_num_threads(before)


def test_shares_run_blas_on_one_thread_when_the_step_runs_in_another_thread(two_threads):
    # threadpoolctl (3.8+) obeys only the first Python thread that set OpenBLAS's
    # thread count: make this one that thread (as a user's threadpoolctl call
    # would), then run shares from another, as a GUI's or server's training does
    for library in threads.blas_libraries():
        library.set_num_threads(2)
    seen = []

    def step_elsewhere():
        threads.map_in_shares(
            lambda item: seen.append(max(lib.num_threads
                                         for lib in threads.numpy_blas_libraries())),
            range(4))
        seen.append(max(lib.num_threads for lib in threads.numpy_blas_libraries()))  # restored
    worker = threading.Thread(target=step_elsewhere)
    worker.start()
    worker.join()
    assert seen == [1, 1, 1, 1, 2]


def test_blas_threads_come_back_after_a_split_and_after_an_error(two_threads, monkeypatch):
    a, b = operands("winograd", np.float32)
    shares_threads.matmul(a, b)
    assert [lib.num_threads for lib in threads.blas_libraries()] == [2] * len(
        threads.blas_libraries())
    calls = []
    real = np.matmul

    def failing_share(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("share failed")
        return real(*args, **kwargs)
    monkeypatch.setattr(shares_threads.np, "matmul", failing_share)
    with pytest.raises(MemoryError, match="share failed"):
        shares_threads.matmul(a, b)
    monkeypatch.undo()
    assert all(lib.num_threads == 2 for lib in threads.blas_libraries())


def test_inside_a_split_blas_runs_on_one_thread(two_threads, monkeypatch):
    seen = []
    real = np.matmul

    def recording(*args, **kwargs):
        seen.append(tuple(lib.num_threads for lib in threads.numpy_blas_libraries()))
        return real(*args, **kwargs)
    monkeypatch.setattr(shares_threads.np, "matmul", recording)
    shares_threads.matmul(*operands("winograd", np.float32))
    assert seen and all(set(s) == {1} for s in seen)


def test_the_numba_set_runs_the_threaded_matmul_and_numpy_the_reference():
    a, b = operands("winograd", np.float32)
    previous = kernels.set_kernels("numba")
    try:
        assert kernels.which("matmul", a) == "kernels.shares_threads.matmul"
        kernels.set_kernels("numpy")
        assert kernels.which("matmul", a) == "kernels.shares_numpy.matmul"
    finally:
        kernels.set_kernels(previous)


# ---------------------------------------------------------------- map_chunks
def test_map_chunks_runs_the_chunks_as_shares_and_keeps_their_order(two_threads):
    seen = []

    def work(chunk):
        seen.append((chunk, threads.in_share(), threading.current_thread().name,
                     tuple(lib.num_threads for lib in threads.numpy_blas_libraries())))
        return chunk.start
    chunks = [slice(i, i + 2) for i in range(0, 12, 2)]
    x = np.zeros((12, 3), np.float32)
    assert shares_threads.map_chunks(x, work, chunks) == [c.start for c in chunks]
    assert sorted(s[0].start for s in seen) == [c.start for c in chunks]
    assert all(in_share and blas == (1,) * len(blas) for _, in_share, _, blas in seen)
    caller = threading.current_thread().name
    assert all(name.startswith("tinygrad_cnn") or name == caller for _, _, name, _ in seen)
    assert not threads.in_share()
    assert all(lib.num_threads == 2 for lib in threads.blas_libraries())


def test_map_in_shares_has_the_calling_thread_run_items_too(two_threads):
    names = []

    def work(item):
        time.sleep(0.02)
        names.append(threading.current_thread().name)
        return item
    assert threads.map_in_shares(work, range(6)) == list(range(6))
    caller = threading.current_thread().name
    assert caller in names and any(name.startswith("tinygrad_cnn") for name in names)


def test_the_calling_thread_runs_at_most_numba_threads_items_past_a_result_not_ready(two_threads):
    # the pool's first item is held back: meanwhile the caller may run only a few
    # items past it (their results wait to be summed), not all the others
    caller = threading.current_thread().name
    held, started_by_caller = [], []

    def work(item):
        if threading.current_thread().name != caller and not held:
            held.append(item)
            time.sleep(0.3)
            held.append(time.perf_counter())        # when it ended
        else:       # (slow enough that the pool's thread is awake before the caller is done)
            started_by_caller.append((item, time.perf_counter()))
            time.sleep(0.005)
        return item
    assert threads.map_in_shares(work, range(12)) == list(range(12))
    assert held, "the pool's thread took no item"
    item, ended = held
    past = [i for i, started in started_by_caller if i > item and started < ended]
    assert len(past) <= threads.numba_threads()


def test_an_error_stops_new_items_and_is_raised_once_every_thread_stopped(two_threads):
    started, finished = [], []

    def work(item):
        started.append(item)
        if item == 1:
            raise ValueError("item 1 failed")
        time.sleep(0.01)
        finished.append(item)
        return item
    with pytest.raises(ValueError, match="item 1 failed"):
        threads.map_in_shares(work, range(20))
    running_at_raise = set(started) - set(finished) - {1}
    assert len(started) < 20 and not running_at_raise


@pytest.mark.parametrize("module", [shares_numpy, shares_threads], ids=["reference", "shares"])
def test_map_chunks_folds_the_results_in_the_chunks_order(two_threads, module):
    def work(chunk):
        time.sleep(0.02 if chunk.start == 0 else 0)     # the first chunk finishes last
        return chunk.start
    folded = []
    chunks = [slice(i, i + 2) for i in range(0, 12, 2)]
    total = module.map_chunks(np.zeros((12, 3), np.float32), work, chunks,
                              combine=lambda total, r: folded.append((total, r)) or (total or 0) + r)
    assert total == sum(c.start for c in chunks)
    assert [r for _, r in folded] == [c.start for c in chunks]
    assert folded[0][0] is None


def test_map_chunks_folds_a_result_while_later_chunks_still_run(two_threads):
    # the last chunk waits until the first one's result was folded: a fold
    # made only after every chunk had finished would time out here
    first_folded = threading.Event()

    def work(chunk):
        if chunk.start == 6:
            assert first_folded.wait(timeout=10), "nothing was folded before the last chunk ended"
        return chunk.start

    def combine(total, result):
        first_folded.set()
        return (total or 0) + result
    chunks = [slice(i, i + 2) for i in range(0, 8, 2)]
    assert shares_threads.map_chunks(np.zeros((8, 3), np.float32), work, chunks,
                                     combine=combine) == 12


@pytest.mark.parametrize("case", ["one-chunk", "one-thread", "inside-a-share", "float16"])
def test_map_chunks_runs_on_the_calling_thread(case):
    before = threads.get_num_threads()
    threads.set_num_threads(1 if case == "one-thread" else 2)
    chunks = [slice(0, 2)] if case == "one-chunk" else [slice(0, 2), slice(2, 4)]
    x = np.zeros((4, 3), np.float16 if case == "float16" else np.float32)
    names = []
    try:
        threads._share.active = case == "inside-a-share"
        shares_threads.map_chunks(x, lambda c: names.append(threading.current_thread().name),
                                  chunks)
    finally:
        threads._share.active = False
        threads.set_num_threads(before)
    assert names == [threading.current_thread().name] * len(chunks)


def test_an_error_in_a_share_reaches_the_caller_and_blas_threads_come_back(two_threads):
    def work(chunk):
        if chunk.start == 4:
            raise ValueError("chunk 4 failed")
        return chunk.start
    with pytest.raises(ValueError, match="chunk 4 failed"):
        shares_threads.map_chunks(np.zeros(8, np.float32), work,
                                  [slice(i, i + 2) for i in range(0, 8, 2)])
    assert all(lib.num_threads == 2 for lib in threads.blas_libraries())


@pytest.mark.parametrize("kernel", ["im2col", "winograd_input"])
def test_inside_a_share_the_compiled_loops_are_the_one_thread_nogil_ones(two_threads, kernel):
    from kernels import conv_numba, winograd_numba
    x = np.random.default_rng(1).standard_normal((3, 16, 10, 10)).astype(np.float32)
    run = {"im2col": lambda: kernels.im2col(x, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), True),
           "winograd_input": lambda: kernels.winograd_input(x, (1, 1, 1, 1), (5, 5))}[kernel]
    module = {"im2col": conv_numba, "winograd_input": winograd_numba}[kernel]
    outside = run()
    loops = module._compiled_in_share()
    calls = []
    name = {"im2col": "im2col", "winograd_input": "input"}[kernel]
    real = getattr(loops, name)
    try:
        setattr(loops, name, lambda *args: calls.append(1) or real(*args))
        inside = shares_threads.map_chunks(x, lambda chunk: run(), [0, 1])
    finally:
        setattr(loops, name, real)
    assert calls == [1, 1]
    assert real.targetoptions.get("nogil") and not real.targetoptions.get("parallel")
    for result in inside:
        np.testing.assert_array_equal(result, outside)


def test_loops_that_split_the_batch_by_hand_stay_whole_inside_a_share(two_threads, monkeypatch):
    # pooling and the direct convolution hand slices to the same pool: from one of its
    # threads they would wait on themselves
    monkeypatch.setattr(threads, "PARALLEL_MIN_BYTES", 0)
    assert len(threads.batch_slices(8, 10**9)) == 4
    slices = shares_threads.map_chunks(np.zeros(4, np.float32),
                                       lambda chunk: threads.batch_slices(8, 10**9), [0, 1])
    assert slices == [[(0, 8)], [(0, 8)]]


# ---------------------------------------------------------------- run_all
def test_run_all_runs_every_job_once_the_calling_thread_among_them(two_threads):
    # each job long enough that the one pool thread cannot take them all
    ran = []
    jobs = [lambda i=i: ran.append((i, threading.get_ident())) or time.sleep(0.01)
            for i in range(4)]
    threads.run_all(jobs)
    assert sorted(i for i, _ in ran) == [0, 1, 2, 3]
    assert threading.get_ident() in {thread for _, thread in ran}
    assert len({thread for _, thread in ran}) == 2


def test_run_all_reraises_a_jobs_error_once_every_thread_stopped(two_threads):
    finished = []

    def slow():
        time.sleep(0.05)
        finished.append(True)

    def fail():
        raise ValueError("job 1 failed")
    with pytest.raises(ValueError, match="job 1 failed"):
        threads.run_all([slow, fail, slow])
    assert finished                      # the slow job another thread had taken has ended


# ---------------------------------------------------------------- concatenate
# name -> (the shapes joined, axis)
JOINS = {
    "densenet-channels": ([(6, 16, 5, 5), (6, 4, 5, 5)], 1),
    "googlenet-four": ([(5, 3, 4, 4), (5, 6, 4, 4), (5, 2, 4, 4), (5, 1, 4, 4)], 1),
    "last-axis": ([(7, 3, 2), (7, 3, 5)], -1),
    "one-array": ([(4, 3, 2)], 1),
}


@pytest.fixture
def every_join_split(monkeypatch):
    """Two threads, and every join worth splitting (the size bounds are tested in test_threads)."""
    before = threads.get_num_threads()
    threads.set_num_threads(2)
    monkeypatch.setattr(threads, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(threads, "PARALLEL_MIN_BYTES", 0)
    yield
    threads.set_num_threads(before)


def arrays_for(name, dtype=np.float32):
    rng = np.random.default_rng(1)
    return [rng.standard_normal(shape).astype(dtype) for shape in JOINS[name][0]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", JOINS)
def test_joined_batch_slices_equal_numpys_concatenate(every_join_split, monkeypatch, name, dtype):
    arrays, axis = arrays_for(name, dtype), JOINS[name][1]
    submitted = split_calls(monkeypatch)
    joined = shares_threads.concatenate(arrays, axis)
    np.testing.assert_array_equal(joined, np.concatenate(arrays, axis=axis))
    assert joined.dtype == dtype and joined.flags.c_contiguous
    assert submitted                                    # the slices ran side by side


@pytest.mark.parametrize("case", ["first-axis", "mixed-dtypes", "float16", "one-thread",
                                  "below-stream-bytes", "inside-a-share"])
def test_joins_that_go_to_numpys_concatenate(every_join_split, monkeypatch, case):
    arrays, axis = arrays_for("densenet-channels"), 1
    if case == "first-axis":
        arrays, axis = [arrays[0], arrays[0][:2]], 0
    elif case == "mixed-dtypes":
        arrays[1] = arrays[1].astype(np.float64)
    elif case == "float16":
        arrays = [a.astype(np.float16) for a in arrays]
    elif case == "one-thread":
        threads.set_num_threads(1)
    elif case == "below-stream-bytes":
        monkeypatch.setattr(threads, "STREAM_MIN_BYTES", 2**30)
    calls = []
    monkeypatch.setattr(shares_threads.shares_numpy, "concatenate",
                        lambda a, ax: calls.append(ax) or np.concatenate(a, axis=ax))
    if case == "inside-a-share":
        joined = threads.map_in_shares(lambda _: shares_threads.concatenate(arrays, axis),
                                       [0, 1], list)[0]
    else:
        joined = shares_threads.concatenate(arrays, axis)
    np.testing.assert_array_equal(joined, np.concatenate(arrays, axis=axis))
    assert calls


def test_a_join_of_mismatched_shapes_gets_numpys_error(every_join_split):
    with pytest.raises(ValueError, match="concatenat"):
        shares_threads.concatenate([np.zeros((2, 3, 4), np.float32),
                                    np.zeros((2, 3, 5), np.float32)], 1)


def test_cat_runs_the_kernel():
    import tinygrad_cnn as tc
    a, b = arrays_for("densenet-channels")
    with kernels.counting() as counts:
        y = tc.cat([tc.Tensor(a), tc.Tensor(b)], dim=1)
    assert counts["concatenate"] == 1
    np.testing.assert_array_equal(y.numpy(), np.concatenate([a, b], axis=1))


# ---------------------------------------------------------------- transpose
# (rows, columns): a weight laid out tap by tap and its gradient back, each over
# several blocks and a last short one, and a square one
TRANSPOSES = {"weight-to-taps": (2 * 4096 + 77, 9), "taps-to-weight": (9, 2 * 4096 + 77),
              "square": (300, 300)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", TRANSPOSES)
def test_transposed_slices_equal_numpys_copy(every_join_split, monkeypatch, name, dtype):
    a = np.random.default_rng(2).standard_normal(TRANSPOSES[name]).astype(dtype)
    submitted = split_calls(monkeypatch)
    out = shares_threads.transpose(a)
    np.testing.assert_array_equal(out, np.ascontiguousarray(a.T))
    assert out.dtype == dtype and out.flags.c_contiguous and not np.shares_memory(out, a)
    assert submitted                                    # the slices ran side by side


@pytest.mark.parametrize("case", ["float16", "3-d", "one-thread", "below-stream-bytes",
                                  "inside-a-share"])
def test_transposes_that_go_to_numpys_copy(every_join_split, monkeypatch, case):
    a = np.random.default_rng(3).standard_normal((4096 + 5, 9)).astype(np.float32)
    if case == "float16":
        a = a.astype(np.float16)
    elif case == "3-d":
        a = a.reshape(4101, 3, 3)
    elif case == "one-thread":
        threads.set_num_threads(1)
    elif case == "below-stream-bytes":
        monkeypatch.setattr(threads, "STREAM_MIN_BYTES", 2**30)
    submitted = split_calls(monkeypatch)
    if case == "inside-a-share":
        out = threads.map_in_shares(lambda _: shares_threads.transpose(a), [0, 1], list)[0]
        submitted.clear()                               # the map's own hand-outs
    else:
        out = shares_threads.transpose(a)
    np.testing.assert_array_equal(out, np.ascontiguousarray(a.T))
    assert out.flags.c_contiguous and not submitted


def test_a_taps_convolution_lays_its_weight_out_and_back_through_the_kernel():
    import tinygrad_cnn as tc
    import tinygrad_cnn.nn.functional as F
    rng = np.random.default_rng(5)
    # ResNet-18's last stage in small: 3x3 maps, too many channels for a dense weight
    x = tc.tensor(rng.standard_normal((2, 128, 3, 3)).astype(np.float32), requires_grad=True)
    W = tc.tensor(rng.standard_normal((128, 128, 3, 3)).astype(np.float32), requires_grad=True)
    with kernels.counting() as counts:
        y = F.conv2d(x, W, padding=1)
        assert y.grad_fn.name == "Conv2d[taps]"
        y.sum().backward()
    assert counts["transpose"] == 2                     # the weight out, its gradient back


# ---------------------------------------------------------------- independent products
def linear_backward_pairs(batch, n_in, n_out, dtype=np.float32, seed=4):
    """A fully connected layer's backward products: dx = dy W and dW = dyᵀ x."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    W = rng.standard_normal((n_out, n_in)).astype(dtype)
    gy = rng.standard_normal((batch, n_out)).astype(dtype)
    return [(gy, W), (gy.T, x)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_independent_products_run_side_by_side_each_whole(monkeypatch, dtype):
    # LeNet's second layer, (256, 84) against (84, 120): 2.6M multiply-adds each,
    # too few for two shares of one product, enough to run beside the other
    before = threads.get_num_threads()
    threads.set_num_threads(2)
    try:
        pairs = linear_backward_pairs(256, 84, 120, dtype)
        expected = [a @ b for a, b in pairs]
        submitted, seen = split_calls(monkeypatch), blas_threads_seen(monkeypatch)
        results = shares_threads.matmuls(pairs)
        assert len(submitted) == 1, "two products: one to the pool, one on the calling thread"
        assert seen == [1, 1], "each whole, BLAS on one thread"
        assert all(lib.num_threads == 2 for lib in threads.blas_libraries())   # restored
        tol = 1e-5 if dtype == np.float32 else 1e-12
        for result, reference in zip(results, expected):
            assert result.shape == reference.shape and result.dtype == reference.dtype
            np.testing.assert_allclose(result, reference, rtol=0, atol=tol * np.abs(reference).max())
        assert [r.shape for r in shares_numpy.matmuls(pairs)] == [r.shape for r in expected]
    finally:
        threads.set_num_threads(before)


@pytest.mark.parametrize("case", ["one-thread", "small", "stacked", "cut-into-shares",
                                  "blas-threads", "in-a-share", "float16"])
def test_independent_products_that_go_one_after_another(monkeypatch, case):
    before = threads.get_num_threads()
    threads.set_num_threads(1 if case == "one-thread" else 2)
    try:
        pairs = linear_backward_pairs(256, 84, 120)
        if case == "small":                     # below MIN_MULTIPLY_ADDS_SIDE_BY_SIDE
            pairs = linear_backward_pairs(64, 84, 120)
        elif case == "stacked":
            pairs = [(a[None], b[None]) for a, b in pairs]
        elif case == "cut-into-shares":         # matmul's own shares split each
            monkeypatch.setattr(shares_threads, "MIN_MULTIPLY_ADDS_PER_PRODUCT_SHARE", 2**20)
        elif case == "blas-threads":
            monkeypatch.setattr(shares_threads, "BLAS_MIN_MULTIPLY_ADDS", 2**21)
        elif case == "float16":
            pairs = [(a.astype(np.float16), b.astype(np.float16)) for a, b in pairs]
        one_by_one = []
        real = shares_threads.matmul
        monkeypatch.setattr(shares_threads, "matmul",
                            lambda a, b, out=None: one_by_one.append(1) or real(a, b, out))
        if case == "in-a-share":
            results = threads.map_in_shares(lambda _: shares_threads.matmuls(pairs), [0])[0]
        else:
            results = shares_threads.matmuls(pairs)
        assert one_by_one == [1, 1]
        for result, (a, b) in zip(results, pairs):
            np.testing.assert_allclose(result, a @ b, rtol=1e-2 if case == "float16" else 1e-4,
                                       atol=1e-2 if case == "float16" else 1e-4)
    finally:
        threads.set_num_threads(before)


def test_a_pair_that_cannot_be_multiplied_gets_numpys_error():
    a, b = np.ones((256, 84), np.float32), np.ones((85, 120), np.float32)
    with pytest.raises(ValueError):
        shares_threads.matmuls([(a, b), (a, b)])


def test_no_pairs_give_no_products():
    assert kernels.matmuls([]) == [] and shares_threads.matmuls([]) == []
