"""ResNet: d2l's ResNet-18 (d2l §7.6 Residual Networks (ResNet),
https://d2l.ai/chapter_convolutional-modern/resnet.html), and the BasicBlock/Bottleneck
family of the widely copied CIFAR-10 ResNet code.

A residual block learns f(x) - x instead of f(x): its output is
relu(F(x) + shortcut(x)), so a block whose weights go to zero is the
identity, and stacking more blocks cannot make the function class worse.

Two codings of the idea, each with PyTorch's module names so state dicts
load both ways:

- d2l (``Residual``, ``resnet_block``, ``resnet18``): convs with bias, the
  shortcut a 1×1 conv ``conv3`` (or nothing).  ``resnet18()`` is
  ``Sequential(b1, b2, b3, b4, b5, AdaptiveAvgPool2d, Flatten, Linear)``.
- the CIFAR-10 code's (``BasicBlock``, ``Bottleneck``, ``ResNet``): bias-free convs,
  the shortcut a ``Sequential`` (empty, or 1×1 conv + BN), and
  ``expansion`` = output channels / ``planes`` (1 and 4).

Output shapes of ``resnet18()`` for a (1, 1, 224, 224) input:

    b1 (1, 64, 56, 56) -> b2 (1, 64, 56, 56) -> b3 (1, 128, 28, 28)
    -> b4 (1, 256, 14, 14) -> b5 (1, 512, 7, 7) -> pool (1, 512, 1, 1)
    -> Flatten (1, 512) -> Linear (1, 10)
"""
import tinygrad_cnn.nn.functional as F
from tinygrad_cnn import nn


# ----------------------------------------------------------------------- d2l
class Residual(nn.Module):
    """Two 3×3 conv -> BN layers, the input added before the last ReLU.

    (N, input_channels, H, W) -> (N, num_channels, H/strides, W/strides)
    (rounded up).  When the shape changes (other channel count or
    ``strides`` > 1) the input must pass through the 1×1 conv ``conv3``
    (``use_1x1conv=True``) to be addable.
    """

    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1,
                               stride=strides)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1,
                                   stride=strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        return F.relu(Y + X)


def resnet_block(input_channels, num_channels, num_residuals, first_block=False):
    """A list of ``num_residuals`` Residual blocks; unless ``first_block``, the
    first one doubles the channels and halves H and W (1×1 conv, stride 2)."""
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels, num_channels))
    return blk


def resnet18(in_channels=1, num_classes=10):
    """d2l's ResNet-18: 7×7 stem, four stages of two Residual blocks
    (64, 128, 256, 512 channels), global average pooling, Linear."""
    b1 = nn.Sequential(nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
                       nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
    b3 = nn.Sequential(*resnet_block(64, 128, 2))
    b4 = nn.Sequential(*resnet_block(128, 256, 2))
    b5 = nn.Sequential(*resnet_block(256, 512, 2))
    return nn.Sequential(b1, b2, b3, b4, b5, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
                         nn.Linear(512, num_classes))


# ---------------------------------------------- BasicBlock/Bottleneck family
def _shortcut(in_planes, out_planes, stride):
    """Identity (an empty Sequential) when the shapes already agree, else a
    strided 1×1 conv + BN that brings the input to (out_planes, H/stride, W/stride)."""
    if stride != 1 or in_planes != out_planes:
        return nn.Sequential(nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride,
                                       bias=False),
                             nn.BatchNorm2d(out_planes))
    return nn.Sequential()


class BasicBlock(nn.Module):
    """Two 3×3 convs (ResNet-18/34): (N, in_planes, H, W) -> (N, planes, H/stride, W/stride).

    The convs have no bias: the BN after each would cancel it.
    """
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 (reduce to ``planes``) -> 3×3 (strided) -> 1×1 (expand to 4·planes)
    (ResNet-50/101/152): (N, in_planes, H, W) -> (N, 4·planes, H/stride, W/stride).

    The 3×3 conv, the expensive one, works on the reduced channels.
    """
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = _shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, four stages of ``block``s (``num_blocks[i]`` each; 64, 128, 256, 512
    planes, stages 2–4 start with stride 2), global average pooling, Linear.

    The blocks are the CIFAR-10 code's; the network around them follows d2l's
    ResNet-18 (and torchvision's): a 7×7 stride-2 conv + BN + ReLU and a 3×3
    stride-2 max pool, so a 96×96 Fashion-MNIST image reaches the first stage
    at 24×24.  Global average pooling (instead of a fixed 4×4 pool) takes
    any input size.  Children: conv1, bn1, maxpool, layer1..layer4, avgpool,
    linear (``linear``, not torchvision's ``fc``, as in that CIFAR-10 code).
    """

    def __init__(self, block, num_blocks, in_channels=1, num_classes=10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        """One stage: only its first block changes the resolution."""
        layers = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, block_stride))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.avgpool(out).flatten(1))


def resnet18_basic(in_channels=1, num_classes=10):
    """ResNet-18 from ``BasicBlock`` (bias-free convs, BN shortcuts)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], in_channels, num_classes)


def resnet34(in_channels=1, num_classes=10):
    return ResNet(BasicBlock, [3, 4, 6, 3], in_channels, num_classes)


def resnet50(in_channels=1, num_classes=10):
    return ResNet(Bottleneck, [3, 4, 6, 3], in_channels, num_classes)


def resnet101(in_channels=1, num_classes=10):
    return ResNet(Bottleneck, [3, 4, 23, 3], in_channels, num_classes)


def resnet152(in_channels=1, num_classes=10):
    return ResNet(Bottleneck, [3, 8, 36, 3], in_channels, num_classes)
