"""Tensor.register_post_accumulate_grad_hook: called on a leaf after backward has added
the pass's gradient to ``.grad`` (DistributedDataParallel averages ``.grad`` there)."""
import numpy as np
import pytest

import tinygrad_cnn as tc

# autograd's bookkeeping calls no kernel: run under the first kernel set only
# (tests/conftest.py).
pytestmark = pytest.mark.kernel_free


def test_hook_sees_the_accumulated_grad_once_per_backward():
    w = tc.tensor([1.0, 2.0], requires_grad=True)
    seen = []
    handle = w.register_post_accumulate_grad_hook(lambda t: seen.append(t.grad.numpy().copy()))
    (w * w).sum().backward()           # w used twice: one call, after the sum of both
    (w * 3).sum().backward()
    np.testing.assert_array_equal(seen[0], [2.0, 4.0])
    np.testing.assert_array_equal(seen[1], [5.0, 7.0])
    handle.remove()
    w.sum().backward()
    assert len(seen) == 2


def test_hook_may_change_grad_in_place_and_runs_for_a_leaf_root():
    w = tc.tensor([1.0, 2.0], requires_grad=True)
    w.register_post_accumulate_grad_hook(lambda t: t.grad.data.__imul__(10))
    w.backward(tc.tensor([1.0, 1.0]))
    np.testing.assert_array_equal(w.grad.numpy(), [10.0, 10.0])


def test_only_leaves_that_require_grad():
    w = tc.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="only leaf tensors"):
        (w * 2).register_post_accumulate_grad_hook(print)
    with pytest.raises(RuntimeError, match="only leaf tensors"):
        tc.tensor([1.0]).register_post_accumulate_grad_hook(print)
