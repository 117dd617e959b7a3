"""VGG (d2l 7.2): networks made of repeated blocks.

A VGG block is ``num_convs`` 3x3 convolutions (padding 1, so H and W stay) with ReLU,
then a 2x2 max pool that halves H and W.  VGG-11 is five blocks, (1, 64), (1, 128),
(2, 256), (2, 512), (2, 512), then three fully connected layers.  d2l trains the
"small" variant with every block's channels divided by 4 (lr 0.05, 224x224 input).

    python examples/vgg.py --data-dir ../shared/datasets/fashion-mnist
    python examples/vgg.py --quick
"""
import chapter
import tinygrad_cnn as tc
from models.vgg import VGG11_ARCH, vgg, vgg_block


def main():
    args = chapter.parser(__doc__.splitlines()[0]).parse_args()
    block = vgg_block(2, 3, 8)
    print("vgg_block(2, 3, 8) maps", (1, 3, 16, 16), "to",
          tuple(block(tc.rand(1, 3, 16, 16)).shape))            # convs keep H, W; the pool halves
    ratio = 4
    small_conv_arch = [(num_convs, channels // ratio) for num_convs, channels in VGG11_ARCH]
    print("conv_arch", VGG11_ARCH, "-> small", small_conv_arch)
    net = vgg(small_conv_arch)
    chapter.shape_walk(net, (1, 1, 224, 224))
    chapter.train(net, "vgg11_small", args, quick_shape=(2, 1, 224, 224))


if __name__ == "__main__":
    main()
