"""Batch normalisation layers: learned scale/shift plus running statistics.

Training:  y = (x - mean_B) / sqrt(var_B + eps) · weight + bias, with the
batch's per-channel statistics, and the running estimates move towards them:

    running = (1 - momentum) · running + momentum · batch_stat
    (running_var takes the unbiased batch variance, as in PyTorch)

``momentum=None`` uses 1/num_batches_tracked instead: a plain cumulative
average of every batch seen.  Eval: the running statistics replace the
batch's, so one example's output no longer depends on the rest of the batch.
"""
import numpy as np

from . import functional as F
from . import init
from .module import Module, Parameter
from .. import distributed
from ..ops import sync_batchnorm
from ..ops.batchnorm import _affine_params
from ..tensor import Tensor


class _BatchNorm(Module):
    """Shared by BatchNorm1d and BatchNorm2d; they differ only in accepted ranks."""
    expected = ""        # the accepted input shapes, for error messages

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, bias=True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        # affine=False: neither γ nor β; bias=False (PyTorch ≥ 2.13): γ only.
        ones, zeros = np.ones(num_features, np.float32), np.zeros(num_features, np.float32)
        self.register_parameter("weight", Parameter(ones) if affine else None)
        self.register_parameter("bias", Parameter(zeros) if affine and bias else None)
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros(num_features, np.float32)))
            self.register_buffer("running_var", Tensor(np.ones(num_features, np.float32)))
            self.register_buffer("num_batches_tracked", Tensor(np.array(0, dtype=np.int64)))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self):
        if self.track_running_stats:
            init.zeros_(self.running_mean)
            init.ones_(self.running_var)
            init.zeros_(self.num_batches_tracked)

    def reset_parameters(self):
        self.reset_running_stats()
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def _check_input(self, input):
        if input.ndim not in self.accepted_ranks:
            raise ValueError(f"{type(self).__name__}: expected {self.expected} input, got "
                             f"{input.ndim}-D input of shape {input.shape}")
        if input.shape[1] != self.num_features:
            raise ValueError(f"{self!r}: expected input with {self.num_features} channels "
                             f"(dim 1), got input of shape {input.shape}")

    def forward(self, input):
        self._check_input(input)
        factor = self.momentum if self.momentum is not None else 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data[...] += 1
            if self.momentum is None:           # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked.data)
        # Batch statistics while training, and in eval when there are no running ones.
        use_batch_stats = self.training or self.running_mean is None
        # Running stats are updated only while training with tracking on.
        update = not self.training or self.track_running_stats
        return F.batch_norm(input, self.running_mean if update else None,
                            self.running_var if update else None, self.weight, self.bias,
                            use_batch_stats, factor, self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Normalise (N, C) or (N, C, L) input per channel C (statistics over N and L)."""
    accepted_ranks, expected = (2, 3), "2-D (N, C) or 3-D (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Normalise (N, C, H, W) input per channel C (statistics over N, H and W)."""
    accepted_ranks, expected = (4,), "4-D (N, C, H, W)"


class SyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of every rank's batch together.

    In training, with a process group of more than one rank
    (``tinygrad_cnn.distributed.init()``), mean and variance are taken over the
    global batch (``ops/sync_batchnorm.py``: one all-reduce forward, one
    backward) and the running statistics follow the global ones, identically on
    every rank.  Otherwise -- eval mode, a single process -- it is BatchNorm,
    as PyTorch's.  Accepts (N, C), (N, C, L) and (N, C, H, W) input.
    """
    accepted_ranks, expected = (2, 3, 4), "2-D (N, C), 3-D (N, C, L) or 4-D (N, C, H, W)"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, *, bias=True):
        if process_group is not None:
            raise ValueError("SyncBatchNorm: only the whole world is supported as the "
                             "process group (process_group=None)")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, bias=bias)

    def forward(self, input):
        synchronise = (self.training and distributed.is_initialized()
                       and distributed.world_size() > 1)
        if not synchronise:
            return super().forward(input)
        self._check_input(input)
        factor = self.momentum if self.momentum is not None else 0.0
        if self.track_running_stats:
            self.num_batches_tracked.data[...] += 1
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked.data)
        if input.dtype.kind != "f":
            raise TypeError(f"SyncBatchNorm: expected a floating-point input, got dtype "
                            f"{input.dtype}")
        gamma, beta = _affine_params(input, self.weight, self.bias)
        buffers = ((self.running_mean.data, self.running_var.data)
                   if self.track_running_stats else (None, None))
        return sync_batchnorm.SyncBatchNorm(self.eps, *buffers, momentum=factor)(
            input, gamma, beta)

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """``module`` with every BatchNorm1d/2d replaced by a SyncBatchNorm holding the
        same parameters (the same Parameter objects) and running statistics."""
        converted = module
        if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
            converted = cls(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group,
                            bias=module.bias is not None)
            if module.affine:
                converted.weight = module.weight
                if module.bias is not None:
                    converted.bias = module.bias
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(converted, name, getattr(module, name))
            converted.training = module.training
        for name, child in module.named_children():
            converted.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return converted
