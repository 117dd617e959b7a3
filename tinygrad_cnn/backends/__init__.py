"""``tinygrad_cnn.backends``: PyTorch's switches for how the GPU computes, with
PyTorch's names and defaults::

    import tinygrad_cnn as tc
    tc.backends.cuda.matmul.allow_tf32 = True   # matmul / linear products (default False)
    tc.backends.cudnn.allow_tf32 = False        # convolution products (default True)

TF32 (Ampere GPUs and later) multiplies float32 matrices on tensor cores with
10-bit mantissas, accumulating in float32: several times faster, with relative
errors near 1e-3 instead of 1e-6.  Our convolutions are cuBLAS matrix products
(im2col), not cuDNN calls, so ``cudnn.allow_tf32`` governs them as PyTorch's
governs its cuDNN convolutions.  The flags change nothing on the CPU, nor for
float64.  How they reach cuBLAS: ``tf32.py``.
"""
from . import cuda, cudnn  # noqa: F401
