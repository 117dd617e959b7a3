"""Shape ops: reshape/view/flatten, permute/transpose, squeeze/unsqueeze,
indexing (slices, negative, integer arrays with repeats, boolean masks),
cat/stack, pad — loop references, float64 gradcheck, argument checking."""
import numpy as np
import pytest

import tinygrad_cnn as tc
from tests.inputs import distinct
from tinygrad_cnn import Tensor, gradcheck
from tinygrad_cnn.ops import shape as S


def leaf(shape, device="cpu", seed=0):
    return tc.tensor(distinct(*shape, seed=seed), device=device, requires_grad=True)


def row_major(a):
    """The elements of ``a`` in row-major order, read one at a time."""
    return [float(a[i]) for i in np.ndindex(*a.shape)]


# ---------------------------------------------------------------- reshape family
RESHAPES = [
    ("reshape", (2, 3, 4), lambda x: S.reshape(x, 6, 4), (6, 4)),
    ("reshape-tuple", (2, 3, 4), lambda x: S.reshape(x, (4, -1)), (4, 6)),
    ("reshape-0d", (1, 1), lambda x: S.reshape(x, ()), ()),
    ("view", (2, 6), lambda x: x.view(3, 2, 2), (3, 2, 2)),
    ("flatten", (2, 3, 4), lambda x: S.flatten(x), (24,)),
    ("flatten-1", (2, 3, 4), lambda x: S.flatten(x, 1), (2, 12)),
    ("flatten-0-1", (2, 3, 4), lambda x: S.flatten(x, 0, 1), (6, 4)),
    ("flatten-0d", (), lambda x: S.flatten(x), (1,)),
    ("squeeze", (1, 3, 1, 2), lambda x: S.squeeze(x), (3, 2)),
    ("squeeze-dim", (1, 3, 1, 2), lambda x: S.squeeze(x, -2), (1, 3, 2)),
    ("squeeze-size>1", (1, 3), lambda x: S.squeeze(x, 1), (1, 3)),
    ("unsqueeze-0", (3, 2), lambda x: S.unsqueeze(x, 0), (1, 3, 2)),
    ("unsqueeze-last", (3, 2), lambda x: S.unsqueeze(x, -1), (3, 2, 1)),
    ("unsqueeze-mid", (3, 2), lambda x: S.unsqueeze(x, 1), (3, 1, 2)),
]


@pytest.mark.parametrize("name, shape, op, out_shape", RESHAPES, ids=[r[0] for r in RESHAPES])
def test_reshapes_keep_row_major_order(name, shape, op, out_shape, device):
    x = leaf(shape, device)
    y = op(x)
    assert y.shape == out_shape
    assert row_major(tc.backend.to_device(y.data, "cpu")) == \
        row_major(tc.backend.to_device(x.data, "cpu"))
    gradcheck(op, [x])


PERMUTES = [
    ("permute", (2, 3, 4), lambda x: S.permute(x, 2, 0, 1), (2, 0, 1)),
    ("permute-list", (2, 3, 4), lambda x: S.permute(x, [1, 2, 0]), (1, 2, 0)),
    ("permute-negative", (2, 3, 4), lambda x: S.permute(x, -1, -3, -2), (2, 0, 1)),
    ("transpose", (2, 3, 4), lambda x: S.transpose(x, 0, 2), (2, 1, 0)),
    ("transpose-negative", (2, 3, 4), lambda x: S.transpose(x, -1, -2), (0, 2, 1)),
    ("transpose-2d", (3, 5), lambda x: S.transpose(x, 0, 1), (1, 0)),
    ("T", (2, 3, 4), lambda x: x.T, (2, 1, 0)),
    ("nchw-to-nhwc", (2, 3, 2, 2), lambda x: S.permute(x, 0, 2, 3, 1), (0, 2, 3, 1)),
]


@pytest.mark.parametrize("name, shape, op, axes", PERMUTES, ids=[p[0] for p in PERMUTES])
def test_permutes_move_every_element(name, shape, op, axes, device):
    x = leaf(shape, device)
    y = op(x)
    xd, yd = (tc.backend.to_device(t.data, "cpu") for t in (x, y))
    assert y.shape == tuple(shape[a] for a in axes)
    for i in np.ndindex(*y.shape):     # y[i] = x[j] with j[axes[k]] = i[k]
        j = [0] * len(axes)
        for k, a in enumerate(axes):
            j[a] = i[k]
        assert yd[i] == xd[tuple(j)]
    gradcheck(op, [x])


# ---------------------------------------------------------------- indexing
INDEXES = {
    "int": 1,
    "negative-int": -1,
    "slice": slice(1, None),
    "negative-slice": slice(-3, -1),
    "step-slice": (slice(None), slice(None, None, 2)),
    "reverse-slice": slice(None, None, -1),
    "tuple-mixed": (-1, slice(0, 3)),
    "ellipsis": (Ellipsis, 1),
    "newaxis": (None, slice(1, 3)),
    "int-array": np.array([2, 0]),
    "int-array-repeats": np.array([0, 2, 0, 0]),
    "int-list-repeats": [1, 1, -1],
    "2d-int-arrays": (np.array([0, 1, 1, 2]), np.array([3, 0, 0, 3])),
    "int-array-and-slice": (slice(None), np.array([1, 1, 0])),
    "bool-mask": distinct(3, 4) > 0,
    "bool-row-mask": np.array([True, False, True]),
    "tensor-index": Tensor(np.array([1, 1, 2])),
    "tensor-mask": Tensor(distinct(3, 4, seed=5) > 0.5),
}


def scatter_reference(shape, index, gy):
    """x's gradient the slow way: push each output element back to its source."""
    positions = np.arange(int(np.prod(shape))).reshape(shape)
    raw = index.data if isinstance(index, Tensor) else index
    sources = positions[raw]          # which flat position each output element came from
    gx = np.zeros(int(np.prod(shape)))
    for i in np.ndindex(*sources.shape):
        gx[sources[i]] += gy[i]
    return gx.reshape(shape)


@pytest.mark.parametrize("name", INDEXES)
def test_getitem_forward_and_gradient(name, device):
    index = INDEXES[name]
    x = leaf((3, 4), device)
    y = x[index]
    raw = index.data if isinstance(index, Tensor) else index
    np.testing.assert_array_equal(tc.backend.to_device(y.data, "cpu"),
                                  distinct(3, 4)[raw])
    gy = distinct(*y.shape, seed=2)
    y.backward(tc.tensor(gy, device=device))
    np.testing.assert_allclose(tc.backend.to_device(x.grad.data, "cpu"),
                               scatter_reference((3, 4), index, gy))
    gradcheck(lambda x: x[index], [leaf((3, 4), device)])


def test_repeated_indices_accumulate():
    x = leaf((4,))
    x[np.array([1, 1, 1, 3])].sum().backward()
    np.testing.assert_array_equal(x.grad.data, [0, 3, 0, 1])


def test_index_with_a_tensor_tuple():
    x = leaf((3, 4))
    rows, cols = Tensor(np.array([0, 2])), Tensor(np.array([1, 1]))
    np.testing.assert_array_equal(x[rows, cols].data, distinct(3, 4)[[0, 2], [1, 1]])


# ---------------------------------------------------------------- cat / stack
CATS = [([(2, 3), (4, 3)], 0), ([(2, 3), (2, 1), (2, 2)], 1), ([(2, 3), (2, 3)], -1),
        ([(1, 2, 3), (1, 2, 3), (1, 2, 3)], 1), ([(3,)], 0)]


def loop_cat(arrays, axis):
    """Concatenation as index arithmetic: find which input each output index reads."""
    shape = list(arrays[0].shape)
    shape[axis] = sum(a.shape[axis] for a in arrays)
    out = np.empty(shape)
    for i in np.ndindex(*shape):
        k, offset = 0, i[axis]
        while offset >= arrays[k].shape[axis]:
            offset -= arrays[k].shape[axis]
            k += 1
        out[i] = arrays[k][i[:axis] + (offset,) + i[axis + 1:]]
    return out


@pytest.mark.parametrize("shapes, dim", CATS, ids=str)
def test_cat(shapes, dim, device):
    xs = [leaf(s, device, seed=k) for k, s in enumerate(shapes)]
    y = S.cat(xs, dim)
    axis = dim % len(shapes[0])
    np.testing.assert_array_equal(tc.backend.to_device(y.data, "cpu"),
                                  loop_cat([distinct(*s, seed=k) for k, s in enumerate(shapes)],
                                           axis))
    gradcheck(lambda *xs: S.cat(xs, dim), xs)


def test_cat_with_inputs_that_do_not_require_grad():
    a, b = leaf((2, 2)), Tensor(distinct(1, 2, seed=1))
    gradcheck(lambda a: S.cat([b, a, b], 0), [a])


@pytest.mark.parametrize("shape", [(3,), (2, 3)], ids=str)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_stack(shape, dim, device):
    xs = [leaf(shape, device, seed=k) for k in range(3)]
    y = S.stack(xs, dim)
    axis = dim % (len(shape) + 1)
    assert y.shape == shape[:axis] + (3,) + shape[axis:]
    yd = tc.backend.to_device(y.data, "cpu")
    for k in range(3):
        for i in np.ndindex(*shape):
            assert yd[i[:axis] + (k,) + i[axis:]] == distinct(*shape, seed=k)[i]
    gradcheck(lambda *xs: S.stack(xs, dim), xs)


def test_cat_and_stack_are_exported():
    assert tc.cat is S.cat and tc.stack is S.stack


# ---------------------------------------------------------------- pad
@pytest.mark.parametrize("shape, pad, value", [((2, 3), (1, 2), 0.0), ((2, 3), (0, 1, 2, 0), 0.5),
                                               ((1, 2, 2, 3), (1, 1, 1, 1), -1.0),
                                               ((1, 2, 3), (0, 0), 0.0)], ids=str)
def test_pad(shape, pad, value, device):
    x = leaf(shape, device)
    y = S.pad(x, pad, value=value)
    widths = [(0, 0)] * len(shape)
    for k in range(len(pad) // 2):   # pairs start from the LAST dim
        widths[len(shape) - 1 - k] = (pad[2 * k], pad[2 * k + 1])
    yd = tc.backend.to_device(y.data, "cpu")
    assert y.shape == tuple(n + lo + hi for n, (lo, hi) in zip(shape, widths))
    for i in np.ndindex(*y.shape):
        j = tuple(k - lo for k, (lo, _) in zip(i, widths))
        inside = all(0 <= k < n for k, n in zip(j, shape))
        assert yd[i] == (distinct(*shape)[j] if inside else value)
    gradcheck(lambda x: S.pad(x, pad, value=value), [x])


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, message", [
    (lambda x: S.reshape(x, 5, 5), r"reshape: cannot reshape a tensor of shape \(2, 3, 4\) "
                                   r"\(24 elements\) into \(5, 5\)"),
    (lambda x: S.reshape(x, -1, 5), r"reshape: .*\(2, 3, 4\).* into \(-1, 5\)"),
    (lambda x: S.reshape(x, -1, -1), r"reshape: .* into \(-1, -1\)"),
    (lambda x: x.view(7), r"reshape: .*\(2, 3, 4\).* into \(7,\)"),
    (lambda x: S.permute(x, 0, 1), r"permute: \(0, 1\) is not a permutation of the 3 dims "
                                   r"of a tensor of shape \(2, 3, 4\)"),
    (lambda x: S.permute(x, 0, 0, 1), r"permute: \(0, 0, 1\) is not a permutation"),
    (lambda x: S.permute(x, 0, 1, 5), r"permute: \(0, 1, 5\) is not a permutation"),
    (lambda x: S.transpose(x, 0, 3), r"transpose: dim 3 is out of range for a tensor with 3"),
    (lambda x: S.squeeze(x, 3), r"squeeze: dim 3 is out of range"),
    (lambda x: S.unsqueeze(x, 5), r"unsqueeze: dim 5 is out of range for a tensor with 4"),
    (lambda x: S.flatten(x, 2, 1), r"flatten: start_dim 2 comes after end_dim 1"),
    (lambda x: S.pad(x, (1, 1, 1)), r"pad: pad \(1, 1, 1\) must hold \(left, right\) pairs"),
    (lambda x: S.pad(x, (1, 1) * 4), r"pad: .*at most 3 dims of shape \(2, 3, 4\)"),
    (lambda x: S.pad(x, (1, -1)), r"pad: negative padding \(1, -1\)"),
    (lambda x: S.pad(x, (1, 1), mode="reflect"), r"pad: only mode='constant'.*'reflect'"),
])
def test_bad_arguments_name_the_op_and_shapes(call, message):
    with pytest.raises(ValueError, match=message):
        call(leaf((2, 3, 4)))


def test_permute_out_of_range_is_not_wrapped():
    # Regression: permute(5, 0) of a 2-D tensor was accepted as permute(1, 0).
    with pytest.raises(ValueError, match=r"permute: \(5, 0\) is not a permutation"):
        S.permute(leaf((2, 3)), 5, 0)


def test_cat_mismatched_shapes():
    with pytest.raises(ValueError, match=r"cat: tensor 1 has shape \(2, 4\) but tensor 0 has "
                                         r"shape \(2, 3\); all sizes except dim 0 must match"):
        S.cat([leaf((2, 3)), leaf((2, 4))], 0)
    with pytest.raises(ValueError, match=r"cat: tensor 1 has shape \(2, 3, 1\)"):
        S.cat([leaf((2, 3)), leaf((2, 3, 1))], 1)
    with pytest.raises(ValueError, match="cat: expected a non-empty list"):
        S.cat([])
    with pytest.raises(ValueError, match="cat: dim 2 is out of range"):
        S.cat([leaf((2, 3))], 2)


def test_stack_mismatched_shapes():
    with pytest.raises(ValueError, match=r"stack: all tensors must have the same shape, got "
                                         r"\[\(2,\), \(3,\)\]"):
        S.stack([leaf((2,)), leaf((3,))])
    with pytest.raises(ValueError, match="stack: expected a non-empty list"):
        S.stack([])


def test_index_out_of_bounds_raises():
    with pytest.raises(IndexError):
        leaf((2, 3))[5]
