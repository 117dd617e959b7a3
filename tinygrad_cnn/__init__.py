"""tinygrad_cnn: a small, readable deep-learning engine for CNNs on NumPy/CuPy."""
# kernels first: it quiets OpenBLAS's threads (kernels/threads.py)
from kernels import set_kernels
from kernels.threads import get_num_threads, set_num_threads
from . import backend
from .autograd import detect_anomaly, enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .backend import float16, float32, float64, int32, int64, manual_seed, uint8
from .creation import (arange, from_numpy, full, linspace, ones, ones_like, rand, randint,
                       randn, tensor, zeros, zeros_like)
from .tensor import Tensor
from .ops.elementwise import abs, clamp, exp, log, relu, sigmoid, sqrt, tanh
from .ops.loss import log_softmax, softmax
from .ops.matmul import matmul
from .ops.reduction import amax, amin, argmax, argmin, max, mean, min, sum, var
from .ops.shape import cat, flatten, permute, reshape, squeeze, stack, transpose, unsqueeze
from .gradcheck import gradcheck, gradcheck_module
from .summary import summary
from .tracing import trace
from .profiling import profile
from . import backends, cuda, nn, optim

__version__ = "0.1.0"
bool = backend.bool_
