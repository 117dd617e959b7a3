"""VGG (d2l 7.2): a network built from repeated blocks.

A VGG block is ``num_convs`` 3×3 convs (padding 1: H and W unchanged), each
followed by ReLU, then a 2×2 stride-2 max pool that halves H and W.  The
network is a list of blocks — ``conv_arch`` gives (num_convs, out_channels)
for each — and AlexNet's three fully connected layers.

The first Linear expects ``out_channels × 7 × 7`` features, so the input
must be 7·2^len(conv_arch) pixels square: 224×224 for VGG-11's five blocks.

Output shapes of ``vgg11()`` for a (1, 1, 224, 224) input:

    Sequential (1, 64, 112, 112) -> Sequential (1, 128, 56, 56)
    -> Sequential (1, 256, 28, 28) -> Sequential (1, 512, 14, 14)
    -> Sequential (1, 512, 7, 7) -> Flatten (1, 25088)
    -> Linear (1, 4096) -> Linear (1, 4096) -> Linear (1, 10)

Children are numbered as in d2l's ``nn.Sequential(*conv_blks, ...)``:
"0.0.weight" is the first block's first conv, "5.weight" (for five blocks)
the first Linear.
"""
from tinygrad_cnn import nn

# (number of 3×3 convs, output channels) per block: 8 convs + 3 linear = 11 layers
VGG11_ARCH = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))


def vgg_block(num_convs, in_channels, out_channels):
    """(N, in_channels, H, W) -> (N, out_channels, H/2, W/2)."""
    layers = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
        layers.append(nn.ReLU())
        in_channels = out_channels
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def vgg(conv_arch, in_channels=1, num_classes=10):
    """The VGG blocks of ``conv_arch`` followed by the fully connected part."""
    conv_blks = []
    for num_convs, out_channels in conv_arch:
        conv_blks.append(vgg_block(num_convs, in_channels, out_channels))
        in_channels = out_channels
    return nn.Sequential(
        *conv_blks, nn.Flatten(),
        nn.Linear(out_channels * 7 * 7, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, num_classes))


def vgg11(in_channels=1, num_classes=10):
    """VGG-11 for 224×224 input: 128,806,154 parameters."""
    return vgg(VGG11_ARCH, in_channels, num_classes)


def vgg11_small(in_channels=1, num_classes=10, ratio=4):
    """VGG-11 with every block's channels divided by ``ratio``: what d2l trains
    on Fashion-MNIST, VGG-11's compute being too much for it (43,093,322
    parameters at ratio 4 — still mostly in the 4096-wide Linear layers)."""
    small_conv_arch = [(num_convs, channels // ratio) for num_convs, channels in VGG11_ARCH]
    return vgg(small_conv_arch, in_channels, num_classes)
