"""The kernel ``cuda_probe.py`` launches to learn whether numba.cuda works here
(its own module: importing ``numba.cuda`` is the first thing probed)."""
from numba import cuda


@cuda.jit
def add_one(x):
    """x[i] += 1 for every i of the 1-D array ``x``."""
    i = cuda.grid(1)
    if i < x.size:
        x[i] += 1.0
