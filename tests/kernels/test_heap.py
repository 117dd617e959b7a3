"""kernels/heap.py: after ``import kernels`` a freed array's memory serves the
next allocation of its size without page faults (glibc keeps it), unless the
user chose glibc's allocator settings with its MALLOC_* variables."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import heap

pytestmark = [pytest.mark.kernel_free,
              pytest.mark.skipif(heap._glibc() is None, reason="glibc's malloc only")]

ROOT = Path(__file__).resolve().parents[2]

# Allocate and free arrays the sizes a training step's are (8 and 24 MiB, one
# above glibc's default 128 KiB mmap threshold and the trim threshold it adjusts
# to), the way each step does, and count the page faults of the later rounds.
# With ``in_thread``, in a second Python thread, which allocates from an arena
# of its own (a training loop run by a GUI or a server).
PROBE = r"""
import json, resource, threading
import numpy as np
import kernels
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds = []
def allocate():
    for _ in range(4):
        before = faults()
        arrays = [np.ones(n, np.float32) for n in (2 * 2**20, 6 * 2**20, 6 * 2**20, 6 * 2**20)]
        del arrays
        rounds.append(faults() - before)
if %(in_thread)r:
    thread = threading.Thread(target=allocate)
    thread.start()
    thread.join()
else:
    allocate()
print(json.dumps(rounds))
"""


def fault_rounds(in_thread=False, **env):
    clean = {k: v for k, v in os.environ.items() if k not in heap.USER_VARIABLES}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", PROBE % {"in_thread": in_thread}],
                         env={**clean, **env}, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# (How many faults 80 MiB of fresh pages take depends on the machine's
# transparent huge pages: ~2,000 here, where NumPy asks for them; the tests
# compare the later rounds with the first.)
@pytest.mark.parametrize("in_thread", [False, True])
def test_freed_arrays_come_back_without_page_faults(in_thread):
    rounds = fault_rounds(in_thread)
    # without keep_freed_memory glibc gave back half of the memory or more each
    # round here: [2088, 2072, 1014, 1014]; in a second thread, without the top
    # pad, it unmapped the emptied heaps of that thread's arena: [2086, 524, 524, 524]
    assert rounds[0] > 0 and max(rounds[1:]) <= rounds[0] // 20, rounds


def test_the_users_malloc_variables_win():
    # glibc's default mmap threshold, chosen explicitly: every round faults again
    rounds = fault_rounds(MALLOC_MMAP_THRESHOLD_="131072")
    assert min(rounds[1:]) >= rounds[0] // 2 > 0, rounds


def test_keep_freed_memory_does_nothing_under_the_users_variables(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "134217728")
    assert heap.keep_freed_memory() is False
