"""Network in Network (d2l 7.3): no fully connected layers at all.

A NiN block is one ordinary conv followed by two 1×1 convs, each with ReLU;
the 1×1 convs act as a small MLP applied at every pixel (channels are the
features, each position an example).  The last block outputs one channel
per class, and global average pooling turns each channel into a logit — far
fewer parameters than AlexNet's 4096-wide layers (1,992,166 vs 46,764,746).

Output shapes of ``nin()`` for a (1, 1, 224, 224) input:

    Sequential (1, 96, 54, 54) -> MaxPool2d (1, 96, 26, 26)
    -> Sequential (1, 256, 26, 26) -> MaxPool2d (1, 256, 12, 12)
    -> Sequential (1, 384, 12, 12) -> MaxPool2d (1, 384, 5, 5) -> Dropout
    -> Sequential (1, 10, 5, 5) -> AdaptiveAvgPool2d (1, 10, 1, 1) -> Flatten (1, 10)

Global pooling makes the network accept any input from 67×67 up (d2l
trains at 224×224).
"""
from tinygrad_cnn import nn


def nin_block(in_channels, out_channels, kernel_size, strides, padding):
    """conv(kernel_size, strides, padding) -> ReLU -> 1×1 conv -> ReLU -> 1×1 conv -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, strides, padding),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU())


def nin(in_channels=1, num_classes=10):
    """d2l's NiN: AlexNet's kernel sizes and channel counts, as NiN blocks."""
    return nn.Sequential(
        nin_block(in_channels, 96, kernel_size=11, strides=4, padding=0),
        nn.MaxPool2d(3, stride=2),
        nin_block(96, 256, kernel_size=5, strides=1, padding=2),
        nn.MaxPool2d(3, stride=2),
        nin_block(256, 384, kernel_size=3, strides=1, padding=1),
        nn.MaxPool2d(3, stride=2),
        nn.Dropout(0.5),
        # one output channel per class; global average pooling makes them the logits
        nin_block(384, num_classes, kernel_size=3, strides=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten())
