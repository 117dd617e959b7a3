"""conv2d forward + backward, layer by layer: NumPy kernels, Numba kernels, PyTorch.

    python -m benchmarks.conv_layers [--repeats 7] [--threads 2] [--clock cpu] [--profile]

For the convolutions of a ResNet-18 at 96x96, batch 64, float32, times one
forward + backward pass of ``conv2d`` (x, weight and bias all requiring
grad) with each kernel set and with ``torch.nn.functional.conv2d`` (when
PyTorch is installed, with ``--threads`` threads), alternating the three in
every repeat so machine noise hits them alike, and prints the best time of
each and the ratios.  Then the same for the whole trunk of ResNet-18's
convolutions chained with ReLU, ``col2im`` and ``im2col`` alone (Numba
against NumPy), and the trunk's peak memory in each engine.  ``--profile``
adds a cProfile of the Numba runs.

First calls (Numba compilation or cache loading) are not timed.

On a machine busy with other work, wall times mostly measure the others;
``--clock cpu`` times this process's CPU time instead, which is meaningful
single-threaded: ``OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1
python -m benchmarks.conv_layers --threads 1 --clock cpu``.
"""
import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import time

# PyTorch's OpenMP threads busy-wait between its ops, taking cores from
# OpenBLAS and Numba in the same process: with them spinning, this engine
# ran far slower (benchmarks/results.md), and PyTorch itself was no faster.
# Passive waiting must be chosen before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

import kernels  # noqa: E402
import tinygrad_cnn as tc  # noqa: E402
from tinygrad_cnn.ops.conv import conv2d, conv2d_geometry  # noqa: E402

# name: (N, C, O, H=W, kernel, stride, padding)
LAYERS = {
    "stem 1->64 7x7/2 96x96": (64, 1, 64, 96, 7, 2, 3),
    "layer1 64 3x3 24x24": (64, 64, 64, 24, 3, 1, 1),
    "layer2 64->128 3x3/2": (64, 64, 128, 24, 3, 2, 1),
    "layer2 128 3x3 12x12": (64, 128, 128, 12, 3, 1, 1),
    "layer2 down 1x1/2": (64, 64, 128, 24, 1, 2, 0),
    "layer3 256 3x3 6x6": (64, 256, 256, 6, 3, 1, 1),
    "layer4 512 3x3 3x3": (64, 512, 512, 3, 3, 1, 1),
    "1x1 256->64 12x12": (64, 256, 64, 12, 1, 1, 0),
}


def layer_arrays(N, C, O, H, k, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    w = rng.standard_normal((O, C, k, k), dtype=np.float32) / np.float32(np.sqrt(C * k * k))
    b = rng.standard_normal(O, dtype=np.float32)
    return x, w, b


def ours_step(kernel_set, x, w, b, stride, padding):
    def step():
        kernels.set_kernels(kernel_set)
        X, W, B = (tc.Tensor(a, requires_grad=True) for a in (x, w, b))
        y = conv2d(X, W, B, stride=stride, padding=padding)
        y.backward(np.ones(y.shape, dtype=np.float32))
    return step


def torch_step(x, w, b, stride, padding):
    import torch

    def step():
        X, W, B = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        y = torch.nn.functional.conv2d(X, W, B, stride=stride, padding=padding)
        y.backward(torch.ones_like(y))
    return step


clock = time.perf_counter


def best_times(steps, repeats):
    """Best time of each step, running them in turn ``repeats`` times."""
    for step in steps.values():
        step()                          # compile / warm up, untimed
    best = {name: float("inf") for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = clock()
            step()
            best[name] = min(best[name], clock() - start)
    return best


def conv_table(repeats, with_torch):
    print(f"{'layer (N=64, float32)':28s} {'numpy ms':>9s} {'numba ms':>9s} "
          f"{'torch ms':>9s} {'numpy/numba':>12s} {'numba/torch':>12s}")
    totals = dict(numpy=0.0, numba=0.0, torch=0.0)
    for name, (N, C, O, H, k, s, p) in LAYERS.items():
        x, w, b = layer_arrays(N, C, O, H, k)
        steps = {"numpy": ours_step("numpy", x, w, b, s, p),
                 "numba": ours_step("numba", x, w, b, s, p)}
        if with_torch:
            steps["torch"] = torch_step(x, w, b, s, p)
        t = best_times(steps, repeats)
        for key in t:
            totals[key] += t[key]
        tt = t.get("torch", float("nan"))
        print(f"{name:28s} {t['numpy'] * 1e3:9.1f} {t['numba'] * 1e3:9.1f} {tt * 1e3:9.1f} "
              f"{t['numpy'] / t['numba']:12.2f} {t['numba'] / tt:12.2f}")
    tt = totals["torch"] if with_torch else float("nan")
    print(f"{'total':28s} {totals['numpy'] * 1e3:9.1f} {totals['numba'] * 1e3:9.1f} "
          f"{tt * 1e3:9.1f} {totals['numpy'] / totals['numba']:12.2f} "
          f"{totals['numba'] / tt:12.2f}")


def kernel_table(repeats):
    """im2col and col2im alone (the merged-batch layout conv2d uses)."""
    from kernels import conv_numba, conv_numpy
    print(f"\n{'kernel':36s} {'numpy ms':>9s} {'numba ms':>9s} {'speed-up':>9s}")
    for name, (N, C, O, H, k, s, p) in LAYERS.items():
        x, w, _ = layer_arrays(N, C, O, H, k)
        stride, padding, dilation, _ = conv2d_geometry(x.shape, w.shape, s, p)
        geometry = ((k, k), stride, padding, dilation)
        col = conv_numpy.im2col(x, *geometry, merge_batch=True)
        for kernel, args in [("im2col", (x,) + geometry),
                             ("col2im", (col, x.shape) + geometry)]:
            steps = {set_name: (lambda m=module, a=args, f=kernel:
                                getattr(m, f)(*a, merge_batch=True))
                     for set_name, module in [("numpy", conv_numpy), ("numba", conv_numba)]}
            t = best_times(steps, repeats)
            print(f"{kernel + ' ' + name:36s} {t['numpy'] * 1e3:9.2f} {t['numba'] * 1e3:9.2f} "
                  f"{t['numpy'] / t['numba']:9.2f}")


def profile_numba(repeats):
    profiler = cProfile.Profile()
    for name, (N, C, O, H, k, s, p) in LAYERS.items():
        step = ours_step("numba", *layer_arrays(N, C, O, H, k), s, p)
        step()
        profiler.enable()
        for _ in range(repeats):
            step()
        profiler.disable()
    print()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


# ---------------------------------------------------------------- the whole trunk
# ResNet-18's convolutions at 96x96 chained with ReLU (no BN, no shortcuts):
# (in, out, kernel, stride, padding) per conv, a 3x3/2 max-pool after the stem
TRUNK = ([(1, 64, 7, 2, 3)] + [(64, 64, 3, 1, 1)] * 4
         + [(64, 128, 3, 2, 1)] + [(128, 128, 3, 1, 1)] * 3
         + [(128, 256, 3, 2, 1)] + [(256, 256, 3, 1, 1)] * 3
         + [(256, 512, 3, 2, 1)] + [(512, 512, 3, 1, 1)] * 3)


def trunk_step(engine, batch=64, seed=0):
    """One forward + backward through TRUNK, as a function; engine: numpy, numba, torch."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 1, 96, 96), dtype=np.float32)
    weights = [rng.standard_normal((o, c, k, k), dtype=np.float32) / np.float32(np.sqrt(c * k * k))
               for c, o, k, _, _ in TRUNK]
    if engine == "torch":
        import torch
        F, tensor = torch.nn.functional, torch.from_numpy
        relu, pool = torch.relu, F.max_pool2d
    else:
        import tinygrad_cnn.nn.functional as F
        kernels.set_kernels(engine)
        relu, pool = tc.relu, F.max_pool2d

        def tensor(a):
            return tc.Tensor(a)
    ws = [tensor(w) for w in weights]
    for w in ws:
        w.requires_grad = True

    def step():
        h = tensor(x)
        for i, (w, (_, _, _, stride, padding)) in enumerate(zip(ws, TRUNK)):
            h = relu(F.conv2d(h, w, None, stride, padding))
            if i == 0:
                h = pool(h, 3, 2, 1)
        h.mean().backward()
    return step


def _rss_kb(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))


def memory_child(engine):
    """Print this process's peak memory growth during one trunk step (Linux)."""
    step = trunk_step(engine)
    step()                                   # compile, warm the allocator
    before = _rss_kb("VmRSS:")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")                      # reset the peak (VmHWM) to the current RSS
    step()
    print(json.dumps({"engine": engine, "peak_growth_mb": (_rss_kb("VmHWM:") - before) / 1024,
                      "rss_before_mb": before / 1024}))


def memory_table(engines, threads):
    print("\npeak memory of one trunk step (batch 64, float32), each engine in a fresh process")
    for engine in engines:
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.conv_layers", "--memory-child", engine,
             "--threads", str(threads)], capture_output=True, text=True, check=True)
        r = json.loads(result.stdout.splitlines()[-1])
        print(f"  {engine:6s} peak growth {r['peak_growth_mb']:7.0f} MB  "
              f"(resident before the step {r['rss_before_mb']:.0f} MB)")


def trunk_table(repeats, engines):
    t = best_times({engine: trunk_step(engine) for engine in engines}, repeats)
    print("\ntrunk (all ResNet-18 convs + ReLU, forward + backward): " + ", ".join(
        f"{engine} {t[engine] * 1e3:.0f} ms" for engine in engines))
    if "torch" in t:
        print(f"  numba/torch {t['numba'] / t['torch']:.2f}, "
              f"numpy/numba {t['numpy'] / t['numba']:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    try:
        import torch
        torch.set_num_threads(args.threads)
        with_torch = True
    except ImportError:
        with_torch = False
    if args.memory_child:
        memory_child(args.memory_child)
        return
    engines = ["numpy", "numba"] + (["torch"] if with_torch else [])
    conv_table(args.repeats, with_torch)
    trunk_table(args.repeats, engines)
    kernel_table(args.repeats)
    memory_table(engines, args.threads)
    if args.profile:
        profile_numba(args.repeats)


if __name__ == "__main__":
    main()
