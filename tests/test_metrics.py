"""Tests of plot_hf.metrics and the local `evaluate` module: hand-computed values, definitions, streaming == full."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plot_hf.metrics import (
    LTMetrics,
    expected_calibration_error,
    lt_metrics,
    make_preprocess_logits_for_metrics,
    shot_groups,
)

MODULE_PATH = Path(__file__).resolve().parents[1] / "plot_hf" / "evaluate_module" / "lt_accuracy.py"

# Tiny example. Strict rule: many {0, 1}, medium {2, 3, 4, 5}, few: no class.
# OLTR rule: many {0, 1}, medium {2, 3, 4}, few {5}, but class 5 (like class 3) has no test sample.
COUNTS = [500, 120, 60, 40, 25, 20]
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 4, 4, 4])
PREDS = np.array([0, 0, 1, 1, 0, 2, 2, 4, 4, 0])
# per-class accuracy: c0 2/3, c1 1/2, c2 1, c3 None, c4 2/3, c5 None
PER_CLASS = [2 / 3, 1 / 2, 1.0, None, 2 / 3, None]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def _logits_with_argmax(preds: np.ndarray, num_classes: int, seed: int = 0) -> np.ndarray:
    """Random logits whose row-wise argmax is ``preds``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(preds.size, num_classes)).astype(np.float32)
    logits[np.arange(preds.size), preds] = logits.max(axis=1) + 1.0
    return logits


def _random_case(n: int = 300, c: int = 12, seed: int = 1) -> tuple[np.ndarray, np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    logits = (3.0 * rng.normal(size=(n, c))).astype(np.float32)
    labels = rng.integers(0, c, size=n)
    counts = [int(1000 * 0.01 ** (j / (c - 1))) for j in range(c)]
    return logits, labels, counts


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], key


# ---------------------------------------------------------------- shot groups


def test_shot_groups_strict_and_inclusive_boundaries():
    counts = [101, 100, 99, 21, 20, 19]
    assert shot_groups(counts) == {"many": [0], "medium": [1, 2, 3, 4], "few": [5]}
    assert shot_groups(counts, rule="inclusive") == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}
    assert shot_groups(COUNTS)["few"] == []


def test_one_shot_rule_vocabulary_for_data_metrics_and_cards():
    from plot_hf.data import ClassStats
    from plot_hf.metrics import describe_shot_rule

    counts = [101, 100, 99, 21, 20, 19]
    for rule in ("strict", "inclusive"):
        groups = ClassStats(tuple(counts), shot_rule=rule).groups
        assert groups == {k: v for k, v in shot_groups(counts, rule=rule).items() if v}
    assert describe_shot_rule("inclusive", 100, 20).startswith("inclusive rule: many >= 100, few <= 20")
    assert describe_shot_rule("strict", 50, 5).startswith("strict rule: many > 50, few < 5")


def test_shot_groups_rejects_bad_arguments():
    with pytest.raises(ValueError, match="'median'; choose one of \\('strict', 'inclusive'\\)"):
        shot_groups(COUNTS, rule="median")
    with pytest.raises(ValueError, match="called 'inclusive'"):
        shot_groups(COUNTS, rule="oltr")
    with pytest.raises(ValueError, match="`few_threshold` \\(200\\)"):
        shot_groups(COUNTS, few_threshold=200)


# ---------------------------------------------------------------- hand-computed values


@pytest.mark.parametrize("as_logits", [True, False])
def test_hand_computed_strict(as_logits):
    scores = _logits_with_argmax(PREDS, len(COUNTS)) if as_logits else PREDS
    out = lt_metrics(scores, LABELS, COUNTS)
    assert out["accuracy"] == pytest.approx(7 / 10)
    assert out["many_shot_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert out["medium_shot_accuracy"] == pytest.approx((1 + 2 / 3) / 2)  # classes 3, 5: no test sample
    assert "few_shot_accuracy" not in out  # no class in the group
    assert out["macro_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1 + 2 / 3) / 4)
    assert out["per_class_accuracy"] == pytest.approx(PER_CLASS)
    assert out["per_class_accuracy"][3] is None and out["per_class_accuracy"][5] is None
    assert ("nll" in out) is as_logits and ("ece" in out) is as_logits
    assert ("top5_accuracy" in out) is as_logits
    _assert_never_nan(out)


def test_hand_computed_inclusive_group_without_test_samples():
    out = lt_metrics(PREDS, LABELS, COUNTS, rule="inclusive")
    assert out["medium_shot_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    assert "few_shot_accuracy" not in out  # its only class (5) has no test sample
    _assert_never_nan(out)


def test_thresholds_are_configurable():
    out = lt_metrics(PREDS, LABELS, COUNTS, many_threshold=50, few_threshold=30)
    # many {0, 1, 2}, medium {3}, few {4, 5}
    assert out["many_shot_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert "medium_shot_accuracy" not in out
    assert out["few_shot_accuracy"] == pytest.approx(2 / 3)


def _assert_never_nan(out: dict) -> None:
    for key, value in out.items():
        values = value if isinstance(value, list) else [value]
        assert all(v is None or math.isfinite(v) for v in values), key


def test_labels_out_of_range_name_the_problem():
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 6\).*found 7"):
        lt_metrics(PREDS, np.where(LABELS == 4, 7, LABELS), COUNTS)
    with pytest.raises(ValueError, match=r"shape \(N,\) or \(N, 6\)"):
        lt_metrics(np.zeros((10, 5)), LABELS, COUNTS)


# ---------------------------------------------------------------- definitions


def test_top5_against_rank_definition():
    logits, labels, counts = _random_case()
    true = logits[np.arange(labels.size), labels]
    rank = (logits > true[:, None]).sum(axis=1)  # classes scoring strictly higher than the label
    assert lt_metrics(logits, labels, counts)["top5_accuracy"] == pytest.approx(float((rank < 5).mean()))


def test_top5_absent_below_five_classes():
    out = lt_metrics(np.eye(4, dtype=np.float32), [0, 1, 2, 0], [10, 10, 10, 10])
    assert "top5_accuracy" not in out and out["accuracy"] == 0.75


def test_nll_matches_cross_entropy():
    logits, labels, counts = _random_case()
    expected = F.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(labels)).item()
    assert lt_metrics(logits, labels, counts)["nll"] == pytest.approx(expected, rel=1e-5)


def _ece_loop(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """MiSLAS's ECE, written out as in its reference code (per-bin loop)."""
    confidences, predictions = torch.softmax(logits, dim=1).max(dim=1)
    accuracies = predictions.eq(labels)
    boundaries = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lower, upper in zip(boundaries[:-1], boundaries[1:], strict=True):
        in_bin = (confidences.double() > lower) & (confidences.double() <= upper)
        prop = in_bin.double().mean().item()
        if prop > 0:
            gap = accuracies[in_bin].double().mean() - confidences[in_bin].double().mean()
            ece += abs(gap.item()) * prop
    return ece


@pytest.mark.parametrize("scale", [0.3, 3.0, 30.0])
def test_ece_matches_direct_loop(scale):
    logits, labels, counts = _random_case(n=1000)
    logits = logits * scale
    expected = _ece_loop(torch.from_numpy(logits), torch.from_numpy(labels))
    assert lt_metrics(logits, labels, counts)["ece"] == pytest.approx(expected, abs=1e-9)


def test_ece_pinned_example():
    # bins of width 1/15: 0.95 and 0.97 share the last bin (acc 1/2, conf 0.96), 0.5 is alone (acc 1).
    ece = expected_calibration_error([0.95, 0.97, 0.5], [1, 0, 1])
    assert ece == pytest.approx((2 / 3) * abs(0.5 - 0.96) + (1 / 3) * abs(1 - 0.5))


def test_torch_inputs_and_low_precision_logits():
    logits, labels, counts = _random_case()
    full = lt_metrics(logits, labels, counts)
    _assert_same(lt_metrics(torch.from_numpy(logits), torch.from_numpy(labels), counts), full)
    half = lt_metrics(torch.from_numpy(logits).bfloat16(), labels, counts)
    assert half["nll"] == pytest.approx(full["nll"], rel=2e-2)


# ---------------------------------------------------------------- streaming == full


def _stream(logits: np.ndarray, labels: np.ndarray, batch: int, k: int = 5) -> np.ndarray:
    """What Trainer's loop does: hook each (logits, labels) batch, concatenate, move to NumPy."""
    hook = make_preprocess_logits_for_metrics(k=k)
    parts = [
        hook(torch.from_numpy(logits[i : i + batch]), torch.from_numpy(labels[i : i + batch]))
        for i in range(0, labels.size, batch)
    ]
    return torch.cat(parts).numpy()


def test_reduced_batches_are_small():
    logits, labels, _ = _random_case()
    assert _stream(logits, labels, batch=64).shape == (labels.size, 5 + 2)


def test_streaming_equals_full():
    from transformers import EvalPrediction

    logits, labels, counts = _random_case()
    full = lt_metrics(logits, labels, counts)
    reduced = _stream(logits, labels, batch=37)
    _assert_same(LTMetrics(counts)(EvalPrediction(predictions=reduced, label_ids=labels)), full)
    _assert_same(LTMetrics(counts)((reduced, labels)), full)


def test_streaming_batch_eval_metrics_mode():
    logits, labels, counts = _random_case()
    metric, hook = LTMetrics(counts), make_preprocess_logits_for_metrics()
    starts = list(range(0, labels.size, 50))
    for _ in range(2):  # the state resets after compute_result=True
        for i in starts:
            batch = hook(torch.from_numpy(logits[i : i + 50]), torch.from_numpy(labels[i : i + 50]))
            out = metric((batch, torch.from_numpy(labels[i : i + 50])), compute_result=i == starts[-1])
        _assert_same(out, lt_metrics(logits, labels, counts))


def test_hook_accepts_tuple_outputs_and_padding_labels():
    logits = torch.randn(4, 7)
    reduced = make_preprocess_logits_for_metrics(k=3)((logits, torch.zeros(4, 2)), torch.tensor([1, -100, 6, 0]))
    assert reduced.shape == (4, 5)
    assert torch.isnan(reduced[1, -1]) and not torch.isnan(reduced[[0, 2, 3], -1]).any()
    torch.testing.assert_close(reduced[:, 0], logits.argmax(dim=1).float())
    assert repr(LTMetrics([5, 3], per_class=False)).startswith("LTMetrics(num_classes=2,")


class _TinyClassifier(torch.nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.linear(x)
        out = {"logits": logits}
        if labels is not None:
            out = {"loss": F.cross_entropy(logits, labels), **out}
        return out


@pytest.mark.parametrize("batch_eval_metrics", [False, True])
def test_trainer_evaluate_matches_full_logits(tmp_path, batch_eval_metrics):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    n, dim, counts = 90, 8, [300, 150, 90, 40, 15, 6]
    x, labels = torch.randn(n, dim), torch.arange(n) % len(counts)
    model = _TinyClassifier(dim, len(counts)).eval()
    with torch.no_grad():
        expected = lt_metrics(model(x)["logits"], labels, counts, per_class=False)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=16, report_to="none", use_cpu=True,
        batch_eval_metrics=batch_eval_metrics, disable_tqdm=True,
    )
    data = Dataset.from_dict({"x": x.numpy(), "labels": labels.numpy()}).with_format("torch")
    trainer = Trainer(
        model=model, args=args, eval_dataset=data, compute_metrics=LTMetrics(counts, per_class=False),
        preprocess_logits_for_metrics=make_preprocess_logits_for_metrics(k=5),
    )
    got = trainer.evaluate()
    for key, value in expected.items():
        assert got[f"eval_{key}"] == pytest.approx(value, rel=1e-5, abs=1e-7), key


# ---------------------------------------------------------------- evaluate module


def test_evaluate_module_loads_offline_and_matches(tmp_path):
    logits, labels, counts = _random_case(n=40, c=6)
    script = f"""
import json, numpy as np, evaluate
m = evaluate.load({str(MODULE_PATH)!r})
logits = np.array({logits.tolist()!r}, dtype=np.float32)
out_logits = m.compute(predictions=logits, references={labels.tolist()!r}, train_counts={counts!r})
out_ids = evaluate.load({str(MODULE_PATH)!r}).compute(
    predictions=logits.argmax(1).tolist(), references={labels.tolist()!r}, train_counts={counts!r}, rule="inclusive")
print(json.dumps([out_logits, out_ids]))
"""
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out_logits, out_ids = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = lt_metrics(logits, labels, counts)
    assert out_logits.keys() == expected.keys()
    for key in ("accuracy", "many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy", "top5_accuracy"):
        assert out_logits[key] == pytest.approx(expected[key]), key
    assert out_logits["nll"] == pytest.approx(expected["nll"], rel=1e-5)
    assert out_logits["ece"] == pytest.approx(expected["ece"], abs=1e-6)
    expected_ids = lt_metrics(logits.argmax(1), labels, counts, rule="inclusive")
    assert_nested_close(out_ids, expected_ids)


def assert_nested_close(actual: object, expected: object, where: str = "result") -> None:
    """Compare nested dicts/lists of numbers leaf by leaf (``pytest.approx`` rejects nested containers)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key, value in expected.items():
            assert_nested_close(actual[key], value, f"{where}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple) and len(actual) == len(expected), where
        for index, value in enumerate(expected):
            assert_nested_close(actual[index], value, f"{where}[{index}]")
    elif isinstance(expected, float | int) and not isinstance(expected, bool):
        assert actual == pytest.approx(expected), where
    else:
        assert actual == expected, where


def test_assert_nested_close_finds_a_differing_leaf():
    assert_nested_close({"a": [1.0, None], "b": 2}, {"a": [1.0 + 1e-12, None], "b": 2})
    with pytest.raises(AssertionError, match=r"result\['a'\]\[0\]"):
        assert_nested_close({"a": [1.1, None]}, {"a": [1.0, None]})
    with pytest.raises(AssertionError, match=r"result\['a'\]\[1\]"):
        assert_nested_close({"a": [1.0, 0.5]}, {"a": [1.0, None]})
