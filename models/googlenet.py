"""GoogLeNet (d2l 7.4): nine Inception blocks between a small stem and global pooling.

Module nesting and attribute names are d2l's (``net[2][0].p2_2.weight`` …), so
``state_dict()`` keys match the PyTorch model and weights move both ways.

Output shapes for a (1, 1, 96, 96) input (d2l trains at 96×96):

    b1 (1, 64, 24, 24) -> b2 (1, 192, 12, 12) -> b3 (1, 480, 6, 6)
    -> b4 (1, 832, 3, 3) -> b5 (1, 1024) -> Linear (1, 10)
"""
import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from tinygrad_cnn import nn


class Inception(nn.Module):
    """Four parallel paths whose outputs are concatenated along the channels.

    path 1: 1×1 conv (c1)
    path 2: 1×1 conv (c2[0]) -> 3×3 conv (c2[1])   the 1×1 cuts the channels first
    path 3: 1×1 conv (c3[0]) -> 5×5 conv (c3[1])   so the big kernels stay cheap
    path 4: 3×3 max pool (stride 1) -> 1×1 conv (c4)

    Every path keeps H and W (padding), so (N, in_channels, H, W) ->
    (N, c1 + c2[1] + c3[1] + c4, H, W).
    """

    def __init__(self, in_channels, c1, c2, c3, c4):
        super().__init__()
        self.p1_1 = nn.Conv2d(in_channels, c1, kernel_size=1)
        self.p2_1 = nn.Conv2d(in_channels, c2[0], kernel_size=1)
        self.p2_2 = nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1)
        self.p3_1 = nn.Conv2d(in_channels, c3[0], kernel_size=1)
        self.p3_2 = nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2)
        self.p4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.p4_2 = nn.Conv2d(in_channels, c4, kernel_size=1)

    def forward(self, x):
        p1 = F.relu(self.p1_1(x))
        p2 = F.relu(self.p2_2(F.relu(self.p2_1(x))))
        p3 = F.relu(self.p3_2(F.relu(self.p3_1(x))))
        p4 = F.relu(self.p4_2(self.p4_1(x)))
        return tc.cat((p1, p2, p3, p4), dim=1)


def googlenet(in_channels=1, num_classes=10):
    """d2l's GoogLeNet: ``Sequential(b1, b2, b3, b4, b5, Linear(1024, num_classes))``.

    The stem and every max pool between the stages halve H and W (96 -> 3
    before b5); b5 ends in global average pooling, so b5 gives (N, 1024)
    features whatever the input size.
    """
    def halve():
        return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    b1 = nn.Sequential(nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
                       nn.ReLU(), halve())
    b2 = nn.Sequential(nn.Conv2d(64, 64, kernel_size=1), nn.ReLU(),
                       nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.ReLU(), halve())
    b3 = nn.Sequential(Inception(192, 64, (96, 128), (16, 32), 32),
                       Inception(256, 128, (128, 192), (32, 96), 64),
                       halve())
    b4 = nn.Sequential(Inception(480, 192, (96, 208), (16, 48), 64),
                       Inception(512, 160, (112, 224), (24, 64), 64),
                       Inception(512, 128, (128, 256), (24, 64), 64),
                       Inception(512, 112, (144, 288), (32, 64), 64),
                       Inception(528, 256, (160, 320), (32, 128), 128),
                       halve())
    b5 = nn.Sequential(Inception(832, 256, (160, 320), (32, 128), 128),
                       Inception(832, 384, (192, 384), (48, 128), 128),
                       nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
    return nn.Sequential(b1, b2, b3, b4, b5, nn.Linear(1024, num_classes))
