"""GoogLeNet (d2l 7.4): Inception blocks, four parallel paths concatenated.

Each Inception block runs a 1x1, a 1x1-then-3x3, a 1x1-then-5x5 and a 3x3-max-pool-
then-1x1 path side by side and concatenates their channels; the 1x1 convolutions cut
the channels before the big kernels.  Five stages b1..b5, global average pooling and
one linear layer (lr 0.1, 96x96 input, batch 128).

    python examples/googlenet.py --data-dir ../shared/datasets/fashion-mnist
    python examples/googlenet.py --quick
"""
import chapter
import models
import tinygrad_cnn as tc
from models.googlenet import Inception


def main():
    args = chapter.parser(__doc__.splitlines()[0]).parse_args()
    block = Inception(192, 64, (96, 128), (16, 32), 32)     # b3's first block
    print("Inception(192, 64, (96, 128), (16, 32), 32) maps", (1, 192, 28, 28), "to",
          tuple(block(tc.rand(1, 192, 28, 28)).shape), "(64 + 128 + 32 + 32 channels)")
    net = models.get("googlenet")    # the code: models/googlenet.py
    chapter.shape_walk(net, (1, 1, 96, 96))
    chapter.train(net, "googlenet", args, quick_shape=(2, 1, 64, 64))


if __name__ == "__main__":
    main()
