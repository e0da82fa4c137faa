"""End to end on the embedded digits recipe: train, metrics, reload in a fresh process, pipeline, evaluate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from plot_hf.evaluate import evaluate_model, predict_logits
from plot_hf.recipe import load_recipe
from plot_hf.train import run

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "digits_lt.yaml"
FAST = ["--num_train_epochs", "6", "--moo_until_epoch", "3", "--lr_milestones", "[5]", "--lr_warmup_epochs", "1", "--report_to", "none", "--disable_tqdm", "true",
        "--save_total_limit", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("digits")
    results = run(load_recipe(RECIPE, [*FAST, "--output_dir", str(out)]))
    return out, results


@pytest.mark.slow
def test_digits_run_writes_metrics_model_card_and_plots(trained):
    out, results = trained
    metrics = json.loads((out / "metrics.json").read_text())
    last = metrics["last"]
    for key in ("test_accuracy", "test_many_shot_accuracy", "test_medium_shot_accuracy", "test_few_shot_accuracy",
                "test_top5_accuracy", "test_ece", "test_nll"):
        assert 0.0 <= last[key] <= (1.0 if "accuracy" in key or "ece" in key else 50.0), key
    assert len(last["test_per_class_accuracy"]) == 10
    assert "best_on_validation" in metrics and metrics["best_on_validation"]["checkpoint"].startswith("checkpoint-")
    assert last["test_accuracy"] > 0.3  # 6 epochs: well above chance (0.10)
    for name in ("README.md", "config.json", "model.safetensors", "recipe.yaml", "per_class_accuracy.png",
                 "training_curves.png", "gradient_conflict.png"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "model-index" in card and "plot" in card


@pytest.mark.slow
def test_reloaded_model_and_pipeline_in_fresh_process_give_identical_predictions(trained, tmp_path):
    out, _ = trained
    recipe = load_recipe(RECIPE, [*FAST, "--output_dir", str(out)])
    from plot_hf.data.builder import build_datasets
    from plot_hf.data.transforms import build_transforms, with_transforms
    from plot_hf.train import preprocessing_of

    data = build_datasets(recipe.data)
    pre = preprocessing_of(recipe.data)
    _, eval_tf = build_transforms(recipe.data.transform, recipe.data.image_size, pre["mean"], pre["std"])
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(out)
    logits, _ = predict_logits(model, with_transforms(data.test.select(range(40)), eval_tf))
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    for i, row in enumerate(data.test.select(range(40))):
        row["image"].save(images_dir / f"{i:03d}.png")
    script = textwrap.dedent(f"""
        import json, torch
        from pathlib import Path
        import plot_hf
        from PIL import Image
        from transformers import AutoModelForImageClassification, AutoImageProcessor, pipeline
        model = AutoModelForImageClassification.from_pretrained({str(out)!r}).eval()
        processor = AutoImageProcessor.from_pretrained({str(out)!r})
        paths = sorted(Path({str(images_dir)!r}).glob("*.png"))
        images = [Image.open(p).convert("RGB") for p in paths]
        with torch.no_grad():
            logits = model(**processor(images, return_tensors="pt")).logits
        classify = pipeline("image-classification", model={str(out)!r}, device="cpu")
        top = [r[0]["label"] for r in classify(images)]
        print(json.dumps({{"logits": logits.tolist(), "top": top}}))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    torch.testing.assert_close(torch.tensor(fresh["logits"]), logits, rtol=1e-5, atol=1e-5)
    names = model.config.id2label
    assert fresh["top"] == [names[int(i)] for i in logits.argmax(1)]


@pytest.mark.slow
def test_evaluate_command_reproduces_training_metrics(trained):
    out, results = trained
    metrics = evaluate_model(str(out), str(RECIPE), "test", [*FAST, "--output_dir", str(out)])
    last = results["last"]
    for key in ("accuracy", "many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy", "top5_accuracy"):
        assert metrics[key] == pytest.approx(last[f"test_{key}"], abs=1e-9), key
    assert metrics["nll"] == pytest.approx(last["test_nll"], rel=1e-4)
    assert (out / "metrics_test.json").is_file()


@pytest.mark.slow
def test_analyze_command_writes_conflict_preference_and_collapse_measures(trained, tmp_path):
    from plot_hf.analyze import main as analyze_main

    out, _ = trained
    analyze_main([str(out), str(RECIPE), "--num_batches", "2", "--output_dir", str(tmp_path), *FAST])
    saved = json.loads((tmp_path / "analysis.json").read_text())
    assert {"conflict", "preference", "representation"} <= set(saved)
    assert saved["num_batches"] == 2 and saved["classes_seen"] == 10
    for name in ("conflict_heatmap.png", "against_frequency.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    text = json.dumps(saved)
    assert "conflict_fraction" in text and "nc1" in text
