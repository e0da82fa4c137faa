"""Pushing to the Hub goes through Trainer's own push (create_repo / upload_folder), with the PLOT model card,
plots and preprocessing config included; the Hub API is replaced by a recorder (no network here)."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import ModelCard

from plot_hf.recipe import load_recipe
from plot_hf.train import run

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "digits_lt.yaml"


class RecordingHubApi:
    def __init__(self) -> None:
        self.repos: list[str] = []
        self.uploads: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        self.repos.append(repo_id)
        return SimpleNamespace(repo_id=f"user/{repo_id.split('/')[-1]}")

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=(), **kwargs):
        files = sorted(
            rel for p in Path(folder_path).rglob("*")
            if p.is_file() and not any(fnmatch(rel := p.relative_to(folder_path).as_posix(), pat) for pat in ignore_patterns)
        )
        card = Path(folder_path) / "README.md"
        self.uploads.append({"repo_id": repo_id, "files": files, "card": card.read_text() if card.exists() else ""})
        return SimpleNamespace(commit_url="local://commit")


@pytest.mark.slow
def test_push_to_hub_uploads_model_card_plots_and_config(tmp_path, monkeypatch):
    api = RecordingHubApi()
    monkeypatch.setattr("transformers.trainer.hf_api", lambda: api)
    monkeypatch.setattr("plot_hf.train.check_hub_access", lambda repo_id: None)
    recipe = load_recipe(RECIPE, [
        "--output_dir", str(tmp_path / "run"), "--num_train_epochs", "2", "--moo_until_epoch", "1",
        "--push_to_hub", "true", "--hub_model_id", "user/digits-plot", "--hub_strategy", "end",
        "--report_to", "none", "--disable_tqdm", "true",
    ])
    run(recipe)
    assert api.repos == ["user/digits-plot"]
    final = api.uploads[-1]
    assert final["repo_id"] == "user/digits-plot"
    for name in ("README.md", "config.json", "model.safetensors", "metrics.json", "per_class_accuracy.png",
                 "training_curves.png", "gradient_conflict.png",
                 "modeling_plot_hf.py", "resnet_cifar.py", "normed_linear.py"):  # the code: loads without plot-hf
        assert name in final["files"], name
    card = ModelCard(final["card"])
    assert "plot" in card.data.tags and card.data.eval_results  # the PLOT card, not Trainer's generic one
    assert not any(f.startswith("checkpoint-") for f in final["files"])
