"""Reference of the work ``shares_threads.py`` splits over threads: a stack of
matrix products, the chunks of a batch a convolution runs one by one, and
the concatenation of arrays.

``matmul(a, b, out=None)`` = ``a @ b``.  The convolutions' products come in
stacks: Winograd's 16 products (16, O, C) @ (16, C, T), a 1×1 convolution's
one product per image (O, C) @ (N, C, H·W), broadcast the NumPy way (the
leading axes of the two operands broadcast against each other; a missing
axis counts as 1).  The reference is NumPy's (or CuPy's) ``matmul`` itself:
BLAS is called once per matrix of the stack, and splits each product over
its own threads.

``matmuls(pairs)`` = ``[a @ b for a, b in pairs]``: products that do not
depend on each other, as a layer's backward makes (dx = dy W and dW = dyᵀ x):
one after another here, side by side in ``shares_threads.py``.

``map_chunks(x, work, chunks)`` = ``[work(chunk) for chunk in chunks]``: a
convolution cuts its batch into chunks (``geometry.batch_chunks``) and runs
``work`` -- im2col or the Winograd transforms, the products, the way back --
on one chunk after another; ``x`` is the batch, which says where the work
runs (NumPy or CuPy).  Here each chunk's kernels spread over the threads
themselves.

With ``combine``, map_chunks folds the results into one as they come, in
the chunks' order: ``total = combine(total, work(chunk))``, from
``total = None``.  A convolution's backward sums its chunks' weight
gradients so: each is as large as the weights (Winograd's 16 times), and a
list of all of them would hold as many copies as there are chunks.

``concatenate(arrays, axis)`` = NumPy's (or CuPy's) ``concatenate``: the
channels of DenseNet's and GoogLeNet's blocks joined (``torch.cat``), one
copy of every input.

``transpose(a)`` = ``a.T`` of a 2-D array as a new C-ordered array: a
weight laid out tap by tap, (O·C, KH·KW) -> (KH·KW, O·C), and its gradient
back (``tinygrad_cnn/ops/conv_taps.py``), one copy.

Signatures
----------
matmul(a, b, out=None) -> y        a (..., M, K), b (..., K, N) -> y (..., M, N);
                                   written into ``out`` when given
matmuls(pairs) -> [a @ b for (a, b) in pairs]
map_chunks(x, work, chunks, combine=None)
    -> [work(chunk) for chunk in chunks], or with ``combine`` the fold
       total = combine(total, work(chunk)) over the chunks in order, from None
concatenate(arrays, axis=0) -> y   the arrays joined along ``axis``
transpose(a) -> y                  a (R, C) -> y (C, R) = aᵀ, C-ordered
"""
from .arrays import get_array_module


def matmul(a, b, out=None):
    """``a @ b`` over stacks of matrices, broadcast as NumPy's ``matmul`` does."""
    return get_array_module(a, b).matmul(a, b, out=out)


def matmuls(pairs):
    """``[matmul(a, b) for a, b in pairs]``: independent products, one after another."""
    return [matmul(a, b) for a, b in pairs]


def map_chunks(x, work, chunks, combine=None):
    """``work(chunk)`` for each chunk of the batch ``x``, one after another, in
    order: the list of results, or with ``combine`` their fold."""
    return fold(map(work, chunks), combine)


def fold(results, combine):
    """``list(results)``, or with ``combine`` the running total over them in
    order (each result dropped once folded in)."""
    if combine is None:
        return list(results)
    total = None
    for result in results:
        total = combine(total, result)
    return total


def concatenate(arrays, axis=0):
    """The arrays joined along ``axis``, as NumPy's ``concatenate``."""
    return get_array_module(*arrays).concatenate(arrays, axis=axis)


def transpose(a):
    """aᵀ of a 2-D array, as a new C-ordered array."""
    return get_array_module(a).ascontiguousarray(a.T)
