"""``python -m plot_hf.compare`` on tiny settings: every cell runs once in its own folder, a second call
reuses them, and the table / JSON / plot come out in the seed poster's format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from plot_hf.compare import Cell, columns_for, main, markdown_table

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "baselines" / "digits.yaml"
TINY = ["--num_train_epochs", "1", "--moo_until_epoch", "1", "--lr_milestones", "null", "--lr_warmup_epochs", "0",
        "--model_name", "resnet20_cifar", "--data.max_per_class", "30", "--data.imbalance_factor", "3",
        "--data.validation_per_class", "0", "--per_device_train_batch_size", "32"]


def test_columns_and_cell_overrides(tmp_path):
    assert columns_for(["none", "epo", "cagrad"]) == ["vanilla", "epo-plain", "epo-plot", "cagrad-plain", "cagrad-plot"]
    with pytest.raises(ValueError, match="Unknown solver"):
        columns_for(["pcgrad"])
    assert Cell("gcl", "vanilla", 1).overrides()[-2:] == ["--moo_until_epoch", "0"]
    assert Cell("gcl", "mgda-plain", 0).overrides()[-4:] == ["--moo_solver", "mgda", "--moo_framework", "plain"]
    assert Cell("gcl", "mgda-plot", 2).folder(tmp_path) == tmp_path / "gcl" / "mgda-plot" / "seed2"


def test_markdown_table_marks_the_framework_number_against_vanilla():
    def stat(mean: float, std: float = 0.5) -> dict:
        return {m: {"mean": mean, "std": std} for m in ("accuracy",)}

    summary = {"ldam_drw": {"vanilla": stat(70.0), "epo-plain": stat(40.0), "epo-plot": stat(72.0),
                            "cagrad-plain": stat(75.0), "cagrad-plot": stat(69.0)},
               "gcl": {"vanilla": stat(80.0), "epo-plain": stat(math.nan), "epo-plot": stat(81.0),
                       "cagrad-plain": stat(79.0), "cagrad-plot": stat(80.0)}}
    table = markdown_table(summary, ["vanilla", "epo-plain", "epo-plot", "cagrad-plain", "cagrad-plot"])
    lines = table.strip().splitlines()
    assert lines[0] == ("| Baseline | Vanilla | w/ EPO (plain) | w/ EPO (PLOT) | w/ CAGRAD (plain) | "
                        "w/ CAGRAD (PLOT) |")
    assert lines[2] == "| ldam_drw | 70.00 ± 0.50 | 40.00 ± 0.50 | 72.00 ± 0.50 ▲ | 75.00 ± 0.50 | 69.00 ± 0.50 ▼ |"
    assert lines[3].split(" | ")[2] == "-" and lines[3].endswith("80.00 ± 0.50 ▼ |")  # ties are not a gain


def test_compare_command_tiny_and_resumable(tmp_path, capsys):
    argv = [str(RECIPE), "--baselines", "balanced_softmax,ldam_drw", "--solvers", "none,cagrad", "--seeds", "1",
            "--output_dir", str(tmp_path), "--threads", "1", *TINY]
    payload = main(argv)
    first = capsys.readouterr().out
    assert first.count("top-1") == 6 and first.count(" s)") == 6  # a progress line per cell, with its time
    assert payload["columns"] == ["vanilla", "cagrad-plain", "cagrad-plot"]
    assert len(payload["runs"]) == 6
    for run in payload["runs"]:
        assert Path(run["folder"], "metrics.json").is_file()
        assert set(run["metrics"]) == {"accuracy", "many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy"}
        assert 0.0 <= run["metrics"]["accuracy"] <= 1.0
    cell_recipe = (tmp_path / "ldam_drw" / "cagrad-plain" / "seed0" / "recipe.yaml").read_text()
    assert "moo_framework: plain" in cell_recipe and "baseline: ldam_drw" in cell_recipe
    table = (tmp_path / "seed_table.md").read_text()
    assert "| balanced_softmax |" in table and "| ldam_drw |" in table and "±" in table
    rows = table.split("\n\n", 1)[1]
    assert rows.count("▲") + rows.count("▼") == 2
    assert json.loads((tmp_path / "seed_table.json").read_text())["summary"]["ldam_drw"]["vanilla"]["seeds"] == 1
    assert (tmp_path / "seed_table.png").stat().st_size > 0

    main(argv)  # resumable: every cell is read back, none re-run
    second = capsys.readouterr().out
    assert second.count("(done before)") == 6
