"""Pooling and batch norm, layer by layer: NumPy kernels, Numba kernels, PyTorch.

    python -m benchmarks.pool_bn_layers [--repeats 7] [--threads 2] [--kernels-only]

For the pooling and batch-norm layers of the d2l networks (float32), times
one forward + backward pass through the op (input, γ and β requiring grad)
with each kernel set and with ``torch.nn.functional`` (when PyTorch is
installed, with ``--threads`` threads), alternating the three in every
repeat so machine noise hits them alike, and prints the best time of each
and the ratios.  Then times the pooling kernels alone, forward and
backward, Numba against NumPy (the issue's target: Numba ≥ 3x NumPy on
pooling backward), the average pool's backward on every 2x2 pool of LeNet
and DenseNet, and the adaptive pools.

First calls (Numba compilation or cache loading) are not timed.  The Numba
loops use every core Numba sees; set NUMBA_NUM_THREADS to match --threads
on a larger machine.
"""
import argparse

import numpy as np

import kernels
import tinygrad_cnn as tc
from benchmarks.conv_layers import best_times
from tinygrad_cnn.ops.batchnorm import batch_norm
from tinygrad_cnn.ops.pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d

# name: (op, input shape, keyword arguments)
LAYERS = {
    "maxpool 3x3/2 p1 (64,64,48,48)": ("max_pool2d", (64, 64, 48, 48),
                                       dict(kernel_size=3, stride=2, padding=1)),
    "avgpool 2x2 (64,64,48,48)": ("avg_pool2d", (64, 64, 48, 48), dict(kernel_size=2)),
    "avgpool 2x2 lenet (256,6,28,28)": ("avg_pool2d", (256, 6, 28, 28), dict(kernel_size=2)),
    "global avgpool (64,512,3,3)": ("adaptive_avg_pool2d", (64, 512, 3, 3),
                                    dict(output_size=1)),
    "bn2d train (64,64,24,24)": ("batch_norm", (64, 64, 24, 24), {}),
    "bn2d train (256,6,28,28)": ("batch_norm", (256, 6, 28, 28), {}),
}
OURS = {"max_pool2d": max_pool2d, "avg_pool2d": avg_pool2d,
        "adaptive_avg_pool2d": adaptive_avg_pool2d}


def layer_arrays(shape, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[1]
    return (rng.standard_normal(shape, dtype=np.float32),
            rng.uniform(0.5, 1.5, C).astype(np.float32), rng.uniform(-1, 1, C).astype(np.float32))


def ours_step(kernel_set, op, shape, kw):
    x, gamma, beta = layer_arrays(shape)

    def step():
        kernels.set_kernels(kernel_set)
        X = tc.Tensor(x, requires_grad=True)
        if op == "batch_norm":
            G, B = tc.Tensor(gamma, requires_grad=True), tc.Tensor(beta, requires_grad=True)
            y = batch_norm(X, None, None, G, B, training=True)
        else:
            y = OURS[op](X, **kw)
        y.backward(np.ones(y.shape, dtype=np.float32))
    return step


def torch_step(op, shape, kw):
    import torch
    F = torch.nn.functional
    x, gamma, beta = (torch.from_numpy(a) for a in layer_arrays(shape))

    def step():
        X = x.clone().requires_grad_()
        if op == "batch_norm":
            G, B = gamma.clone().requires_grad_(), beta.clone().requires_grad_()
            y = F.batch_norm(X, None, None, G, B, training=True)
        else:
            y = getattr(F, op)(X, **kw)
        y.backward(torch.ones_like(y))
    return step


def layer_table(repeats, with_torch):
    print(f"{'forward + backward (float32)':34s} {'numpy ms':>9s} {'numba ms':>9s} "
          f"{'torch ms':>9s} {'numpy/numba':>12s} {'numba/torch':>12s}")
    for name, (op, shape, kw) in LAYERS.items():
        steps = {"numpy": ours_step("numpy", op, shape, kw),
                 "numba": ours_step("numba", op, shape, kw)}
        if with_torch:
            steps["torch"] = torch_step(op, shape, kw)
        t = best_times(steps, repeats)
        tt = t.get("torch", float("nan"))
        print(f"{name:34s} {t['numpy'] * 1e3:9.1f} {t['numba'] * 1e3:9.1f} {tt * 1e3:9.1f} "
              f"{t['numpy'] / t['numba']:12.2f} {t['numba'] / tt:12.2f}")


# 2x2 average pools of the chapter networks, as backward sees them (the input's shape):
# LeNet's two (batch 256) and DenseNet's three transitions (batch 64, 96x96 images)
AVG_POOL_INPUTS = [(256, 6, 28, 28), (256, 16, 10, 10),
                   (64, 96, 24, 24), (64, 112, 12, 12), (64, 120, 6, 6)]
# adaptive pools: GoogLeNet's global one (96x96 images), and bins that overlap (13 -> 5)
ADAPTIVE_POOLS = [((64, 1024, 3, 3), (1, 1)), ((64, 64, 13, 13), (5, 5))]


def kernel_calls():
    """name -> call(kernel module): the pooling kernels alone, float32."""
    from kernels import pool_numpy
    x = layer_arrays((64, 64, 48, 48))[0]
    max_args, avg_args = ((3, 3), (2, 2), (1, 1)), ((2, 2), (2, 2), (0, 0))
    y, argmax = pool_numpy.maxpool2d_forward(x, *max_args)
    y_avg = pool_numpy.avgpool2d_forward(x, *avg_args)
    big = "(64,64,48,48)"
    calls = {
        f"maxpool2d_forward 3x3/2 p1 {big}": lambda m: m.maxpool2d_forward(x, *max_args),
        f"maxpool2d_backward 3x3/2 p1 {big}": lambda m: m.maxpool2d_backward(
            y, argmax, x.shape, *max_args),
        f"avgpool2d_forward 2x2 {big}": lambda m: m.avgpool2d_forward(x, *avg_args),
        f"avgpool2d_backward 2x2 {big}": lambda m: m.avgpool2d_backward(y_avg, x.shape,
                                                                        *avg_args),
    }
    for shape in AVG_POOL_INPUTS:
        gy = layer_arrays(shape[:2] + (shape[2] // 2, shape[3] // 2))[0]
        calls[f"avgpool2d_backward 2x2 {shape}"] = \
            lambda m, gy=gy, shape=shape: m.avgpool2d_backward(gy, shape, *avg_args)
    for shape, out in ADAPTIVE_POOLS:
        x_ad = layer_arrays(shape)[0]
        gy = layer_arrays(shape[:2] + out)[0]
        _, indices = pool_numpy.adaptive_maxpool2d_forward(x_ad, out)
        where = f"{shape}->{out}"
        calls.update({
            f"adaptive_avgpool2d_forward {where}":
                lambda m, x_ad=x_ad, out=out: m.adaptive_avgpool2d_forward(x_ad, out),
            f"adaptive_avgpool2d_backward {where}":
                lambda m, gy=gy, shape=shape: m.adaptive_avgpool2d_backward(gy, shape),
            f"adaptive_maxpool2d_forward {where}":
                lambda m, x_ad=x_ad, out=out: m.adaptive_maxpool2d_forward(x_ad, out),
            f"adaptive_maxpool2d_backward {where}":
                lambda m, gy=gy, indices=indices, shape=shape:
                    m.adaptive_maxpool2d_backward(gy, indices, shape),
        })
    return calls


def kernel_table(repeats):
    """The pooling kernels alone, Numba against NumPy, each pair timed in turn."""
    from kernels import pool_numba, pool_numpy
    print(f"\n{'kernel (float32)':62s} {'numpy ms':>9s} {'numba ms':>9s} {'speed-up':>9s}")
    for name, call in kernel_calls().items():
        t = best_times({"numpy": lambda: call(pool_numpy), "numba": lambda: call(pool_numba)},
                       repeats)
        print(f"{name:62s} {t['numpy'] * 1e3:9.2f} {t['numba'] * 1e3:9.2f} "
              f"{t['numpy'] / t['numba']:9.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kernels-only", action="store_true",
                        help="skip the layer table (forward + backward through the ops)")
    args = parser.parse_args()
    try:
        import torch
        torch.set_num_threads(args.threads)
        with_torch = True
    except ImportError:
        with_torch = False
    if not args.kernels_only:
        layer_table(args.repeats, with_torch)
    kernel_table(args.repeats)


if __name__ == "__main__":
    main()
