"""Analysis measures (conflict, preference, NC1), the periodic AnalysisCallback, and the overlay plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from plot_hf import PLOTConfig, PLOTTrainer
from plot_hf.analysis import (
    ClassGradients,
    Features,
    conflict_measures,
    preference_measures,
    representation_measures,
)
from plot_hf.analysis.plots import plot_analysis_history, plot_conflict_heatmap
from tests.helpers import collate, parameters_of, tensor_dataset, tiny_model


def test_conflict_and_preference_on_known_gradients() -> None:
    g = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [0.0, 1.0]], dtype=torch.float64)
    grads = ClassGradients(np.array([0, 1, 2]), g, np.array([5, 3, 1]))
    conflict = conflict_measures(grads, [1, 3, 5])  # class 2 is the most frequent
    assert conflict["classes_by_frequency"] == [2, 1, 0]
    assert abs(conflict["conflict_fraction"] - 1 / 3) < 1e-12  # only (0, 1) conflicts
    assert conflict["per_class_conflict"] == [0.0, 0.5, 0.5]
    pref = preference_measures(grads, [1, 3, 5])
    mean = g.mean(0)
    assert np.allclose(pref["projection_on_mean"], (g[[2, 1, 0]] @ mean / mean.norm()).tolist())


def test_nc1_is_zero_for_collapsed_features_and_grows_with_spread() -> None:
    means = torch.eye(3, dtype=torch.float64) * 5
    labels = torch.arange(3).repeat_interleave(4)
    collapsed = representation_measures(Features(means[labels], labels, torch.ones(12)), [4, 4, 4])
    assert collapsed["nc1"] < 1e-12 and collapsed["mean_loss_std"] == 0.0
    noisy = means[labels] + torch.randn(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    spread = representation_measures(Features(noisy, labels, torch.arange(12.0)), [4, 4, 4])
    assert spread["nc1"] > 0.01 and len(spread["per_class_nc1"]) == 3


def test_callback_logs_measures_without_changing_the_run(tmp_path: Path) -> None:
    def train(every: int) -> PLOTTrainer:
        args = PLOTConfig(output_dir=str(tmp_path / str(every)), num_train_epochs=1, per_device_train_batch_size=16,
                          optim="sgd", learning_rate=0.05, moo_until_epoch=1, save_strategy="no", report_to="none",
                          use_cpu=True, logging_steps=1, analysis_every_steps=every, analysis_num_batches=1,
                          disable_tqdm=True)
        trainer = PLOTTrainer(model=tiny_model(), args=args, train_dataset=tensor_dataset(48), data_collator=collate)
        trainer.train()
        return trainer

    with_analysis, without = train(2), train(0)
    rows = [r for r in with_analysis.state.log_history if "analysis/nc1" in r]
    assert [r["step"] for r in rows] == [0, 2]
    assert all(0.0 <= r["analysis/conflict_fraction"] <= 1.0 for r in rows)
    a, b = parameters_of(with_analysis.model), parameters_of(without.model)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical run
    png = plot_analysis_history({"PLOT": with_analysis.state.log_history, "off": without.state.log_history},
                                tmp_path / "history.png")
    assert png and Path(png).stat().st_size > 0
    assert plot_conflict_heatmap(conflict_measures(
        ClassGradients(np.array([0, 1]), torch.eye(2, dtype=torch.float64), np.array([1, 1])), [2, 1]),
        tmp_path / "heat.png")
