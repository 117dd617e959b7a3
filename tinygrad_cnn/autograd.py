"""Reverse-mode automatic differentiation: Function, the graph, backward.

The graph
---------
Every op is a ``Function``: ``forward`` maps input *arrays* to one output
array, ``backward`` maps the output's gradient to one gradient per input.
Calling a Function on Tensors runs ``forward`` and, when grad mode is on and
some input requires grad, records the op as the output's ``_ctx``.  The
Function points back to its inputs' creators (``self.parents``), never to
the input Tensors themselves, so an intermediate array stays alive only if
some op saved it with ``save_for_backward``.  Leaves that require grad
(parameters) are the only Tensors the graph holds on to.

Backward
--------
``backward(root, gradient)`` visits the Functions reachable from ``root``
in topological order (Kahn's algorithm, no recursion: a 150-layer net is
fine).  A Function runs once all its consumers have handed it their
gradients, so a Tensor used twice receives the sum of both contributions.
Leaf gradients are summed over the whole pass, passed through the leaf's
hooks, then added to ``leaf.grad``.  A gradient array that a backward has
just made, and handed to no one else, is summed into in place and becomes
a leaf's ``.grad`` without a copy (``_is_fresh``): for a large network that
saves a copy of every parameter each step.  Such an array may also be
written over by the backward it is handed to (``may_overwrite_gy``): ReLU's,
the sigmoid's and batch norm's then put their gradient in the memory of the
one they received instead of a new array of the same size.  Saved arrays
are dropped after use unless ``retain_graph=True``; a second pass through a
freed Function raises.
"""
import contextlib
import threading
import time

from . import backend
from .backend import get_array_module

# ---------------------------------------------------------------- grad mode
_state = threading.local()


def is_grad_enabled():
    return getattr(_state, "grad_enabled", True)


def set_grad_enabled(mode):
    _state.grad_enabled = bool(mode)


class _GradMode(contextlib.ContextDecorator):
    """Context manager *and* decorator that sets grad mode, then restores it.

    ``@no_grad()`` and bare ``@no_grad`` both work.  Each call of a decorated
    function gets a fresh instance (``_recreate_cm``), and previous modes are
    kept on a stack, so recursion and nested ``with`` of one instance restore
    the outer mode instead of leaving grad mode switched off.
    """
    enabled = None

    def _recreate_cm(self):      # ContextDecorator's hook, called once per decorated call
        return type(self)()

    def __new__(cls, func=None):
        self = super().__new__(cls)
        self._prev = []
        return self(func) if callable(func) else self

    def __enter__(self):
        self._prev.append(is_grad_enabled())
        set_grad_enabled(self.enabled)

    def __exit__(self, *exc):
        set_grad_enabled(self._prev.pop())
        return False


class no_grad(_GradMode):
    """Record no graph inside: ``with no_grad():`` or ``@no_grad()``."""
    enabled = False


class enable_grad(_GradMode):
    """Turn recording back on inside a ``no_grad`` region."""
    enabled = True


# ---------------------------------------------------------------- anomaly mode
def is_anomaly_enabled():
    return getattr(_state, "anomaly", False)


class detect_anomaly(contextlib.ContextDecorator):
    """Raise at the first NaN/Inf an op produces, forward or backward, naming the op."""

    def __init__(self):
        self._prev = []          # a stack, for the same reason as _GradMode's

    def _recreate_cm(self):
        return type(self)()

    def __enter__(self):
        self._prev.append(is_anomaly_enabled())
        _state.anomaly = True

    def __exit__(self, *exc):
        _state.anomaly = self._prev.pop()
        return False


class AnomalyError(RuntimeError):
    pass


def _check_finite(op_name, where, arrays):
    for i, a in enumerate(arrays):
        if a is None or a.dtype.kind != "f":
            continue
        xp = get_array_module(a)
        if not bool(xp.isfinite(a).all()):
            bad = "NaN" if bool(xp.isnan(a).any()) else "Inf"
            raise AnomalyError(
                f"anomaly: {op_name}.{where} produced {bad} in "
                f"{'output' if where == 'forward' else f'the gradient of input {i}'}"
                f" (shape {tuple(a.shape)})")


class BackwardError(RuntimeError, ValueError):
    """A backward() that cannot run: a non-scalar without ``gradient``, a freed
    graph, a tensor outside any graph.  A RuntimeError, as PyTorch raises, and a
    ValueError, as every bad call in this engine raises."""


# ---------------------------------------------------------------- tracing hook
# A study aid (``tinygrad_cnn.trace``, tracing.py) may set this to a callable
# ``(event, fn, inputs, outputs)``: ("forward", fn, input arrays, output array)
# as each op runs, ("backward", fn, [gy], input gradients) as each backward does.
trace_hook = None

# ``tinygrad_cnn.profile`` (profiling.py) may set this to a callable
# ``(event, fn, start, outputs)``, called as each op's forward or backward
# returns: ``start`` is time.perf_counter() just before the call, ``outputs``
# the arrays it returned (so a GPU profile can wait for them before reading
# the clock).
time_hook = None


# ---------------------------------------------------------------- Function
class Function:
    """One differentiable op.  Subclasses write ``forward`` and ``backward``.

    ``forward(*arrays) -> array`` and ``backward(gy) -> grad or tuple of grads``
    work on raw NumPy/CuPy arrays.  ``self.needs_input_grad[i]`` says whether
    input ``i``'s gradient is wanted, so backward can skip the rest (return
    None there).  Keep only what backward needs via ``save_for_backward``.
    Never modify ``gy`` in place unless ``self.may_overwrite_gy``: it may be
    shared with another input's gradient (Add returns it twice), be a
    read-only broadcast view (Sum), or be the caller's own array.
    Return ``gy`` itself, a view of it, or a new array -- never an array kept
    elsewhere (a saved one): a new array belongs to the engine, which may add
    into it or make it a leaf's ``.grad`` without copying (``_is_fresh``).

    ``self.may_overwrite_gy`` is set by the engine just before ``backward``:
    True when ``gy`` is such an array of the engine's that nothing else holds
    (no hook has seen it).  An elementwise backward may then write its
    gradient over ``gy`` and return it, which saves allocating (and, for a
    large activation, faulting in) an array of the same size and a stream of
    memory traffic; the engine keeps treating it as its own.
    """

    parents = ()            # per input: creator Function, leaf Tensor, or None
    out_shape = None        # the output's shape, once recorded (for pictures of the graph)
    needs_input_grad = ()
    hooks = None            # hooks registered on the output Tensor
    saved = ()
    may_overwrite_gy = False    # set by the engine before each backward (see above)
    _freed = False

    @property
    def name(self):
        """What ``trace()``, ``draw_graph``, ``repr`` and error messages call this op:
        the class name, unless the class sets its own (a Function that is one of
        several algorithms for an op names both, e.g. ``name = "Conv2d[winograd]"``)."""
        return type(self).__name__

    def __call__(self, *inputs):
        # Runs once per op, so it is written for speed: no generators, the
        # device check only where two inputs could disagree (and CuPy exists),
        # constants wrapped only when there are some.
        for x in inputs:
            if not isinstance(x, Tensor):
                inputs = _wrap_constants(inputs)
                break
        arrays = [t.data for t in inputs]
        if len(arrays) > 1 and backend.cupy is not None:
            _check_same_device(self.name, arrays)
        needs = [t._requires_grad for t in inputs]
        record = True in needs and is_grad_enabled()
        # Known before forward, so forward can save only what backward will use.
        self.needs_input_grad = tuple(needs) if record else (False,) * len(needs)
        timed = time_hook           # the hook that sees the start sees the end
        start = time.perf_counter() if timed is not None else None
        y = self.forward(*arrays)
        if timed is not None:
            timed("forward", self, start, (y,))
        # An integer/bool output (x.long(), argmax-like ops) carries no gradient.
        record = record and y.dtype.kind in "fc"
        if is_anomaly_enabled():
            _check_finite(self.name, "forward", [y])
        if trace_hook is not None:
            trace_hook("forward", self, arrays, y)
        out = Tensor(y)
        if record:
            self.parents = tuple([
                (t._ctx if t._ctx is not None else t) if t._requires_grad else None
                for t in inputs])
            out._requires_grad = True      # y is floating point (checked above)
            out._ctx = self
            self.out_shape = y.shape
        else:
            self.saved = ()     # no graph: nothing to keep
        return out

    def save_for_backward(self, *arrays):
        self.saved = arrays

    def forward(self, *xs):
        raise NotImplementedError

    def backward(self, gy):
        raise NotImplementedError

    def release(self):
        self.saved = ()
        self._freed = True

    def __repr__(self):
        return f"<{self.name} backward>"


def _wrap_constants(inputs):
    """Python numbers / arrays among the inputs as Tensors like the first Tensor."""
    ref = next(x for x in inputs if isinstance(x, Tensor))
    return [x if isinstance(x, Tensor) else as_tensor_like(x, ref) for x in inputs]


class DeviceMismatchError(ValueError, RuntimeError):
    """Inputs of one op on different devices.  A ValueError, as every bad call in
    this engine raises, and a RuntimeError, as PyTorch raises."""


def _check_same_device(op_name, arrays):
    devices = [backend.device_of(a) for a in arrays]
    if len(set(devices)) > 1:
        listed = ", ".join(f"input {i} on {d}" for i, d in enumerate(devices))
        raise DeviceMismatchError(
            f"{op_name}: inputs are on different devices ({listed}); "
            "move them to one device with .to(device)")


# ---------------------------------------------------------------- backward
def _topological_counts(root):
    """How many consumers (edges) each reachable Function has."""
    consumers = {root: 0}
    stack = [root]
    while stack:
        for parent in stack.pop().parents:
            if parent is None or isinstance(parent, Tensor):
                continue
            if parent not in consumers:
                consumers[parent] = 0
                stack.append(parent)
            consumers[parent] += 1
    return consumers


def _is_fresh(gx, gy, gxs, gy_ours=False):
    """Whether ``gx``, returned by a backward that received ``gy``, is an array
    that nothing else holds, so the engine may add into it or keep it as a
    leaf's ``.grad`` without a copy.

    Fresh: a new array, or ``gy`` itself where ``gy`` was the engine's own
    (``gy_ours``: the backward may have written over it) -- either returned
    for one input only, with no view of it returned for another.  Not fresh:
    any other ``gy`` passed through (the caller's seed, or Add's, which goes to
    both inputs), a view (Sum's read-only broadcast, a reshape).  (So a
    backward must not return an array it keeps elsewhere, e.g. a saved one:
    return ``gy``, a view, or a new array.)
    """
    if gx.base is not None or (gx is gy and not gy_ours):
        return False
    if len(gxs) > 1:
        return ([g is gx for g in gxs].count(True) == 1
                and not any(g is not None and g.base is gx for g in gxs))
    return True


def _accumulate(store, key, g, fresh):
    """``store[key]`` = [sum of gradients so far, whether that array is fresh].

    The sum goes into whichever of the two arrays is ours (fresh), else into a
    new one.  The new gradient is often the fresh one: a DenseNet layer's
    input first gets its concatenation's gradient (a view of the output's) and
    then its batch norm's, a residual block's input first the sum's gradient
    passed through and then its convolution's.  Adding into that one instead of
    allocating the sum saves a pass over fresh memory (in IEEE arithmetic
    y + x is exactly x + y)."""
    entry = store.get(key)
    if entry is None:
        store[key] = [g, fresh]
    elif entry[1] and _addable_in_place(entry[0], g):
        entry[0] += g          # our own array: add in place, no new allocation
    elif fresh and _addable_in_place(g, entry[0]):
        g += entry[0]
        entry[0], entry[1] = g, True
    else:
        entry[0], entry[1] = entry[0] + g, True


def _addable_in_place(total, term):
    """Whether ``total += term`` leaves total what ``total + term`` would be:
    alike in shape and dtype, and not overlapping in memory (a backward may
    return one input's gradient as a view of another's; CuPy's elementwise
    kernels do not guard against an output that overlaps an input, and the
    check only compares bounds)."""
    return (total.dtype == term.dtype and total.shape == term.shape
            and not get_array_module(total).may_share_memory(total, term))


def _apply_hooks(hooks, g):
    for hook in hooks:
        result = hook(Tensor(g))
        if result is not None:
            g = result.data if isinstance(result, Tensor) else result
    return g


def backward(root, gradient, retain_graph=False):
    """Run reverse mode from Tensor ``root`` with upstream gradient ``gradient``."""
    if root._ctx is None:            # a leaf: its gradient is the seed itself
        g = _apply_hooks(root._hooks, gradient) if root._hooks else gradient
        _accumulate_leaf(root, g, fresh=False)
        _run_post_accumulate_hooks(root)
        return
    pending = _topological_counts(root._ctx)
    grads = {root._ctx: [gradient, False]}   # the caller's array: never written into
    leaf_grads, leaves = {}, {}
    ready = [root._ctx]
    anomaly = is_anomaly_enabled()
    # A study hook may keep the arrays it is shown: then none is written into.
    may_reuse = trace_hook is None
    with no_grad():
        while ready:
            fn = ready.pop()
            if fn._freed:
                raise BackwardError(
                    f"{fn.name}: trying to backward through the graph a second time: "
                    "its saved arrays were freed after the first backward. "
                    "Pass retain_graph=True to the first backward() to keep them.")
            gy, gy_ours = grads.pop(fn)
            if fn.hooks:        # a hook may keep the array it is shown
                gy, gy_ours = _apply_hooks(fn.hooks, gy), False
            overwritable = fn.may_overwrite_gy = may_reuse and gy_ours
            timed = time_hook
            start = time.perf_counter() if timed is not None else None
            gxs = fn.backward(gy)
            fn.may_overwrite_gy = False     # for this call only
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            if timed is not None:
                timed("backward", fn, start, gxs)
            if anomaly:
                _check_finite(fn.name, "backward", gxs)
            if trace_hook is not None:
                trace_hook("backward", fn, [gy], gxs)
            for parent, gx in zip(fn.parents, gxs):
                if parent is None:
                    continue
                if gx is None:
                    raise RuntimeError(f"{fn.name}.backward returned no gradient "
                                       "for an input that requires grad")
                fresh = may_reuse and _is_fresh(gx, gy, gxs, overwritable)
                if isinstance(parent, Tensor):   # keyed by id: Tensor's == is elementwise
                    _accumulate(leaf_grads, id(parent), gx, fresh)
                    leaves[id(parent)] = parent
                    continue
                _accumulate(grads, parent, gx, fresh)
                pending[parent] -= 1
                if pending[parent] == 0:
                    ready.append(parent)
            if not retain_graph:
                fn.release()
            # Drop this step's arrays before the next backward runs: a gradient
            # already summed into another is garbage, and activations are large.
            gy = gxs = gx = None
    for key, (g, fresh) in leaf_grads.items():
        leaf = leaves[key]
        if leaf._hooks:      # a hook's result may be an array its author keeps
            g, fresh = _apply_hooks(leaf._hooks, g), False
        _accumulate_leaf(leaf, g, fresh)
        _run_post_accumulate_hooks(leaf)


def _run_post_accumulate_hooks(leaf):
    for hook in getattr(leaf, "_post_accumulate_hooks", None) or ():
        hook(leaf)


def _accumulate_leaf(leaf, g, fresh):
    """Add ``g`` to ``leaf.grad``; a ``fresh`` array (see ``_is_fresh``) becomes
    the leaf's ``.grad`` as it is, any other one is copied first: it may be a
    read-only view, the array another leaf also received, or the caller's own
    ``gradient``, and ``.grad`` must be the leaf's own writable array."""
    if g.shape != leaf.data.shape:
        raise RuntimeError(f"gradient of shape {tuple(g.shape)} for a leaf of shape "
                           f"{leaf.shape}")
    dtype = leaf.data.dtype
    if leaf.grad is None:
        leaf.grad = Tensor(g if fresh and g.dtype == dtype else g.astype(dtype, copy=True))
    else:   # out of place, so a .grad Tensor handed out earlier is not changed
        leaf.grad = Tensor((leaf.grad.data + g).astype(dtype, copy=False))


# Functions make Tensors and Tensors record Functions: tensor.py (and the ops it
# forwards to) build on Function, so they are imported once everything above
# exists.  ``tinygrad_cnn`` imports this module before tensor.py, so this is
# where tensor.py is first loaded.
from .tensor import Tensor, as_tensor_like  # noqa: E402
