"""Layers as PyTorch names them: ``from tinygrad_cnn import nn; nn.Conv2d(1, 6, 5)``.

``nn.functional`` (import as ``F``) holds the ops the layers call, ``nn.init``
the weight initialisers.
"""
from . import functional, init
from .activation import LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .container import ModuleList, Sequential
from .conv import Conv2d
from .dropout import Dropout
from .linear import Flatten, Identity, Linear
from .module import Module, Parameter
from .normalization import BatchNorm1d, BatchNorm2d, SyncBatchNorm
from .pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d

__all__ = ["AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "BatchNorm1d",
           "BatchNorm2d", "Conv2d", "Dropout", "Flatten", "Identity", "Linear", "LogSoftmax",
           "MaxPool2d", "Module", "ModuleList", "Parameter", "ReLU", "Sequential", "Sigmoid",
           "Softmax", "SyncBatchNorm", "Tanh", "functional", "init"]
