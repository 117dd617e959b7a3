"""tests/gpu/compare.py on the CPU, with synthetic gradients: the comparison the
GPU-vs-CPU network test relies on must pass rounding noise on a zero gradient
and fail a real difference."""
import numpy as np
import pytest

from tests.gpu.compare import gradient_mismatches

pytestmark = pytest.mark.kernel_free      # pure NumPy: first kernel set only

rng = np.random.default_rng(0)
NETWORK = {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
           "conv.bias": np.zeros(4, np.float32),   # in front of a batch norm: zero
           "bn.weight": rng.standard_normal(4).astype(np.float32)}


def noisy(grads, size):
    return {k: g + size * rng.standard_normal(g.shape).astype(np.float32)
            for k, g in grads.items()}


def test_a_zero_gradient_with_rounding_noise_passes():
    gpu = noisy(NETWORK, 1e-8)
    assert gradient_mismatches(gpu, NETWORK) == []
    # the old per-tensor scale failed exactly this: 1e-8 noise on a zero bias
    bias = NETWORK["conv.bias"]
    per_tensor_atol = 1e-3 * max(float(np.abs(bias).max()), 1e-6)
    assert not np.allclose(gpu["conv.bias"], bias, rtol=1e-3, atol=per_tensor_atol)


def test_a_real_mismatch_fails_and_is_named():
    gpu = noisy(NETWORK, 1e-8)
    gpu["bn.weight"][2] += 0.1
    problems = gradient_mismatches(gpu, NETWORK)
    assert len(problems) == 1 and problems[0].startswith("bn.weight: 1 of 4 entries differ")
    assert "at (2,)" in problems[0]


def test_a_wrong_value_in_the_zero_gradient_fails():
    gpu = noisy(NETWORK, 1e-8)
    gpu["conv.bias"][0] = 0.05 * float(np.abs(NETWORK["conv.weight"]).max())
    assert [p.split(":")[0] for p in gradient_mismatches(gpu, NETWORK)] == ["conv.bias"]


def test_nan_shape_and_names_are_mismatches():
    gpu = dict(NETWORK, **{"bn.weight": np.full(4, np.nan, np.float32)})
    assert gradient_mismatches(gpu, NETWORK)[0].startswith("bn.weight: 4 of 4")
    assert "shape" in gradient_mismatches(dict(NETWORK, **{"conv.bias": np.zeros(5)}),
                                          NETWORK)[0]
    assert "different parameters" in gradient_mismatches({"x": np.zeros(1)}, NETWORK)[0]
