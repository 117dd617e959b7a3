"""Reference stacked matrix product: ``matmul(a, b, out=None)`` = ``a @ b``.

The convolutions' products come in stacks: Winograd's 16 products
(16, O, C) @ (16, C, T), a 1×1 convolution's one product per image
(O, C) @ (N, C, H·W), broadcast the NumPy way (the leading axes of the two
operands broadcast against each other; a missing axis counts as 1).  The
reference is NumPy's (or CuPy's) ``matmul`` itself: BLAS is called once per
matrix of the stack, and splits each product over its own threads.
``matmul_threads.py`` splits the stack over threads instead.

Signature
---------
matmul(a, b, out=None) -> y        a (..., M, K), b (..., K, N) -> y (..., M, N);
                                   written into ``out`` when given
"""
from .arrays import get_array_module


def matmul(a, b, out=None):
    """``a @ b`` over stacks of matrices, broadcast as NumPy's ``matmul`` does."""
    return get_array_module(a, b).matmul(a, b, out=out)
