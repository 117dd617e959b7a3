"""Quick presets: settings under which each chapter network visibly learns on a CPU.

At d2l's sizes (224×224, 96×96) one epoch takes from 25 minutes to 8 hours
on a 2-core CPU.  A quick preset trains the network on Fashion-MNIST at the
smallest input side its layer stack accepts (and learns at), on the first
``limit`` training images, for a few minutes; it is evidence that the
network learns, not d2l's result.  ``tinygrad-cnn train NAME --preset quick``
uses it, options given on the command line win, and every setting is printed
and written to metrics.jsonl.  ``benchmarks/learning.py`` runs them all.

    import models.presets
    p = models.presets.get("alexnet", "quick")    # resize 193, limit 3200, lr …, why …
"""
from dataclasses import asdict, dataclass
from typing import Optional

from . import spec

PRESET_NAMES = ("quick",)


@dataclass(frozen=True)
class Preset:
    """Training settings of one network's quick run.  ``None`` keeps the
    registry's d2l value (``models.spec(name)``) or, for the limits, every image."""
    resize: Optional[int] = None     # image side fed to the network; None keeps 28
    limit: Optional[int] = None      # the first N training images
    test_limit: Optional[int] = None  # the first N test images
    num_epochs: Optional[int] = None
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    momentum: float = 0.0
    schedule: str = "constant"       # or "cosine": the lr falls to 0 over the epochs
    init: str = "xavier"             # d2l's; "kaiming" (He) or "default" (the layers' own)
    dataset: str = "fashion_mnist"
    why: str = ""                    # why these values and not d2l's

    def settings(self, name):
        """Every setting of the run, the registry's d2l values filled in."""
        d2l = spec(name)
        values = asdict(self)
        for key in ("lr", "num_epochs", "batch_size"):
            if values[key] is None:
                values[key] = getattr(d2l, key)
        return values


# Sides (tests/models/test_presets.py checks each is the smallest that fits): AlexNet
# and VGG end in a Linear sized for their d2l input (AlexNet's fits 193-224, VGG's only
# 224-231); NiN's pooling stack needs 67, DenseNet's three transitions 29; GoogLeNet
# and the ResNets reach their global pool from 28, Fashion-MNIST's own side.
# Steps: with momentum 0.9 an SGD step moves about 10 × lr once the velocity has built
# up, so "lr 0.005, momentum 0.9" moves like d2l's plain lr 0.05, with less noise per step.
_QUICK = {
    # d2l's whole run fits: 2,350 steps took 98 CPU-seconds at 1 thread (test acc 0.81).
    "lenet": Preset(why="d2l's own settings (all 60,000 images, 10 epochs: under 2 CPU-minutes "
                    "here): sigmoid LeNet needs several epochs to start"),
    # At lr 1.0 batch norm's test accuracy jumps from epoch to epoch (0.70, then 0.47 after
    # 2 constant-lr epochs here); a cosine schedule ends the run at a small lr.
    "lenet_bn": Preset(limit=30000, num_epochs=3, schedule="cosine",
                       why="half the images, 3 epochs, lr falling from d2l's 1.0"),
    "lenet_bn_scratch": Preset(limit=30000, num_epochs=3, schedule="cosine",
                               why="half the images, 3 epochs, lr falling from d2l's 1.0"),
    "alexnet": Preset(resize=193, limit=2880, test_limit=500, num_epochs=3, batch_size=32,
                      lr=0.005, momentum=0.9, schedule="cosine",
                      why="193: the smallest side whose last pool is 5×5; 1.6 CPU-s a "
                      "step, so 270 steps (3 passes over 2,880 images) fit 9 CPU-minutes; "
                      "d2l's plain lr 0.01 learned too slowly, lr 0.005 with momentum 0.9 "
                      "moves like 0.05, falling over the 3 epochs (test acc 0.51, 0.63, 0.75)"),
    "alexnet_cifar10": Preset(resize=31, limit=5440, test_limit=1000, num_epochs=3,
                              batch_size=32, lr=0.005, momentum=0.9, schedule="cosine",
                              why="Fashion-MNIST (1 channel) at 31, the smallest side whose "
                              "last pool is 3×3; 0.8 CPU-s a step of 32, so 510 steps (3 "
                              "passes over 5,440 images, lr falling) fit 9 CPU-minutes"),
    "vgg11": Preset(resize=224, limit=1120, test_limit=500, num_epochs=1, batch_size=16,
                    lr=0.005, momentum=0.9,
                    why="224 only (Linear(25088)); 6 CPU-s a step of 16 and 1 min to test "
                    "500 images, so 70 steps fit 9 CPU-minutes; lr as vgg11_small's"),
    "vgg11_small": Preset(resize=224, limit=2560, test_limit=500, num_epochs=3, batch_size=32,
                          lr=0.005, momentum=0.9, schedule="cosine",
                          why="224 only (Linear(6272)); 1.6-1.8 CPU-s a step, so 240 steps "
                          "(3 passes over 2,560 images) fit 9 CPU-minutes; d2l's plain lr "
                          "0.05 as lr 0.005 with momentum 0.9, falling over the 3 epochs "
                          "(test acc 0.59, 0.73, 0.78)"),
    # At Xavier init (d2l's) the loss stays at ln 10: PyTorch's twin with the same weights
    # and batches gives the same curve to 4 decimals for 40 steps (measured side by side),
    # so it is the settings, not the engine.  NiN's logits are ReLU outputs: one large step
    # pushes all ten below zero for every image and the loss sticks at ln 10 for good.  In
    # the twin (batch 128, 67×67) Kaiming init with lr 0.01 and momentum 0.9 brought the
    # loss to 1.74 in 105 steps; Xavier or the default init, plain lr 0.1 or 0.02, or batch
    # 32 and 64 stayed at or fell back to ln 10.  The second epoch at half the lr (cosine)
    # keeps the later steps small.  Measured here: test acc 0.48 after these 200 steps
    # (131 CPU-seconds); 600 steps (3 epochs of 25,600, cosine) ended lower, at 0.32 (train
    # loss 1.58 from the second epoch on): below 0.70 either way.
    "nin": Preset(resize=67, limit=12800, test_limit=2000, num_epochs=2, lr=0.01,
                  momentum=0.9, schedule="cosine", init="kaiming",
                  why="67, the smallest side; Kaiming init, lr 0.01 with momentum 0.9, the "
                  "second epoch at half of it: at d2l's Xavier init and lr 0.1 the loss "
                  "stays at ln 10, here and in PyTorch alike"),
    # At Xavier init (d2l's) the loss stays at ln 10: PyTorch's twin with the same weights
    # and batches gives the same curve to 4 decimals (measured side by side), so it is the
    # settings, not the engine.  With Kaiming init the twin's loss fell to 0.77 in 96 steps
    # at lr 0.005 with momentum 0.9 (2.13 at d2l's plain lr 0.1 with Kaiming, 2.30 at
    # Xavier and at the layers' default init).
    "googlenet": Preset(limit=25600, test_limit=2000, num_epochs=1, lr=0.005, momentum=0.9,
                        init="kaiming",
                        why="28 (global pooling); Kaiming init, lr 0.005 with momentum 0.9: "
                        "at d2l's Xavier init and lr 0.1 the loss stays at ln 10 for 150 "
                        "steps, here and in PyTorch alike"),
    "resnet18": Preset(limit=12800, test_limit=2000, num_epochs=1, batch_size=64,
                       why="28 (global pooling); d2l's lr, smaller batches for more steps"),
    # d2l's plain lr 0.05: with momentum 0.9 added, ResNet-34 ended its 100 steps at train
    # loss 2.8 and test accuracy 0.46 (measured here), ResNet-18 without it at 0.82.
    "resnet34": Preset(limit=38400, test_limit=2000, num_epochs=1, batch_size=64,
                       why="28 (global pooling); d2l's lr, smaller batches for more steps: "
                       "600, as 200 ended at 0.696"),
    # At 28×28 the Bottleneck nets end in Linear(2048): their first losses are 3.3–4.3, not
    # ln 10, and d2l's lr 0.05 throws them about (ResNet-50's steps 2–8: 14, 18, 10, 16, 10,
    # 9, 14). Measured over the first 30 steps: ResNet-50 train acc 0.30 at lr 0.05, 0.38
    # at 0.02; ResNet-152 at batch 64 lr 0.01 0.29, at batch 32 lr 0.02 chance (losses up
    # to 11), at batch 32 lr 0.005 0.21.
    "resnet50": Preset(limit=23040, test_limit=1000, num_epochs=1, batch_size=64, lr=0.02,
                       why="28 (global pooling); lr 0.02: d2l's 0.05 made the first losses "
                       "jump to 18; 360 steps of 64 (1.2 s each)"),
    "resnet101": Preset(limit=12800, test_limit=1000, num_epochs=1, batch_size=64, lr=0.01,
                        why="28 (global pooling); ResNet-152's lr 0.01 (d2l's 0.05 was "
                        "unstable on ResNet-50 already); 200 steps of 64 (2.3 s each)"),
    "resnet152": Preset(limit=9600, test_limit=1000, num_epochs=1, batch_size=64, lr=0.01,
                        why="28 (global pooling); lr 0.01: at 0.02 (batch 32) it stayed at "
                        "chance for 30 steps; 150 steps of 64 (3.3 s each): 125 ended at 0.695"),
    "densenet": Preset(resize=29, limit=12800, test_limit=2000, num_epochs=1, batch_size=64,
                       why="29, the smallest side; d2l's lr, smaller batches for more steps"),
}


def get(name, preset="quick"):
    """The ``Preset`` called ``preset`` (only "quick" so far) of network ``name``."""
    if preset not in PRESET_NAMES:
        raise ValueError(f"models.presets: unknown preset {preset!r}; available: "
                         f"{', '.join(PRESET_NAMES)}")
    spec(name)                      # an unknown name fails with the registry's message
    return _QUICK[name]
