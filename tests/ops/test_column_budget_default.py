"""conv2d's default column budget (ops/conv.py, DEFAULT_COLUMN_BUDGET): 4 MB of
columns per chunk whatever the thread count, or four times the weights where they are
larger (WEIGHT_MULTIPLE); the thread count decides how many chunks a batch that
needs several is cut into (a multiple of it)."""
import pytest

import tinygrad_cnn as tc
from tinygrad_cnn.ops import conv
from tinygrad_cnn.ops.conv import DEFAULT_COLUMN_BUDGET, current_column_budget

# Chunk sizes are decided before any kernel runs: the kernel set cannot change them.
pytestmark = pytest.mark.kernel_free

MB = 2**20


@pytest.fixture
def restore():
    threads, budget = tc.get_num_threads(), conv.column_budget
    yield
    tc.set_num_threads(threads)
    conv.set_column_budget(budget)


def chunks_of_a_conv(x, w, algorithm="im2col", padding=0):
    y = conv.conv2d(x, w, padding=padding)
    assert y.grad_fn.name == f"Conv2d[{algorithm}]"
    return y.grad_fn.chunks


@pytest.mark.parametrize("threads", [1, 2, 3, 16])
def test_default_chunks_stay_within_4_mb_and_come_in_multiples_of_the_threads(restore, threads):
    conv.set_column_budget(None)
    tc.set_num_threads(threads)
    assert current_column_budget() == DEFAULT_COLUMN_BUDGET == 4 * MB
    x = tc.zeros(64, 16, 24, 24)          # 5x5 im2col: 64 images x 0.61 MB of columns
    w = tc.zeros(32, 16, 5, 5, requires_grad=True)      # too wide for the direct loops
    chunks = chunks_of_a_conv(x, w)
    column_bytes = 16 * 25 * 20 * 20 * 4
    assert all((c.stop - c.start) * column_bytes <= 4 * MB for c in chunks)
    assert len(chunks) % threads == 0
    assert chunks[0].start == 0 and chunks[-1].stop == 64
    assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:]))


def test_a_budget_the_user_set_wins(restore):
    tc.set_num_threads(2)
    conv.set_column_budget(16 * MB)
    assert current_column_budget() == 16 * MB
    x = tc.zeros(64, 16, 24, 24)          # 39 MB of columns: 3 chunks of 16 MB, made 4 for 2 threads
    w = tc.zeros(32, 16, 5, 5, requires_grad=True)
    assert len(chunks_of_a_conv(x, w)) == 4


@pytest.mark.parametrize("threads", [1, 2])
def test_a_layer_with_large_weights_gets_chunks_four_times_their_size(restore, threads):
    # im2col, 3x3 maps: (64, 576) weights of 0.14 MB, 4 MB chunks; (512, 4608)
    # weights of 9.4 MB, chunks of at most 4 x 9.4 MB, so 64 images go whole
    conv.set_column_budget(None)
    tc.set_num_threads(threads)
    small = chunks_of_a_conv(tc.zeros(64, 64, 5, 5), tc.zeros(64, 64, 3, 3, requires_grad=True))
    column_bytes = 64 * 9 * 3 * 3 * 4                   # per image: 20.7 KB, 64 images 1.3 MB
    assert len(small) == threads and 64 * column_bytes < 4 * MB     # one per thread
    x = tc.zeros(64, 512, 5, 5)
    w = tc.zeros(512, 512, 3, 3, requires_grad=True)
    weight_bytes = 512 * 512 * 9 * 4
    assert conv.product_weight_bytes("im2col", w.shape, 4) == weight_bytes
    assert conv.WEIGHT_MULTIPLE == 4
    assert current_column_budget(x.data, weight_bytes) == 4 * weight_bytes
    chunks = chunks_of_a_conv(x, w)                     # 64 x 166 KB = 10.6 MB of columns
    assert len(chunks) == threads                       # one per thread
    column_bytes = 512 * 9 * 3 * 3 * 4
    with_4_mb = conv.batch_chunks(64, column_bytes, DEFAULT_COLUMN_BUDGET, threads)
    assert len(with_4_mb) >= 3                          # what the 4 MB default gave


def test_winograd_counts_its_transformed_weight_matrices(restore):
    conv.set_column_budget(None)
    tc.set_num_threads(2)
    w = tc.zeros(256, 256, 3, 3, requires_grad=True)
    assert conv.product_weight_bytes("winograd", w.shape, 4) == 16 * 256 * 256 * 4
    assert conv.product_weight_bytes("winograd4x4", w.shape, 4) == 36 * 256 * 256 * 4
    # 64 images of 6x6 (2x2 tiles): 16 x (256 + 256) x 9 tiles x 4 bytes = 295 KB each,
    # 18.9 MB in all: 4 MB gave 6 chunks; four times 4.2 MB of transformed weights gives
    # 2 (1 per thread)
    chunks = chunks_of_a_conv(tc.zeros(64, 256, 6, 6), w, "winograd", padding=1)
    assert len(chunks) == 2
    assert all((c.stop - c.start) * 16 * 512 * 9 * 4 <= 4 * 16 * 256 * 256 * 4 for c in chunks)
    # (128, 128) on 12x12 (4x4 tiles): 2.4 MB transformed, chunks of four times that
    per_image = 36 * 256 * 9 * 4                         # 332 KB: 28 per 9.4 MB chunk
    chunks = chunks_of_a_conv(tc.zeros(64, 128, 12, 12),
                              tc.zeros(128, 128, 3, 3, requires_grad=True), "winograd4x4",
                              padding=1)
    assert len(chunks) == len(conv.batch_chunks(64, per_image, 4 * 36 * 128 * 128 * 4, 2)) == 4
    # (64, 64) on 24x24: 0.6 MB transformed, four times that is less than the 4 MB default
    small = chunks_of_a_conv(tc.zeros(64, 64, 24, 24),
                             tc.zeros(64, 64, 3, 3, requires_grad=True), "winograd4x4",
                             padding=1)
    per_image = 36 * 128 * 36 * 4                        # 664 KB: 6 per 4 MB chunk
    assert len(small) == len(conv.batch_chunks(64, per_image, DEFAULT_COLUMN_BUDGET, 2)) == 12


def test_a_budget_the_user_set_wins_over_large_weights(restore):
    tc.set_num_threads(1)
    conv.set_column_budget(4 * MB)
    chunks = chunks_of_a_conv(tc.zeros(64, 512, 5, 5), tc.zeros(512, 512, 3, 3,
                                                                 requires_grad=True))
    assert len(chunks) == 3                              # 10.6 MB of columns in 4 MB chunks


def test_set_column_budget_rejects_what_is_not_a_positive_int_or_none(restore):
    with pytest.raises(ValueError, match="set_column_budget"):
        conv.set_column_budget(0)
