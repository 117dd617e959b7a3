"""gradcheck itself: it must pass correct ops, catch wrong ones, and say where."""
import numpy as np
import pytest

from tests.inputs import distinct
from tinygrad_cnn import Tensor, gradcheck, gradcheck_module
from tinygrad_cnn.autograd import Function
from tinygrad_cnn.gradcheck import GradcheckError


class Cube(Function):
    """y = x³ with a switchable mistake in backward."""
    def __init__(self, wrong_at=None):
        self.wrong_at = wrong_at

    def forward(self, x):
        self.save_for_backward(x)
        return x ** 3

    def backward(self, gy):
        x, = self.saved
        gx = gy * 3 * x ** 2
        if self.wrong_at is not None:
            gx = gx.copy()
            gx[self.wrong_at] *= 1.5
        return gx


class ScaledProduct(Function):
    """y = a * b, but the gradient for b is off by a factor 2."""
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a * b

    def backward(self, gy):
        a, b = self.saved
        return gy * b, 2 * gy * a


def leaf(*shape, seed=0):
    return Tensor(distinct(*shape, seed=seed), requires_grad=True)


# ---------------------------------------------------------------- passing
@pytest.mark.parametrize("shape", [(), (4,), (2, 3)], ids=str)
@pytest.mark.parametrize("directions", [None, 5])
def test_correct_backward_passes(shape, directions):
    report = gradcheck(lambda x: Cube()(x), [leaf(*shape)], directions=directions)
    assert report and report.ok
    assert "gradcheck passed" in str(report)


def test_passes_with_several_inputs_and_outputs_and_constants():
    a, b = leaf(2, 3), leaf(3, seed=1)
    const = Tensor(distinct(2, 3, seed=2))
    assert gradcheck(lambda a, b, c: (a * b + c, (a * c).exp()), [a, b, const])


def test_inputs_that_do_not_require_grad_are_not_checked():
    a = leaf(3)
    report = gradcheck(lambda a, b: a * b, [a, Tensor(distinct(3, seed=1))])
    assert [r.name for r in report.inputs] == ["input 0 (3,)"]


def test_leaves_keep_their_grad_and_data():
    x = leaf(2, 3)
    before = x.data.copy()
    x.grad = Tensor(np.full((2, 3), 7.0))
    gradcheck(lambda x: x.exp(), [x])
    np.testing.assert_array_equal(x.data, before)
    np.testing.assert_array_equal(x.grad.data, np.full((2, 3), 7.0))


def test_non_contiguous_leaf_is_perturbed_in_place():
    # Regression: a flat reshape of a transposed array is a copy, so the numeric
    # gradient used to come out all zero and correct ops failed.
    x = Tensor(distinct(3, 2).T, requires_grad=True)
    assert not x.data.flags.c_contiguous
    assert gradcheck(lambda x: Cube()(x), [x])


def test_outputs_without_grad_may_come_first():
    # Regression: loss() used to pair upstream gradients with outputs by order
    # after dropping non-differentiable ones, mismatching (indices, values).
    x = leaf(3, 4)
    assert gradcheck(lambda x: tuple(reversed(x.max(1))), [x])


# ---------------------------------------------------------------- failing
def test_wrong_backward_fails_and_the_report_says_where():
    x = leaf(2, 3)
    with pytest.raises(GradcheckError) as caught:
        gradcheck(lambda x: Cube(wrong_at=(1, 2))(x), [x])
    report = caught.value.report
    assert not report.ok
    (checked,) = report.inputs
    assert checked.worst == (1, 2) and checked.n_bad == 1
    analytic, numeric = checked.analytic[1, 2], checked.numeric[1, 2]
    np.testing.assert_allclose(analytic, 1.5 * numeric, rtol=1e-6)
    message = str(caught.value)
    assert "gradcheck FAILED" in message
    assert "input 0 (2, 3): MISMATCH" in message and "1 of 6 elements" in message
    assert f"worst at [1, 2]: analytic {analytic:.8g}, numeric {numeric:.8g}" in message


def test_report_names_the_wrong_input_only():
    a, b = leaf(3), leaf(3, seed=1)
    report = gradcheck(lambda a, b: ScaledProduct()(a, b), [a, b], raise_exception=False)
    ok = [r.ok for r in report.inputs]
    assert ok == [True, False]
    assert "input 1 (3,): MISMATCH" in str(report)
    assert "input 0 (3,): ok" in str(report)


def test_raise_exception_false_returns_a_falsy_report():
    report = gradcheck(lambda x: Cube(wrong_at=0)(x), [leaf(3)], raise_exception=False)
    assert not report and not report.ok
    assert "FAILED" in repr(report)


def test_directional_mode_catches_a_wrong_backward():
    x = leaf(4, 5)
    with pytest.raises(GradcheckError, match="directional derivatives outside tolerance"):
        gradcheck(lambda x: Cube(wrong_at=(2, 3))(x), [x], directions=3)


def test_nan_gradient_fails():
    # Regression: NaN > tolerance is False, so NaN gradients used to pass.
    class NaNBackward(Function):
        def forward(self, x):
            return x * 2

        def backward(self, gy):
            return gy * np.nan

    report = gradcheck(lambda x: NaNBackward()(x), [leaf(3)], raise_exception=False)
    assert not report and report.inputs[0].n_bad == 3


def test_unused_input_has_zero_gradient_both_ways():
    a, b = leaf(2), leaf(2, seed=1)
    report = gradcheck(lambda a, b: a * 2, [a, b])
    np.testing.assert_array_equal(report.inputs[1].analytic, np.zeros(2))
    np.testing.assert_array_equal(report.inputs[1].numeric, np.zeros(2))


def test_backward_missing_a_needed_gradient_is_reported():
    class NoGradientForB(Function):
        def forward(self, a, b):
            return a + b

        def backward(self, gy):
            return gy, None

    with pytest.raises(RuntimeError, match="NoGradientForB.backward returned no gradient"):
        gradcheck(lambda a, b: NoGradientForB()(a, b), [leaf(2), leaf(2, seed=1)])


# ---------------------------------------------------------------- misuse
def test_float32_inputs_raise_type_error():
    x = Tensor(distinct(3).astype(np.float32), requires_grad=True)
    with pytest.raises(TypeError, match=r"input 0 \(3,\) has dtype float32.*float64"):
        gradcheck(lambda x: x * 2, [x])


def test_no_input_requiring_grad_raises():
    with pytest.raises(ValueError, match="no input requires grad"):
        gradcheck(lambda x: x * 2, [Tensor(distinct(3))])


def test_non_leaf_input_raises():
    with pytest.raises(ValueError, match="input 0 is not a leaf"):
        gradcheck(lambda x: x * 2, [leaf(3) * 1])


def test_output_without_grad_raises():
    with pytest.raises(ValueError, match="returned no tensor that requires grad"):
        gradcheck(lambda x: x.detach(), [leaf(3)])


# ---------------------------------------------------------------- gradcheck_module
class AffineModule:
    """The two methods gradcheck_module uses, plus a buffer the forward changes."""
    def __init__(self, wrong=False):
        self.weight = Tensor(distinct(3, seed=3), requires_grad=True)
        self.frozen = Tensor(distinct(3, seed=4))
        self.calls = Tensor(np.zeros(1))
        self.wrong = wrong

    def named_parameters(self):
        return [("weight", self.weight), ("frozen", self.frozen)]

    def named_buffers(self):
        return [("calls", self.calls)]

    def __call__(self, x):
        self.calls.data += 1
        w = ScaledProduct()(self.weight, x) if self.wrong else self.weight * x
        return w + self.frozen


def test_gradcheck_module_checks_parameters_and_inputs_and_restores_buffers():
    module, x = AffineModule(), leaf(3)
    report = gradcheck_module(module, x)
    assert [r.name for r in report.inputs] == ["parameter 'weight' (3,)", "input 0 (3,)"]
    assert module.calls.data[0] == 0


def test_gradcheck_module_names_the_wrong_input():
    with pytest.raises(GradcheckError, match=r"input 0 \(3,\): MISMATCH"):
        gradcheck_module(AffineModule(wrong=True), leaf(3))
