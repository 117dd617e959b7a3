"""Test inputs shared by the suite."""
import numpy as np


def distinct(*shape, seed=0, low=-2.0, high=2.0, dtype=np.float64):
    """Shuffled evenly spaced values: no ties and no two values closer than
    (high - low) / size, so max/ReLU kinks never sit within a finite-difference
    step of an input and argmax is unambiguous."""
    size = int(np.prod(shape)) if shape else 1
    values = np.linspace(low, high, size, dtype=np.float64)
    np.random.default_rng(seed).shuffle(values)
    return values.reshape(shape).astype(dtype)


class RandomImages:
    """A dataset of ``n`` standard-normal 1×28×28 images with labels 0-9 (a
    DataLoader's input for training-loop tests that need no real data)."""
    def __init__(self, n, seed=3):
        rng = np.random.default_rng(seed)
        self.X = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
        self.y = rng.integers(0, 10, n)

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], self.y[i]
