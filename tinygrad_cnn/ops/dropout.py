"""Inverted dropout: zero each element with probability p, scale the rest by 1/(1 - p).

Scaling at training time keeps E[y] = x, so evaluation is the identity and
needs no rescaling.  The mask comes from the engine's generator
(``tinygrad_cnn.backend.rng``), so ``tinygrad_cnn.manual_seed`` makes it
reproducible.
"""
import numbers

from ..autograd import Function
from ..backend import get_array_module, rng


class Dropout(Function):
    """y = x·mask/(1 - p),  mask ~ Bernoulli(1 - p) per element;   dx = dy·mask/(1 - p)

    Forward keeps only the scaled mask: it is the whole local derivative.
    p = 1 drops everything (the scale is taken as 0 rather than 1/0).
    """
    def __init__(self, p):
        self.p = p

    def forward(self, x):
        xp = get_array_module(x)
        keep = rng(xp).random(x.shape) >= self.p          # P(keep) = 1 - p
        scale = 1 / (1 - self.p) if self.p < 1 else 0.0
        scaled_mask = keep.astype(x.dtype) * x.dtype.type(scale)
        self.save_for_backward(scaled_mask)
        return x * scaled_mask

    def backward(self, gy):
        scaled_mask, = self.saved
        return gy * scaled_mask


def dropout(input, p=0.5, training=True):
    """PyTorch's ``F.dropout``: inverted dropout when ``training``, else ``input`` itself."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        raise ValueError(f"dropout: probability p must be between 0 and 1, got p={p!r}")
    if input.dtype.kind != "f":
        raise TypeError(f"dropout: expected a floating-point input, got dtype {input.dtype}")
    if not training or p == 0:
        return input
    return Dropout(float(p))(input)
