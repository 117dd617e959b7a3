"""The chapter networks of d2l chapters 6–7, by name, with d2l's training settings.

    import models
    net = models.get("alexnet", num_classes=10)   # keyword arguments go to the builder
    s = models.spec("alexnet")        # lr=0.01, num_epochs=10, batch_size=128, resize=224
    models.names()                    # every registered name

Each network lives in its own module (``models.lenet``, ``models.resnet``,
…) and is imported only when asked for, so one module's import error does
not hide the others.

Training settings are d2l's (its ``train_ch6`` runs on Fashion-MNIST, images
resized to ``resize``); ``source`` names the d2l section that trains the
network (https://d2l.ai/chapter_convolutional-modern/), or says what was
borrowed where d2l trains none.  Section numbers are those of d2l's classic
(0.17) edition, as everywhere in this repository; d2l.ai's current edition
numbers these chapters one higher (AlexNet is §8.1 there).
"""
import importlib
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: where the builder is and how d2l trains the network."""
    name: str
    module: str              # submodule of ``models`` holding the builder
    builder: str             # function name in that module
    lr: float
    num_epochs: int
    batch_size: int
    resize: Optional[int] = None   # side the images are resized to; None keeps the dataset's
    dataset: str = "fashion_mnist"
    source: str = ""         # where the training settings come from

    @property
    def input_shape(self):
        """(C, H, W) of one input image as the network is trained."""
        channels, side = (3, 32) if self.dataset == "cifar10" else (1, 28)
        side = self.resize or side
        return (channels, side, side)


def _entries():
    fmnist_224 = dict(resize=224, batch_size=128, num_epochs=10)
    at_96 = dict(resize=96, num_epochs=10)
    block_resnet = dict(module="resnet", lr=0.05, batch_size=256, **at_96,
                        source="d2l trains none; its ResNet-18's (§7.6 Residual Networks)")
    return [
        ModelSpec("lenet", "lenet", "lenet", lr=0.9, num_epochs=10, batch_size=256,
                  source="d2l §6.6 Convolutional Neural Networks (LeNet)"),
        ModelSpec("lenet_bn", "lenet", "lenet_bn", lr=1.0, num_epochs=10, batch_size=256,
                  source="d2l §7.5 Batch Normalization, concise"),
        ModelSpec("lenet_bn_scratch", "lenet", "lenet_bn_scratch", lr=1.0, num_epochs=10,
                  batch_size=256, source="d2l §7.5 Batch Normalization, from scratch"),
        ModelSpec("alexnet", "alexnet", "alexnet", lr=0.01, **fmnist_224,
                  source="d2l §7.1 Deep Convolutional Neural Networks (AlexNet)"),
        ModelSpec("alexnet_cifar10", "alexnet", "alexnet_cifar10", lr=0.01, num_epochs=10,
                  batch_size=128, dataset="cifar10",
                  source="d2l trains none; its AlexNet's (§7.1), no resize"),
        ModelSpec("vgg11", "vgg", "vgg11", lr=0.05, **fmnist_224,
                  source="d2l §7.2 Networks Using Blocks (VGG), given for the small variant"),
        ModelSpec("vgg11_small", "vgg", "vgg11_small", lr=0.05, **fmnist_224,
                  source="d2l §7.2 Networks Using Blocks (VGG)"),
        ModelSpec("nin", "nin", "nin", lr=0.1, **fmnist_224,
                  source="d2l §7.3 Network in Network (NiN)"),
        ModelSpec("googlenet", "googlenet", "googlenet", lr=0.1, batch_size=128, **at_96,
                  source="d2l §7.4 Networks with Parallel Concatenations (GoogLeNet)"),
        ModelSpec("resnet18", "resnet", "resnet18", lr=0.05, batch_size=256, **at_96,
                  source="d2l §7.6 Residual Networks (ResNet)"),
        *[ModelSpec(name=depth, builder=depth, **block_resnet)
          for depth in ("resnet34", "resnet50", "resnet101", "resnet152")],
        ModelSpec("densenet", "densenet", "densenet", lr=0.1, batch_size=256, **at_96,
                  source="d2l §7.7 Densely Connected Networks (DenseNet)"),
    ]


_REGISTRY = {entry.name: entry for entry in _entries()}


def names():
    """Every registered network name, in chapter order."""
    return list(_REGISTRY)


def spec(name):
    """The ``ModelSpec`` (builder location, d2l training settings) for ``name``."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"models: unknown network {name!r}; available: "
                         f"{', '.join(names())}") from None


def get(name, **kwargs):
    """Build network ``name``; ``kwargs`` (``in_channels``, ``num_classes``, …) go
    to its builder."""
    entry = spec(name)
    module = importlib.import_module(f"{__name__}.{entry.module}")
    return getattr(module, entry.builder)(**kwargs)
