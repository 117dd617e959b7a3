"""``tinygrad_cnn.backends.cuda``: ``torch.backends.cuda``'s switch that applies here.

``matmul.allow_tf32`` (default False, as PyTorch's since 1.12): whether float32
matrix products (``tc.matmul``, ``@``, ``nn.Linear``) on the GPU may use TF32
(``tf32.py``).
"""
from .tf32 import Flag


class _Matmul:
    allow_tf32 = Flag("tinygrad_cnn.backends.cuda.matmul.allow_tf32", False)


matmul = _Matmul()
