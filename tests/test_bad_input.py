"""The bad-input table of docs/guide/reliability.md: one test per row, through ``load_recipe`` + ``plot_hf.train.run``.

Each case must fail with an error naming the cause, before training starts, and leave what the output folder
already held untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plot_hf.hub import HubUnavailableError
from plot_hf.recipe import load_recipe
from plot_hf.train import run

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "recipes" / "digits_lt.yaml")
FAST = ["--num_train_epochs", "1", "--eval_strategy", '"no"', "--metric_for_best_model", "null",
        "--report_to", "none", "--save_strategy", '"no"']


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An output folder that already holds a previous run's files."""
    folder = tmp_path / "out"
    (folder / "checkpoint-7").mkdir(parents=True)
    (folder / "metrics.json").write_text('{"previous": 1}')
    (folder / "checkpoint-7" / "model.safetensors").write_bytes(b"old weights")
    return folder


def _untouched(folder: Path) -> None:
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "checkpoint-7", "checkpoint-7/model.safetensors", "metrics.json"]
    assert (folder / "metrics.json").read_text() == '{"previous": 1}'


def _fails(recipe: str | None, argv: list[str], error: type[BaseException], match: str, out: Path) -> None:
    with pytest.raises(error, match=match):
        run(load_recipe(recipe, [*FAST, *argv, "--output_dir", str(out)]))
    _untouched(out)


def _split_files(root: Path, train: list[tuple[str, int]], num_classes: int = 3, bad: str | None = None) -> list[str]:
    """Images under root/img, OLTR split files; ``bad`` names an image written as garbage bytes."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name, _ in train:
        path = root / "img" / name
        if name == bad:
            path.write_bytes(b"not an image")
        elif not path.exists() and not name.startswith("missing"):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
    lines = "\n".join(f"img/{n} {y}" for n, y in train)
    (root / "train.txt").write_text(lines + "\n")
    (root / "test.txt").write_text(lines + "\n")
    return ["--data.source", "split_files", "--data.image_root", str(root), "--data.num_classes", str(num_classes),
            "--data.split_files", f"{{train: {root / 'train.txt'}, test: {root / 'test.txt'}}}",
            "--data.imbalance_profile", "none", "--data.validation_per_class", "0", "--data.transform", "none",
            "--data.image_size", "8", "--data.max_per_class", "null"]


def _rows(num_classes: int = 3, per_class: int = 2) -> list[tuple[str, int]]:
    return [(f"c{k}_{i}.png", k) for k in range(num_classes) for i in range(per_class)]


def test_bad_recipe_key(out: Path) -> None:
    _fails(DIGITS, ["--learning_rat", "0.1"], ValueError, r"Unknown recipe key `learning_rat`.*learning_rate", out)


def test_wrong_type(out: Path) -> None:
    _fails(DIGITS, ["--num_train_epochs", "many"], ValueError, r"`num_train_epochs` expects float, got 'many'", out)


def test_missing_dataset_path(out: Path, tmp_path: Path) -> None:
    _fails(DIGITS, ["--data.source", "disk", "--data.path", str(tmp_path / "nowhere")], FileNotFoundError,
           "nowhere", out)


def test_wrong_label_column(out: Path, tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_dict({"image": [np.zeros((8, 8, 3), np.uint8)] * 4, "label": [0, 1, 0, 1]})
    DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "ds"))
    _fails(DIGITS, ["--data.source", "disk", "--data.path", str(tmp_path / "ds"), "--data.label_column", "lbl"],
           ValueError, r"Unknown column 'lbl' \(`label_column`\)", out)


def test_labels_out_of_range(out: Path, tmp_path: Path) -> None:
    argv = _split_files(tmp_path / "data", [*_rows(), ("c9.png", 7)])
    _fails(None, argv, ValueError, r"label\(s\) .*outside \[0, 3\)", out)


def test_class_with_no_training_sample(out: Path, tmp_path: Path) -> None:
    argv = _split_files(tmp_path / "data", _rows(num_classes=2), num_classes=3)
    _fails(None, argv, ValueError, r"Class\(es\) \[2\].*(no image|0 training images|no training sample)", out)


def test_image_that_fails_to_decode(out: Path, tmp_path: Path) -> None:
    argv = _split_files(tmp_path / "data", _rows(), bad="c1_0.png")
    _fails(None, argv, Exception, r"c1_0\.png", out)


def test_split_file_naming_missing_images(out: Path, tmp_path: Path) -> None:
    argv = _split_files(tmp_path / "data", [*_rows(), ("missing_1.png", 1)])
    _fails(None, argv, (FileNotFoundError, ValueError), r"missing_1\.png", out)


def test_moo_patterns_matching_nothing(out: Path) -> None:
    _fails(DIGITS, ["--moo_modules", "[layer9]"], ValueError, r"`moo_modules` pattern 'layer9' matches no module", out)


def test_incompatible_backbone(out: Path) -> None:
    _fails(DIGITS, ["--model_name", "not_a_backbone"], ValueError, r"Unknown timm architecture.*not_a_backbone", out)


def test_push_to_hub_without_network(out: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _fails(DIGITS, ["--push_to_hub", "true"], HubUnavailableError, r"HF_HUB_OFFLINE is set.*Nothing was trained",
           out)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--loss_type", "focul"], r"`loss_type`='focul' is not a registered loss; valid names are: .*focal"),
        (["--loss_type", "focal", "--loss_kwargs", "{gama: 1.0}"], r"`loss_kwargs`=.*'gama'.*it accepts: gamma"),
        (["--baseline", "m2m", "--m2m", "{strat_epoch: 1}"], r"`m2m\.strat_epoch`.*Did you mean `start_epoch`"),
        (["--m2m", "{attack_iters: many}"], r"`m2m\.attack_iters` expects int"),
        (["--moo_framework", "plain"], r"`moo_framework`='plain' conflicts with `sam_rho`=0\.0001"),
        (["--moo_framework", "plain", "--sam_rho", "0", "--vc_weight", "0", "--moo_until_epoch", "0.5"],
         r"`moo_framework`='plain' conflicts with `moo_until_epoch`=0\.5"),
        (["--model_args", "{blocks_per_stge: [1, 1, 1]}"],
         r"`model_args\.blocks_per_stge`.*Valid keys: blocks_per_stage, widths"),
        (["--baseline", "ldam"], r"Recipe key `baseline`: 'ldam' is unknown; valid names are: .*ldam_drw"),
        (["--data.source", "hugging"], r"`source` is 'hugging'; choose one of .*'hub'"),
    ],
    ids=["loss_type", "loss_kwargs", "m2m_key", "m2m_type", "plain_sam_rho", "plain_until", "model_args",
         "baseline", "source"],
)
def test_bad_config_fails_before_any_data_or_model(argv: list[str], match: str, out: Path, monkeypatch) -> None:
    """Registry-derived checks run while the recipe is parsed: the data and the model are never touched."""

    def never(*args, **kwargs):
        raise AssertionError("data or model built before the config was checked")

    monkeypatch.setattr("plot_hf.train.build_datasets", never)
    monkeypatch.setattr("plot_hf.train.build_model", never)
    _fails(DIGITS, argv, ValueError, match, out)
