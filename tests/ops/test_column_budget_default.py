"""conv2d's default column budget (ops/conv.py, DEFAULT_COLUMN_BUDGET): 4 MB of
columns per chunk whatever the thread count; the thread count decides how many
chunks a batch that needs several is cut into (a multiple of it)."""
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


def chunks_of_a_conv(x, w):
    y = conv.conv2d(x, w)
    assert y.grad_fn.name == "Conv2d[im2col]"
    return y.grad_fn.chunks


@pytest.mark.parametrize("threads", [1, 2, 3, 16])
def test_default_chunks_stay_within_4_mb_and_come_in_multiples_of_the_threads(restore, threads):
    conv.set_column_budget(None)
    tc.set_num_threads(threads)
    assert current_column_budget() == DEFAULT_COLUMN_BUDGET == 4 * MB
    x = tc.zeros(64, 16, 24, 24)          # 5x5 im2col: 64 images x 0.61 MB of columns
    w = tc.zeros(8, 16, 5, 5, requires_grad=True)
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
    w = tc.zeros(8, 16, 5, 5, requires_grad=True)
    assert len(chunks_of_a_conv(x, w)) == 4


def test_set_column_budget_rejects_what_is_not_a_positive_int_or_none(restore):
    with pytest.raises(ValueError, match="set_column_budget"):
        conv.set_column_budget(0)
