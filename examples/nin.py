"""NiN, network in network (d2l 7.3): no fully connected layers at all.

A NiN block is one ordinary convolution followed by two 1x1 convolutions, which act
as a small fully connected network on each pixel's channels.  The last block has as
many channels as classes, and global average pooling turns each channel into a score
(lr 0.1, 224x224 input).  With --quick the global pool lets the step run on 96x96.

    python examples/nin.py --data-dir ../shared/datasets/fashion-mnist
    python examples/nin.py --quick
"""
import chapter
import models
import tinygrad_cnn as tc
from models.nin import nin_block


def main():
    args = chapter.parser(__doc__.splitlines()[0]).parse_args()
    block = nin_block(1, 96, kernel_size=11, strides=4, padding=0)
    print("nin_block(1, 96, 11, 4, 0) maps", (1, 1, 224, 224), "to",
          tuple(block(tc.rand(1, 1, 224, 224)).shape))
    net = models.get("nin")          # the code: models/nin.py
    chapter.shape_walk(net, (1, 1, 224, 224))
    chapter.train(net, "nin", args, quick_shape=(2, 1, 96, 96))


if __name__ == "__main__":
    main()
