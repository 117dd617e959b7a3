"""Pictures for studying a network: training curves, the computation graph,
gradient flow, filters, feature maps and gradient checks.

- ``plot_history``: d2l's ``Animator`` picture (train loss, train acc, test acc
  against the epoch), redrawn after every epoch by ``fit``.
- ``draw_graph``: the autograd graph behind a tensor as Graphviz DOT text,
  rendered to PNG/SVG when the ``dot`` program is installed.
- ``plot_gradient_flow``: mean and max |grad| of every weight, layer by layer:
  vanishing gradients (sigmoid LeNet) show as bars falling towards the input.
- ``show_filters``: a convolution's kernels as a grid of small images.
- ``plot_feature_maps``: the channels each top-level layer outputs for one image.
- ``plot_gradcheck``: a ``GradcheckReport``, analytic against numeric.

matplotlib is imported inside the functions, so that ``import tinygrad_cnn``
stays fast and works without a display.  Figures are drawn with the Agg
canvas directly (no ``pyplot``), which leaves the user's own matplotlib
backend (a notebook's, say) untouched.  Every PNG is written atomically.
"""
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .autograd import no_grad
from .backend import to_device
from .files import atomic_write
from .tensor import Tensor

# (history key, legend label, d2l's line format)
CURVES = (("train_loss", "train loss", "-"), ("train_acc", "train acc", "m--"),
          ("test_acc", "test acc", "g-."))


def _figure(width, height):
    """A matplotlib Figure on its own Agg canvas (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path):
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return Path(path)


def _host(array):
    """A NumPy float64 copy of a NumPy/CuPy array or Tensor, for plotting."""
    if isinstance(array, Tensor):
        array = array.data
    return np.asarray(to_device(array, "cpu"), dtype=np.float64)


# ---------------------------------------------------------------- training curves
def plot_history(history, path, num_epochs=None):
    """Draw ``history`` (fit's list of per-epoch dicts) into the PNG ``path``,
    written atomically; returns the path."""
    fig = _figure(3.5, 2.5)
    ax = fig.add_subplot()
    epochs = [row["epoch"] for row in history]
    for key, label, fmt in CURVES:
        values = [row.get(key) for row in history]
        if any(v is not None for v in values):
            ax.plot(epochs, values, fmt, label=label)
    ax.set_xlabel("epoch")
    ax.set_xlim(1, max(num_epochs or 0, epochs[-1] if epochs else 1, 2))
    ax.grid(True)
    ax.legend()
    return _save_png(fig, path)


# ---------------------------------------------------------------- the graph
def _graph_nodes(tensor):
    """Every Function and leaf reachable from ``tensor``, and the edges
    (input node, consumer Function), found by following ``Function.parents``
    -- the same links ``autograd.backward`` walks."""
    root = tensor._ctx if tensor._ctx is not None else tensor
    nodes, edges, stack = [root], [], [root]
    seen = {id(root)}
    while stack:
        fn = stack.pop()
        for parent in getattr(fn, "parents", ()):
            if parent is None:                # an input that needs no gradient
                continue
            edges.append((parent, fn))
            if id(parent) not in seen:
                seen.add(id(parent))
                nodes.append(parent)
                stack.append(parent)
    return nodes, edges


def _dot_label(*lines):
    return "\\n".join(str(line).replace("\\", "\\\\").replace('"', '\\"') for line in lines)


def draw_graph(tensor, path=None, names=None):
    """The computation graph that made ``tensor``, as Graphviz DOT text.

    One box per op (its Function's ``name``, e.g. ``Conv2d[winograd]``, and its
    output shape), one ellipse per
    leaf that requires grad (its shape, and its name when ``names`` maps
    names to tensors, e.g. ``dict(net.named_parameters())``); arrows point the
    way data flows, into the op that consumed it.  Inputs that need no
    gradient are not part of the graph (the engine keeps no link to them).

    ``path``: ``*.dot`` writes the text; ``*.png``/``*.svg``/``*.pdf`` renders it
    with Graphviz's ``dot`` when it is installed, and otherwise writes the text
    beside it as ``*.dot`` (render it later with ``dot -Tpng``).  Returns the text.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"draw_graph: expected a Tensor, got {type(tensor).__name__}")
    leaf_names = {id(t): name for name, t in (names or {}).items()}
    nodes, edges = _graph_nodes(tensor)
    ids = {id(node): f"n{i}" for i, node in enumerate(nodes)}
    lines = ["digraph graph_of_tensor {", "  node [fontname=Helvetica, fontsize=10];"]
    for node in nodes:
        if isinstance(node, Tensor):
            label = _dot_label(*([leaf_names[id(node)]] if id(node) in leaf_names else []),
                               node.shape)
            lines.append(f'  {ids[id(node)]} [label="{label}", shape=ellipse, '
                         'style=filled, fillcolor=lightblue];')
        else:
            lines.append(f'  {ids[id(node)]} [label="{_dot_label(node.name, node.out_shape)}", '
                         'shape=box];')
    lines += [f"  {ids[id(a)]} -> {ids[id(b)]};" for a, b in edges]
    lines.append("}")
    text = "\n".join(lines) + "\n"
    if path is not None:
        _write_graph(text, Path(path))
    return text


def _write_graph(text, path):
    if path.suffix != ".dot" and shutil.which("dot"):
        rendered = subprocess.run(["dot", f"-T{path.suffix.lstrip('.')}"],
                                  input=text.encode(), capture_output=True, check=True).stdout
        with atomic_write(path, "wb") as f:
            f.write(rendered)
        return
    if path.suffix != ".dot":   # no Graphviz: keep the text so it can be rendered elsewhere
        path = path.with_suffix(".dot")
    with atomic_write(path, "w") as f:
        f.write(text)


# ---------------------------------------------------------------- gradients
def plot_gradient_flow(model, path):
    """Mean and max |grad| of each weight of ``model`` (parameters of 2 or more
    dimensions: conv kernels and linear matrices, input side on the left),
    on a log scale, after a ``backward``.  Returns the path."""
    rows = [(name, _host(p.grad)) for name, p in model.named_parameters()
            if p.ndim > 1 and p.grad is not None]
    if not rows:
        raise ValueError("plot_gradient_flow: no weight has a gradient; call "
                         "loss.backward() first")
    names = [name for name, _ in rows]
    means = [np.abs(g).mean() for _, g in rows]
    maxes = [np.abs(g).max() for _, g in rows]
    fig = _figure(max(4.0, 0.4 * len(rows) + 1.5), 3.5)
    ax = fig.add_subplot()
    positions = np.arange(len(rows))
    ax.bar(positions, maxes, color="lightsteelblue", label="max |grad|")
    ax.bar(positions, means, color="navy", width=0.5, label="mean |grad|")
    ax.set_yscale("log")
    ax.set_xticks(positions, names, rotation=90, fontsize=7)
    ax.set_ylabel("|gradient|")
    ax.set_title("gradient flow")
    ax.legend(fontsize=7)
    return _save_png(fig, path)


def plot_gradcheck(report, path):
    """A ``GradcheckReport`` as pictures, one column per checked input: numeric
    against analytic derivatives (on the diagonal when they agree; mismatches
    in red), and each element's |error| against its tolerance
    atol + rtol·|numeric|.  Returns the path."""
    inputs = report.inputs
    fig = _figure(3.2 * len(inputs), 5.5)
    for k, r in enumerate(inputs):
        numeric, analytic = r.numeric.ravel(), r.analytic.ravel()
        bad = ~(r.abs_err <= r.bound).ravel()
        ax = fig.add_subplot(2, len(inputs), k + 1)
        ax.scatter(numeric[~bad], analytic[~bad], s=6, color="tab:blue", label="ok")
        ax.scatter(numeric[bad], analytic[bad], s=12, color="tab:red", label="mismatch")
        low, high = _span(numeric, analytic)
        ax.plot([low, high], [low, high], "k:", linewidth=0.8)
        ax.set_xlabel("numeric")
        ax.set_ylabel("analytic")
        ax.set_title(f"{r.name}\n{'ok' if r.ok else 'MISMATCH'}", fontsize=8)
        ax = fig.add_subplot(2, len(inputs), len(inputs) + k + 1)
        tiny = 1e-18                          # |error| 0 is exact; keep it on a log axis
        ax.semilogy(np.maximum(r.abs_err.ravel(), tiny), ".", markersize=3, label="|error|")
        ax.semilogy(np.maximum(r.bound.ravel(), tiny), "-", color="gray", label="tolerance")
        ax.set_xlabel("direction" if r.directional else "element (flat index)")
        ax.legend(fontsize=7)
    return _save_png(fig, path)


def _span(*arrays):
    values = np.concatenate([a[np.isfinite(a)] for a in arrays] + [np.zeros(1)])
    return float(values.min()), float(values.max())


# ---------------------------------------------------------------- filters and activations
def _normalised(image):
    """Scale to [0, 1] on its own: the pattern is what matters, not the scale."""
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def _tile_grid(fig, tiles, columns, titles=None):
    rows = math.ceil(len(tiles) / columns)
    for i, tile in enumerate(tiles):
        if tile is None:                      # a layer with fewer channels: leave blank
            continue
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(tile, cmap=None if tile.ndim == 3 else "gray", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None and titles[i]:
            ax.set_ylabel(titles[i], fontsize=7)


def show_filters(conv_or_weight, path, max_filters=64):
    """The kernels of a convolution (an ``nn.Conv2d``, or its weight (O, C, KH, KW)
    as a Tensor or array) as a grid of images, each scaled to [0, 1] on its own:
    one colour image per filter when C = 3 (a first layer on RGB input), else
    one grey image per (filter, input channel), a row per filter.  At most
    ``max_filters`` filters and 16 input channels are shown.  Returns the path."""
    weight = getattr(conv_or_weight, "weight", conv_or_weight)
    weight = _host(weight)
    if weight.ndim != 4:
        raise ValueError(f"show_filters: expected a conv weight (O, C, KH, KW), got shape "
                         f"{weight.shape}")
    weight = weight[:max_filters]
    O, C = weight.shape[:2]
    if C == 3:
        tiles = [_normalised(w.transpose(1, 2, 0)) for w in weight]     # (KH, KW, RGB)
        columns = math.ceil(math.sqrt(O))
    elif C == 1:
        tiles = [_normalised(w[0]) for w in weight]
        columns = math.ceil(math.sqrt(O))
    else:
        columns = min(C, 16)
        tiles = [_normalised(w[c]) for w in weight for c in range(columns)]
    rows = math.ceil(len(tiles) / columns)
    fig = _figure(max(2.0, 0.6 * columns), max(2.0, 0.6 * rows))
    _tile_grid(fig, tiles, columns)
    return _save_png(fig, path)


def plot_feature_maps(model, x, path, max_channels=8):
    """What each top-level layer of ``model`` outputs for the first image of ``x``:
    one row per layer with an (N, C, H, W) output, its first ``max_channels``
    channels, each scaled to [0, 1] on its own.  Runs in eval mode under
    ``no_grad`` and restores every module's mode.  Returns the path."""
    from .summary import recording_children

    maps = []

    def record(name, child, out):
        if isinstance(out, Tensor) and out.ndim == 4:
            maps.append((f"{name} {type(child).__name__}", _host(out[0])))

    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with no_grad(), recording_children(model, record):
            model(x[:1])
    finally:
        for module, training in modes.items():
            module.training = training
    if not maps:
        raise ValueError("plot_feature_maps: no top-level layer of the model gave an "
                         "(N, C, H, W) output")
    columns = min(max_channels, max(m.shape[0] for _, m in maps))
    tiles, titles = [], []
    for label, fmap in maps:
        for c in range(columns):
            tiles.append(_normalised(fmap[c]) if c < fmap.shape[0] else None)
            titles.append(label if c == 0 else None)
    fig = _figure(1.1 * columns + 0.8, 1.1 * len(maps))
    _tile_grid(fig, tiles, columns, titles)
    return _save_png(fig, path)
