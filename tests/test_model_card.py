"""Tests of plot_hf.model_card: the card renders, and its model-index parses back with huggingface_hub."""

from __future__ import annotations

import pytest
import yaml
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from plot_hf.model_card import TAGS, build_model_card, normalize_results

RECIPE = """\
# CIFAR-10-LT, IF 100, ResNet-32, LDAM-DRW + PLOT
dataset_name: cifar10-lt
imbalance_factor: 100
model_name_or_path: resnet32_cifar
learning_rate: 0.1
num_train_epochs: 200
moo_solver: cagrad
notes: "a ```fenced``` string survives"
"""
HPARAMS = {"moo_solver": "cagrad", "cagrad_c": 0.5, "sam_rho": 0.05, "moo_stages": "[160, 180]"}
LAST = {
    "eval_accuracy": 0.78123, "eval_top5_accuracy": 0.9811, "eval_many_shot_accuracy": 0.9105,
    "eval_medium_shot_accuracy": 0.7032, "eval_macro_accuracy": 0.7812, "eval_ece": 0.0512,
    "eval_nll": 0.8931, "eval_per_class_accuracy": [0.9, 0.8], "epoch": 200.0,
}
BEST = {"test_accuracy": 0.7901, "test_many_shot_accuracy": 0.9201, "test_medium_shot_accuracy": 0.7111,
        "epoch": 183.0}
BASELINE = {"accuracy": 0.7704, "many_shot_accuracy": 0.9300, "medium_shot_accuracy": 0.6500, "ece": 0.10}
PLOTS = {"Per-class accuracy": "plots/per_class_accuracy.png", "Training curves": "plots/training_curves.png",
         "Gradient conflict": None}


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def _card(**overrides) -> ModelCard:
    kwargs = dict(
        model_name="plot-resnet32-cifar10-lt-if100", dataset_name="CIFAR-10-LT", imbalance_factor=100,
        backbone="resnet32_cifar", num_parameters=464_154, recipe_yaml=RECIPE, plot_hparams=HPARAMS,
        metrics={"last": LAST, "best_on_validation": BEST}, baseline_metrics=BASELINE, plots=PLOTS,
        repo_id="someone/plot-resnet32-cifar10-lt-if100", dataset_id="uoft-cs/cifar10",
    )
    return build_model_card(**(kwargs | overrides))


def test_model_index_round_trip(tmp_path):
    path = tmp_path / "README.md"
    _card().save(path)
    loaded = ModelCard.load(path)
    by_type = {r.metric_type: r for r in loaded.data.eval_results}
    assert set(by_type) == {
        "accuracy", "top_5_accuracy", "many_shot_accuracy", "medium_shot_accuracy"
    }  # no few-shot value given: no result, never NaN
    expected = {"accuracy": 78.12, "top_5_accuracy": 98.11, "many_shot_accuracy": 91.05,
                "medium_shot_accuracy": 70.32}
    assert {t: r.metric_value for t, r in by_type.items()} == expected
    for result in by_type.values():
        assert result.task_type == "image-classification"
        assert result.dataset_name == "CIFAR-10-LT" and result.dataset_type == "uoft-cs/cifar10"
        assert result.dataset_split == "test" and result.dataset_args == {"imbalance_factor": 100}
    assert by_type["many_shot_accuracy"].metric_args == {
        "shot_rule": "strict", "many_threshold": 100, "few_threshold": 20
    }
    # the same numbers through the raw metadata and huggingface_hub's model-index parser
    metadata = metadata_load(path)
    name, results = model_index_to_eval_results(metadata["model-index"])
    assert name == "plot-resnet32-cifar10-lt-if100"
    assert {r.metric_type: r.metric_value for r in results} == expected
    assert ModelCard(str(_card())).data.eval_results == loaded.data.eval_results


def test_metadata_tags_license_and_pipeline(tmp_path):
    data = _card(base_model="timm/resnet50.a1_in1k", license="mit").data
    assert list(TAGS) == ["plot", "long-tailed", "timm", "image-classification"]
    assert set(TAGS) <= set(data.tags)
    assert data.license == "mit" and data.pipeline_tag == "image-classification"
    assert data.library_name == "transformers" and data.base_model == "timm/resnet50.a1_in1k"
    assert data.datasets == ["uoft-cs/cifar10"]


def test_sections_and_content():
    text = _card().text
    for heading in ("## What was trained", "## How it was trained", "### PLOT hyperparameters",
                    "## Results", "### Baseline vs PLOT", "## Plots", "## How to use", "## Citation"):
        assert heading in text, heading
    assert "CIFAR-10-LT" in text and "100 (n_max / n_min)" in text
    assert "resnet32_cifar" in text and "0.46M (464,154)" in text
    # full recipe verbatim in a fence longer than the backtick run inside it
    assert "````yaml\n" + RECIPE.rstrip() + "\n````" in text
    assert yaml.safe_load(RECIPE)["learning_rate"] == 0.1
    assert "| `cagrad_c` | 0.5 |" in text and "| `moo_stages` | [160, 180] |" in text
    # results: last epoch and best on validation, in %
    assert "| Metric | Last epoch | Best on validation (epoch 183) |" in text
    assert "| Top-1 accuracy (%) | 78.12 | 79.01 |" in text
    assert "| NLL | 0.893 | – |" in text
    assert "Few-shot" not in text.split("## Results")[1].split("## How to use")[0]
    # plots linked, skipped ones left out
    assert "![Per-class accuracy](plots/per_class_accuracy.png)" in text
    assert "![Training curves](plots/training_curves.png)" in text and "Gradient conflict" not in text
    # loading snippet and citation
    assert "import plot_hf" in text
    assert 'AutoModelForImageClassification.from_pretrained("someone/plot-resnet32-cifar10-lt-if100")' in text
    assert 'pipeline("image-classification", model="someone/plot-resnet32-cifar10-lt-if100")' in text
    assert "```bibtex\n@inproceedings{" in text
    assert "Pareto Deep Long-Tailed Recognition: A Conflict-Averse Solution" in text
    assert "Zhou, Zhipeng and Liu, Liu and Zhao, Peilin and Gong, Wei" in text and "2024" in text


def test_poster_comparison_markers():
    text = _card().text
    assert "| Metric | Baseline | w/ PLOT | Δ |" in text
    assert "| Top-1 accuracy (%) | 77.04 | 78.12▲ | +1.08 |" in text
    assert "| Many-shot accuracy (%) | 93.00 | 91.05▼ | -1.95 |" in text
    assert "| Medium-shot accuracy (%) | 65.00 | 70.32▲ | +5.32 |" in text
    assert "| ECE (15 bins) (%) | 10.00 | 5.12▼ | -4.88 |" in text


def test_flat_metrics_without_baseline_or_plots():
    card = _card(metrics={"accuracy": 0.5, "few_shot_accuracy": 0.25}, baseline_metrics=None, plots=None,
                 plot_hparams={}, imbalance_factor=None, num_parameters=None, repo_id=None)
    text = card.text
    assert "### Baseline vs PLOT" not in text and "## Plots" not in text
    assert "| Metric | Last epoch |\n" in text and "Best on validation" not in text.split("## Results")[1][:900]
    assert "PLOT was off (no PLOT hyperparameters)" in text
    assert 'from_pretrained("plot-resnet32-cifar10-lt-if100")' in text
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "accuracy": 50.0, "few_shot_accuracy": 25.0
    }


def test_no_metrics_still_renders():
    card = _card(metrics={}, baseline_metrics=None)
    assert card.data.eval_results is None and "_No results were given._" in card.text


def test_normalize_results():
    assert normalize_results({"eval_accuracy": 0.5, "eval_custom": 1}) == {
        "last": {"accuracy": 0.5, "eval_custom": 1}
    }
    assert set(normalize_results({"last": LAST, "best_on_validation": BEST})) == {"last", "best_on_validation"}
    assert normalize_results({"best_on_validation": BEST})["best_on_validation"]["accuracy"] == 0.7901
