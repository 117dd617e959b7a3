"""Batch normalisation (d2l 7.5): d2l's from-scratch layer next to the library's.

``models/lenet.py`` holds d2l's ``batch_norm`` function and ``BatchNorm`` layer,
written with tensor ops (autograd derives the backward), and ``lenet_bn`` uses the
library's ``nn.BatchNorm2d``/``nn.BatchNorm1d`` (a hand-derived backward, see
docs/batchnorm.md).  Given the same weights the two networks compute the same
outputs; their running statistics agree up to two conventions: d2l's momentum 0.9
weighs the old estimate where PyTorch's 0.1 weighs the new batch (the same average),
and PyTorch's running variance takes the unbiased batch variance, m/(m - 1) times d2l's.
Then BN-LeNet trains (lr 1.0, batch 256) and prints the first layer's learned scale
and shift, as d2l does.

    python examples/batchnorm.py --data-dir ../shared/datasets/fashion-mnist
    python examples/batchnorm.py --quick
"""
import numpy as np

import chapter
import models
import tinygrad_cnn as tc
from models.lenet import BatchNorm


def copy_weights(concise, scratch):
    """Give the from-scratch network the concise one's weights, layer by layer."""
    for ours, theirs in zip(scratch, concise):
        if isinstance(ours, BatchNorm):          # gamma, beta are (1, C) or (1, C, 1, 1)
            ours.gamma.data[...] = theirs.weight.data.reshape(ours.gamma.shape)
            ours.beta.data[...] = theirs.bias.data.reshape(ours.beta.shape)
        else:
            for mine, source in zip(ours.parameters(), theirs.parameters()):
                mine.data[...] = source.data


def compare(concise, scratch, X):
    copy_weights(concise, scratch)
    difference = np.abs(concise(X).data - scratch(X).data).max()
    print(f"same weights, same batch: outputs differ by at most {difference:.2e}")
    m = X.shape[0] * 24 * 24          # values per channel after the first 5x5 conv
    d2l_mean = scratch[1].moving_mean.data.ravel()
    d2l_var = scratch[1].moving_var.data.ravel()
    ours_mean, ours_var = concise[1].running_mean.data, concise[1].running_var.data
    print(f"running means agree to {np.abs(d2l_mean - ours_mean).max():.2e}; "
          f"(ours - 0.9)/(d2l's - 0.9) = {np.mean((ours_var - 0.9) / (d2l_var - 0.9)):.6f}"
          f" = m/(m - 1) = {m / (m - 1):.6f}")


def main():
    args = chapter.parser(__doc__.splitlines()[0]).parse_args()
    concise, scratch = models.get("lenet_bn"), models.get("lenet_bn_scratch")
    compare(concise, scratch, tc.rand(8, 1, 28, 28))
    chapter.train(scratch, "lenet_bn_scratch", args, quick_shape=(16, 1, 28, 28))
    print("gamma of the first BN layer:", np.round(scratch[1].gamma.data.ravel(), 3))
    print("beta of the first BN layer: ", np.round(scratch[1].beta.data.ravel(), 3))


if __name__ == "__main__":
    main()
