"""Kernel launches and host time of one training step, on a machine without a GPU (issue 12).

    python -m benchmarks.launches [--network resnet18] [--batch 2] [--side 64]
                                  [--algorithm auto] [--gpu-kernels numba_cuda]

**Launches.** ``count_launches`` runs one training step (forward, cross-entropy,
zero_grad, backward, SGD step; the second step, so that lazy layers and
optimizer state are in place) on the strict fake CuPy
(``tests/cupy_api/strict_cupy.py``), which computes with NumPy and counts the
GPU kernels CuPy would launch by its rules (``LaunchCounter``).  The kernel
interface (``kernels.counting()``) is counted beside it.  What a kernel-interface
call launches depends on which GPU kernels run (``--gpu-kernels``):

- ``numba_cuda`` (the numba.cuda probe passed): a kernel of
  ``kernels.GPU_OVERLAYS`` runs its ``kernels/*_cuda.py`` function with
  ``launch``/``launch_blocks`` replaced by a counter (its CuPy calls are counted
  by the fake; its own output is thrown away) and then the NumPy reference,
  uncounted, for the numbers the step goes on with;
- ``reference`` (the probe failed): every kernel is its NumPy reference on
  CuPy, counted by the fake like any other CuPy call;
- ``fused``: ``numba_cuda`` with the fused CUDA C kernels of
  ``kernels/fused_cupy.py`` laid over it (``kernels.FUSED_OVERLAYS``), as a GPU
  where both work runs them: one launch per fused-kernel launch (the fake runs
  each kernel's NumPy twin), their CuPy calls counted by the fake.

Kernels without a CUDA version (elementwise, Winograd, adaptive pooling) are
their references on CuPy either way.  The count is the same for every batch
size and input side as long as each convolution is one chunk (the GPU budget
makes it so): ``--check-sizes`` counts at two sizes and says whether they agree.

**Host time.** What Python spends per step outside the GPU is approximated on
the CPU as the step's time on the fake minus the time inside the fake's GPU
operations (``LaunchCounter.device_seconds``: the array work a GPU would do,
NumPy's here): the engine's own Python (the graph, argument checks, kernel
dispatch) plus the fake's Python wrappers, which stand in, roughly, for CuPy's
Cython ones.  The least of a few steps is kept (the machine is shared).  It
leaves out what each launch costs the host on a real GPU (argument
preparation, the driver call): the report adds it as ``launches × cost per
launch`` for given costs (``--cupy-launch-us``, an assumption;
``--numba-launch-us``, ~300 µs measured on an H200 host in issue 12).  The
real figures come from ``python -m benchmarks.gpu`` ("launches/step", "host
ms/step"), where ``profile_launches`` counts the kernels the GPU ran.
"""
import argparse
import collections
import contextlib
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GPU_KERNEL_CHOICES = ("numba_cuda", "reference", "fused")


# ================================================================ counting on the fake
def _training_step(name, batch, side, device):
    """One SGD training step of network ``name`` on ``device`` (built on the CPU
    first, so lazy layers take their shapes there), as a function of no arguments."""
    import models
    import tinygrad_cnn as tc
    import tinygrad_cnn.nn.functional as F
    from benchmarks.cpu import training_step
    from tinygrad_cnn import optim
    channels = models.spec(name).input_shape[0]
    tc.manual_seed(0)
    net = models.get(name)
    net(tc.zeros(2, channels, side, side))
    net.to(device)
    rng = np.random.default_rng(0)
    X = tc.Tensor(rng.random((batch, channels, side, side), dtype=np.float32)).to(device)
    y = tc.Tensor(rng.integers(0, 10, batch)).to(device)
    return training_step(net, F, optim.SGD(net.parameters(), lr=0.01), X, y)


class _CountedCudaKernel:
    """A kernels/*_cuda.py function whose launches are counted, not run; the
    reference gives the numbers."""

    def __init__(self, name, module, reference, launches, pause):
        self.name, self.module, self.reference = name, module, reference
        self.launches, self.pause = launches, pause

    def __call__(self, *args, **kwargs):
        with np.errstate(all="ignore"):         # its outputs are uninitialised memory
            getattr(self.module, self.name)(*args, **kwargs)
        with self.pause():
            return self.reference(*args, **kwargs)


@contextlib.contextmanager
def _counted_cuda_launches(fake_module, launches, fused=False):
    """The GPU kernels as numba.cuda would run them, launches counted into
    ``launches`` (a Counter by kernel name); with ``fused``, the fused CUDA C
    kernels over them (their launches counted by the fake)."""
    import kernels
    gpu = dict(kernels._reference)
    patched = []
    for module_name, names in kernels.GPU_OVERLAYS.items():
        module = importlib.import_module(module_name)
        for helper in ("launch", "launch_blocks"):
            if hasattr(module, helper):
                patched.append((module, helper, getattr(module, helper)))

                def count(kernel, *args, _module=module_name):
                    launches[_module] += 1
                setattr(module, helper, count)
        for name in names:
            gpu[name] = _CountedCudaKernel(name, module, kernels._reference[name], launches,
                                           fake_module.LAUNCHES.paused)
    if fused:
        gpu.update(kernels._collect(kernels.FUSED_OVERLAYS))
    saved = kernels._gpu_kernels
    kernels._gpu_kernels = gpu
    try:
        yield
    finally:
        kernels._gpu_kernels = saved
        for module, helper, function in patched:
            setattr(module, helper, function)


@contextlib.contextmanager
def fake_gpu(fake):
    """The engine sees ``fake`` as CuPy inside the block."""
    import kernels
    from tinygrad_cnn import backend, cuda
    saved = kernels.arrays.cupy, backend.cupy, kernels._gpu_kernels, cuda._conv_column_budgets
    kernels.arrays.cupy = backend.cupy = fake
    kernels._gpu_kernels = dict(kernels._reference)
    cuda._conv_column_budgets = {}
    try:
        yield
    finally:
        (kernels.arrays.cupy, backend.cupy, kernels._gpu_kernels,
         cuda._conv_column_budgets) = saved


def count_launches(name="resnet18", batch=2, side=64, algorithm="auto",
                   gpu_kernels="numba_cuda", host_steps=5):
    """Kernel launches of one training step of ``name`` on the fake GPU:
    ``{"launches": total, "cupy": ..., "numba_cuda": ..., "kernel_calls": {...},
    "host_python_ms": ...}`` (see the module docstring for the rules).

    ``host_python_ms``: the least, over ``host_steps`` steps, of a step's time
    outside the fake GPU's operations (the least is the one other processes
    on the machine disturbed least)."""
    if gpu_kernels not in GPU_KERNEL_CHOICES:
        raise ValueError(f"count_launches: gpu_kernels must be one of {GPU_KERNEL_CHOICES}, "
                         f"got {gpu_kernels!r}")
    import kernels
    from tests.cupy_api import strict_cupy
    from tinygrad_cnn.ops import conv
    previous_algorithm = conv.set_algorithm(algorithm)
    previous_set = kernels.set_kernels("numpy")
    numba_launches = collections.Counter()
    try:
        with fake_gpu(strict_cupy.StrictCupy()):
            step = _training_step(name, batch, side, "cuda")
            step()                              # lazy state, momentum buffers, budgets
            with contextlib.ExitStack() as stack:
                if gpu_kernels in ("numba_cuda", "fused"):
                    stack.enter_context(_counted_cuda_launches(
                        strict_cupy, numba_launches, fused=gpu_kernels == "fused"))
                calls = stack.enter_context(kernels.counting())
                host_seconds = []
                for _ in range(max(1, host_steps)):
                    with strict_cupy.LAUNCHES.counting() as counter:
                        start = time.perf_counter()
                        step()
                        host_seconds.append(time.perf_counter() - start
                                            - counter.device_seconds)
                    if len(host_seconds) == 1:          # the counts of one step
                        cupy_launches, first_calls = counter.count, dict(calls)
                        first_numba = collections.Counter(numba_launches)
    finally:
        kernels.set_kernels(previous_set)
        conv.set_algorithm(previous_algorithm)
    numba_total = sum(first_numba.values())
    return {"network": name, "batch": batch, "side": side, "algorithm": algorithm,
            "gpu_kernels": gpu_kernels, "launches": cupy_launches + numba_total,
            "cupy": cupy_launches, "numba_cuda": numba_total,
            "numba_cuda_by_module": dict(first_numba),
            "kernel_calls": dict(sorted(first_calls.items())),
            "host_python_ms": round(min(host_seconds) * 1e3, 2)}


# ================================================================ on a real GPU
def profile_launches(step, synchronize):
    """Kernels the GPU ran for one call of ``step``, as CUPTI records them for
    the whole process (CuPy's, cuBLAS's and numba.cuda's alike), read through
    PyTorch's profiler: ``{"kernels": n, "memcpy_memset": m}``, or
    ``{"error": why}`` without PyTorch for CUDA or when profiling fails."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
        if not torch.cuda.is_available():
            return {"error": "PyTorch sees no GPU: no CUPTI profiler"}
        synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            synchronize()
        device_events = [e for e in prof.events()
                         if e.device_type == torch.autograd.DeviceType.CUDA]
    except Exception as exc:        # ImportError, or a profiler that cannot start here
        return {"error": f"{type(exc).__name__}: {exc}"}
    if not device_events:           # a step launches hundreds: CUPTI did not see them
        return {"error": "the profiler recorded no GPU activity for the step"}
    copies = sum(1 for e in device_events if e.name.startswith(("Memcpy", "Memset")))
    return {"kernels": len(device_events) - copies, "memcpy_memset": copies}


# ================================================================ main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="resnet18")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--side", type=int, default=64,
                        help="input side (default 64: every stage of ResNet-18 above 1×1)")
    parser.add_argument("--algorithm", default="auto", help="conv2d's set_algorithm")
    parser.add_argument("--gpu-kernels", default="numba_cuda", choices=GPU_KERNEL_CHOICES)
    parser.add_argument("--check-sizes", action="store_true",
                        help="count again at twice the batch and side; say if they agree")
    parser.add_argument("--cupy-launch-us", type=float, default=10.0,
                        help="assumed host µs per CuPy launch (default 10: unmeasured)")
    parser.add_argument("--numba-launch-us", type=float, default=300.0,
                        help="host µs per numba.cuda launch (default 300: issue 12, H200)")
    args = parser.parse_args(argv)
    counted = count_launches(args.network, args.batch, args.side, args.algorithm,
                             args.gpu_kernels)
    if args.check_sizes:
        larger = count_launches(args.network, 2 * args.batch, 2 * args.side, args.algorithm,
                                args.gpu_kernels)
        counted["same_at_twice_the_size"] = larger["launches"] == counted["launches"]
    counted["launch_host_ms_assumed"] = round(
        (counted["cupy"] * args.cupy_launch_us + counted["numba_cuda"] * args.numba_launch_us)
        / 1e3, 2)
    counted["host_ms_estimate"] = round(counted["host_python_ms"]
                                        + counted["launch_host_ms_assumed"], 2)
    print(json.dumps(counted, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
