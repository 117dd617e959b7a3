"""Dropout: zero activations at random while training, do nothing in eval mode."""
from . import functional as F
from .module import Module


class Dropout(Module):
    """Zero each element with probability p and scale the rest by 1/(1-p), so
    the expected activation is unchanged and eval mode needs no rescaling.

    Active only in training mode (``model.train()``), whatever the grad mode.
    ``inplace`` is accepted for PyTorch compatibility and ignored.
    """

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout: probability has to be between 0 and 1, but got {p}")
        self.p, self.inplace = p, inplace

    def forward(self, input):
        return F.dropout(input, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"
