"""Tensor factories: PyTorch's dtype rules, shapes, devices and seeded draws."""
import numpy as np
import pytest

import tinygrad_cnn as tc

# the Tensor core calls no kernel: run under the first kernel set only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free


# ---------------------------------------------------------------- tensor()
@pytest.mark.parametrize("data, dtype", [
    (np.zeros(3, np.float64), np.float64),     # NumPy arrays keep their dtype
    (np.zeros(3, np.float32), np.float32),
    (np.zeros(3, np.int32), np.int32),
    (np.float64(1.5), np.float64),
    ([np.float64(1.5), 2.0], np.float64),      # a typed value inside a list counts too
    (1.5, np.float32),                         # Python floats -> float32, as PyTorch
    ([1.0, 2.0], np.float32),
    ([[1, 2.5], [3, 4]], np.float32),
    (3, np.int64),                             # Python ints -> int64
    ([1, 2, 3], np.int64),
    (True, np.bool_),
    ([True, False], np.bool_),
])
def test_tensor_dtype_rules(data, dtype):
    t = tc.tensor(data)
    assert t.dtype == dtype
    np.testing.assert_array_equal(t.data, np.asarray(data))


def test_tensor_dtype_argument_overrides():
    assert tc.tensor([1, 2], dtype=tc.float64).dtype == np.float64
    assert tc.tensor(np.ones(2), dtype="float32").dtype == np.float32
    assert tc.tensor([1.7], dtype="int64").tolist() == [1]


def test_unknown_dtype_name_raises():
    with pytest.raises(TypeError, match="unknown dtype 'float99'"):
        tc.tensor([1.0], dtype="float99")


def test_tensor_copies_its_data():
    source = np.ones(3)
    t = tc.tensor(source)
    source[0] = 5
    assert t.tolist() == [1, 1, 1]
    assert tc.tensor(t).data is not t.data


def test_tensor_of_a_list_of_tensors():
    # Regression: this made an object array holding the Tensors.
    losses = [tc.tensor(1.5), tc.tensor(2.5)]
    t = tc.tensor(losses)
    assert t.dtype == np.float32 and t.tolist() == [1.5, 2.5]
    assert tc.tensor([tc.tensor(np.array(1.5))]).dtype == np.float64
    stacked = tc.tensor([tc.tensor(np.ones(2)), tc.tensor(np.zeros(2))])
    assert stacked.shape == (2, 2) and stacked.dtype == np.float64


def test_from_numpy_shares_its_data():
    source = np.ones(3, np.float64)
    t = tc.from_numpy(source)
    source[0] = 5
    assert t.tolist() == [5, 1, 1] and t.dtype == np.float64


def test_tensor_requires_grad_and_device():
    t = tc.tensor([1.0, 2.0], requires_grad=True, device="cpu")
    assert t.requires_grad and t.is_leaf and t.device == "cpu"
    with pytest.raises(TypeError, match="floating-point"):
        tc.tensor([1, 2], requires_grad=True)


# ---------------------------------------------------------------- filled factories
@pytest.mark.parametrize("factory, value", [(tc.zeros, 0.0), (tc.ones, 1.0)])
@pytest.mark.parametrize("size", [((2, 3),), (2, 3), ([4],), (5,), ()], ids=str)
def test_zeros_ones_accept_sizes_as_varargs_or_a_sequence(factory, value, size):
    t = factory(*size)
    expected = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) \
        else tuple(size)
    assert t.shape == expected and t.dtype == np.float32
    assert np.all(t.data == value)


@pytest.mark.parametrize("factory", [tc.zeros, tc.ones, tc.rand, tc.randn])
def test_factory_dtype_and_requires_grad(factory):
    t = factory(2, 2, dtype=tc.float64, requires_grad=True)
    assert t.dtype == np.float64 and t.requires_grad and t.shape == (2, 2)


@pytest.mark.parametrize("bad", [(-1, 2), (2.5,), ("3",)], ids=str)
def test_invalid_sizes_raise(bad):
    with pytest.raises(ValueError, match="invalid size"):
        tc.zeros(*bad)


@pytest.mark.parametrize("fill, dtype", [(2.5, np.float32), (3, np.int64), (True, np.bool_)])
def test_full_infers_dtype_from_the_fill_value(fill, dtype):
    t = tc.full((2, 3), fill)
    assert t.shape == (2, 3) and t.dtype == dtype and np.all(t.data == fill)
    assert tc.full(4, fill).shape == (4,)
    assert tc.full((2,), fill, dtype=tc.float64).dtype == np.float64


@pytest.mark.parametrize("factory, value", [(tc.zeros_like, 0), (tc.ones_like, 1)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_like_factories_copy_shape_and_dtype(factory, value, dtype):
    source = tc.tensor(np.full((2, 1, 3), 7, dtype=dtype))
    t = factory(source)
    assert t.shape == source.shape and t.dtype == dtype and t.device == source.device
    assert np.all(t.data == value)
    assert factory(source, dtype=tc.float32).dtype == np.float32


# ---------------------------------------------------------------- ranges
@pytest.mark.parametrize("args, dtype", [
    ((5,), np.int64), ((2, 7, 2), np.int64), ((0.0, 1.0, 0.25), np.float32),
    ((3, 0, -1), np.int64), ((np.int32(4),), np.int64)])
def test_arange_matches_numpy_and_torch_dtype_rules(args, dtype):
    t = tc.arange(*args)
    assert t.dtype == dtype
    np.testing.assert_allclose(t.data, np.arange(*args))


def test_arange_dtype_argument():
    assert tc.arange(3, dtype=tc.float64).dtype == np.float64


def test_linspace():
    t = tc.linspace(-1, 1, 5)
    assert t.dtype == np.float32
    np.testing.assert_allclose(t.data, [-1, -0.5, 0, 0.5, 1])


# ---------------------------------------------------------------- random draws
def test_rand_is_uniform_on_the_unit_interval():
    t = tc.rand(1000)
    assert t.dtype == np.float32 and t.data.min() >= 0 and t.data.max() < 1
    assert abs(float(t.data.mean()) - 0.5) < 0.05


def test_randn_is_standard_normal():
    t = tc.randn(20, 50)
    assert t.shape == (20, 50) and t.dtype == np.float32
    assert abs(float(t.data.mean())) < 0.1 and abs(float(t.data.std()) - 1) < 0.1


def test_randint_range_and_dtype():
    t = tc.randint(3, 7, size=(200,))
    assert t.dtype == np.int64 and t.shape == (200,)
    assert set(t.tolist()) == {3, 4, 5, 6}
    assert tc.randint(2, size=(10,)).data.max() <= 1


@pytest.mark.parametrize("draw", [lambda: tc.rand(4), lambda: tc.randn(2, 2),
                                  lambda: tc.randint(0, 100, (5,))], ids=["rand", "randn",
                                                                           "randint"])
def test_manual_seed_makes_draws_reproducible(draw):
    tc.manual_seed(123)
    first, second = draw(), draw()
    tc.manual_seed(123)
    again = draw()
    np.testing.assert_array_equal(first.data, again.data)
    assert not np.array_equal(first.data, second.data)
    tc.manual_seed(124)
    assert not np.array_equal(first.data, draw().data)


def test_manual_seed_covers_interleaved_factories():
    def sequence():
        tc.manual_seed(7)
        return [tc.rand(3).data, tc.randn(3).data, tc.rand(2).data]

    for a, b in zip(sequence(), sequence()):
        np.testing.assert_array_equal(a, b)
