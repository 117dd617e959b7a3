"""``summary(net, input_shape)``: d2l's layer-by-layer shape walk, with parameter counts.

d2l checks a network by pushing one example through it a layer at a time::

    X = torch.randn(1, 1, 224, 224)
    for layer in net:
        X = layer(X)
        print(layer.__class__.__name__, 'output shape:\t', X.shape)

``summary`` prints the same walk (one row per top-level child: its name,
class, output shape and parameter count) and the totals.  Instead of
iterating over ``net`` it runs ``net(X)`` and records each child's output
as the child is called, so it also works for networks with their own
``forward`` (``models.resnet.ResNet``, AlexNetCIFAR10's features/classifier).
"""
import contextlib
from dataclasses import dataclass
from typing import List

from .autograd import no_grad
from .creation import zeros
from .tensor import Tensor


@dataclass(frozen=True)
class LayerRow:
    name: str             # the child's name in ``net`` ("0", "features", "layer1")
    layer: str            # its class name ("Conv2d", "Sequential")
    output_shape: tuple   # e.g. (1, 96, 54, 54); a tuple of shapes for several outputs
    num_params: int       # parameters inside the child


@dataclass(frozen=True)
class Summary:
    """What ``summary`` found; ``str()`` renders the table it prints."""
    rows: List[LayerRow]
    total_params: int
    trainable_params: int

    def __str__(self):
        header = ("Layer (type)", "Output shape", "Param #")
        body = [(f"{r.name} ({r.layer})", str(r.output_shape), f"{r.num_params:,}")
                for r in self.rows]
        w0 = max(len(line[0]) for line in [header] + body)
        w1 = max(len(line[1]) for line in [header] + body)
        w2 = max(len(line[2]) for line in [header] + body)
        rule = "=" * (w0 + w1 + w2 + 4)
        lines = [rule, f"{header[0]:<{w0}}  {header[1]:<{w1}}  {header[2]:>{w2}}", rule]
        lines += [f"{a:<{w0}}  {b:<{w1}}  {c:>{w2}}" for a, b, c in body]
        lines += [rule,
                  f"Total params: {self.total_params:,}",
                  f"Trainable params: {self.trainable_params:,}",
                  f"Non-trainable params: {self.total_params - self.trainable_params:,}"]
        return "\n".join(lines)


def summary(net, input_shape, *, dtype=None, device=None, show=True):
    """Run one input of ``input_shape`` (batch axis included, e.g. (1, 1, 224, 224))
    through ``net`` and report each top-level child's output shape and parameter
    count, plus the totals.  Prints the table unless ``show=False``; returns a
    ``Summary`` (``.rows``, ``.total_params``, ``.trainable_params``).

    Runs in eval mode under ``no_grad`` (BN uses its running statistics and
    updates nothing, Dropout is off, no graph is kept) and then restores every
    module's mode.  The input is zeros (only shapes matter, and no random
    numbers are drawn, so the seeded generator is left as it was) with the
    dtype and device of ``net``'s parameters unless given.
    """
    input_shape = _check_shape(input_shape)
    first = next(net.parameters(), None)
    if dtype is None:
        dtype = first.dtype if first is not None else None
    if device is None:
        device = first.device if first is not None else None
    X = zeros(*input_shape, dtype=dtype, device=device)

    rows = []

    def record(name, child, out):
        rows.append(LayerRow(name, type(child).__name__, _shape_of(out),
                             sum(p.numel() for p in child.parameters())))

    modes = {module: module.training for module in net.modules()}
    try:
        net.eval()
        with no_grad(), recording_children(net, record):
            net(X)
    finally:
        for module, training in modes.items():
            module.training = training

    params = list(net.parameters())
    result = Summary(rows=rows, total_params=sum(p.numel() for p in params),
                     trainable_params=sum(p.numel() for p in params if p.requires_grad))
    if show:
        print(result)
    return result


def _check_shape(input_shape):
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"summary: input_shape must be positive ints with the batch axis "
                         f"first, e.g. (1, 1, 224, 224), got {input_shape!r}")
    return shape


@contextlib.contextmanager
def recording_children(net, record):
    """While active, each top-level child of ``net`` calls ``record(name, child,
    output)`` every time it runs (a network without children records itself).
    ``summary`` records shapes this way, ``viz.plot_feature_maps`` activations.

    Module.__call__ runs ``self.forward``, so an instance attribute ``forward``
    wrapping the class's method is seen first; deleting it afterwards uncovers
    the class's method again.
    """
    children = list(net.named_children()) or [(type(net).__name__, net)]
    wrapped = []
    try:
        for name, child in children:
            if "forward" in vars(child):      # already wrapped or customised: leave it
                continue
            object.__setattr__(child, "forward", _recorded(name, child, record))
            wrapped.append(child)
        yield
    finally:
        for child in wrapped:
            del vars(child)["forward"]


def _recorded(name, child, record):
    forward = child.forward

    def forward_and_record(*args, **kwargs):
        out = forward(*args, **kwargs)
        record(name, child, out)
        return out
    return forward_and_record


def _shape_of(out):
    if isinstance(out, Tensor):
        return out.shape
    if isinstance(out, (tuple, list)):
        return tuple(_shape_of(o) for o in out)
    return None
