"""LeNet (d2l 6.6) and LeNet with batch normalisation (d2l 7.5), twice.

- ``lenet()``: the original recipe — sigmoid activations, average pooling,
  the first conv padded by 2 so a 28×28 Fashion-MNIST image keeps its size.
- ``lenet_bn_scratch()``: BN after every conv/linear layer, with the
  ``BatchNorm`` layer below, written from primitive tensor ops the way d2l
  writes it, to show what a BN layer computes and keeps.
- ``lenet_bn()``: the same network with ``nn.BatchNorm2d``/``nn.BatchNorm1d``.

Module nesting is d2l's (one ``Sequential``), so state-dict keys are
PyTorch's: "0.weight", "1.gamma", "1.moving_mean", …

Output shapes of ``lenet()`` for a (1, 1, 28, 28) input:

    Conv2d (1, 6, 28, 28) -> Sigmoid -> AvgPool2d (1, 6, 14, 14)
    -> Conv2d (1, 16, 10, 10) -> Sigmoid -> AvgPool2d (1, 16, 5, 5)
    -> Flatten (1, 400) -> Linear (1, 120) -> Sigmoid -> Linear (1, 84)
    -> Sigmoid -> Linear (1, 10)

The BN variants drop the first conv's padding (d2l 7.5), so their flattened
features are 16·4·4 = 256.
"""
import numpy as np

import tinygrad_cnn as tc
from tinygrad_cnn import nn


def lenet(in_channels=1, num_classes=10):
    """d2l's LeNet-5 for 28×28 input: 61,706 parameters."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=2), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, num_classes))


# ------------------------------------------------------------ BN from scratch
def batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum, *, training):
    """Batch normalisation from primitive tensor ops; autograd derives its backward.

    X is (N, C) after a linear layer or (N, C, H, W) after a conv; gamma,
    beta, moving_mean and moving_var are (1, C) or (1, C, 1, 1) so they
    broadcast against X.  Returns ``(Y, new_moving_mean, new_moving_var)``,
    the moving statistics as plain tensors outside the graph.

    Training: normalise with the batch's per-feature (per-channel: over N,
    H and W) mean and *biased* variance, and move the running estimates
    towards them with d2l's convention

        moving = momentum · moving + (1 - momentum) · batch_stat   (momentum 0.9)

    which is PyTorch's ``momentum=0.1`` written the other way round.
    Prediction: normalise with the moving statistics instead.

    d2l decides between the two with ``torch.is_grad_enabled()``; here the
    caller says which (``training``, the module's mode), so evaluating under
    grad mode — or training under ``no_grad`` — does what the mode says.
    """
    if not training:
        X_hat = (X - moving_mean) / tc.sqrt(moving_var + eps)
    else:
        if X.ndim not in (2, 4):
            raise ValueError(f"batch_norm: expected a 2-D (N, C) or 4-D (N, C, H, W) "
                             f"input, got shape {X.shape}")
        if X.ndim == 2:
            mean = X.mean(dim=0)
            var = ((X - mean) ** 2).mean(dim=0)
        else:
            # keepdim: the (1, C, 1, 1) statistics broadcast back against X
            mean = X.mean(dim=(0, 2, 3), keepdim=True)
            var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        X_hat = (X - mean) / tc.sqrt(var + eps)
        moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
        moving_var = momentum * moving_var + (1.0 - momentum) * var
    Y = gamma * X_hat + beta
    return Y, moving_mean.detach(), moving_var.detach()


class BatchNorm(nn.Module):
    """d2l's BN layer: learned ``gamma``/``beta`` and the moving statistics.

    ``num_features``: outputs of the linear layer or channels of the conv
    before it; ``num_dims``: 2 for (N, C) input, 4 for (N, C, H, W).

    Unlike d2l (plain attributes), ``moving_mean``/``moving_var`` are
    registered buffers: they go into ``state_dict()`` — a trained network
    needs them to predict — and move with ``to()``.  A state dict saved
    from d2l's PyTorch class lacks them; load it with ``strict=False``.
    """

    def __init__(self, num_features, num_dims):
        super().__init__()
        if num_dims not in (2, 4):
            raise ValueError(f"BatchNorm: num_dims must be 2 (fully connected) or 4 "
                             f"(convolutional), got {num_dims}")
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.gamma = nn.Parameter(np.ones(shape, dtype=np.float32))
        self.beta = nn.Parameter(np.zeros(shape, dtype=np.float32))
        self.register_buffer("moving_mean", tc.zeros(*shape))
        self.register_buffer("moving_var", tc.ones(*shape))

    def forward(self, X):
        Y, self.moving_mean, self.moving_var = batch_norm(
            X, self.gamma, self.beta, self.moving_mean, self.moving_var,
            eps=1e-5, momentum=0.9, training=self.training)
        return Y

    def extra_repr(self):
        return f"{self.gamma.shape[1]}, num_dims={self.gamma.ndim}"


def lenet_bn_scratch(in_channels=1, num_classes=10):
    """d2l 7.5.4: LeNet with the from-scratch ``BatchNorm`` before each sigmoid."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5), BatchNorm(6, num_dims=4), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), BatchNorm(16, num_dims=4), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), BatchNorm(120, num_dims=2), nn.Sigmoid(),
        nn.Linear(120, 84), BatchNorm(84, num_dims=2), nn.Sigmoid(),
        nn.Linear(84, num_classes))


def lenet_bn(in_channels=1, num_classes=10):
    """d2l 7.5.5: the same network with the library's BatchNorm2d/1d."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5), nn.BatchNorm2d(6), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(256, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(),
        nn.Linear(84, num_classes))
