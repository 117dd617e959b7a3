"""docs/*.md cite the tests that check their derivations as ``tests/<path>.py::<name>``;
every citation must name a test function that exists, so a renamed or deleted test
cannot leave a page pointing at nothing."""
import ast
import re
from pathlib import Path

import pytest

# the derivations' numbers do not depend on the kernel set (the sets' agreement is tested in
# tests/kernels/): run under the first kernel set only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").glob("*.md"))
CITATION = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def functions_in(path):
    """Names of the module-level test functions of a test file."""
    tree = ast.parse((ROOT / path).read_text())
    return {node.name for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def citations(page):
    return CITATION.findall(page.read_text())


def test_the_four_pages_exist():
    assert {p.stem for p in PAGES} >= {"conv", "pooling", "batchnorm", "autograd"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_cited_test_exists(page):
    cited = citations(page)
    assert cited, f"{page.name} cites no test"
    missing = [f"{path}::{name}" for path, name in cited
               if not (ROOT / path).is_file() or name not in functions_in(path)]
    assert missing == [], f"{page.name} cites tests that do not exist: {missing}"


def test_every_derivation_test_is_cited_by_a_page():
    cited = {name for page in PAGES for path, name in citations(page)
             if path == "tests/docs/test_derivations.py"}
    uncited = functions_in("tests/docs/test_derivations.py") - cited
    assert uncited == set(), f"derivation tests no page cites: {sorted(uncited)}"
