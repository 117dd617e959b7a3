"""Work split into shares over threads: the CPU set's ``matmul``,
``map_chunks`` and ``concatenate`` (the interface of ``shares_numpy``).

Both answer one problem: small pieces of work cut up over threads spend as
much time handing out parts and waiting for the slowest as computing.

``matmul``: NumPy's ``a @ b`` on a stack of matrices calls BLAS once per
matrix, one after another, and OpenBLAS splits each of those products over
its threads.  A convolution's stacked products are small -- Winograd's 16
products (O, C) @ (C, tiles) of one chunk of the batch, a 1×1 convolution's
(O, C) @ (C, H·W) per image -- and ResNet-18's (64, 64) @ (64, 1728) ran no
faster on 2 threads than on 1.  Here the stack is cut instead: each thread
runs whole products of its share of the stack with BLAS on one thread
(``threads.single_threaded_blas``), the calling thread one share,
``threads.thread_pool()`` the others; BLAS releases the GIL, so the shares
run side by side.  A single product of middling size (a tiny map's dense
convolution: ``conv_dense.py``; from two shares of
MIN_MULTIPLY_ADDS_PER_PRODUCT_SHARE) is cut the same way, into shares of a's
rows or of b's columns (``_cut_axis``): OpenBLAS's own threads, asleep
between products, took longer to join in than such a product takes.

``matmuls``: a layer's backward makes two products that do not depend on
each other, dx = dy W and dW = dyᵀ x.  Where each is a single product too
small for ``matmul`` to cut into shares but large enough to pay for a
hand-over (LeNet's fully connected layers), the two run side by side, each
whole on a thread of its own with BLAS on one thread: each packs its own
operands once, where two shares of one product each pack all of the operand
not cut, and that cost LeNet's shares their gain.

``map_chunks``: a convolution runs its chunks of the batch one after
another, and each chunk is several short steps (im2col or a Winograd
transform, the products, col2im or the output transform), each spread over
all threads and waited for before the next starts; the threads idle at every
hand-over.  Here whole chunks are the shares (``threads.map_in_shares``):
each thread runs every step of its chunk on its own -- the compiled loops'
one-thread versions (``jit.for_shares``), BLAS on one thread -- and takes
the next chunk when done.

``concatenate``: NumPy copies on one thread.  Joined along any axis but
the first (DenseNet's and GoogLeNet's channels), the batch is cut into
slices that copy side by side, as the other loops that only move memory do
(``threads.stream_slices``: from ``threads.STREAM_MIN_BYTES`` read and
written); NumPy's copy releases the GIL.

``transpose``: the same for a transposing copy (ResNet-18's last-stage
weights laid out tap by tap, 9.4 MB, and their gradients back, three of
each per step, each on the calling thread alone until then), its long axis
cut into slices; within a slice the copy goes TRANSPOSE_BLOCK rows (or
columns) at a time, so that a block's nine short output rows stay in the
cache while it is written (NumPy's one copy of a whole weight ran no
faster on one thread: benchmarks/results.md, "Where the threads' time
goes").

Stacks or batches too short to share, one thread, work already inside a
share, and anything but NumPy float32/float64 arrays go to the reference
(the measurements are in benchmarks/results.md: "Figures behind design
choices in kernels/" and "Whole pieces of work per thread").
"""
import functools
import math

import numpy as np

from . import shares_numpy, threads
from .jit import compilable

# Below this many multiply-adds per thread the hand-over to the pool (tens of
# microseconds) costs about what the products do.
MIN_MULTIPLY_ADDS_PER_THREAD = 2**20
# ... and eight times that for a share of a single product: each share's BLAS
# call first copies all of the operand not cut, and in a training step a share
# for the pool started late and ran slower beside the caller's than alone, so
# that LeNet's fully connected products gained nothing in two shares, where
# the dense convolutions' larger ones did (benchmarks/results.md, "A single
# product in shares").
MIN_MULTIPLY_ADDS_PER_PRODUCT_SHARE = 2**23

# Below this many multiply-adds a single product runs in shares (``_parts``), or,
# too small for two, with BLAS on the calling thread alone: in a training step
# OpenBLAS's threads, asleep between products, took longer to join in than they
# saved on such products (LeNet's fully connected layers; benchmarks/results.md,
# "Small products with BLAS on the calling thread").
BLAS_MIN_MULTIPLY_ADDS = 2**25

# From this many multiply-adds each, independent single products run side by
# side (``matmuls``): LeNet's second fully connected layer's 2.6M gained so.
MIN_MULTIPLY_ADDS_SIDE_BY_SIDE = 2**21

# Rows (or columns) of a 2-D array per block of ``transpose``'s copy.
TRANSPOSE_BLOCK = 4096

# Below this many rows, a @ b with b a transposed view runs faster as (bᵀ @ aᵀ)ᵀ
# (``product``); from about 200 rows the two orders ran alike, and the copy
# into C order then costs more than the reorder gains.
FEW_ROWS = 128


def matmul(a, b, out=None):
    """``shares_numpy.matmul``: ``a @ b`` over stacks, the stack's leading axis
    split over threads, a single product's rows or columns likewise; a small
    product on the calling thread alone."""
    shape = _result_shape(a, b)
    if shape is None:
        return product(a, b, out)
    multiply_adds = _multiply_adds(a, shape)
    axis = _cut_axis(a, b, shape)
    parts = _parts(shape, axis, multiply_adds, out, a.dtype)
    if parts > 1:
        return _in_shares(a, b, out, shape, axis, parts)
    if threads.get_num_threads() > 1:
        if multiply_adds < BLAS_MIN_MULTIPLY_ADDS:
            with threads.single_threaded_blas():
                return product(a, b, out)
        threads.park_thread_pool()          # BLAS's threads need the cores
    return product(a, b, out)


def matmuls(pairs):
    """``shares_numpy.matmuls``: the products side by side (``threads.run_all``),
    each whole with BLAS on one thread, where there are threads for them and
    each is a single product ``_side_by_side`` takes; else one after another
    through ``matmul``, which may cut each into shares."""
    if len(pairs) < 2 or threads.numba_threads() < 2 \
            or not all(_side_by_side(a, b) for a, b in pairs):
        return [matmul(a, b) for a, b in pairs]
    results = [None] * len(pairs)

    def run(i, a, b):
        results[i] = product(a, b)

    with threads.single_threaded_blas():
        threads.run_all([functools.partial(run, i, a, b) for i, (a, b) in enumerate(pairs)])
    return results


def _side_by_side(a, b):
    """Whether ``matmuls`` may run ``a @ b`` whole beside other products: a
    single 2-D product (outside a share, NumPy float arrays of one dtype) of
    at least MIN_MULTIPLY_ADDS_SIDE_BY_SIDE multiply-adds that ``matmul``
    would run whole on one thread -- not cut into shares, nor handed to
    BLAS's threads."""
    shape = _result_shape(a, b)
    if shape is None or len(shape) != 2:
        return False
    multiply_adds = _multiply_adds(a, shape)
    return (MIN_MULTIPLY_ADDS_SIDE_BY_SIDE <= multiply_adds < BLAS_MIN_MULTIPLY_ADDS
            and _parts(shape, _cut_axis(a, b, shape), multiply_adds, None, a.dtype) == 1)


def _multiply_adds(a, shape):
    """The multiply-adds of ``a @ b`` whose result has ``shape``."""
    return math.prod(shape) * a.shape[-1]


def _result_shape(a, b):
    """The shape of ``a @ b`` where this module may run it its own way:
    outside a share, NumPy float arrays of one dtype, both at least 2-D with
    matching inner lengths and stacks that broadcast; else None (NumPy's
    matmul then runs it, or raises its own error).  Kept cheap: it runs
    before every product, and a fully connected layer's products take
    microseconds."""
    if threads.in_share() or not (compilable(a, b) and a.dtype == b.dtype and a.ndim >= 2
                                  and b.ndim >= 2 and a.shape[-1] == b.shape[-2]):
        return None
    if a.ndim == 2 and b.ndim == 2:         # no stack: no broadcasting to work out
        return (a.shape[0], b.shape[1])
    try:
        stack = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        return None
    return stack + (a.shape[-2], b.shape[-1])


def _cut_axis(a, b, shape):
    """The axis of the result ``shape`` that shares cut: the stack's leading
    one; for a single product, a's rows where a is the larger operand, else
    b's columns.  Each share's BLAS call first copies all of the operand it
    does not cut into blocks of its own ("packing"), so the smaller operand
    is the one to copy once per share."""
    return 0 if len(shape) > 2 or a.size >= b.size else 1


def _parts(shape, axis, multiply_adds, out, dtype):
    """How many shares to cut ``a @ b`` (result ``shape``) into along its
    ``axis`` (``_cut_axis``): as many as threads, at most the axis's length,
    and no more than give each share MIN_MULTIPLY_ADDS_PER_THREAD (of a single
    product: MIN_MULTIPLY_ADDS_PER_PRODUCT_SHARE); 1 (not cut) where that
    leaves fewer than 2, for a single product from BLAS_MIN_MULTIPLY_ADDS
    (OpenBLAS's threads split it), or for an ``out`` that is not a C-ordered
    array of the result's shape and dtype.

    A single product was once never cut: each share started only after a
    pool thread woke and took the GIL, which cost as much as the share saved
    (benchmarks/results.md, "Cores busy, and products too small for
    threads"); since the pool hands jobs over without a sleep for the GIL
    (kernels/spinning_pool.py), shares of one product pay (benchmarks/
    results.md, "A single product in shares")."""
    if len(shape) == 2 and multiply_adds >= BLAS_MIN_MULTIPLY_ADDS:
        return 1
    if out is not None and not (isinstance(out, np.ndarray) and out.shape == shape
                                and out.dtype == dtype and out.flags.c_contiguous):
        return 1
    least = MIN_MULTIPLY_ADDS_PER_THREAD if len(shape) > 2 else MIN_MULTIPLY_ADDS_PER_PRODUCT_SHARE
    return max(1, min(shape[axis], threads.numba_threads(), multiply_adds // max(1, least)))


def _in_shares(a, b, out, shape, axis, parts):
    """``a @ b`` into ``out`` (a new array if None), the result's ``axis``
    cut into ``parts`` shares that run side by side (``threads.run_all``),
    BLAS on one thread in each: shares of the stack, or of a single product's
    rows of a or columns of b (all of the other operand in each)."""
    if out is None:
        out = np.empty(shape, dtype=a.dtype)
    bounds = [shape[axis] * p // parts for p in range(parts + 1)]
    batch_ndim = len(shape) - 2

    def share(lo, hi):
        if batch_ndim > 0:
            product(_rows(a, lo, hi, batch_ndim), _rows(b, lo, hi, batch_ndim), out=out[lo:hi])
        elif axis == 0:
            product(a[lo:hi], b, out=out[lo:hi])
        else:               # out's columns lo:hi: rows apart by out's row, as BLAS can write
            product(a, b[:, lo:hi], out=out[:, lo:hi])

    with threads.single_threaded_blas():
        threads.run_all([functools.partial(share, lo, hi) for lo, hi in zip(bounds, bounds[1:])])
    return out


def product(a, b, out=None):
    """``shares_numpy.matmul(a, b, out)`` (NumPy's) for one thread's share, in
    the order OpenBLAS runs fastest.  A product with few rows and more columns
    (M < FEW_ROWS, M < N) whose b is a transposed view (its columns contiguous,
    as in the weight gradient dW = dy @ colᵀ of a layer with few output
    channels) is computed as (bᵀ @ aᵀ)ᵀ and copied into a C-ordered result:
    the same sums, in a layout OpenBLAS ran much faster on such shapes
    (benchmarks/results.md, "Weight gradients of thin layers")."""
    thin = (compilable(a, b) and a.ndim >= 2 and b.ndim >= 2
            and a.shape[-2] < min(FEW_ROWS, b.shape[-1]))
    if not (thin and b.shape[-2] > 1 and b.swapaxes(-1, -2).flags.c_contiguous):
        return shares_numpy.matmul(a, b, out=out)
    transposed = np.matmul(b.swapaxes(-1, -2), a.swapaxes(-1, -2)).swapaxes(-1, -2)
    if out is None:
        return np.ascontiguousarray(transposed)
    if out.shape != transposed.shape:
        return shares_numpy.matmul(a, b, out=out)      # NumPy's error for a wrong out
    np.copyto(out, transposed)
    return out


def _rows(operand, lo, hi, batch_ndim):
    """The operand's share of the stack: its rows lo:hi of the leading stack
    axis, or all of it where it is broadcast along that axis (fewer stack
    axes than the result, or length 1 there)."""
    if operand.ndim - 2 < batch_ndim or operand.shape[0] == 1:
        return operand
    return operand[lo:hi]


def map_chunks(x, work, chunks, combine=None):
    """``shares_numpy.map_chunks``: ``work(chunk)`` for each chunk, the chunks
    run side by side as shares (results in the chunks' order, or folded in
    that order by ``combine`` as they come)."""
    if (len(chunks) < 2 or threads.numba_threads() < 2 or threads.in_share()
            or not compilable(x)):
        return shares_numpy.map_chunks(x, work, chunks, combine)
    return threads.map_in_shares(work, chunks, lambda results: shares_numpy.fold(results,
                                                                                combine))


def concatenate(arrays, axis=0):
    """``shares_numpy.concatenate``: joined along an axis past the first, the
    batch's slices copied side by side."""
    arrays = tuple(arrays)
    shape = _joined_shape(arrays, axis)
    if shape is None:
        return shares_numpy.concatenate(arrays, axis)
    out_bytes = math.prod(shape) * arrays[0].itemsize
    cut = threads.stream_slices(shape[0], 2 * out_bytes)
    if len(cut) == 1:
        return shares_numpy.concatenate(arrays, axis)
    out = np.empty(shape, dtype=arrays[0].dtype)
    axis %= out.ndim
    threads.run_all([functools.partial(_concatenate_slice, arrays, axis, out, lo, hi)
                     for lo, hi in cut])
    return out


def _joined_shape(arrays, axis):
    """The shape of ``arrays`` joined along ``axis`` where this module may
    copy them its own way: outside a share, NumPy float arrays of one dtype
    and one number of axes, alike but along ``axis``, which is not the first;
    else None (NumPy then joins them, or raises its own error)."""
    if not arrays or threads.in_share() or not compilable(*arrays):
        return None
    first = arrays[0]
    if not (isinstance(axis, int) and first.ndim >= 2 and -first.ndim <= axis < first.ndim
            and axis % first.ndim != 0):
        return None
    axis %= first.ndim

    def others(a):                  # the lengths of every axis but the joined one
        return a.shape[:axis] + a.shape[axis + 1:]
    for a in arrays:
        if a.dtype != first.dtype or a.ndim != first.ndim or others(a) != others(first):
            return None
    shape = list(first.shape)
    shape[axis] = sum(a.shape[axis] for a in arrays)
    return tuple(shape)


def _concatenate_slice(arrays, axis, out, lo, hi):
    np.concatenate([a[lo:hi] for a in arrays], axis=axis, out=out[lo:hi])


def transpose(a):
    """``shares_numpy.transpose``: aᵀ copied in blocks along a's longer axis,
    slices of those blocks side by side where the copy is large (module
    docstring)."""
    if a.ndim != 2 or threads.in_share() or not compilable(a):
        return shares_numpy.transpose(a)
    out = np.empty(a.shape[::-1], dtype=a.dtype)
    by_rows = a.shape[0] >= a.shape[1]
    cut = threads.stream_slices(a.shape[0 if by_rows else 1], 2 * a.nbytes)
    threads.run_all([functools.partial(_transpose_slice, a, out, by_rows, lo, hi)
                     for lo, hi in cut])
    return out


def _transpose_slice(a, out, by_rows, lo, hi):
    """out = aᵀ over a's rows lo:hi (``by_rows``) or columns lo:hi, a block at a time."""
    for start in range(lo, hi, TRANSPOSE_BLOCK):
        stop = min(start + TRANSPOSE_BLOCK, hi)
        if by_rows:
            out[:, start:stop] = a[start:stop].T
        else:
            out[start:stop] = a[:, start:stop].T
