"""``with tinygrad_cnn.trace():`` -- watch the engine work, one line per op.

Forward prints each op as it runs, with its inputs' and output's shapes;
backward prints each op's backward as the engine reaches it (in topological
order), with the gradient it received and the gradients it handed on::

    >>> with tc.trace():
    ...     loss = (x @ w).relu().sum()
    ...     loss.backward()
    forward   MatMul           (2, 3) (3, 4) -> (2, 4)
    forward   ReLU             (2, 4) -> (2, 4)
    forward   Sum              (2, 4) -> ()
    backward  Sum              grad () -> (2, 4)
    backward  ReLU             grad (2, 4) -> (2, 4)
    backward  MatMul           grad (2, 4) -> (2, 3) (3, 4)

An input gradient the op did not compute (its input needs none) shows as
``-``.  Built on ``autograd.trace_hook``: while a trace is active the engine
hands every array to the hook, and writes into none of them (no in-place
gradient reuse), so a trace slows a step down but never changes a number.
Traces nest; a hook that was set before keeps being called.
"""
import contextlib
import sys

from . import autograd


def _shapes(arrays):
    return " ".join("-" if a is None else str(tuple(a.shape)) for a in arrays)


def format_event(event, fn, inputs, outputs):
    """One trace line: ``forward  Conv2d[im2col]  (N, C, H, W) (O, C, KH, KW) -> (N, O, OH, OW)``.

    The op is named by its Function's ``name``: for a convolution that
    includes the algorithm that ran (``Conv2d[im2col]``, ``Conv2d[pointwise]``,
    ``Conv2d[winograd]``)."""
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    received = "grad " if event == "backward" else ""
    return f"{event:<9} {fn.name:<16} {received}{_shapes(inputs)} -> {_shapes(outputs)}"


class trace(contextlib.ContextDecorator):
    """Print every op forward and every gradient backward, with shapes, to ``stream``
    (default: ``sys.stdout`` as it is when an event happens, so pytest's capsys
    and ``contextlib.redirect_stdout`` see the lines)."""

    def __init__(self, stream=None):
        self.stream = stream
        self._previous = []      # a stack, so one instance may be entered twice

    def _recreate_cm(self):      # ContextDecorator: a fresh instance per decorated call
        return type(self)(self.stream)

    def __enter__(self):
        previous = autograd.trace_hook
        self._previous.append(previous)

        def hook(event, fn, inputs, outputs):
            print(format_event(event, fn, inputs, outputs), file=self.stream or sys.stdout)
            if previous is not None:
                previous(event, fn, inputs, outputs)
        autograd.trace_hook = hook
        return self

    def __exit__(self, *exc):
        autograd.trace_hook = self._previous.pop()
        return False
