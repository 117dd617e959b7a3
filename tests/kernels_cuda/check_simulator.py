"""Run every CUDA kernel on the cases of ``cases.py`` under Numba's CUDA
simulator and compare it with the NumPy reference kernel.

    NUMBA_ENABLE_CUDASIM=1 python tests/kernels_cuda/check_simulator.py [name-filter]

Prints one JSON object on its last line: ``{"results": {case id: null when it
agrees, else what differs}}``, or ``{"skip": reason}`` when the simulator
cannot run here.  The simulator must be switched on before ``numba.cuda`` is
first imported, hence a script run in its own process (see
test_cuda_simulator.py).  The simulator takes NumPy arrays where the GPU
takes CuPy ones; the kernels' wrappers make their outputs with the input's
array module, so the same code runs in both.
"""
import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.kernels_cuda.cases import (AVGPOOL, BATCHNORM, CONV, DTYPES, MAXPOOL,  # noqa: E402
                                     NETWORK, NETWORK_DTYPES)

# Copies (im2col, max pooling's y and argmax) must agree exactly; sums may
# round differently (another order, or float64 where the reference rounds).
TOLERANCE = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-12)}


def compare(what, ours, reference, exact=False, dtype="float64"):
    """None when ``ours`` matches ``reference`` (shape, dtype, values; NaN == NaN),
    else a one-line description of the first difference."""
    ours, reference = np.asarray(ours), np.asarray(reference)
    if ours.shape != reference.shape or ours.dtype != reference.dtype:
        return (f"{what}: got {ours.dtype}{ours.shape}, "
                f"expected {reference.dtype}{reference.shape}")
    if exact:
        same = np.array_equal(ours, reference, equal_nan=ours.dtype.kind == "f")
    else:
        same = np.allclose(ours, reference, equal_nan=True, **TOLERANCE[dtype])
    if same:
        return None
    with np.errstate(invalid="ignore"):
        bad = np.argwhere(~np.isclose(ours, reference, equal_nan=True, **TOLERANCE[dtype])
                          if not exact else ours != reference)
    at = tuple(int(i) for i in bad[0]) if len(bad) else ()
    return (f"{what}: {len(bad)} of {ours.size} values differ, e.g. at {at}: "
            f"{ours[at]!r} vs {reference[at]!r}")


def first_difference(*comparisons):
    return next((c for c in comparisons if c is not None), None)


def values(shape, kind, dtype, seed):
    """Distinct values in [-2, 2] (or a variant: all negative, many ties, a NaN)."""
    rng = np.random.default_rng(seed)
    x = rng.permutation(np.linspace(-2, 2, int(np.prod(shape)))).reshape(shape)
    if kind == "negative":
        x = x - 3
    elif kind == "ties":
        x = rng.integers(0, 3, shape).astype(np.float64)
    elif kind == "nan":
        x.flat[5] = np.nan
    return x.astype(dtype)


# ---------------------------------------------------------------- one family each
def check_conv(shape, kw, dtype, gpu, ref):
    x = values(shape, "normal", dtype, 0)
    found = []
    for merge in (False, True):
        col = gpu.im2col(x, merge_batch=merge, **kw)
        expected = ref.im2col(x, merge_batch=merge, **kw)
        found.append(compare(f"im2col(merge_batch={merge})", col, expected, exact=True))
        gcol = values(expected.shape, "normal", dtype, 1)
        found.append(compare(f"col2im(merge_batch={merge})",
                             gpu.col2im(gcol, shape, merge_batch=merge, **kw),
                             ref.col2im(gcol, shape, merge_batch=merge, **kw), dtype=dtype))
    return first_difference(*found)


def check_maxpool(shape, kind, kw, dtype, gpu, ref):
    x = values(shape, kind, dtype, 0)
    y, argmax = gpu.maxpool2d_forward(x, **kw)
    y_ref, argmax_ref = ref.maxpool2d_forward(x, **kw)
    gy = values(y_ref.shape, "normal", dtype, 1)
    geometry = {k: v for k, v in kw.items() if k != "ceil_mode"}
    return first_difference(
        compare("maxpool y", y, y_ref, exact=True),
        compare("maxpool argmax", argmax, argmax_ref, exact=True),
        compare("maxpool gx", gpu.maxpool2d_backward(gy, argmax_ref, shape, **geometry),
                ref.maxpool2d_backward(gy, argmax_ref, shape, **geometry), dtype=dtype))


def check_avgpool(shape, kw, dtype, gpu, ref):
    x = values(shape, "normal", dtype, 0)
    y_ref = ref.avgpool2d_forward(x, **kw)
    gy = values(y_ref.shape, "normal", dtype, 1)
    backward = {k: v for k, v in kw.items() if k != "ceil_mode"}
    return first_difference(
        compare("avgpool y", gpu.avgpool2d_forward(x, **kw), y_ref, dtype=dtype),
        compare("avgpool gx", gpu.avgpool2d_backward(gy, shape, **backward),
                ref.avgpool2d_backward(gy, shape, **backward), dtype=dtype))


def check_batchnorm(shape, offset, dtype, gpu, ref):
    x = values(shape, "normal", dtype, 0) + np.asarray(offset, dtype)
    C = shape[1]
    gamma, beta = values((C,), "normal", dtype, 2), values((C,), "normal", dtype, 3)
    names = ("y", "mean", "var", "inv_std")
    ours, expected = (k.batchnorm_forward_train(x, gamma, beta, 1e-5) for k in (gpu, ref))
    found = [compare(f"bn forward {n}", a, b, dtype=dtype)
             for n, a, b in zip(names, ours, expected)]
    gy, (mean, inv_std) = values(shape, "normal", dtype, 4), (expected[1], expected[3])
    scale = gamma * inv_std
    for s in (scale, None):
        ours, expected = (k.batchnorm_backward(gy, x, mean, inv_std, s) for k in (gpu, ref))
        found.append(None if s is not None or ours[0] is None else "bn backward: gx not None")
        found += [compare(f"bn backward {n} (scale {'given' if s is not None else 'None'})",
                          a, b, dtype=dtype)
                  for n, a, b in zip(("gx", "dgamma", "dbeta"), ours, expected)
                  if b is not None]
    return first_difference(*found)


def small_network(channels):
    """For (N, channels, 6, 6) input: 6x6 -> max pool 3x3 -> conv 3x3 -> avg pool 4x4."""
    from tinygrad_cnn import nn
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(4, 4, 3, stride=2, padding=2, groups=2), nn.ReLU(),
        nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))


def train_step(shape, dtype, use_gpu_kernels):
    """Loss and every gradient of one step of ``small_network``, with the ops
    calling the CUDA kernels (on NumPy arrays: the simulator) or the NumPy set."""
    import kernels
    import tinygrad_cnn as tc
    import tinygrad_cnn.nn.functional as F
    kernels.set_kernels("numpy")
    if use_gpu_kernels:     # what the dispatch does for CuPy arrays, here for NumPy ones
        kernels._cpu.update(kernels._collect(kernels.GPU_OVERLAYS))
        probe = np.zeros((1, 1, 1, 1), dtype=dtype)
        assert kernels.which("im2col", probe) == "kernels.conv_cuda.im2col", "not the GPU set"
    try:
        tc.manual_seed(0)
        net = small_network(shape[1]).to(np.dtype(dtype))
        x = tc.tensor(values(shape, "normal", dtype, 0), requires_grad=True)
        loss = F.cross_entropy(net(x), tc.tensor(np.arange(shape[0]) % 3))
        loss.backward()
        grads = {"x": x.grad.numpy()}
        grads.update((k, p.grad.numpy()) for k, p in net.named_parameters())
        return loss.item(), grads
    finally:
        kernels.set_kernels("numpy")


def check_network(shape, dtype):
    loss, grads = train_step(shape, dtype, use_gpu_kernels=True)
    loss_ref, grads_ref = train_step(shape, dtype, use_gpu_kernels=False)
    return first_difference(
        compare("loss", np.float64(loss), np.float64(loss_ref), dtype=dtype),
        *(compare(f"gradient of {k}", grads[k], g, dtype=dtype) for k, g in grads_ref.items()))


def run_all(name_filter=""):
    from kernels import bn_cuda, bn_numpy, conv_cuda, conv_numpy, pool_cuda, pool_numpy
    checks = (
        [(n, lambda d, s=s, kw=kw: check_conv(s, kw, d, conv_cuda, conv_numpy))
         for n, s, kw in CONV]
        + [(n, lambda d, s=s, k=k, kw=kw: check_maxpool(s, k, kw, d, pool_cuda, pool_numpy))
           for n, s, k, kw in MAXPOOL]
        + [(n, lambda d, s=s, kw=kw: check_avgpool(s, kw, d, pool_cuda, pool_numpy))
           for n, s, kw in AVGPOOL]
        + [(n, lambda d, s=s, o=o: check_batchnorm(s, o, d, bn_cuda, bn_numpy))
           for n, s, o in BATCHNORM]
        + [(n, lambda d, s=s: check_network(s, d), NETWORK_DTYPES) for n, s in NETWORK])
    results = {}
    for name, check, *dtypes in checks:
        for dtype in (dtypes[0] if dtypes else DTYPES):
            case = f"{name}[{dtype}]"
            if name_filter not in case:
                continue
            try:
                results[case] = check(dtype)
            except Exception:
                results[case] = "raised " + traceback.format_exc(limit=-3)
    return results


def main():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        print(json.dumps({"skip": "NUMBA_ENABLE_CUDASIM=1 is not set"}))
        return
    try:
        from numba import config, cuda  # noqa: F401
    except Exception as exc:   # no CUDA target in this Numba (it may need numba-cuda)
        print(json.dumps({"skip": f"numba.cuda does not import: {exc}"}))
        return
    if not config.ENABLE_CUDASIM:
        print(json.dumps({"skip": "this Numba ignores NUMBA_ENABLE_CUDASIM"}))
        return
    print(json.dumps({"results": run_all(sys.argv[1] if len(sys.argv) > 1 else "")}))


if __name__ == "__main__":
    main()
