"""The graph and the backward pass: accumulation, retain_graph, grad mode,
hooks, anomaly detection, and what the graph keeps alive."""
import contextlib
import gc
import threading
import weakref

import numpy as np
import pytest

import tinygrad_cnn as tc
from tests.inputs import distinct
from tinygrad_cnn import Tensor
from tinygrad_cnn.autograd import AnomalyError, Function


def leaf(*shape, seed=0):
    return Tensor(distinct(*shape, seed=seed), requires_grad=True)


# ---------------------------------------------------------------- accumulation
def test_tensor_used_twice_gets_both_contributions():
    x = leaf(3)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.data, 2 * x.data)


def test_diamond_graph_sums_both_paths():
    # x -> a = 3x -> (b = a², c = 2a) -> d = b + c;  dd/dx = (2a + 2)·3
    x = leaf(4)
    a = x * 3
    d = (a * a + a * 2).sum()
    d.backward()
    np.testing.assert_allclose(x.grad.data, (2 * 3 * x.data + 2) * 3)


def test_intermediate_used_by_three_consumers_runs_its_backward_once():
    calls = []

    class Counted(Function):
        def forward(self, x):
            return x * 1.0

        def backward(self, gy):
            calls.append(gy.copy())
            return gy

    x = leaf(2)
    h = Counted()(x)
    (h + h * 2 + h.exp()).sum().backward()
    assert len(calls) == 1
    np.testing.assert_allclose(calls[0], 1 + 2 + np.exp(x.data))
    np.testing.assert_allclose(x.grad.data, 1 + 2 + np.exp(x.data))


class PassThrough(Function):
    """y = x; dx = a view of dy, as a concatenation's backward hands out (not
    fresh: the engine must not add into it)."""
    def forward(self, x):
        return x * 1.0

    def backward(self, gy):
        return gy[...]


class Scale(Function):
    """y = k·x; dx = k·dy, a new array, recorded in ``made``."""
    def __init__(self, k, made):
        self.k, self.made = k, made

    def forward(self, x):
        return x * self.k

    def backward(self, gy):
        gx = gy * self.k
        self.made.append(gx)
        return gx


@pytest.mark.parametrize("fresh_first", [False, True])
def test_sum_of_a_passed_through_and_a_fresh_gradient_goes_into_the_fresh_one(fresh_first):
    # a DenseNet layer's input: its concatenation's gradient (not ours) and its
    # batch norm's (a new array), in either order: the sum goes into the new
    # array, which becomes x.grad without a copy
    made = []
    x = leaf(2, 3)
    seed_passed, seed_scaled = distinct(2, 3, seed=2), distinct(2, 3, seed=3)

    def passed():
        return (PassThrough()(x) * Tensor(seed_passed)).sum()

    def scaled():
        return (Scale(3.0, made)(x) * Tensor(seed_scaled)).sum()
    first, second = (scaled, passed) if fresh_first else (passed, scaled)
    a = first()
    (a + second()).backward()
    np.testing.assert_allclose(x.grad.data, seed_passed + 3.0 * seed_scaled)
    assert len(made) == 1 and x.grad.data is made[0]


def test_fresh_gradient_arriving_second_takes_the_sum_without_a_new_array():
    from tinygrad_cnn import autograd
    store = {}
    passed = distinct(2, 3)                      # not ours: must stay as it is
    kept = passed.copy()
    fresh = distinct(2, 3, seed=1)
    autograd._accumulate(store, "x", passed, False)
    autograd._accumulate(store, "x", fresh, True)
    total, is_fresh = store["x"]
    assert total is fresh and is_fresh
    np.testing.assert_array_equal(total, kept + distinct(2, 3, seed=1))
    np.testing.assert_array_equal(passed, kept)


@pytest.mark.parametrize("fresh_first", [False, True])
def test_gradients_that_overlap_in_memory_are_summed_into_a_new_array(fresh_first):
    # one backward may hand out an array and a view of it (both to one input)
    from tinygrad_cnn import autograd
    store = {}
    fresh = distinct(2, 3)
    view = fresh[::-1]                           # the rows reversed: overlaps, not aligned
    expected = fresh + view
    arrivals = [(fresh, True), (view, False)]
    for array, is_fresh in (arrivals if fresh_first else arrivals[::-1]):
        autograd._accumulate(store, "x", array, is_fresh)
    total, is_fresh = store["x"]
    assert total is not fresh and not np.shares_memory(total, fresh) and is_fresh
    np.testing.assert_array_equal(total, expected)


@pytest.mark.parametrize("dtype, shape", [(np.float32, (2, 3)), (np.float64, (1, 3))])
def test_fresh_gradient_unlike_the_sum_so_far_gives_a_new_array(dtype, shape):
    # float32 += float64 would round the sum to float32; a (1, 3) array cannot
    # hold a (2, 3) sum
    from tinygrad_cnn import autograd
    store = {}
    passed = distinct(2, 3)
    fresh = distinct(*shape, seed=1).astype(dtype)
    fresh_before = fresh.copy()
    autograd._accumulate(store, "x", passed, False)
    autograd._accumulate(store, "x", fresh, True)
    total, is_fresh = store["x"]
    assert total is not fresh and is_fresh and total.dtype == np.float64
    np.testing.assert_array_equal(total, passed + fresh_before)
    np.testing.assert_array_equal(fresh, fresh_before)


def test_leaf_grad_accumulates_across_backward_calls():
    x = leaf(3)
    (x * 2).sum().backward()
    (x * 5).sum().backward()
    np.testing.assert_allclose(x.grad.data, np.full(3, 7.0))


def test_grad_handed_out_earlier_is_not_modified_by_accumulation():
    x = leaf(3)
    (x * 2).sum().backward()
    first = x.grad
    (x * 5).sum().backward()
    np.testing.assert_allclose(first.data, np.full(3, 2.0))


def test_leaf_grad_is_its_own_writable_array():
    # Regression: Sum's backward is a read-only broadcast view and Add's backward
    # hands one array to both inputs; .grad must own its data (optimisers, zero_()).
    a, b = leaf(3), leaf(3, seed=1)
    (a + b).sum().backward()
    assert a.grad.data.flags.writeable and b.grad.data.flags.writeable
    assert not np.shares_memory(a.grad.data, b.grad.data)
    a.grad.zero_()
    np.testing.assert_allclose(b.grad.data, np.ones(3))


def test_backward_does_not_alias_the_callers_gradient():
    x = leaf(3)
    seed = np.ones(3)
    x.backward(seed)
    x.grad.zero_()
    np.testing.assert_allclose(seed, np.ones(3))


def test_mixed_dtypes_follow_numpy_promotion_and_grads_keep_leaf_dtype():
    a = Tensor(distinct(3).astype(np.float32), requires_grad=True)
    b = leaf(3, seed=1)
    y = a * b
    assert y.dtype == np.float64
    y.sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64
    np.testing.assert_allclose(a.grad.data, b.data, rtol=1e-6)


# ---------------------------------------------------------------- gy written over
def writes_over_gy():
    """Whether this kernel set's ReLU backward takes the engine's offer to write
    over gy (the compiled loops do, the reference never)."""
    import kernels
    return "numba" in kernels.which("relu_backward", np.zeros(1))


def test_relu_writes_its_gradient_over_the_engines_own_gy():
    # Scale's backward makes a new array; ReLU's gradient then goes over it, and
    # that array becomes x.grad: no array of ReLU's own
    made = []
    x, seed = leaf(2, 3), distinct(2, 3, seed=2)
    relu = x.relu()
    op = relu._ctx
    (Scale(2.0, made)(relu) * Tensor(seed)).sum().backward()
    np.testing.assert_array_equal(x.grad.data, np.where(x.data > 0, 2.0 * seed, 0.0))
    assert (x.grad.data is made[0]) == writes_over_gy()
    assert op.may_overwrite_gy is False            # the offer holds for one call only


@pytest.mark.parametrize("op", ["sigmoid", "batch_norm"])
def test_gradient_written_over_gy_is_the_one_written_anew(op):
    # the same bits as with no array reused (a trace turns reuse off)
    import io
    from tinygrad_cnn.ops.batchnorm import batch_norm
    gamma, beta = Tensor(distinct(3, seed=3)), Tensor(distinct(3, seed=4))
    apply = {"sigmoid": lambda t: t.sigmoid(),
             "batch_norm": lambda t: batch_norm(t, None, None, gamma, beta, training=True)}[op]
    seed = distinct(2, 3, 2, 2, seed=2)
    grads = []
    for traced in (True, False):
        made = []
        x = leaf(2, 3, 2, 2)
        with tc.trace(io.StringIO()) if traced else contextlib.nullcontext():
            (Scale(2.0, made)(apply(x)) * Tensor(seed)).sum().backward()
        grads.append(x.grad.data)
        assert (x.grad.data is made[0]) == (writes_over_gy() and not traced)
    np.testing.assert_array_equal(grads[1], grads[0])


def test_gy_shared_by_two_inputs_is_not_written_over():
    # Add hands the same array to both ReLUs: the first may not zero parts of it
    # that the second still reads (the two masks differ)
    a, b, seed = leaf(2, 3, seed=0), leaf(2, 3, seed=1), distinct(2, 3, seed=2)
    assert np.any((a.data > 0) != (b.data > 0))
    (Scale(1.0, [])(a.relu() + b.relu()) * Tensor(seed)).sum().backward()
    np.testing.assert_array_equal(a.grad.data, np.where(a.data > 0, seed, 0.0))
    np.testing.assert_array_equal(b.grad.data, np.where(b.data > 0, seed, 0.0))


def test_gy_a_hook_has_seen_is_not_written_over():
    seen = []
    x, seed = leaf(2, 3), distinct(2, 3, seed=2)
    relu = x.relu()
    relu.register_hook(seen.append)                 # keeps the very array it is shown
    (Scale(2.0, [])(relu) * Tensor(seed)).sum().backward()
    np.testing.assert_array_equal(seen[0].data, 2.0 * seed)
    np.testing.assert_array_equal(x.grad.data, np.where(x.data > 0, 2.0 * seed, 0.0))


def test_the_callers_gradient_is_not_written_over():
    x, seed = leaf(2, 3), distinct(2, 3, seed=2)
    given = seed.copy()
    (x.relu() * 1.0).relu().backward(seed)
    np.testing.assert_array_equal(seed, given)


def test_no_gy_is_written_over_while_a_trace_shows_the_arrays():
    import io
    made = []
    x, seed = leaf(2, 3), distinct(2, 3, seed=2)
    with tc.trace(io.StringIO()):
        (Scale(2.0, made)(x.relu()) * Tensor(seed)).sum().backward()
    assert x.grad.data is not made[0]
    np.testing.assert_array_equal(made[0], 2.0 * seed)


def test_which_returned_gradients_are_the_engines_own():
    from tinygrad_cnn.autograd import _is_fresh
    gy, new = distinct(2, 3), distinct(2, 3, seed=1)
    assert _is_fresh(new, gy, (new,))
    assert not _is_fresh(gy, gy, (gy,))                       # the caller's, or shared
    assert _is_fresh(gy, gy, (gy,), gy_ours=True)             # the engine's, written over
    assert not _is_fresh(gy, gy, (gy, gy), gy_ours=True)      # Add: one array, two inputs
    assert not _is_fresh(gy[0], gy, (gy[0], None), gy_ours=True)   # a view
    assert not _is_fresh(new, gy, (new, new[:1]))             # a view of it went elsewhere
    assert _is_fresh(new, gy, (new, None, gy))


# ---------------------------------------------------------------- retain_graph
def test_second_backward_without_retain_graph_raises():
    x = leaf(3)
    y = (x.exp() * 2).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()


@pytest.mark.parametrize("error", [RuntimeError, ValueError])
def test_backward_misuse_is_both_runtime_and_value_error(error):
    """PyTorch code catches RuntimeError; this engine's bad calls raise ValueError."""
    x = leaf(3)
    y = (x * 2).sum()
    y.backward()
    with pytest.raises(error, match="second time"):
        y.backward()
    with pytest.raises(error, match="scalar outputs"):
        (x * 2).backward()


def test_retain_graph_allows_a_second_backward():
    x = leaf(3)
    y = (x.exp() * 2).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.data, 4 * np.exp(x.data))


def test_saved_arrays_are_released_after_backward():
    x = leaf(3)
    y = x.exp()
    assert len(y.grad_fn.saved) == 1
    y.sum().backward()
    assert y.grad_fn.saved == ()


def test_saved_arrays_are_kept_with_retain_graph():
    x = leaf(3)
    y = x.exp()
    y.sum().backward(retain_graph=True)
    assert len(y.grad_fn.saved) == 1


# ---------------------------------------------------------------- seeds
def test_backward_on_non_scalar_without_gradient_raises():
    y = leaf(2, 3) * 2
    with pytest.raises(RuntimeError, match=r"scalar outputs.*shape \(2, 3\)"):
        y.backward()


def test_backward_with_explicit_gradient_on_non_scalar():
    x = leaf(2, 3)
    g = distinct(2, 3, seed=5)
    (x * 3).backward(Tensor(g))
    np.testing.assert_allclose(x.grad.data, 3 * g)


def test_backward_with_gradient_of_wrong_shape_raises():
    y = leaf(2, 3) * 2
    with pytest.raises(ValueError, match=r"gradient has shape \(3, 2\).*\(2, 3\)"):
        y.backward(np.ones((3, 2)))


def test_backward_on_tensor_without_graph_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(3)).sum().backward()


def test_backward_on_a_leaf_seeds_its_grad():
    x = leaf(2)
    x.backward(np.array([3.0, 4.0]))
    np.testing.assert_allclose(x.grad.data, [3.0, 4.0])


def test_a_chain_of_5000_ops_backprops_without_recursion():
    x = Tensor(np.array(0.5), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0001
    y.backward()
    np.testing.assert_allclose(x.grad.data, 1.0001 ** 5000)


# ---------------------------------------------------------------- grad mode
def test_no_grad_records_no_graph():
    x = leaf(3)
    with tc.no_grad():
        y = x * 2
    assert not y.requires_grad and y.grad_fn is None
    assert tc.is_grad_enabled()


@pytest.mark.parametrize("decorate", [tc.no_grad(), tc.no_grad], ids=["no_grad()", "no_grad"])
def test_no_grad_as_decorator(decorate):
    x = leaf(3)

    @decorate
    def double(t):
        return t * 2

    y = double(x)
    assert not y.requires_grad and y.grad_fn is None
    assert tc.is_grad_enabled()


def test_no_grad_decorator_restores_grad_mode_after_recursion():
    # Regression: one decorator instance re-entered by recursion used to
    # overwrite its saved mode and leave grad mode off after the outer call.
    @tc.no_grad()
    def depth(n):
        assert not tc.is_grad_enabled()
        return depth(n - 1) if n else 0

    depth(3)
    assert tc.is_grad_enabled()


def test_no_grad_instance_reused_in_nested_with():
    ctx = tc.no_grad()
    with ctx:
        with ctx:
            pass
        assert not tc.is_grad_enabled()
    assert tc.is_grad_enabled()


def test_no_grad_restores_mode_after_an_exception():
    with pytest.raises(KeyError):
        with tc.no_grad():
            raise KeyError
    assert tc.is_grad_enabled()


def test_enable_grad_inside_no_grad():
    x = leaf(3)
    with tc.no_grad():
        with tc.enable_grad():
            y = x * 2
        z = x * 2
    assert y.requires_grad and y.grad_fn is not None
    assert not z.requires_grad


def test_grad_mode_is_per_thread():
    seen = []
    with tc.no_grad():
        thread = threading.Thread(target=lambda: seen.append(tc.is_grad_enabled()))
        thread.start()
        thread.join()
    assert seen == [True]


def test_ops_on_inputs_without_requires_grad_record_nothing():
    y = Tensor(np.ones(3)) * 2
    assert not y.requires_grad and y.grad_fn is None


def test_integer_output_of_a_float_input_is_not_recorded():
    # Regression: x.long() on a tensor requiring grad raised TypeError.
    x = leaf(3)
    y = x.long()
    assert y.dtype == np.int64 and not y.requires_grad and y.grad_fn is None


def test_needs_input_grad_is_known_in_forward():
    seen = []

    class Probe(Function):
        def forward(self, a, b):
            seen.append(self.needs_input_grad)
            return a + b

        def backward(self, gy):
            return gy, None

    Probe()(leaf(2), Tensor(np.ones(2)))
    with tc.no_grad():
        Probe()(leaf(2), leaf(2))
    assert seen == [(True, False), (False, False)]


def test_backward_returning_none_for_a_needed_input_raises():
    class Broken(Function):
        def forward(self, x):
            return x * 2

        def backward(self, gy):
            return None

    with pytest.raises(RuntimeError, match="Broken.backward returned no gradient"):
        Broken()(leaf(2)).sum().backward()


# ---------------------------------------------------------------- requires_grad
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_])
def test_requires_grad_on_integer_tensor_raises(dtype):
    with pytest.raises(TypeError, match=f"floating-point.*{np.dtype(dtype)}"):
        Tensor(np.zeros(3, dtype=dtype), requires_grad=True)
    with pytest.raises(TypeError, match="floating-point"):
        Tensor(np.zeros(3, dtype=dtype)).requires_grad_()


def test_requires_grad_cannot_be_turned_off_on_a_non_leaf():
    y = leaf(2) * 2
    with pytest.raises(RuntimeError, match="detach"):
        y.requires_grad = False


# ---------------------------------------------------------------- hooks
def test_hook_on_leaf_sees_the_total_gradient_and_can_replace_it():
    x = leaf(3)
    seen = []

    def hook(g):
        seen.append(g.data.copy())
        return g * 10

    x.register_hook(hook)
    (x * 2 + x * 3).sum().backward()
    assert len(seen) == 1
    np.testing.assert_allclose(seen[0], np.full(3, 5.0))
    np.testing.assert_allclose(x.grad.data, np.full(3, 50.0))


def test_hook_on_non_leaf_replaces_the_gradient_flowing_on():
    x = leaf(3)
    h = x * 2
    seen = []
    h.register_hook(lambda g: seen.append(g.data.copy()))
    h.register_hook(lambda g: g * 0.5)
    (h * 3).sum().backward()
    np.testing.assert_allclose(seen[0], np.full(3, 3.0))
    np.testing.assert_allclose(x.grad.data, np.full(3, 3.0))   # 3 · 0.5 · 2


def test_hook_on_the_root_sees_the_seed():
    x = leaf(3)
    y = (x * 2).sum()
    seen = []
    y.register_hook(lambda g: seen.append(g.item()))
    y.backward()
    assert seen == [1.0]


def test_hook_handle_remove():
    x = leaf(3)
    handle = x.register_hook(lambda g: g * 0)
    handle.remove()
    handle.remove()   # a second remove is harmless
    (x * 2).sum().backward()
    np.testing.assert_allclose(x.grad.data, np.full(3, 2.0))


def test_hook_on_tensor_without_grad_raises():
    with pytest.raises(RuntimeError, match="doesn't require grad"):
        Tensor(np.ones(2)).register_hook(lambda g: g)


# ---------------------------------------------------------------- anomaly mode
def test_detect_anomaly_names_the_forward_op_that_made_nan():
    x = Tensor(np.array([1.0, -1.0]), requires_grad=True)
    with np.errstate(invalid="ignore"):   # NumPy's own warning would come first
        with tc.detect_anomaly():
            with pytest.raises(AnomalyError, match=r"Log\.forward produced NaN"):
                x.log()
        assert np.isnan(x.log().data[1])    # outside the context: no check


def test_detect_anomaly_names_the_backward_op_that_made_inf():
    x = Tensor(np.array([0.0, 4.0]), requires_grad=True)
    with tc.detect_anomaly():
        y = x.sqrt().sum()                  # forward is finite: sqrt(0) = 0
        with np.errstate(divide="ignore"):
            with pytest.raises(AnomalyError,
                               match=r"Sqrt\.backward produced Inf in the gradient of input 0"):
                y.backward()


def test_detect_anomaly_as_decorator_and_is_restored():
    @tc.detect_anomaly()
    def run():
        with np.errstate(invalid="ignore"):
            return Tensor(np.array([-1.0])).log()

    with pytest.raises(AnomalyError, match="Log"):
        run()
    from tinygrad_cnn.autograd import is_anomaly_enabled
    assert not is_anomaly_enabled()


def test_anomaly_is_a_runtime_error():
    assert issubclass(AnomalyError, RuntimeError)


# ---------------------------------------------------------------- what the graph keeps alive
def test_intermediate_tensor_is_not_kept_alive_by_the_graph():
    x = leaf(3)
    y = x * 2            # Mul saves only the constant 2 (x's gradient needs it)
    dead = weakref.ref(y)
    z = y + 1            # Add saves nothing
    del y
    gc.collect()
    assert dead() is None
    assert all(not isinstance(p, Tensor) or p is x for p in z.grad_fn.parents)
    z.sum().backward()
    np.testing.assert_allclose(x.grad.data, np.full(3, 2.0))


def test_mul_saves_only_what_each_gradient_needs():
    x = leaf(3)
    y = x * Tensor(distinct(3, seed=1))
    a_saved, b_saved = y.grad_fn.saved
    assert a_saved is None and b_saved is not None


def test_graph_refers_to_leaves_and_creators_not_to_intermediate_tensors():
    x = leaf(2)
    y = x.exp()
    z = y.log()
    assert z.grad_fn.parents == (y.grad_fn,)
    assert y.grad_fn.parents[0] is x


def test_freed_graph_is_collected():
    x = leaf(3)
    fn = weakref.ref((x * 2).exp().grad_fn)
    gc.collect()
    assert fn() is None
