"""docs/where-things-run.md stays true: every file and function it names exists,
every kernel module is on the page, and each convolution algorithm runs as the
Function its section names, which calls exactly the kernels the section lists."""
import ast
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import kernels
import tinygrad_cnn as tc
from tinygrad_cnn import nn

# the page's references do not depend on the kernel set (the route test below sets its own):
# run under the first kernel set only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "where-things-run.md"
TEXT = PAGE.read_text()
REFERENCE = re.compile(r"`((?:tinygrad_cnn|kernels|tests|docs|benchmarks|models)/[\w/.-]+?"
                       r"\.(?:py|md))(?:::([\w.]+))?`")
BARE_PRIVATE_NAME = re.compile(r"`(_\w+)`")


def definitions(path):
    """Dotted names defined in a Python file: functions, classes, their methods
    and module-level assignments."""
    names = set()

    def visit(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(prefix + node.name)
                if isinstance(node, ast.ClassDef):
                    visit(node.body, prefix + node.name + ".")
            elif isinstance(node, ast.Assign):
                names.update(prefix + t.id for t in node.targets if isinstance(t, ast.Name))
    visit(ast.parse((ROOT / path).read_text()).body, "")
    return names


def paragraphs():
    """The page cut into bullets and paragraphs: a bare name belongs to the files
    named beside it."""
    return re.split(r"\n(?=- )|\n\s*\n", TEXT)


def test_every_named_file_and_definition_exists():
    named = REFERENCE.findall(TEXT)
    assert len(named) > 50
    missing = [f"{path}::{name}" if name else path for path, name in named
               if not (ROOT / path).is_file()
               or (name and path.endswith(".py") and name not in definitions(path))]
    assert missing == [], f"where-things-run.md names what does not exist: {missing}"


def test_every_bare_private_name_is_defined_in_a_file_named_beside_it():
    missing = []
    for chunk in paragraphs():
        files = {path for path, _ in REFERENCE.findall(chunk) if path.endswith(".py")}
        for name in BARE_PRIVATE_NAME.findall(chunk):
            if not any(name in definitions(path) for path in files):
                missing.append(name)
    assert missing == [], f"names defined in none of the files beside them: {missing}"


def test_every_kernel_module_is_on_the_page():
    modules = {f"kernels/{p.name}" for p in (ROOT / "kernels").glob("*.py")}
    named = {path for path, _ in REFERENCE.findall(TEXT)}
    assert modules - named == set()


def test_every_kernel_is_named_on_the_page():
    assert [k for k in kernels.KERNELS if f"`{k}`" not in TEXT and f"::{k}`" not in TEXT] == []


# ---------------------------------------------------------------- the routes
def section(heading):
    return TEXT.split(f"### {heading}", 1)[1].split("\n#", 1)[0]


def listed_kernels(heading):
    """Kernel names in the forward/backward bullets of a '### heading' section."""
    bullets = [b for b in section(heading).split("\n- ") if b.startswith(("forward", "backward"))]
    return {name for b in bullets for name in re.findall(r"`(\w+)`", b) if name in kernels.KERNELS}


def listed_function(heading):
    """(file, class) of the Function a '### heading' section names first."""
    return next((path, name) for path, name in REFERENCE.findall(section(heading))
                if path.startswith("tinygrad_cnn/ops/") and name and "." not in name)


CONVOLUTIONS = {   # heading -> (in, out channels, kernel size, padding, map side)
    "im2col": (8, 96, 3, 1, 8),     # 8 in: not Winograd; 8·9·96 multiply-adds: not direct
    "pointwise": (8, 8, 1, 0, 8),
    "Winograd": (16, 16, 3, 1, 8),
    "direct": (1, 6, 5, 2, 8),
    "dense": (16, 8, 3, 1, 3),
    "taps": (64, 64, 5, 2, 6),
}


@pytest.mark.parametrize("heading", CONVOLUTIONS)
def test_each_convolution_runs_the_function_and_kernels_the_page_lists(heading, monkeypatch):
    called = set()
    choose = kernels._implementation

    def recording(name, array):
        called.add(name)
        return choose(name, array)
    monkeypatch.setattr(kernels, "_implementation", recording)
    c_in, c_out, k, p, side = CONVOLUTIONS[heading]
    conv = nn.Conv2d(c_in, c_out, k, padding=p)
    x = tc.randn(2, c_in, side, side, requires_grad=True)
    y = conv(x)
    function = type(y.grad_fn)
    assert (Path(sys.modules[function.__module__].__file__).resolve().relative_to(ROOT).as_posix(),
            function.__name__) == listed_function(heading)
    assert f"`{y.grad_fn.name}`" in section(heading)     # the name trace() shows
    y.sum().backward()
    assert called == listed_kernels(heading)
    assert np.isfinite(x.grad.numpy()).all()


def test_on_a_gpu_auto_runs_a_winograd_shaped_layer_as_the_im2col_section_says(monkeypatch):
    from tinygrad_cnn import backend, cuda
    from tests.cupy_api.strict_cupy import StrictCupy
    fake = StrictCupy()
    monkeypatch.setattr(kernels.arrays, "cupy", fake)
    monkeypatch.setattr(backend, "cupy", fake)
    monkeypatch.setattr(kernels, "_gpu_kernels", dict(kernels._reference))
    monkeypatch.setattr(cuda, "_conv_column_budgets", {})
    called = set()
    choose = kernels._implementation

    def recording(name, array):
        called.add(name)
        return choose(name, array)
    monkeypatch.setattr(kernels, "_implementation", recording)
    c_in, c_out, k, p, side = CONVOLUTIONS["Winograd"]
    conv = nn.Conv2d(c_in, c_out, k, padding=p).to("cuda")
    x = tc.randn(2, c_in, side, side).to("cuda").requires_grad_()
    y = conv(x)
    function = type(y.grad_fn)
    assert (Path(sys.modules[function.__module__].__file__).resolve().relative_to(ROOT).as_posix(),
            function.__name__) == listed_function("im2col")
    y.sum().backward()
    assert called == listed_kernels("im2col")
    assert "never picks Winograd" in " ".join(TEXT.split())     # what the page says
