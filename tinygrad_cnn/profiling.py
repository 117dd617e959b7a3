"""``with tinygrad_cnn.profile() as prof:`` -- where a step's time goes, op by op.

Each op's forward and each op's backward is timed around its own call, and
the times are summed per op and pass::

    >>> with tc.profile() as prof:
    ...     loss = F.cross_entropy(net(X), y)
    ...     loss.backward()
    >>> print(prof.table())
    op                  pass       calls    total ms  per call ms   share
    Conv2d[winograd]    backward      16      362.32       22.645   45.6 %
    BatchNorm           backward      60       25.78        0.430    3.2 %
    ...
    (outside the ops)                          20.11                  2.5 %
    in the block                              794.79                100.0 %

``prof.rows_by_shape()`` splits each op and pass further by the shape of its
first output (forward: the op's result; backward: the first input gradient
it computed), so that each layer of a network gets a row of its own.

"(outside the ops)" is the rest of the time spent inside the block: Python
between the ops, the engine's bookkeeping and gradient sums, and anything
that is not an op of the graph (an optimizer's step).  A convolution is
named with the algorithm that ran (``Conv2d[im2col]``, ``Conv2d[winograd4x4]``).

On a GPU each op's outputs are waited for before the clock is read, so a
time is the op's own work, not the time to queue it; the step then runs
slower than without the profile (the host no longer runs ahead of the
device).  Inside a CUDA-graph capture the ops are recorded, not run:
nothing is timed there.

``benchmarks/op_scaling.py`` uses it to compare how each kind of op speeds
up with threads, ours against PyTorch's.
"""
import contextlib
import time

from . import autograd, backend, cuda


class profile(contextlib.ContextDecorator):
    """Time every op's forward and backward inside the block (see the module's
    docstring).  Entering the same profile again (a decorated function called
    many times) adds to its sums."""

    def __init__(self):
        # (op name, "forward" | "backward", first output's shape) -> [calls, seconds]
        self.ops = {}
        self.seconds = 0.0      # time spent inside the block, all entries together
        self._entered = []      # per entry: (the hook it replaced, its start), a stack

    def _recreate_cm(self):     # ContextDecorator: every decorated call adds to this one
        return self

    def __enter__(self):
        previous = autograd.time_hook
        if self._entered:       # entered again inside itself: one hook, one count
            self._entered.append((None, None))
            return self

        def hook(event, fn, start, outputs):
            if not backend.is_current_stream_capturing():
                _wait_for(outputs)
                key = (fn.name, event, _first_shape(outputs))
                calls_seconds = self.ops.setdefault(key, [0, 0.0])
                calls_seconds[0] += 1
                calls_seconds[1] += time.perf_counter() - start
            if previous is not None:
                previous(event, fn, start, outputs)
        autograd.time_hook = hook
        self._entered.append((previous, time.perf_counter()))
        return self

    def __exit__(self, *exc):
        previous, start = self._entered.pop()
        if start is not None:
            self.seconds += time.perf_counter() - start
            autograd.time_hook = previous
        return False

    def rows(self):
        """[(op name, pass, calls, seconds)], the longest total first."""
        totals = {}
        for (name, event, _), (calls, seconds) in self.ops.items():
            total = totals.setdefault((name, event), [0, 0.0])
            total[0] += calls
            total[1] += seconds
        return sorted(((name, event, calls, seconds)
                       for (name, event), (calls, seconds) in totals.items()),
                      key=lambda row: -row[3])

    def rows_by_shape(self):
        """[(op name, pass, shape, calls, seconds)], the longest total first:
        ``rows`` split by the shape of each call's first output (None where it
        had none)."""
        return sorted(((name, event, shape, calls, seconds)
                       for (name, event, shape), (calls, seconds) in self.ops.items()),
                      key=lambda row: -row[4])

    @property
    def outside_seconds(self):
        """Time inside the block not spent in any op's forward or backward."""
        return self.seconds - sum(seconds for _, seconds in self.ops.values())

    def table(self):
        """The rows as a text table in milliseconds, with each one's share of
        the time spent in the block, then the time outside the ops."""
        whole = self.seconds or 1.0
        lines = [f"{'op':24s} {'pass':9s} {'calls':>6s} {'total ms':>11s} "
                 f"{'per call ms':>12s} {'share':>7s}"]
        for name, event, calls, seconds in self.rows():
            lines.append(f"{name:24s} {event:9s} {calls:6d} {1e3 * seconds:11.2f} "
                         f"{1e3 * seconds / calls:12.3f} {100 * seconds / whole:5.1f} %")
        lines.append(f"{'(outside the ops)':41s} {1e3 * self.outside_seconds:11.2f} "
                     f"{'':12s} {100 * self.outside_seconds / whole:5.1f} %")
        lines.append(f"{'in the block':41s} {1e3 * self.seconds:11.2f} {'':12s} "
                     f"{100.0 if self.seconds else 0.0:5.1f} %")
        return "\n".join(lines)


def _first_shape(arrays):
    """The shape of the first array in ``arrays`` that is not None, else None."""
    return next((tuple(a.shape) for a in arrays if a is not None), None)


def _wait_for(arrays):
    """Return once the device has computed ``arrays``: at once for CPU arrays,
    after the GPU's queued work for GPU ones (``tinygrad_cnn.cuda.synchronize``)."""
    for a in arrays:
        if a is not None and backend.device_of(a) != "cpu":
            cuda.synchronize(backend.device_of(a))
            return
