"""LeNet-5 on Fashion-MNIST (d2l §6.6 Convolutional Neural Networks (LeNet),
https://d2l.ai/chapter_convolutional-neural-networks/lenet.html).

Two convolution blocks (5x5 conv, sigmoid, 2x2 average pooling) and three fully
connected layers.  The script builds it, walks a 28x28 image through it, and trains
it with d2l's settings (lr 0.9, 10 epochs, batch 256), printing d2l's closing lines
and drawing the loss/accuracy curves.

    python examples/lenet.py --data-dir ../shared/datasets/fashion-mnist
    python examples/lenet.py --quick          # random images, a few seconds
"""
import chapter
from tinygrad_cnn import nn


def lenet():
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(),   # 28x28 kept by padding 2
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),                                  # 16 channels x 5 x 5 = 400 features
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, 10))


def main():
    args = chapter.parser(__doc__.splitlines()[0]).parse_args()
    net = lenet()
    chapter.shape_walk(net, (1, 1, 28, 28))
    chapter.train(net, "lenet", args, quick_shape=(16, 1, 28, 28), quick_batches=2)


if __name__ == "__main__":
    main()
