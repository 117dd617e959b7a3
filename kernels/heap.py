"""Freed array memory kept in the process for the next training step (glibc's malloc).

A training step allocates its activations, gradients and temporaries afresh
and frees them by its end; the next step allocates the same sizes again.
glibc's malloc, left to itself, gives much of that memory back to the OS in
between: free space at the top of its heap is returned once more than a
threshold lies there (64 MiB at most, by its own adjustment), and arrays
above another threshold (32 MiB at most) get pages of their own, unmapped when
freed.  Each next step then takes its memory from the OS again, one page fault
per 4 KiB page, the kernel zeroing each: GoogLeNet and DenseNet (batch 64,
96×96) took ten to twenty thousand page faults per step, a tenth of the
step's time or more spent in the kernel (benchmarks/results.md, "Threads as
users run them").

A thread other than the main one allocates from an arena of its own, made of
heaps of at most 64 MiB, and glibc unmaps such a heap as soon as it is empty
whatever the trim threshold says, unless the free space it is to keep at the
top of a heap (its "top pad") is as large as a heap: ResNet-18 trained in a
second Python thread met thousands of page faults per step (benchmarks/
results.md, "Training in another thread").

``keep_freed_memory()``, run when ``kernels`` is imported, fixes the two
thresholds instead (``mallopt``): arrays up to 32 MiB come from the heap, and
up to 1 GiB of freed memory stays in it for the next step; and it sets the
top pad to 64 MiB, so the heaps of every thread's arena stay too (memory
kept, not taken: pages the process never touches are never resident).  The process's
resident size then stays near its peak instead of shrinking between steps;
the peak itself does not change.  Only glibc has these settings (other C
libraries are left alone), and glibc's own variables win: if any of
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or
``MALLOC_MMAP_MAX_`` is set, the allocator is the user's choice and nothing
changes (set ``MALLOC_TRIM_THRESHOLD_=134217728``, glibc's 128 MiB default,
to opt out).
"""
import ctypes
import os

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 2**20      # the most glibc's own adjustment reaches on 64-bit
TRIM_THRESHOLD = 2**30
TOP_PAD = 64 * 2**20             # a thread arena's largest heap on 64-bit (HEAP_MAX_SIZE)

USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "MALLOC_MMAP_MAX_")


def _glibc():
    """The C library, if it is glibc (it has ``gnu_get_libc_version`` and
    ``mallopt``); else None.  Looked up among the symbols the process has
    loaded already (``CDLL(None)``): ``find_library`` may start ``ldconfig``,
    and this runs at import."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):    # TypeError: Windows has no "the process itself"
        return None
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return None
    return libc


def keep_freed_memory():
    """Fix glibc's two thresholds (see the module docstring); returns whether
    they were set (False: not glibc, or the user's MALLOC_* variables rule)."""
    if any(name in os.environ for name in USER_VARIABLES):
        return False
    libc = _glibc()
    if libc is None:
        return False
    # Setting either threshold turns glibc's own adjustment off, so both are set.
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                and libc.mallopt(M_TOP_PAD, TOP_PAD))
