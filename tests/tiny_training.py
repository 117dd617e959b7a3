"""A tiny classification problem for the training tests: in-memory images
whose class can be learnt, and a small network with every kind of state
(conv, dropout's random draws, linear)."""
import numpy as np

from tinygrad_cnn import nn

NUM_CLASSES = 3


class TinyImages:
    """``n`` random 1 x 6 x 6 images; the class is which third of the image is
    brightest, so a few epochs learn something."""

    def __init__(self, n, seed=0):
        rng = np.random.default_rng(seed)
        self.images = rng.random((n, 1, 6, 6)).astype(np.float32)
        thirds = self.images[:, 0, :, :6].reshape(n, 6, 3, 2).mean(axis=(1, 3))
        self.targets = thirds.argmax(axis=1).astype(np.int64)

    def __len__(self):
        return len(self.targets)

    def get_batch(self, indices):
        return self.images[indices], self.targets[indices]


def tiny_net(dropout=0.0):
    layers = [nn.Conv2d(1, 4, kernel_size=3, padding=1), nn.ReLU(),
              nn.MaxPool2d(kernel_size=2, stride=2), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(4 * 3 * 3, NUM_CLASSES))


def weights(net):
    """The network's state as NumPy copies, to compare runs."""
    return {key: value.numpy().copy() for key, value in net.state_dict().items()}
