"""``tinygrad_cnn.nn.functional`` (import as ``F``): the ops as PyTorch names them."""
from ..ops.batchnorm import batch_norm
from ..ops.conv import conv2d
from ..ops.dropout import dropout
from ..ops.elementwise import relu, sigmoid, tanh
from ..ops.loss import cross_entropy, log_softmax, mse_loss, nll_loss, softmax
from ..ops.matmul import linear
from ..ops.pooling import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d
from ..ops.shape import pad

__all__ = ["adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "batch_norm",
           "conv2d", "cross_entropy", "dropout", "linear", "log_softmax", "max_pool2d",
           "mse_loss", "nll_loss", "pad", "relu", "sigmoid", "softmax", "tanh"]
