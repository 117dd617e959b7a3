"""ResNet-18 (d2l 7.6): residual blocks, y = relu(F(x) + x).

A residual block learns the change to its input instead of a whole new function;
a 1x1 convolution on the shortcut matches the shapes when a block changes the
channels or halves H and W.  ResNet-18 is a 7x7 stem, four stages of two blocks,
global average pooling and a linear layer (lr 0.05, 96x96 input, batch 256).

    python examples/resnet.py --data-dir ../shared/datasets/fashion-mnist
    python examples/resnet.py --quick
"""
import chapter
import models
import tinygrad_cnn as tc
from models.resnet import Residual


def main():
    args = chapter.parser(__doc__.splitlines()[0]).parse_args()
    X = tc.rand(4, 3, 6, 6)
    print("Residual(3, 3) keeps", tuple(X.shape), "->", tuple(Residual(3, 3)(X).shape))
    print("Residual(3, 6, use_1x1conv=True, strides=2) halves it:",
          tuple(Residual(3, 6, use_1x1conv=True, strides=2)(X).shape))
    net = models.get("resnet18")     # the code: models/resnet.py
    chapter.shape_walk(net, (1, 1, 224, 224))
    chapter.train(net, "resnet18", args, quick_shape=(2, 1, 64, 64))


if __name__ == "__main__":
    main()
