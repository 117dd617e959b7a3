"""The engine as a user meets it: a small CNN learns, and the README example runs."""
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from tinygrad_cnn import nn, optim

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 8, kernel_size=3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(kernel_size=2, stride=2),
        nn.Conv2d(8, 8, kernel_size=3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


def test_small_cnn_overfits_one_batch():
    tc.manual_seed(0)
    net = small_cnn()
    X = tc.randn(16, 1, 12, 12)
    y = tc.tensor(np.arange(16) % 10)
    optimizer = optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(200):
        loss = F.cross_entropy(net(X), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0] / 10, f"loss went {losses[0]:.3f} -> {losses[-1]:.3f}"
    net.eval()
    with tc.no_grad():
        assert (net(X).argmax(dim=1).numpy() == y.numpy()).mean() == 1.0


# Two Python threads, each with its own network and batch, training at once
# (a server answering two requests, an evaluation beside training) must get what
# each gets alone.  Run in a child process: Numba's workqueue layer ended the
# whole process when both launched a parallel loop at once.
TWO_TRAINING_THREADS = r"""
import json, sys, threading
import numpy as np
import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from tinygrad_cnn import nn
from tinygrad_cnn.ops import conv
tc.set_num_threads(2)
conv.set_algorithm(sys.argv[1])
def network_and_batch(seed):     # in the main thread: tc's random generator is global
    tc.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(16 * 16 * 16, 10))
    X = tc.Tensor(np.random.default_rng(seed).standard_normal((16, 3, 32, 32), np.float32))
    return net, X, tc.tensor(np.arange(16) % 10)
def gradients(net, X, y, passes):
    for _ in range(passes):
        net.zero_grad()
        F.cross_entropy(net(X), y).backward()
    return [p.grad.numpy().copy() for p in net.parameters()]
alone = [gradients(*network_and_batch(seed), 1) for seed in (1, 2)]
inputs = [network_and_batch(seed) for seed in (1, 2)]
together = [None, None]
def train(i):
    together[i] = gradients(*inputs[i], 10)
workers = [threading.Thread(target=train, args=(i,)) for i in range(2)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(json.dumps({"differ": [i for i in range(2) if not all(
    np.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(alone[i], together[i]))]}))
"""


@pytest.mark.kernel_free
@pytest.mark.parametrize("algorithm", ["im2col", "winograd"])
def test_two_threads_training_at_once_each_get_what_they_get_alone(algorithm):
    root = README.parent
    env = {**os.environ, "TINYGRAD_CNN_KERNELS": "numba",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", TWO_TRAINING_THREADS, algorithm], env=env,
                         cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"differ": []}


def _readme_python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_example_runs_as_written(capsys):
    blocks = _readme_python_blocks()
    assert blocks, "README has no python example"
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "Linear output shape:" in out and "loss" in out


def test_readme_set_up_is_two_commands_that_ci_runs():
    setup = README.read_text(encoding="utf-8").split("\n## Set up\n")[1].split("\n## ")[0]
    commands = re.findall(r"^    (\S.*)$", setup, re.M)           # the indented code lines
    assert commands == ['pip install -e ".[test,parity]"', "python -m pytest"]
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    # .ci/run spells them `python -m pip install --quiet ...` and `python -m pytest`
    ci_lines = [line.replace("python -m pip", "pip").replace(" --quiet", "")
                for line in ci.splitlines()]
    for command in commands:
        assert any(line == command or line.startswith(command + " ") for line in ci_lines), \
            f".ci/run does not run the README's {command!r}"
