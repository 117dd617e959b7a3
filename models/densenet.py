"""DenseNet (d2l 7.7): each layer sees the concatenation of all earlier outputs.

Where ResNet adds a block's input to its output, a dense block concatenates
them: x -> [x, f1(x), f2([x, f1(x)]), ...], so the channels grow by
``num_channels`` (the growth rate) per conv; transition blocks halve the
channels and the spatial size between dense blocks.

Nesting and names are d2l's (``net[1].net[0][2].weight`` …), so
``state_dict()`` keys match the PyTorch model.  Output shapes for a
(1, 1, 96, 96) input:

    b1 (1, 64, 24, 24)
    DenseBlock (1, 192, 24, 24) -> transition (1, 96, 12, 12)
    DenseBlock (1, 224, 12, 12) -> transition (1, 112, 6, 6)
    DenseBlock (1, 240, 6, 6)   -> transition (1, 120, 3, 3)
    DenseBlock (1, 248, 3, 3)   -> BN, ReLU, global avg pool, Flatten (1, 248) -> Linear (1, 10)
"""
import tinygrad_cnn as tc
from tinygrad_cnn import nn


def conv_block(input_channels, num_channels):
    """BN -> ReLU -> 3×3 conv ("pre-activation" order):
    (N, input_channels, H, W) -> (N, num_channels, H, W)."""
    return nn.Sequential(nn.BatchNorm2d(input_channels), nn.ReLU(),
                         nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1))


class DenseBlock(nn.Module):
    """``num_convs`` conv blocks, each fed everything before it.

    (N, input_channels, H, W) -> (N, input_channels + num_convs·num_channels, H, W).
    """

    def __init__(self, num_convs, input_channels, num_channels):
        super().__init__()
        # Conv i sees the block input plus the i outputs already concatenated to it.
        self.net = nn.Sequential(*[conv_block(num_channels * i + input_channels, num_channels)
                                   for i in range(num_convs)])

    def forward(self, X):
        for blk in self.net:
            Y = blk(X)
            X = tc.cat((X, Y), dim=1)
        return X


def transition_block(input_channels, num_channels):
    """BN -> ReLU -> 1×1 conv (fewer channels) -> 2×2 average pool (half H and W)."""
    return nn.Sequential(nn.BatchNorm2d(input_channels), nn.ReLU(),
                         nn.Conv2d(input_channels, num_channels, kernel_size=1),
                         nn.AvgPool2d(kernel_size=2, stride=2))


def densenet(in_channels=1, num_classes=10):
    """d2l's DenseNet: stem, four dense blocks of 4 convs (growth rate 32) with
    channel-halving transitions between them, then BN, ReLU, global average
    pooling and a Linear layer."""
    b1 = nn.Sequential(nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
                       nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    num_channels, growth_rate = 64, 32
    num_convs_in_dense_blocks = [4, 4, 4, 4]
    blks = []
    for i, num_convs in enumerate(num_convs_in_dense_blocks):
        blks.append(DenseBlock(num_convs, num_channels, growth_rate))
        num_channels += num_convs * growth_rate
        if i != len(num_convs_in_dense_blocks) - 1:
            blks.append(transition_block(num_channels, num_channels // 2))
            num_channels = num_channels // 2
    return nn.Sequential(b1, *blks,
                         nn.BatchNorm2d(num_channels), nn.ReLU(),
                         nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
                         nn.Linear(num_channels, num_classes))
