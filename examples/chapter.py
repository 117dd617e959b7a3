"""What every chapter example shares: its command line, its data, the d2l shape walk
and d2l's ``train_ch6`` run (``tinygrad_cnn.train.fit``).

Each example is ``python examples/<name>.py [--quick] [--data-dir DIR] ...``:

- without ``--quick`` it trains on the Fashion-MNIST files in ``--data-dir`` with the
  registry's d2l settings (``models.spec(name)``: lr, epochs, batch size, resize),
  and leaves metrics.jsonl and curves.png in ``runs/examples/<name>/``;
- with ``--quick`` it takes one or two steps on a few random images instead, so it
  needs no data set and no network and ends in seconds (CI runs every example so).
"""
import argparse
from pathlib import Path

import models
import tinygrad_cnn as tc
from tinygrad_cnn import backend
from tinygrad_cnn.data import load_data_fashion_mnist
from tinygrad_cnn.train import fit


def parser(description):
    """The options every example takes; an example may add its own before parsing."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="a step or two on random images: no data, seconds")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/datasets/fashion-mnist"),
                   help="folder holding the data set's files (not read with --quick)")
    p.add_argument("--epochs", type=int, help="override the registry's number of epochs")
    p.add_argument("--lr", type=float, help="override the registry's learning rate")
    p.add_argument("--batch-size", type=int, help="override the registry's batch size")
    p.add_argument("--device", default=default_device(), help="cpu or cuda")
    return p


def default_device():
    """'cuda' when CuPy sees a GPU, else 'cpu'."""
    try:
        if backend.cupy is not None and backend.cupy.cuda.runtime.getDeviceCount() > 0:
            return "cuda"
    except Exception:            # a CuPy without a driver raises instead of saying 0
        pass
    return "cpu"


def shape_walk(net, shape):
    """d2l's check of a network: one input through each top-level layer, printing
    the output shape (no graph: only the shapes matter)."""
    X = tc.rand(*shape)
    with tc.no_grad():
        for layer in net:
            X = layer(X)
            print(f"{layer.__class__.__name__:<20} output shape:\t{tuple(X.shape)}")


def random_batches(shape, batches, num_classes=10):
    """``batches`` (X, y) pairs of random images of ``shape`` (N, C, H, W) and labels:
    the --quick stand-in for a data set."""
    return [(tc.rand(*shape), tc.randint(0, num_classes, (shape[0],)))
            for _ in range(batches)]


def train(net, name, args, quick_shape=None, quick_batches=1):
    """Train ``net`` the way d2l trains network ``name`` and return fit's history.

    --quick: ``quick_batches`` steps on random images of ``quick_shape`` (default: 4
    images of the registry's input size), one epoch, tested on one more batch.
    Otherwise the Fashion-MNIST files in ``args.data_dir`` at the registry's resize.
    """
    spec = models.spec(name)
    lr = args.lr or spec.lr
    if args.quick:
        shape = quick_shape or (4,) + spec.input_shape
        train_iter = random_batches(shape, quick_batches)
        test_iter = random_batches(shape, 1)
        return fit(net, train_iter, test_iter, 1, lr, args.device, progress=False)
    train_iter, test_iter = load_data_fashion_mnist(args.batch_size or spec.batch_size,
                                                    resize=spec.resize, root=args.data_dir,
                                                    seed=0, device=args.device)
    return fit(net, train_iter, test_iter, args.epochs or spec.num_epochs, lr, args.device,
               out_dir=Path("runs") / "examples" / name)
