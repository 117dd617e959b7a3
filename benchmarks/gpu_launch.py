"""Host time per GPU kernel launch, by kernel technology: the figure behind
``kernels/fused_cupy.py``'s choice of CuPy ``RawKernel`` over numba.cuda (issue 12).

    python -m benchmarks.gpu_launch [--launches 2000] [--size 1024]

The same tiny kernel (y = max(x, 0) on ``--size`` float32 values, far too small
for the GPU's time to matter) launched ``--launches`` times by:

- ``cupy-rawkernel``: ``kernels.fused_cupy``'s compiled ``relu_forward`` called directly;
- ``fused-relu-wrapper``: ``kernels.relu_forward`` on a CuPy array, as the ops call it
  (the dispatch, the checks and the output's allocation included);
- ``cupy-elementwisekernel``: a ``cupy.ElementwiseKernel`` with the same body;
- ``cupy-ufunc``: ``cupy.maximum(x, 0, out=y)``;
- ``numba-cuda``: a ``numba.cuda.jit`` kernel with its signature given (compiled
  once, ahead), launched on CuPy arrays as ``kernels/*_cuda.py`` launch theirs;

and the optimizer step over ResNet-18's 76 parameter shapes (float32), one
launch for all (``sgd_update_multi``) against one ``sgd_update`` per parameter
on the reference kernel (several CuPy launches each).

Host µs per launch: the time until the launching call returns, over the
launches (the GPU runs them asynchronously); ``with_sync_us`` adds the final
synchronize, so it also bounds the GPU's own time.  Prints one JSON line (a
stage of ``python -m benchmarks.gpu --verify``).  Needs CuPy and a GPU; a
technology that fails here is reported with its error, not skipped silently.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

# ResNet-18 (d2l, 1 input channel, 10 classes): conv weight/bias and BN gamma/beta shapes
RESNET18_SHAPES = (
    [(64, 1, 7, 7), (64,), (64,), (64,)]
    + [(64, 64, 3, 3), (64,), (64,), (64,)] * 4
    + [s for c_in, c in ((64, 128), (128, 256), (256, 512))
       for s in [(c, c_in, 3, 3), (c,), (c,), (c,), (c, c, 3, 3), (c,), (c,), (c,),
                 (c, c_in, 1, 1), (c,)]
       + [(c, c, 3, 3), (c,), (c,), (c,)] * 2]
    + [(10, 512), (10,)])


def per_launch(launch, launches, synchronize):
    """(host µs per launch, µs per launch including the final synchronize)."""
    launch()                     # compilation, first-call caches: not timed
    synchronize()
    start = time.perf_counter()
    for _ in range(launches):
        launch()
    host = time.perf_counter() - start
    synchronize()
    total = time.perf_counter() - start
    return {"host_us": round(host / launches * 1e6, 2),
            "with_sync_us": round(total / launches * 1e6, 2)}


def technologies(cupy, size):
    """{name: a function making one launch, or the error that building it raised}."""
    x = cupy.asarray(np.linspace(-1, 1, size, dtype=np.float32))
    y = cupy.empty_like(x)

    def rawkernel():
        from kernels import fused_cupy
        raw = fused_cupy._functions(x.dtype)["relu_forward"]
        grid, n = fused_cupy._grid(size), np.int64(size)
        return lambda: raw(grid, (fused_cupy.THREADS,), (x, y, n))

    def wrapper():
        import kernels
        return lambda: kernels.relu_forward(x)

    def elementwise_kernel():
        kernel = cupy.ElementwiseKernel("T x", "T y", "y = x <= 0 ? (T)0 : x", "relu_ew")
        return lambda: kernel(x, y)

    def ufunc():
        return lambda: cupy.maximum(x, 0, out=y)

    def numba_cuda():
        from numba import cuda

        @cuda.jit("void(float32[::1], float32[::1])")
        def relu(a, b):
            i = cuda.grid(1)
            if i < a.size:
                b[i] = a[i] if a[i] > 0 else 0
        blocks = (size + 255) // 256
        return lambda: relu[blocks, 256](x, y)

    found = {}
    for name, build in [("cupy-rawkernel", rawkernel), ("fused-relu-wrapper", wrapper),
                        ("cupy-elementwisekernel", elementwise_kernel), ("cupy-ufunc", ufunc),
                        ("numba-cuda", numba_cuda)]:
        try:
            found[name] = build()
        except Exception as exc:      # absent or broken here: say so
            found[name] = " ".join(f"{type(exc).__name__}: {exc}".split())
    return found


def optimizer_steps(cupy):
    """One SGD step over ResNet-18's parameter shapes: the multi-tensor launch, and the
    reference loop (several CuPy launches per parameter)."""
    from kernels import elementwise_numpy, fused_cupy
    rng = np.random.default_rng(0)
    params = [cupy.asarray(rng.standard_normal(s).astype(np.float32)) for s in RESNET18_SHAPES]
    grads = [cupy.asarray(rng.standard_normal(s).astype(np.float32)) for s in RESNET18_SHAPES]
    options = (1e-3, 0.9, 0, 1e-4, False)
    fused = fused_cupy.sgd_update_multi(params, grads, [None] * len(params), *options)
    loop = elementwise_numpy.sgd_update_multi(params, grads, [None] * len(params), *options)
    return {"parameters": len(params),
            "one-launch-for-all": lambda: fused_cupy.sgd_update_multi(params, grads, fused,
                                                                       *options),
            "reference-loop": lambda: elementwise_numpy.sgd_update_multi(params, grads, loop,
                                                                         *options)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=2000)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args(argv)
    import cupy
    synchronize = cupy.cuda.Device().synchronize
    report = {"launches": args.launches, "size": args.size, "per_launch": {}}
    for name, launch in technologies(cupy, args.size).items():
        try:
            report["per_launch"][name] = (per_launch(launch, args.launches, synchronize)
                                          if callable(launch) else {"error": launch})
        except Exception as exc:
            report["per_launch"][name] = {"error": f"{type(exc).__name__}: {exc}"}
    steps = optimizer_steps(cupy)
    report["sgd_step_resnet18"] = {"parameters": steps.pop("parameters")}
    for name, step in steps.items():
        report["sgd_step_resnet18"][name] = per_launch(step, max(args.launches // 100, 5),
                                                       synchronize)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
