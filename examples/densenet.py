"""DenseNet (d2l 7.7): each layer's output is concatenated to its input.

A dense block of ``num_convs`` BN-ReLU-3x3-conv layers grows the channels by the
growth rate ``num_channels`` per layer; a transition block (BN, 1x1 conv, 2x2 average
pool) then halves the channels and H and W.  Four dense blocks of 4 layers, growth
rate 32 (lr 0.1, 96x96 input, batch 256).

    python examples/densenet.py --data-dir ../shared/datasets/fashion-mnist
    python examples/densenet.py --quick
"""
import chapter
import models
import tinygrad_cnn as tc
from models.densenet import DenseBlock, transition_block


def main():
    args = chapter.parser(__doc__.splitlines()[0]).parse_args()
    X = tc.rand(4, 3, 8, 8)
    Y = DenseBlock(2, 3, 10)(X)
    print("DenseBlock(2, 3, 10):", tuple(X.shape), "->", tuple(Y.shape), "(3 + 2 x 10 channels)")
    print("transition_block(23, 10):", tuple(Y.shape), "->",
          tuple(transition_block(23, 10)(Y).shape))
    net = models.get("densenet")     # the code: models/densenet.py
    chapter.shape_walk(net, (1, 1, 96, 96))
    chapter.train(net, "densenet", args, quick_shape=(2, 1, 64, 64))


if __name__ == "__main__":
    main()
