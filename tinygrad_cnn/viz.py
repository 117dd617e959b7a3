"""Training curves as a PNG, like d2l's ``Animator``: train loss, train acc and
test acc against the epoch, redrawn after every epoch.

matplotlib is imported here, inside the function, so that ``import
tinygrad_cnn`` stays fast and works without a display.  The figure is drawn
with the Agg canvas directly (no ``pyplot``), which leaves the user's own
matplotlib backend (a notebook's, say) untouched.
"""
from pathlib import Path

from .checkpoint import atomic_open

# (history key, legend label, d2l's line format)
CURVES = (("train_loss", "train loss", "-"), ("train_acc", "train acc", "m--"),
          ("test_acc", "test acc", "g-."))


def plot_history(history, path, num_epochs=None):
    """Draw ``history`` (fit's list of per-epoch dicts) into the PNG ``path``,
    written atomically; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.5, 2.5))
    FigureCanvasAgg(fig)
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
    fig.tight_layout()

    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return Path(path)
