"""benchmarks/ is run by hand and never timed here; only its file handling is tested."""
import pytest

from benchmarks.cpu import LOG_MARKER, write_markdown

# File handling only: no kernel is called (tests/conftest.py).
pytestmark = pytest.mark.kernel_free


def test_a_new_run_replaces_the_table_and_keeps_the_run_log(tmp_path):
    path = tmp_path / "results.md"
    write_markdown(path, "# table of run 1\n")
    assert path.read_text() == "# table of run 1\n"
    log = f"{LOG_MARKER}\n\n## Run log\n\nRun 1: LeNet 7,063 examples/s.\n"
    path.write_text(path.read_text() + "\n" + log)
    write_markdown(path, "# table of run 2\n")
    assert path.read_text() == "# table of run 2\n\n" + log

