"""CUDA Graphs: capture one whole training step once, replay it per batch.

    import tinygrad_cnn as tc
    def train_step(X, y):                         # forward, loss, backward, update
        loss = F.cross_entropy(net(X), y)
        opt.zero_grad(); loss.backward(); opt.step()
        return loss
    step = tc.cuda.make_graphed_step(train_step, (X0, y0), num_warmup_iters=3, optimizer=opt)
    for X, y in loader:
        loss = step(X, y)                         # the same Tensor each call: read it now

or, as ``torch.cuda.CUDAGraph``: ``g = tc.cuda.CUDAGraph()``; ``with
tc.cuda.graph(g): out = train_step(static_X, static_y)``; then per batch copy
into ``static_X``/``static_y`` and ``g.replay()``.  ``fit(..., cuda_graph=True)``
and ``tinygrad-cnn train --cuda-graph`` use ``make_graphed_step``.

Why: a step of ResNet-18 is a few hundred kernels, each queued by Python (the
issue-12 profile: the GPU waits on the host).  A graph is queued by one call.

Design (what PyTorch's ``torch.cuda.graphs`` does, on CuPy 14's API):

- **Capture on a side stream.**  CUDA cannot capture the legacy default
  stream, so each graphed step owns a non-blocking ``cupy.cuda.Stream``;
  ``stream.begin_capture()`` (CuPy's default mode, relaxed) /
  ``end_capture()`` give a ``cupy.cuda.Graph``; ``replay()`` launches it on the
  current stream, after the copy-in there.  Capture and warm-up start with a
  device synchronize, as torch's do.
- **A private memory pool.**  Arrays freed during capture go back to a pool,
  and the graph keeps writing to them at every replay, so nothing else may be
  handed those blocks: CuPy's default pool would (and its out-of-memory retry
  frees all cached blocks).  Each capture allocates from its own
  ``cupy.cuda.MemoryPool`` (``cupy.cuda.using_allocator``): torch's
  ``graph_pool_handle``.  A CuPy array does not keep its pool alive (the pool
  frees its blocks when it goes), and arrays made in a capture outlive the
  graph (the parameters' ``.grad``), so the pools are never dropped; the unused
  blocks of a graph no longer in use are given back before each capture and
  by ``tinygrad_cnn.cuda.empty_cache()``.
- **Static inputs and outputs.**  Kernel arguments, pointers included, are
  frozen at capture.  Inputs are copied into fixed buffers (``static_inputs``);
  the outputs are the arrays the captured step returned, overwritten by each
  replay.  A batch of another shape cannot replay (``GraphShapeError``): fit
  runs the last, partial batch without the graph (or drop it: ``drop_last``).
- **Warm-up.**  The first ``num_warmup_iters`` calls run the step eagerly on
  the side stream (real steps on real batches, so the loss curve is the one
  without a graph): lazy work (cuBLAS handles, kernel compilation, the
  optimizer's momentum buffers) must not happen inside the capture.
- **State carried from step to step must be updated in place.**  Parameters,
  momentum buffers and batch-norm running statistics are (in place, on the
  device).  An array *replaced* during capture, optimizer state *created*
  during capture (no warm-up), or a host number the step changes (Adam's step
  count, which its bias correction reads) would be frozen into the graph:
  each is a ``GraphCaptureError`` naming it, after the capture.
- **The learning rate** is a kernel argument, frozen at capture.  A graphed
  step given its ``optimizer`` notes every group's options (lr, momentum, ...)
  at capture and captures again when one has changed (a schedule changes lr
  once per epoch: one capture per epoch, no warm-up again).  (A device-resident
  lr would avoid it, at the price of changing every optimizer kernel.)
- **Host synchronisation cannot be captured**: ``loss.item()``, ``float()`` /
  ``int()`` / ``bool()`` of a GPU array, NumPy conversions, and host-to-device
  copies.  CuPy raises ``CUDARuntimeError`` (cudaErrorStreamCaptureUnsupported);
  it comes out as ``GraphCaptureError`` saying so.  The engine's own checks
  that read the GPU (cross-entropy's target range) are skipped while capturing
  (``is_current_stream_capturing()``); fit checks the labels on the host
  instead, and reads loss, gradient norm and accuracy after the replay.
- **numba.cuda kernels** launch on the capturing stream (``kernels.cuda_common
  .launching_on``) with Numba's CUDA-array-interface synchronize off (it would
  synchronize the capturing stream): same stream, so no ordering is lost.
- **Dropout** draws from CuPy's ``Generator``, whose state lives on the device
  and advances in place, so each replay draws new masks.  Batch norm's
  ``momentum=None`` reads its batch count on the host: refused.

The bookkeeping is checked on the CPU (``tests/cupy_api/test_cuda_graphs.py``) through
the strict fake CuPy, which records and replays a capture; what only a GPU can
tell (that CUDA accepts the capture, the same losses, the speed) is in
``tests/gpu/test_gpu_graphs.py`` and ``python -m benchmarks.gpu --verify``.
"""
import contextlib
import weakref

import kernels

from . import backend
from .tensor import Tensor


class GraphCaptureError(RuntimeError):
    """The step cannot be captured into a CUDA graph; the message says what and
    what to do.  The step's Python side ran during the capture but its GPU work
    did not: continue from a checkpoint, or without the graph."""


class GraphShapeError(ValueError):
    """An input whose shape or dtype differs from the captured one."""


def is_current_stream_capturing():
    """Whether a CUDA graph capture is under way (``torch.cuda`` has this name)."""
    return backend.is_current_stream_capturing()


def _cupy():
    if backend.cupy is None or backend.cuda_device_count() == 0:
        backend.require_device("cuda")          # raises, saying what is missing
    return backend.cupy


class _Pool:
    """A capture's memory pool, and whether its graph may still replay."""
    def __init__(self, pool):
        self.pool, self.in_use = pool, True


_POOLS = []       # every capture's pool (see the module docstring): never dropped


def release_graph_memory():
    """Give back the unused blocks of the pools of graphs that can no longer
    replay (reset, captured again, or gone); the blocks of live arrays stay."""
    for entry in _POOLS:
        if not entry.in_use:
            entry.pool.free_all_blocks()


def _retire(entry):
    if entry is not None:
        entry.in_use = False


def _launching_on(stream):
    """The numba.cuda kernels on ``stream`` inside the block, where GPU arrays go to
    them (``kernels.gpu_kernels()``; else nothing to do: CuPy's own kernels follow
    its current stream)."""
    if not any(function.__module__.endswith("_cuda")
               for function in kernels.gpu_kernels().values()):
        return contextlib.nullcontext()
    from kernels import cuda_common
    return cuda_common.launching_on(stream.ptr)


# ---------------------------------------------------------------- CUDAGraph / graph
class CUDAGraph:
    """One captured CUDA graph, as ``torch.cuda.CUDAGraph``: ``capture_begin``,
    ``capture_end``, ``replay``, ``reset``, ``pool``."""

    def __init__(self):
        self._graph = self._stream = self._pool = None
        self._contexts = None
        self._entry = None        # this capture's _Pool
        self._finalizer = None

    def capture_begin(self, stream=None):
        """Start capturing the work queued on ``stream`` (a new non-blocking
        stream if None), which becomes current; new arrays come from this
        graph's own memory pool."""
        if backend.is_current_stream_capturing():
            raise GraphCaptureError("capture_begin: a capture is already under way "
                                    "(one at a time)")
        cupy = _cupy()
        self.reset()
        self._stream = stream if stream is not None else cupy.cuda.Stream(non_blocking=True)
        cupy.cuda.Device().synchronize()       # earlier work done before capture starts
        release_graph_memory()
        self._pool = cupy.cuda.MemoryPool()
        self._entry = _Pool(self._pool)
        _POOLS.append(self._entry)
        self._finalizer = weakref.finalize(self, _retire, self._entry)
        contexts = contextlib.ExitStack()
        contexts.enter_context(self._stream)
        contexts.enter_context(cupy.cuda.using_allocator(self._pool.malloc))
        contexts.enter_context(_launching_on(self._stream))
        try:
            self._stream.begin_capture()
        except BaseException:
            contexts.close()
            raise
        self._contexts = contexts
        backend.set_capturing(True)

    def capture_end(self):
        """End the capture; the graph is ready to ``replay``."""
        if self._contexts is None:
            raise GraphCaptureError("capture_end: no capture was begun")
        try:
            self._graph = self._stream.end_capture()
        finally:
            backend.set_capturing(False)
            contexts, self._contexts = self._contexts, None
            contexts.close()

    def replay(self):
        """Run the captured work again, on the current stream."""
        if self._graph is None:
            raise GraphCaptureError("replay: nothing captured (capture_begin/capture_end, "
                                    "or the graph was reset)")
        self._graph.launch()

    def reset(self):
        """Drop the graph; the unused blocks of its pool may then be given back
        (``release_graph_memory``), the arrays made in its capture stay valid."""
        self._graph = None
        _retire(self._entry)

    def pool(self):
        """The memory pool this graph's capture allocated from."""
        return self._pool


@contextlib.contextmanager
def graph(cuda_graph, stream=None):
    """Capture the block's GPU work into ``cuda_graph`` (``torch.cuda.graph``).

    An exception inside the block ends the capture and comes out as
    ``GraphCaptureError`` naming what cannot be captured."""
    cuda_graph.capture_begin(stream)
    try:
        yield cuda_graph
    except Exception as exc:
        with contextlib.suppress(Exception):   # an invalidated capture fails to end too
            cuda_graph.capture_end()
        cuda_graph.reset()
        raise GraphCaptureError(_explain(exc)) from exc
    try:
        cuda_graph.capture_end()
    except Exception as exc:                   # CUDA invalidated the capture on its own
        cuda_graph.reset()
        raise GraphCaptureError(_explain(exc)) from exc


def _explain(exc):
    text = f"{type(exc).__name__}: {exc}"
    if "captur" in text.lower():
        return (f"the step could not be captured into a CUDA graph ({text}). Inside a "
                "captured step nothing may read a GPU value on the host (loss.item(), "
                "float()/int()/bool() of a GPU array, NumPy conversions, a gradient-norm "
                "check), copy host data to the GPU (a NumPy array or a Python number made "
                "into a GPU array), or queue work on another stream: do those before or "
                "after the step, on its outputs")
    return f"the step failed while being captured into a CUDA graph ({text})"


# ---------------------------------------------------------------- a graphed step
class GraphedStep:
    """``step_fn`` captured once and replayed per call; see ``make_graphed_step``.

    Attributes: ``static_inputs`` (the buffers each call copies into),
    ``static_outputs`` (what the captured ``step_fn`` returned, overwritten by
    each replay), ``warmups_done``, ``captures``, ``replays``.
    """

    def __init__(self, step_fn, sample_inputs, num_warmup_iters=3, optimizer=None):
        if not callable(step_fn):
            raise TypeError(f"make_graphed_step: step_fn must be callable, got "
                            f"{type(step_fn).__name__}")
        if isinstance(num_warmup_iters, bool) or not isinstance(num_warmup_iters, int) \
                or num_warmup_iters < 0:
            raise ValueError(f"make_graphed_step: num_warmup_iters must be an int >= 0, got "
                             f"{num_warmup_iters!r}")
        sample_inputs = tuple(sample_inputs)
        if not sample_inputs:
            raise ValueError("make_graphed_step: sample_inputs is empty; give the step's "
                             "input Tensors (their shapes and dtypes are captured)")
        for i, x in enumerate(sample_inputs):
            if not isinstance(x, Tensor) or backend.device_of(x.data) == "cpu":
                where = "a CPU Tensor" if isinstance(x, Tensor) else type(x).__name__
                raise TypeError(f"make_graphed_step: sample_inputs[{i}] must be a CUDA "
                                f"Tensor, got {where}; CUDA graphs need device 'cuda'")
        cupy = _cupy()
        self.step_fn, self.optimizer = step_fn, optimizer
        self.num_warmup_iters = num_warmup_iters
        self.static_inputs = tuple(Tensor(x.data.copy()) for x in sample_inputs)
        self.static_outputs = None
        self.warmups_done = self.captures = self.replays = 0
        self._stream = cupy.cuda.Stream(non_blocking=True)
        self._graph = None
        self._frozen = None        # the optimizer's options at capture

    def __call__(self, *inputs):
        """Copy ``inputs`` into the static buffers and run the step: eagerly for
        the first ``num_warmup_iters`` calls, then by replaying the graph
        (captured at the first such call, and again when the optimizer's
        options changed).  Returns the step's outputs (after the warm-up: the
        same objects every call, overwritten by the next)."""
        self._copy_in(inputs)
        if self.warmups_done < self.num_warmup_iters:
            return self._warm_up()
        if self._graph is None or self._options() != self._frozen:
            self._capture()
        self._graph.replay()
        self.replays += 1
        return self.static_outputs

    def accepts(self, *inputs):
        """Whether ``inputs`` have the captured shapes and dtypes (else: run uncaptured)."""
        return len(inputs) == len(self.static_inputs) and all(
            tuple(x.shape) == s.shape and x.dtype == s.dtype
            for x, s in zip(inputs, self.static_inputs))

    def _copy_in(self, inputs):
        if len(inputs) != len(self.static_inputs):
            raise GraphShapeError(f"graphed step: got {len(inputs)} inputs, captured "
                                  f"{len(self.static_inputs)}")
        for i, (x, static) in enumerate(zip(inputs, self.static_inputs)):
            if tuple(x.shape) != static.shape or x.dtype != static.dtype:
                raise GraphShapeError(
                    f"graphed step: input {i} has shape {tuple(x.shape)} and dtype {x.dtype}, "
                    f"the graph was captured for {static.shape} {static.dtype}: a CUDA graph "
                    "replays fixed shapes; run this batch without the graph (fit does that "
                    "for the last, partial batch) or drop it (DataLoader drop_last=True)")
            data = x.data if isinstance(x, Tensor) else x
            xp = backend.get_array_module(static.data)
            xp.copyto(static.data, backend.to_device(data, backend.device_of(static.data)))

    def _warm_up(self):
        cupy = _cupy()
        cupy.cuda.Device().synchronize()       # the copy-in (default stream) first
        with self._stream, _launching_on(self._stream):
            outputs = self.step_fn(*self.static_inputs)
        self._stream.synchronize()
        self.warmups_done += 1
        return outputs

    def _capture(self):
        before = _carried_state(self.optimizer)
        if self._graph is not None:
            self._graph.reset()                # replaced: never replayed again
        cuda_graph = CUDAGraph()
        with graph(cuda_graph, stream=self._stream):
            outputs = self.step_fn(*self.static_inputs)
        _check_carried_state(before, _carried_state(self.optimizer),
                             self.num_warmup_iters)
        self._graph = cuda_graph
        self.static_outputs = outputs
        self._frozen = self._options()
        self.captures += 1

    def _options(self):
        if self.optimizer is None:
            return None
        return [{k: v for k, v in group.items() if k != "params"}
                for group in self.optimizer.param_groups]


def make_graphed_step(step_fn, sample_inputs, num_warmup_iters=3, optimizer=None):
    """A callable that runs ``step_fn(*inputs)`` -- a whole training step:
    forward, loss, backward, ``optimizer.step()`` -- as a CUDA graph.

    sample_inputs:    CUDA Tensors with the shapes and dtypes of every call's
                      inputs (their values are not used).
    num_warmup_iters: calls run eagerly before the capture (torch's default, 3;
                      at least 1 for an optimizer with state).
    optimizer:        its options (lr, ...) are frozen at capture: given, a
                      change is seen and the step captured again.

    ``step_fn`` must not read GPU values on the host; it returns the Tensors or
    arrays to read after each call.  See the module docstring for what else."""
    return GraphedStep(step_fn, sample_inputs, num_warmup_iters, optimizer)


# ---------------------------------------------------------------- carried state
def _carried_state(optimizer):
    """What a step hands to the next: each parameter's array and the optimizer's
    per-parameter state, by identity (arrays) or value (host numbers)."""
    if optimizer is None:
        return None
    state = {}
    index = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            entries = {"data": p.data}
            entries.update(optimizer.state.get(p, {}))
            state[index] = entries
            index += 1
    return state


def _check_carried_state(before, after, num_warmup_iters):
    if before is None:
        return
    for index, entries in after.items():
        old = before.get(index, {})
        for name, value in entries.items():
            where = f"parameter {index}'s {'array' if name == 'data' else repr(name)}"
            if name not in old:
                raise GraphCaptureError(
                    f"{where} was created during the capture (num_warmup_iters="
                    f"{num_warmup_iters}): a replay would start it afresh every step; warm "
                    "up at least one step first (num_warmup_iters >= 1)")
            if hasattr(value, "shape"):
                if value is not old[name]:
                    raise GraphCaptureError(
                        f"{where} was replaced by a new array during the capture, not "
                        "updated in place: every replay would read the array from before "
                        "the capture; update it in place (p.data[...] = ..., buf *= ...)")
            elif value != old[name]:
                raise GraphCaptureError(
                    f"{where} is a host number the step changed during the capture "
                    f"({old[name]!r} -> {value!r}): replays would not change it (Adam's "
                    "bias correction reads its step count so); use SGD with CUDA graphs, "
                    "or train without them")
