"""AlexNet (d2l §7.1 Deep Convolutional Neural Networks (AlexNet),
https://d2l.ai/chapter_convolutional-modern/alexnet.html) and a redesign for
CIFAR-10's 32×32 images.

AlexNet is LeNet made deeper and wider — five convs (11×11, 5×5, then
3×3), ReLU instead of sigmoid, max pooling, two 4096-wide hidden layers
held back by dropout — and it needs a big input: d2l resizes Fashion-MNIST
to 224×224.  The fixed ``Linear(6400, …)`` means the last pool must give
256×5×5, so the input must be 224×224 (up to 227).

Output shapes of ``alexnet()`` for a (1, 1, 224, 224) input:

    Conv2d (1, 96, 54, 54) -> MaxPool2d (1, 96, 26, 26)
    -> Conv2d (1, 256, 26, 26) -> MaxPool2d (1, 256, 12, 12)
    -> 3 × Conv2d (1, 384/384/256, 12, 12) -> MaxPool2d (1, 256, 5, 5)
    -> Flatten (1, 6400) -> Linear (1, 4096) -> Linear (1, 4096) -> Linear (1, 10)

``alexnet_cifar10()`` keeps the layer plan for 3×32×32 images: a 5×5
stride-1 first conv instead of 11×11 stride 4, so the last pool gives
256×3×3.  Its children are ``features`` and ``classifier`` as in torchvision,
so its state-dict keys are "features.0.weight", "classifier.1.weight", ….
"""
from tinygrad_cnn import nn


def alexnet(in_channels=1, num_classes=10):
    """d2l's AlexNet for (N, in_channels, 224, 224): 46,764,746 parameters."""
    return nn.Sequential(
        # a big 11×11 window with stride 4 shrinks the 224×224 image fast
        nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        # padding 2 keeps H and W; more channels
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        # three 3×3 convs, no pooling between them
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Flatten(),
        # the wide fully connected layers hold most parameters: dropout tames them
        nn.Linear(6400, 4096), nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 4096), nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, num_classes))


class AlexNetCIFAR10(nn.Module):
    """AlexNet for (N, 3, 32, 32) CIFAR-10 images.

    features:   (N, 3, 32, 32) -> 96×32×32 -> pool 96×15×15 -> 256×15×15
                -> pool 256×7×7 -> 384×7×7 -> 384×7×7 -> 256×7×7 -> pool 256×3×3
    classifier: Flatten 2304 -> 4096 -> 4096 -> num_classes (dropout 0.5 twice)
    """

    def __init__(self, in_channels=3, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=5, stride=1, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256 * 3 * 3, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def alexnet_cifar10(in_channels=3, num_classes=10):
    """The CIFAR-10 AlexNet (3×32×32 input, hence ``in_channels=3``)."""
    return AlexNetCIFAR10(in_channels, num_classes)
