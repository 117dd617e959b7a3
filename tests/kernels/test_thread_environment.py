"""The thread settings kernels/__init__.py puts in the environment must be
there before the libraries that read them start (see THREAD_ENVIRONMENT)."""
import json
import os
import subprocess
import sys

import kernels

# Run in a fresh interpreter: record the environment at the moment NumPy is
# first imported (OpenBLAS reads its settings when NumPy loads it).
PROBE = r"""
import importlib.abc, json, os, sys
seen = {}
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and not seen:
            seen.update({k: os.environ.get(k) for k in %(names)r})
        return None
sys.meta_path.insert(0, Probe())
import tinygrad_cnn
print(json.dumps(seen))
"""


def _environment_when_numpy_loads(env):
    code = PROBE % {"names": sorted(kernels.THREAD_ENVIRONMENT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _clean_environment():
    return {k: v for k, v in os.environ.items() if k not in kernels.THREAD_ENVIRONMENT}


def test_import_sets_the_thread_environment_before_numpy_loads():
    seen = _environment_when_numpy_loads(_clean_environment())
    assert seen == kernels.THREAD_ENVIRONMENT


def test_a_value_already_in_the_environment_wins():
    env = dict(_clean_environment(), OPENBLAS_THREAD_TIMEOUT="28", OMP_WAIT_POLICY="ACTIVE")
    seen = _environment_when_numpy_loads(env)
    assert seen == {"OPENBLAS_THREAD_TIMEOUT": "28", "OMP_WAIT_POLICY": "ACTIVE"}
