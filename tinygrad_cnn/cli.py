"""The ``tinygrad-cnn`` command (also ``python -m tinygrad_cnn``)::

    tinygrad-cnn train lenet --data-dir ../shared/datasets/fashion-mnist
    tinygrad-cnn train alexnet --preset quick --data-dir ../shared/datasets/fashion-mnist
    tinygrad-cnn eval runs/lenet/model.npz --data-dir ../shared/datasets/fashion-mnist
    tinygrad-cnn summary alexnet
    tinygrad-cnn gradcheck lenet            (or an op: tinygrad-cnn gradcheck conv2d)
    tinygrad-cnn kaggle-cifar10 --data-dir ../data/cifar-10

This is the top layer: it imports ``models`` and the data sets inside the
commands, so that the engine below never depends on them.  Bad arguments end
with one line on stderr and exit code 2, failures while running with one line
and exit code 1 (``TINYGRAD_CNN_DEBUG=1`` shows the traceback instead); Ctrl-C
during training saves a checkpoint and exits with 130.
"""
import argparse
import contextlib
import math
import os
import sys
from pathlib import Path

from .backend import require_device

PROG = "tinygrad-cnn"
# d2l's normalisation for the Kaggle CIFAR-10 assignment (per-channel mean, std).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


# The train command's defaults for settings whose parser default is None; on
# --resume the checkpoint's values come first (see _settings_from_checkpoint).
TRAIN_DEFAULTS = {"seed": 0, "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant",
                  "init": "xavier"}


class UsageError(Exception):
    """A bad argument found after parsing (unknown model, missing file): exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) and exits with 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv=None):
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:           # --help (0) or a parse error (2, already printed)
        return exc.code
    where = f"{PROG} {args.command}"
    try:
        return args.run(args) or 0
    except UsageError as exc:
        print(f"{where}: error: {exc} (see {where} --help)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " (continue with --resume)" if args.command == "train" else ""
        print(f"{where}: interrupted{hint}", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ArithmeticError, RuntimeError) as exc:
        if os.environ.get("TINYGRAD_CNN_DEBUG"):
            raise                       # a bug in the engine deserves its traceback
        # One line: some messages (data set not found) list folders line by line.
        print(f"{where}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------- argument types
def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _number(text, positive):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 if positive else value >= 0):        # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number {'>' if positive else '>='} 0, "
                                         f"got {text}")
    return value


def _non_negative_float(text):
    return _number(text, positive=False)


def _positive_float(text):
    return _number(text, positive=True)


def _shape(text):
    """'1,1,28,28' or '1x1x28x28' -> (1, 1, 28, 28)."""
    parts = text.replace("x", ",").split(",")
    try:
        return tuple(_positive_int(part) for part in parts)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,1,28,28, got "
                                         f"{text!r}") from None


# ---------------------------------------------------------------- the parser
def build_parser():
    parser = _Parser(prog=PROG, description="Train, evaluate and inspect the d2l chapter "
                     "6-7 networks on the tinygrad_cnn engine.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)

    train = commands.add_parser("train", help="train a network of the registry on its "
                                "data set (d2l's settings unless overridden)",
                                description="Train MODEL (see `models.names()`) with d2l's "
                                "train_ch6 and the registry's lr, epochs, batch size, resize.")
    train.add_argument("model", metavar="MODEL", help="network name, e.g. lenet, alexnet")
    train.add_argument("--epochs", type=_positive_int, help="number of epochs")
    train.add_argument("--lr", type=_positive_float, help="learning rate")
    train.add_argument("--batch-size", type=_positive_int)
    train.add_argument("--resize", type=_positive_int, help="image side fed to the network")
    train.add_argument("--schedule", choices=["constant", "cosine"],
                       help="learning-rate schedule over the epochs (default constant)")
    train.add_argument("--init", choices=["xavier", "kaiming", "default"],
                       help="weight init of every Conv2d/Linear: xavier (d2l's, the default), "
                       "kaiming (He, for ReLU stacks) or default (the layers' own, PyTorch's)")
    train.add_argument("--preset", choices=["quick"], help="quick: a few minutes on a CPU at "
                       "the smallest input size the network learns at (models/presets.py); "
                       "options given here override its values")
    train.add_argument("--test-limit", type=_positive_int,
                       help="use only the first N test examples (default: --limit)")
    _add_training_options(train)
    train.add_argument("--out", type=Path, help="output folder (default runs/MODEL)")
    train.add_argument("--resume", nargs="?", const=True, metavar="CHECKPOINT",
                       help="continue from OUT/checkpoint.npz (or CHECKPOINT); a new --lr, "
                       "--momentum, --weight-decay or --epochs is used, other changed "
                       "settings are refused")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over the processes of `mpiexec -n N` (each takes "
                       "--batch-size examples a step; rank 0 writes)")
    train.add_argument("--force", action="store_true",
                       help="with --resume: accept a checkpoint written with other settings")
    train.add_argument("--cuda-graph", action="store_true",
                       help="with --device cuda: replay each training step as one captured "
                       "CUDA graph (the same losses, less host time per step)")
    # None: "not given", so that --resume can tell a change from the default.
    train.set_defaults(run=run_train, **{name: None for name in TRAIN_DEFAULTS})

    evaluate = commands.add_parser("eval", help="test loss and accuracy of a checkpoint",
                                   description="Evaluate a checkpoint (checkpoint.npz or "
                                   "model.npz written by train) on its test set.")
    evaluate.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    evaluate.add_argument("--data-dir", type=Path, help="folder holding the data set files")
    evaluate.add_argument("--batch-size", type=_positive_int, default=256)
    evaluate.add_argument("--limit", type=_positive_int, help="evaluate the first N examples")
    evaluate.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    evaluate.set_defaults(run=run_eval)

    summary = commands.add_parser("summary", help="layer-by-layer output shapes and "
                                  "parameter counts", description="d2l's shape walk through "
                                  "MODEL with parameter counts.")
    summary.add_argument("model", metavar="MODEL")
    summary.add_argument("--input-shape", type=_shape, metavar="N,C,H,W",
                         help="input shape (default: one image as the network is trained)")
    summary.set_defaults(run=run_summary)

    gradcheck = commands.add_parser("gradcheck", help="check backward passes against finite "
                                    "differences", description="Check the gradients of MODEL "
                                    "(random directional derivatives per parameter) or of an "
                                    f"op ({', '.join(OP_CHECKS)}, every element) in float64.")
    gradcheck.add_argument("target", metavar="MODEL|OP")
    gradcheck.add_argument("--input-shape", type=_shape, metavar="N,C,H,W",
                           help="model input (default: 2 images as the network is trained)")
    gradcheck.add_argument("--directions", type=_positive_int, default=2,
                           help="random directions per parameter for a model (default 2)")
    gradcheck.add_argument("--seed", type=int, default=0)
    gradcheck.set_defaults(run=run_gradcheck)

    kaggle = commands.add_parser("kaggle-cifar10", help="d2l's Kaggle CIFAR-10 assignment: "
                                 "train, then write submission.csv",
                                 description="Reorganise a Kaggle CIFAR-10 folder (train/, "
                                 "test/, trainLabels.csv), train a network on it, validate, "
                                 "classify test/ and write OUT/submission.csv.")
    kaggle.add_argument("--model", default="resnet18", help="network name (default resnet18)")
    kaggle.add_argument("--epochs", type=_positive_int, default=20)
    kaggle.add_argument("--lr", type=_positive_float, default=2e-4)
    kaggle.add_argument("--batch-size", type=_positive_int, default=128)
    kaggle.add_argument("--lr-period", type=_positive_int, default=4,
                        help="decay the lr every this many epochs (default 4)")
    kaggle.add_argument("--lr-decay", type=_positive_float, default=0.9)
    kaggle.add_argument("--valid-ratio", type=_positive_float, default=0.1)
    kaggle.add_argument("--train-valid", action="store_true",
                        help="train on train+valid, as d2l's final run before predicting")
    _add_training_options(kaggle, momentum=0.9, weight_decay=5e-4, data_dir_required=True)
    kaggle.add_argument("--out", type=Path, default=Path("runs/kaggle-cifar10"))
    kaggle.set_defaults(run=run_kaggle_cifar10)
    return parser


def _add_training_options(parser, momentum=0.0, weight_decay=0.0, data_dir_required=False):
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--data-dir", type=Path, required=data_dir_required,
                        help="folder holding the data set")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--limit", type=_positive_int,
                        help="use only the first N examples of each split (quick looks)")
    parser.add_argument("--momentum", type=_non_negative_float, default=momentum)
    parser.add_argument("--weight-decay", type=_non_negative_float, default=weight_decay)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--max-loss-ratio", type=_non_negative_float, default=1e3,
                        help="stop when a step's loss exceeds this times the first loss "
                        "(default 1000; 0 turns the check off)")


# ---------------------------------------------------------------- shared helpers
def _spec(name):
    import models
    try:
        return models.spec(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _existing_dir(path, flag="--data-dir"):
    if path is not None and not path.is_dir():
        raise UsageError(f"{flag} {path}: no such folder")
    return path


def _dataset(name, data_dir, train, resize, limit):
    """One split of a registry data set (fashion_mnist, cifar10), as d2l loads it:
    ToTensor, then Resize when asked; the first ``limit`` examples if given."""
    from .data import CIFAR10, FashionMNIST
    from .data import transforms as T
    kinds = {"fashion_mnist": FashionMNIST, "cifar10": CIFAR10}
    if name not in kinds:
        raise ValueError(f"data set {name!r} has no loader here (known: {', '.join(kinds)})")
    transform = T.Compose([T.ToTensor()] + ([T.Resize(resize)] if resize else []))
    dataset = kinds[name](data_dir, train=train, transform=transform)
    return _first(dataset, limit)


def _first(dataset, limit):
    from .data import Subset
    return Subset(dataset, range(min(limit, len(dataset)))) if limit else dataset


# ---------------------------------------------------------------- train
def run_train(args):
    if not args.distributed:
        return _run_train(args, writes=True)
    from . import distributed
    distributed.init()
    # An error on one rank must end them all, not leave them waiting in a collective.
    with distributed.abort_on_error():
        return _run_train(args, writes=distributed.rank() == 0,
                          world=distributed.world_size())


def _run_train(args, writes, world=1):
    """``world`` processes, each taking --batch-size examples a step: the run's (and
    the checkpoint's) batch size is the global one, world x --batch-size, so a
    checkpoint resumes with another number of processes at the same global batch."""
    import models

    from .backend import manual_seed
    from .checkpoint import save_checkpoint
    from .data import DataLoader
    from .files import hold_folder
    from .train import CHECKPOINT_FILE, cosine_schedule, fit

    spec = _spec(args.model)
    if args.cuda_graph and args.device != "cuda":
        raise UsageError(f"--cuda-graph replays GPU work: it needs --device cuda, not "
                         f"--device {args.device}")
    if args.cuda_graph and args.distributed:
        raise UsageError("--cuda-graph does not go with --distributed (the gradient "
                         "all-reduce is not captured)")
    require_device(args.device)     # no GPU: say so before the data are read
    _existing_dir(args.data_dir)
    out = args.out or Path("runs") / args.model
    resume = None
    if args.force and not args.resume:
        raise UsageError("--force goes with --resume")
    if args.resume:
        resume = out / CHECKPOINT_FILE if args.resume is True else Path(args.resume)
        if not resume.is_file():
            raise UsageError(f"--resume: {resume}: no such checkpoint")
    per_rank_given = args.batch_size is not None
    _settings_from_checkpoint(args, resume)
    s = _train_settings(args, spec)
    epochs, lr, batch_size, resize = s["epochs"], s["lr"], s["batch_size"], s["resize"]
    if resume and not per_rank_given and world > 1:    # the checkpoint's is global
        if batch_size % world:
            raise UsageError(f"--resume: the checkpoint's batch size {batch_size} does not "
                             f"divide among {world} processes; give --batch-size")
        batch_size //= world

    train_set = _dataset(s["dataset"], args.data_dir, True, resize, s["limit"])
    test_set = _dataset(s["dataset"], args.data_dir, False, resize, s["test_limit"])
    manual_seed(s["seed"])    # before the network is built: its biases keep their init
    net = models.get(args.model, in_channels=s["in_channels"])
    train_iter = DataLoader(train_set, batch_size, shuffle=True, device=args.device)
    test_iter = DataLoader(test_set, batch_size, device=args.device)
    # What the run is; on --resume each must match the checkpoint's, except the
    # settings fit lets a resumed run change (train.RESUMABLE_CHANGES).
    meta = {"model": args.model, **s, "batch_size": batch_size * world,
            "train_examples": len(train_set), "test_examples": len(test_set)}
    if writes:
        print(f"{args.model}: {epochs} epochs, lr {lr:g}, batch size {batch_size}"
              + (f" per rank x {world} ranks" if world > 1 else "") + ", "
              f"{len(train_set)} training / {len(test_set)} test images"
              + (f" resized to {resize}" if resize else "") + f"; writing to {out}")
        print("settings: " + ", ".join(f"{key} {value}" for key, value in meta.items()))
    schedule = cosine_schedule(lr, epochs) if s["schedule"] == "cosine" else None
    # the final weights too belong to this run (distributed: rank 0's, which writes)
    with hold_folder(out, say=print) if writes else contextlib.nullcontext():
        fit(net, train_iter, test_iter, epochs, lr, args.device, momentum=s["momentum"],
            weight_decay=s["weight_decay"], lr_schedule=schedule, out_dir=out, resume=resume,
            init=None if s["init"] == "default" else s["init"],
            progress=not args.no_progress, meta=meta, max_loss_ratio=args.max_loss_ratio,
            force=args.force, distributed=args.distributed, cuda_graph=args.cuda_graph)
        if writes:
            weights = save_checkpoint(out / "model.npz", net, epoch=epochs, run=meta)
    if writes:
        print(f"weights saved to {weights}")


def _settings_from_checkpoint(args, resume):
    """On --resume, fill the settings not given on the command line from the
    checkpoint (a resumed run goes on as it was; a flag given is a change,
    which fit honours or refuses); _train_settings fills the rest."""
    from .checkpoint import load_checkpoint
    saved = load_checkpoint(resume).meta.get("run", {}) if resume else {}
    for name in ("epochs", "lr", "batch_size", "resize", "limit", "test_limit", "preset",
                 *TRAIN_DEFAULTS):
        if getattr(args, name) is None:
            setattr(args, name, saved.get(name))


def _train_settings(args, spec):
    """The run's settings: the command line's (or on --resume the checkpoint's), else
    the preset's, else d2l's (the registry) or TRAIN_DEFAULTS."""
    import models.presets
    preset = models.presets.get(args.model, args.preset).settings(args.model) \
        if args.preset else {}

    def pick(given, key, default):
        return given if given is not None else preset.get(key, default)

    dataset = preset.get("dataset", spec.dataset)
    return {"preset": args.preset, "dataset": dataset,
            "in_channels": 3 if dataset == "cifar10" else 1,
            "resize": pick(args.resize, "resize", spec.resize),
            "limit": pick(args.limit, "limit", None),
            # an explicit --limit bounds both splits, as before presets
            "test_limit": args.test_limit or (args.limit if args.limit is not None
                                              else preset.get("test_limit")),
            "epochs": pick(args.epochs, "num_epochs", spec.num_epochs),
            "lr": pick(args.lr, "lr", spec.lr),
            "batch_size": pick(args.batch_size, "batch_size", spec.batch_size),
            "momentum": pick(args.momentum, "momentum", TRAIN_DEFAULTS["momentum"]),
            "schedule": pick(args.schedule, "schedule", TRAIN_DEFAULTS["schedule"]),
            "init": pick(args.init, "init", TRAIN_DEFAULTS["init"]),
            "weight_decay": pick(args.weight_decay, "weight_decay",
                                 TRAIN_DEFAULTS["weight_decay"]),
            "seed": pick(args.seed, "seed", TRAIN_DEFAULTS["seed"])}


# ---------------------------------------------------------------- eval
def run_eval(args):
    import models

    from .checkpoint import load_checkpoint
    from .data import DataLoader
    from .train import evaluate

    if not args.checkpoint.is_file():
        raise UsageError(f"{args.checkpoint}: no such checkpoint file")
    require_device(args.device)
    _existing_dir(args.data_dir)
    checkpoint = load_checkpoint(args.checkpoint)
    run = checkpoint.meta.get("run", {})
    if not run.get("model"):
        raise ValueError(f"{args.checkpoint}: key '__meta__' does not name the model")
    spec = _spec(run["model"])
    net = models.get(run["model"], **({"in_channels": run["in_channels"]}
                                      if "in_channels" in run else {}))
    checkpoint.load_into(net)
    net.to(args.device)
    test_set = _dataset(run.get("dataset", spec.dataset), args.data_dir, False,
                        run.get("resize", spec.resize), args.limit)
    loss, acc, count = evaluate(net, DataLoader(test_set, args.batch_size, device=args.device),
                                args.device)
    if not math.isfinite(loss):
        raise ValueError(f"{args.checkpoint}: the test loss is {loss} (the network's outputs "
                         "overflow): the run that wrote it diverged; train again with a lower "
                         "learning rate")
    print(f"{run['model']} (epoch {checkpoint.epoch}): test loss {loss:.3f}, "
          f"test acc {acc:.3f} on {count} images")


# ---------------------------------------------------------------- summary
def run_summary(args):
    import models

    from .summary import summary

    spec = _spec(args.model)
    shape = args.input_shape or (1,) + spec.input_shape
    if len(shape) != 4:
        raise UsageError(f"--input-shape must be N,C,H,W, got {','.join(map(str, shape))}")
    summary(models.get(args.model, in_channels=shape[1]), shape)


# ---------------------------------------------------------------- gradcheck
def _conv2d():
    import tinygrad_cnn as tc
    import tinygrad_cnn.nn.functional as F
    x = tc.randn(2, 3, 6, 6, dtype=tc.float64, requires_grad=True)
    w = tc.randn(4, 3, 3, 3, dtype=tc.float64, requires_grad=True)
    b = tc.randn(4, dtype=tc.float64, requires_grad=True)
    return (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1)), (x, w, b)


def _pool(kind):
    def build():
        import tinygrad_cnn as tc
        import tinygrad_cnn.nn.functional as F
        x = tc.randn(2, 2, 5, 5, dtype=tc.float64, requires_grad=True)
        pool = getattr(F, kind)
        return (lambda x: pool(x, 3, stride=2, padding=1)), (x,)
    return build


def _batch_norm():
    import tinygrad_cnn as tc
    import tinygrad_cnn.nn.functional as F
    x = tc.randn(4, 3, 3, 3, dtype=tc.float64, requires_grad=True)
    gamma = tc.randn(3, dtype=tc.float64, requires_grad=True)
    beta = tc.randn(3, dtype=tc.float64, requires_grad=True)
    return (lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True)), (x, gamma, beta)


def _linear():
    import tinygrad_cnn as tc
    import tinygrad_cnn.nn.functional as F
    x = tc.randn(3, 5, dtype=tc.float64, requires_grad=True)
    w = tc.randn(4, 5, dtype=tc.float64, requires_grad=True)
    b = tc.randn(4, dtype=tc.float64, requires_grad=True)
    return F.linear, (x, w, b)


def _cross_entropy():
    import tinygrad_cnn as tc
    import tinygrad_cnn.nn.functional as F
    x = tc.randn(4, 5, dtype=tc.float64, requires_grad=True)
    target = tc.randint(0, 5, (4,))
    return (lambda x: F.cross_entropy(x, target)), (x,)


def _activation(name):
    def build():
        import tinygrad_cnn as tc
        x = tc.randn(3, 4, dtype=tc.float64, requires_grad=True)
        return getattr(tc, name), (x,)
    return build


# op name -> builder of (function, float64 inputs): small enough to check every element.
OP_CHECKS = {"conv2d": _conv2d, "max_pool2d": _pool("max_pool2d"),
             "avg_pool2d": _pool("avg_pool2d"), "batch_norm": _batch_norm, "linear": _linear,
             "cross_entropy": _cross_entropy, "relu": _activation("relu"),
             "sigmoid": _activation("sigmoid"), "tanh": _activation("tanh")}


def run_gradcheck(args):
    import models

    import tinygrad_cnn as tc
    from .gradcheck import gradcheck, gradcheck_module
    from .nn import Dropout

    tc.manual_seed(args.seed)
    if args.target in OP_CHECKS:
        fn, inputs = OP_CHECKS[args.target]()
        print(f"gradcheck {args.target}: every element, float64")
        report = gradcheck(fn, inputs, raise_exception=False)
    elif args.target in models.names():
        spec = models.spec(args.target)
        shape = args.input_shape or (2,) + spec.input_shape
        net = models.get(args.target, in_channels=shape[1]).double()
        # Dropout draws a new mask per call, which finite differences cannot follow.
        if any(isinstance(m, Dropout) for m in net.modules()):
            net.eval()
        mode = "train" if net.training else "eval (the network has Dropout)"
        X = tc.randn(*shape, dtype=tc.float64)
        print(f"gradcheck {args.target}: input {shape}, {mode} mode, "
              f"{args.directions} random directions per parameter, float64")
        report = gradcheck_module(net, (X,), directions=args.directions, seed=args.seed,
                                  raise_exception=False)
    else:
        raise UsageError(f"{args.target!r} is neither a model ({', '.join(models.names())}) "
                         f"nor an op ({', '.join(OP_CHECKS)})")
    print(_gradcheck_table(report))
    return 0 if report.ok else 1


def _gradcheck_table(report):
    rows = [(r.name, "directions" if r.directional else "elements", str(r.abs_err.size),
             f"{r.max_abs_err:.3g}", "ok" if r.ok else "MISMATCH") for r in report.inputs]
    header = ("tensor", "checked", "n", "max abs err", "")
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in [header] + rows]
    lines += [str(r) for r in report.inputs if not r.ok]      # the details of a mismatch
    verdict = "passed" if report.ok else "FAILED"
    lines.append(f"gradcheck {verdict}: |analytic - numeric| <= {report.atol:g} + "
                 f"{report.rtol:g}·|numeric| (eps {report.eps:g})")
    return "\n".join(lines)


# ---------------------------------------------------------------- Kaggle CIFAR-10
def run_kaggle_cifar10(args):
    """d2l's assignment: reorganise, train (validating on a held-out part of the
    training images), classify the test folder, write submission.csv."""
    import models

    from .backend import manual_seed
    from .checkpoint import save_checkpoint
    from .data import DataLoader, ImageFolder, reorg_test, reorg_train_valid, write_submission
    from .data import transforms as T
    from .files import hold_folder
    from .train import fit, predict, step_schedule

    require_device(args.device)
    _existing_dir(args.data_dir)
    _spec(args.model)
    if args.valid_ratio >= 1:
        raise UsageError(f"--valid-ratio must be in (0, 1), got {args.valid_ratio}")
    reorg_train_valid(args.data_dir, args.valid_ratio)
    reorg_test(args.data_dir)
    folders = args.data_dir / "train_valid_test"
    normalize = T.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    # d2l crops a random part and flips; a padded random crop is the same idea.
    augment = T.Compose([T.ToTensor(), T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                         normalize])
    plain = T.Compose([T.ToTensor(), normalize])
    train_set = ImageFolder(folders / ("train_valid" if args.train_valid else "train"), augment)
    valid_set = ImageFolder(folders / "valid", plain)
    test_set = ImageFolder(folders / "test", plain)

    manual_seed(args.seed)
    net = models.get(args.model, in_channels=3, num_classes=len(train_set.classes))
    # As d2l, training drops the last short batch (a batch of one breaks batch norm).
    train_iter = DataLoader(_first(train_set, args.limit), args.batch_size, shuffle=True,
                            drop_last=True, device=args.device)
    valid_iter, test_iter = (DataLoader(_first(dataset, args.limit), args.batch_size,
                                        device=args.device) for dataset in (valid_set, test_set))
    meta = {"model": args.model, "dataset": "kaggle_cifar10", "classes": train_set.classes}
    print(f"{args.model} on {len(train_iter.dataset)} training images "
          f"({'train+valid' if args.train_valid else 'train'}), validating on "
          f"{len(valid_iter.dataset)}; writing to {args.out}")
    with hold_folder(args.out, say=print):
        # No Xavier re-initialisation here: d2l's assignment keeps the network's own.
        fit(net, train_iter, valid_iter, args.epochs, args.lr, args.device,
            momentum=args.momentum, weight_decay=args.weight_decay,
            lr_schedule=step_schedule(args.lr, args.lr_period, args.lr_decay), init=None,
            out_dir=args.out, progress=not args.no_progress, meta=meta,
            max_loss_ratio=args.max_loss_ratio)
        save_checkpoint(args.out / "model.npz", net, epoch=args.epochs, run=meta)
        predictions = predict(net, test_iter, args.device)
        ids = test_set.ids[:len(predictions)]
        path = write_submission(args.out / "submission.csv", ids, predictions,
                                train_set.classes)
    print(f"{len(ids)} of {len(test_set)} test images classified; wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
