"""Tests of plot_hf.plots: PNG files are written, and missing data is tolerated (None, no file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from plot_hf.plots import plot_conflict, plot_per_class_accuracy, plot_training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COUNTS = [int(5000 * 0.01 ** (j / 9)) for j in range(10)]  # CIFAR-10-LT, IF 100: 5000 ... 50


def _log_history(with_conflict: bool = True) -> list[dict]:
    history = []
    for step in range(10, 210, 10):
        row = {"loss": 2.0 / (1 + step / 50), "learning_rate": 0.1, "epoch": step / 40, "step": step}
        if with_conflict:
            row |= {"plot/conflict_fraction": 0.4 - step / 1000, "plot/num_classes": 10,
                    "plot/coef_std": 0.02}
        history.append(row)
        if step % 40 == 0:
            history.append({"eval_loss": 1.2, "eval_accuracy": 0.5 + step / 1000, "eval_many_shot_accuracy": 0.8,
                            "eval_medium_shot_accuracy": 0.5, "epoch": step / 40, "step": step})
    history.append({"train_runtime": 12.0, "train_loss": 0.9, "epoch": 5.0, "step": 200})
    return history


def _assert_png(path: str | None, expected: Path) -> tuple[int, int]:
    assert path == str(expected)
    assert expected.is_file() and expected.stat().st_size > 1000
    assert expected.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(expected) as image:
        return image.size


def test_per_class_accuracy_png(tmp_path):
    accs = [0.95, 0.9, 0.88, None, 0.7, 0.6, 0.5, 0.4, 0.3, 0.1]  # class 3 without test samples
    out = tmp_path / "plots" / "per_class_accuracy.png"  # parent folder is created
    width, height = _assert_png(plot_per_class_accuracy(accs, COUNTS, out, rule="inclusive"), out)
    assert (width, height) == (7 * 120, 4 * 120)


def test_per_class_accuracy_nothing_to_draw_or_bad_lengths(tmp_path):
    out = tmp_path / "none.png"
    assert plot_per_class_accuracy([None, None], [10, 5], out) is None and not out.exists()
    with pytest.raises(ValueError, match="3 entries but `train_counts` has 2"):
        plot_per_class_accuracy([0.1, 0.2, 0.3], [10, 5], out)


def test_training_curves_png(tmp_path):
    out = tmp_path / "curves.png"
    width, _ = _assert_png(plot_training_curves(_log_history(), out), out)
    assert width == 2 * 6 * 120  # loss and accuracy panels


def test_training_curves_with_loss_only_and_epochs_only(tmp_path):
    history = [{"loss": 1.0 / (e + 1), "epoch": float(e)} for e in range(5)]
    out = tmp_path / "loss_only.png"
    width, _ = _assert_png(plot_training_curves(history, out), out)
    assert width == 6 * 120  # one panel


def test_training_curves_missing_keys(tmp_path):
    out = tmp_path / "empty.png"
    assert plot_training_curves([{"train_runtime": 1.0, "step": 3}], out) is None
    assert plot_training_curves([], out) is None and not out.exists()


def test_conflict_png(tmp_path):
    out = tmp_path / "conflict.png"
    _, height = _assert_png(plot_conflict(_log_history(), out), out)
    assert height == int(3 * 2.6 * 120)
    partial = [{"plot/conflict_fraction": 0.3, "step": 1}, {"plot/conflict_fraction": float("nan"), "step": 2}]
    _, height = _assert_png(plot_conflict(partial, out), out)
    assert height == int(2.6 * 120)


def test_conflict_missing_keys(tmp_path):
    out = tmp_path / "no_conflict.png"
    assert plot_conflict(_log_history(with_conflict=False), out) is None and not out.exists()
