"""conv2d's default column budget grows with the thread count (ops/conv.py,
column_budget_for): 16 MB up to 4 threads, 4 MB per thread beyond."""
import numpy as np
import pytest

import tinygrad_cnn as tc
from tinygrad_cnn.ops import conv
from tinygrad_cnn.ops.conv import column_budget_for, current_column_budget

# Chunk sizes are decided before any kernel runs: the kernel set cannot change them.
pytestmark = pytest.mark.kernel_free

MB = 2**20


@pytest.mark.parametrize("threads, budget", [(1, 16 * MB), (2, 16 * MB), (4, 16 * MB),
                                             (8, 32 * MB), (16, 64 * MB)])
def test_the_default_budget_by_thread_count(threads, budget):
    assert column_budget_for(threads) == budget


@pytest.fixture
def restore():
    threads, budget = tc.get_num_threads(), conv.column_budget
    yield
    tc.set_num_threads(threads)
    conv.set_column_budget(budget)


def test_conv2d_chunks_follow_set_num_threads_unless_a_budget_was_set(restore):
    conv.set_column_budget(None)
    x = tc.zeros(64, 16, 24, 24)          # 5x5 im2col: 64 images x 0.6 MB of columns
    w = tc.zeros(8, 16, 5, 5, requires_grad=True)
    chunks = {}
    for threads in (2, 16):
        tc.set_num_threads(threads)
        assert current_column_budget() == column_budget_for(threads)
        y = conv.conv2d(x, w)
        assert y.grad_fn.name == "Conv2d[im2col]"
        chunks[threads] = len(y.grad_fn.chunks)
    assert chunks[2] > chunks[16] >= 1
    conv.set_column_budget(4 * MB)
    assert current_column_budget() == 4 * MB


def test_set_column_budget_rejects_what_is_not_a_positive_int_or_none(restore):
    with pytest.raises(ValueError, match="set_column_budget"):
        conv.set_column_budget(0)
