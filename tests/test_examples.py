"""Every chapter example runs with --quick, as CI runs it: a subprocess, no data set,
no network, a few seconds.  The NumPy kernel set spares each process Numba's start-up
(the examples exercise the scripts, not the kernels)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

# the examples choose their own kernel set: run under the first kernel set only
# (tests/conftest.py).
pytestmark = pytest.mark.kernel_free

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPTS = ["lenet", "alexnet", "vgg", "nin", "googlenet", "batchnorm", "resnet", "densenet",
           "kaggle_cifar10", "benchmark"]


def run_quick(name, cwd):
    env = dict(os.environ, TINYGRAD_CNN_KERNELS="numpy",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--quick"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_every_example_is_listed():
    scripts = {p.stem for p in EXAMPLES.glob("*.py")} - {"chapter"}
    assert scripts == set(SCRIPTS)


# What each example must print besides fit's closing lines ("loss …, train acc …, test acc …")
SHOWS = {"lenet": "output shape:", "alexnet": "output shape:", "vgg": "output shape:",
         "nin": "output shape:", "googlenet": "output shape:", "resnet": "output shape:",
         "densenet": "output shape:", "batchnorm": "= m/(m - 1) =",
         "kaggle_cifar10": "submission.csv", "benchmark": "examples/sec"}


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs_quickly_without_data(name, tmp_path):
    result = run_quick(name, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert SHOWS[name] in result.stdout
    if name != "benchmark":
        assert "train acc" in result.stdout and "test acc" in result.stdout
    assert not any(tmp_path.iterdir())          # --quick leaves no files behind
