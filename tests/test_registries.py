"""Every named choice comes from a registry, and the config checks derived from them fail before any data or
model is built. Property checks run over whole registries, so a new entry gets its checks for free: every data
source opens a tiny local fixture in the project's schema, every baseline's defaults parse as a recipe."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import timm
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

import plot_hf  # noqa: F401  (registers the CIFAR ResNets)
from plot_hf import PLOTConfig
from plot_hf.baselines import BASELINES
from plot_hf.data.builder import DataConfig, build_datasets
from plot_hf.data.sources import SOURCES
from plot_hf.losses import LOSSES
from plot_hf.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "recipes" / "digits_lt.yaml")
NAMES = ["ant", "bee", "cat"]
PER_CLASS = 2  # every fixture: 3 classes x 2 images in train, 1 image per class in test


# ------------------------------------------------------------------------------------- lookups name the valid
@pytest.mark.parametrize("registry", [LOSSES, BASELINES, SOURCES], ids=lambda r: r.kind)
def test_unknown_name_lists_every_valid_name(registry):
    assert len(registry.names()) >= 4 and list(registry) == sorted(registry.names())
    with pytest.raises(ValueError, match=f"Unknown {registry.kind} 'no_such_name'") as caught:
        registry["no_such_name"]
    for name in registry.names():
        assert name in str(caught.value)


# ------------------------------------------------------------------------------ every data source, one fixture
def _png(i: int, size: int = 4) -> PILImage.Image:
    return PILImage.new("RGB", (size, size), (40 * i % 256, 7 * i % 256, 100))


def _rows(split: str) -> list[tuple[int, int]]:
    """(image id, label) rows of a split: train 2 per class, test 1 per class."""
    n = PER_CLASS if split == "train" else 1
    offset = 0 if split == "train" else 100
    return [(offset + 10 * c + k, c) for c in range(len(NAMES)) for k in range(n)]


def _dataset_dict() -> DatasetDict:
    features = Features({"picture": Image(), "label": ClassLabel(names=NAMES)})
    return DatasetDict({
        split: Dataset.from_dict(
            {"picture": [_png(i) for i, _ in _rows(split)], "label": [y for _, y in _rows(split)]}, features=features
        )
        for split in ("train", "test")
    })


def _fixture_disk(tmp: Path) -> dict:
    _dataset_dict().save_to_disk(str(tmp / "ds"))
    return {"path": str(tmp / "ds")}


def _fixture_parquet(tmp: Path) -> dict:
    files = {}
    for split, ds in _dataset_dict().items():
        files[split] = str(tmp / f"{split}.parquet")
        ds.to_parquet(files[split])
    return {"data_files": files}


def _fixture_hub(tmp: Path) -> dict:  # a local data folder that `load_dataset(path)` reads like a Hub id
    (tmp / "repo" / "data").mkdir(parents=True)
    for split, ds in _dataset_dict().items():
        ds.to_parquet(str(tmp / "repo" / "data" / f"{split}-00000-of-00001.parquet"))
    return {"path": str(tmp / "repo")}


def _image_tree(tmp: Path) -> Path:
    for split in ("train", "test"):
        for i, y in _rows(split):
            path = tmp / "tree" / split / NAMES[y] / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            _png(i).save(path)
    return tmp / "tree"


def _fixture_imagefolder(tmp: Path) -> dict:
    return {"path": str(_image_tree(tmp))}


def _fixture_split_files(tmp: Path) -> dict:
    root = _image_tree(tmp)
    files = {}
    for split in ("train", "test"):
        files[split] = str(tmp / f"{split}.txt")
        Path(files[split]).write_text("".join(f"{split}/{NAMES[y]}/{i}.png {y}\n" for i, y in _rows(split)))
    return {"image_root": str(root), "split_files": files, "label_names": NAMES}


def _fixture_inat(tmp: Path) -> dict:
    root = _image_tree(tmp)
    cats = [{"id": 7 + c, "name": name} for c, name in enumerate(NAMES)]  # ids need not start at 0
    files = {}
    for split in ("train", "test"):
        rows = _rows(split)
        images = [{"id": i, "file_name": f"{split}/{NAMES[y]}/{i}.png"} for i, y in rows]
        annotations = [{"id": i, "image_id": i, "category_id": 7 + y} for i, y in rows]
        files[split] = str(tmp / f"{split}.json")
        Path(files[split]).write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return {"image_root": str(root), "split_files": files}


FIXTURES = {
    "hub": _fixture_hub, "disk": _fixture_disk, "parquet": _fixture_parquet, "imagefolder": _fixture_imagefolder,
    "split_files": _fixture_split_files, "inat": _fixture_inat, "digits": None,
}


def test_every_registered_source_has_a_fixture():
    assert set(FIXTURES) == set(SOURCES.names())


@pytest.mark.parametrize("source", sorted(FIXTURES))
def test_every_source_opens_in_the_project_schema(source, tmp_path):
    keys = dict(imbalance_profile="none", validation_per_class=0, transform="none")
    if source == "digits":
        data = build_datasets(DataConfig(source="digits", **keys))
        names, n_train = [str(d) for d in range(10)], None
    else:
        data = build_datasets(DataConfig(source=source, **FIXTURES[source](tmp_path), **keys))
        names, n_train = NAMES, PER_CLASS * len(NAMES)
    for split in (data.train, data.test):
        assert set(split.features) == {"image", "labels"}
        assert isinstance(split.features["image"], Image)
        assert split.features["labels"] == ClassLabel(names=names)
        assert isinstance(split[0]["image"], PILImage.Image)
    assert data.label_names == names
    if n_train is not None:  # every fixture image kept, each with its label
        assert len(data.train) == n_train and len(data.test) == len(NAMES)
        assert sorted(data.train["labels"]) == sorted(y for _, y in _rows("train"))
        first = np.asarray(data.test[0]["image"].convert("RGB"))
        assert any(np.array_equal(first, np.asarray(_png(i))) for i, _ in _rows("test"))


def test_unknown_source_in_a_data_config_names_the_key_and_the_sources():
    with pytest.raises(ValueError, match=r"`source` is 'hugging'; choose one of .*'digits'.*'hub'"):
        DataConfig(source="hugging", path="x")


# ---------------------------------------------------------------------------- every baseline parses as a recipe
@pytest.mark.parametrize("name", BASELINES.names())
def test_every_baseline_default_parses_as_a_recipe(name):
    recipe = load_recipe(DIGITS, ["--baseline", name])
    defaults = BASELINES[name].defaults(float(recipe.training.num_train_epochs))
    assert recipe.model.baseline == name
    assert recipe.training.loss_type == defaults["loss_type"]
    assert recipe.training.loss_kwargs == defaults["loss_kwargs"]
    for key in ("classifier", "stage2"):
        if key in defaults:
            assert getattr(recipe.model, key) == defaults[key]


# ------------------------------------------------------------------------------ PLOTConfig checks, by key name
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss_type": "ldam_drw"}, r"`loss_type`='ldam_drw' is not a registered loss; valid names are: .*ldam"),
        ({"loss_type": "focal", "loss_kwargs": {"gama": 1.0}}, r"`loss_kwargs`=.*'gama'.*it accepts: gamma"),
        ({"loss_type": "focal", "loss_kwargs": {"gamma": -1.0}}, r"`loss_kwargs`=.*`gamma` must be >= 0"),
        ({"loss_kwargs": ["drw_epoch"]}, r"`loss_kwargs` must be a mapping"),
        ({"m2m": [160]}, r"`m2m` must be a mapping"),
        ({"moo_framework": "plain", "sam_rho": 0.05}, r"`moo_framework`='plain' conflicts with `sam_rho`=0.05"),
        ({"moo_framework": "plain", "vc_weight": 0.1}, r"`moo_framework`='plain' conflicts with `vc_weight`=0.1"),
        ({"moo_framework": "plain", "moo_until_epoch": 2.0, "num_train_epochs": 5},
         r"`moo_framework`='plain' conflicts with `moo_until_epoch`=2.0.*at least 5"),
    ],
)
def test_bad_config_fails_naming_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PLOTConfig(output_dir="unused", **kwargs)


def test_plain_framework_alone_and_with_consistent_values():
    plain = PLOTConfig(output_dir="unused", num_train_epochs=7, moo_framework="plain")
    assert (plain.moo_until_epoch, plain.sam_rho, plain.vc_weight) == (7.0, 0.0, 0.0)
    explicit = PLOTConfig(output_dir="unused", num_train_epochs=7, moo_framework="plain", moo_until_epoch=9,
                          sam_rho=0.0, vc_weight=0.0)
    assert (explicit.moo_until_epoch, explicit.sam_rho, explicit.vc_weight) == (7.0, 0.0, 0.0)
    off = PLOTConfig(output_dir="unused", moo_framework="plain", moo_until_epoch=0)
    assert not off.plot_enabled
    again = dataclasses.replace(plain)  # a resolved plain config re-validates (stage 2 and copies do this)
    assert (again.moo_until_epoch, again.sam_rho, again.vc_weight) == (7.0, 0.0, 0.0)


def test_recipe_plain_conflicts_with_an_explicit_default_value():
    """A recipe knows what the user wrote: `sam_rho: 0.0001` (the default) with plain is still a conflict."""
    with pytest.raises(ValueError, match=r"`moo_framework`='plain' conflicts with `sam_rho`=0.0001"):
        load_recipe(DIGITS, ["--moo_framework", "plain", "--num_train_epochs", "1"])  # moo_until_epoch 10 >= 1
    off = load_recipe(DIGITS, ["--moo_framework", "plain", "--moo_until_epoch", "0"])  # PLOT off: plain sets nothing
    assert off.training.sam_rho == 1e-4 and not off.training.plot_enabled
    recipe = load_recipe(DIGITS, ["--moo_framework", "plain", "--moo_until_epoch", ".inf", "--sam_rho", "0",
                                  "--vc_weight", "0"])
    assert recipe.training.moo_until_epoch == recipe.training.num_train_epochs


# ------------------------------------------------------------------------------- the CIFAR ResNets' model_args
def test_cifar_resnet_rejects_a_misspelt_model_arg_and_honours_a_right_one():
    with pytest.raises(TypeError, match=r"\['blocks_per_stge'\].*it accepts: blocks_per_stage, widths"):
        timm.create_model("resnet32_cifar", num_classes=3, blocks_per_stge=(1, 1, 1))
    model = timm.create_model("resnet32_cifar", num_classes=3, blocks_per_stage=(1, 2, 1))
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3)] == [1, 2, 1]


# ------------------------------------------------------------------------------- preprocessing, one home
@pytest.mark.parametrize("kind", ["cifar", "imagenet", "none"])
def test_eval_transform_and_stored_preprocessing_agree(kind):
    """The eval transform normalises with the mean/std that a trained model records (card, image processor):
    checked on a constant image against ``(v - mean) / std`` computed by hand."""
    from plot_hf.data.transforms import build_transforms
    from plot_hf.preprocessing import eval_preprocessing

    stored = eval_preprocessing(kind, 8 if kind == "none" else None)
    size = stored["input_size"][1]
    _, eval_tf = build_transforms(kind, size if kind != "imagenet" else None)
    image = PILImage.new("RGB", (size, size), (200, 100, 50))
    out = eval_tf(image)
    assert tuple(out.shape) == stored["input_size"]
    for c, value in enumerate((200, 100, 50)):
        expected = (value / 255 - stored["mean"][c]) / stored["std"][c]
        assert out[c, size // 2, size // 2].item() == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_cifar_resnets_default_to_the_cifar_statistics():
    from plot_hf.preprocessing import eval_preprocessing

    cfg = timm.models.get_pretrained_cfg("resnet32_cifar")
    assert tuple(cfg.mean) == eval_preprocessing("cifar")["mean"] and tuple(cfg.std) == eval_preprocessing("cifar")["std"]
