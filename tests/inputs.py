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
