"""``tinygrad_cnn.backends.cudnn``: ``torch.backends.cudnn``'s TF32 switch.

``allow_tf32`` (default True, as PyTorch's): whether the float32 matrix products
of convolutions on the GPU may use TF32.  Our convolutions are cuBLAS products
(im2col), not cuDNN calls; this flag governs them as PyTorch's governs its
cuDNN convolutions (``tf32.py``).
"""
import sys
import types

from .tf32 import Flag


class _Module(types.ModuleType):
    allow_tf32 = Flag("tinygrad_cnn.backends.cudnn.allow_tf32", True)


sys.modules[__name__].__class__ = _Module
