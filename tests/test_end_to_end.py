"""The engine as a user meets it: a small CNN learns, and the README example runs."""
import pathlib
import re

import numpy as np

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
