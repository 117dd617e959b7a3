"""benchmarks/learning.py's bookkeeping (no training): a run's metrics.jsonl rows
summarised, the table with missing and failed rows, and README's marked block
replaced without touching the rest."""
import pytest

import models
from benchmarks import learning

# bookkeeping only: no op runs, so one kernel set is enough
pytestmark = pytest.mark.kernel_free


def rows():
    run = {"model": "resnet18", "resize": None, "batch_size": 64, "lr": 0.05, "epochs": 2,
           "momentum": 0.9, "train_examples": 100, "test_examples": 40}
    return [{"epoch": 1, "train_loss": 2.0, "train_acc": 0.3, "test_acc": 0.5,
             "examples_per_sec": 50.0, "train_examples": 100, "run": run},
            {"epoch": 2, "train_loss": 1.0, "train_acc": 0.6, "test_acc": 0.75,
             "examples_per_sec": 25.0, "train_examples": 100, "run": run}]


def test_summary_takes_the_last_epoch_and_the_speed_over_all():
    s = learning.summarise(rows())
    assert (s["train_loss"], s["train_acc"], s["test_acc"]) == (1.0, 0.6, 0.75)
    assert s["examples_per_sec"] == pytest.approx(200 / (2 + 4))   # 200 examples in 6 s
    assert s["steps"] == 4                                          # ceil(100 / 64) per epoch
    assert s["settings"]["lr"] == 0.05


def test_table_shows_done_failed_and_missing_networks():
    done = {"network": "resnet18", "wall_s": 125.0, "load_average": [3.0, 5.0],
            "date": "2026-12-04", "threads": 1, "cpu_s": 100.4, **learning.summarise(rows())}
    failed = {"network": "nin", "wall_s": 10.0, "load_average": [4.0, 4.0],
              "date": "2026-12-04", "error": "loss is nan", "command": "…"}
    text = learning.table({"resnet18": done, "nin": failed}, models.names(), "a test machine",
                          notes={"resnet18": "why"})
    line = next(r for r in text.splitlines() if r.startswith("| `resnet18`"))
    assert "| 4 | 1.000 | 0.600 | 0.750 | 33.3 | 2 min 05 s | 1 min 40 s |" in line
    assert "28×28 (no resize), 100 train / 40 test images, 2 epochs, batch 64, lr 0.05, " \
           "momentum 0.9" in line
    assert "0.008, 0.999, 0.898 (d2l 7.6)" in line and "below" not in line
    assert "failed: loss is nan" in next(r for r in text.splitlines() if r.startswith("| `nin`"))
    assert "load average was 3.0–5.0" in text and "1 thread" in text and "0.10" in text
    assert "Not run yet: `lenet`" in text


def test_readme_block_is_replaced_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{learning.START}\nold\n{learning.END}\nafter\n")
    learning.write_readme("new table", readme)
    assert readme.read_text() == f"before\n{learning.START}\nnew table\n{learning.END}\nafter\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        learning.write_readme("x", readme)


def test_the_project_readme_has_the_markers():
    text = learning.README.read_text()
    assert text.index(learning.START) < text.index(learning.END)


def test_settings_name_an_init_other_than_d2l_xavier():
    base = {"resize": 67, "batch_size": 128, "lr": 0.01, "epochs": 2}
    assert "init" not in learning.settings_text(dict(base, init="xavier"))
    assert "init" not in learning.settings_text(base)           # runs from before the option
    assert learning.settings_text(dict(base, init="kaiming")).endswith("kaiming init")
