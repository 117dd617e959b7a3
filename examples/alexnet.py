"""AlexNet: deeper and wider than LeNet, ReLU, max pooling, dropout (d2l §7.1 Deep
Convolutional Neural Networks (AlexNet),
https://d2l.ai/chapter_convolutional-modern/alexnet.html).

The layer-by-layer shape walk of a 1x1x224x224 image (d2l's table), then training on
Fashion-MNIST resized to 224x224 (lr 0.01, 10 epochs, batch 128).
With --quick: the walk, then one step on two random 224x224 images.

    python examples/alexnet.py --data-dir ../shared/datasets/fashion-mnist
    python examples/alexnet.py --quick
"""
import chapter
import models


def main():
    args = chapter.parser(__doc__.splitlines()[0]).parse_args()
    net = models.get("alexnet")         # the code: models/alexnet.py
    # Conv2d (1, 96, 54, 54) ... MaxPool2d (1, 256, 5, 5), Flatten (1, 6400) ...:
    # the 11x11 stride-4 first layer shrinks the image fast, and the last pool must
    # leave 256x5x5 for Linear(6400, 4096) -- hence the 224x224 input.
    chapter.shape_walk(net, (1, 1, 224, 224))
    chapter.train(net, "alexnet", args, quick_shape=(2, 1, 224, 224))


if __name__ == "__main__":
    main()
