"""Recipes: a YAML file whose keys are dataclass fields, with command-line overrides.

Top-level keys belong to :class:`ModelArguments` or :class:`~plot_hf.PLOTConfig`; the ``data:`` mapping holds
:class:`~plot_hf.data.builder.DataConfig` fields. Command-line flags override the file: ``--learning_rate
0.05``, ``--data.imbalance_factor 50``, ``--key=value``; values are read as YAML (``true``, ``[160, 180]``).
An unknown key, in the file or on the command line, is an error that names it (and suggests close names);
so is a value of the wrong type, also inside ``m2m`` and the CIFAR ResNets' ``model_args``, and so is a key
that contradicts ``moo_framework: plain``. All of these fail while the recipe is read, before any data or
model is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from .baselines import expand_baseline
from .config import PLAIN_FRAMEWORK_KEYS, PLOTConfig, check_plain_framework
from .data.builder import DataConfig
from .m2m import M2mConfig
from .models.resnet_cifar import CIFAR_ARCHITECTURES, CifarResNet


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only ``true``/``false`` (so ``eval_strategy: no`` stays the string ``"no"``)."""


_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_yaml(text: str) -> Any:
    """Parse recipe YAML (booleans are only true/false)."""
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 (a SafeLoader subclass)


@dataclass
class ModelArguments:
    """The model of a recipe.

    model_name (`str`, defaults to `"resnet32_cifar"`): a timm architecture (trained from scratch), or a pretrained
        checkpoint to fine-tune: a local folder or a Hub id in timm's format (`timm/resnet152.tv_in1k`,
        `timm/vit_small_patch16_224.augreg_in21k_ft_in1k`) or transformers' (`google/vit-base-patch16-224-in21k`,
        a saved plot-hf model). Its backbone weights are loaded; the head is kept when it has the data's number of
        classes, else re-created for them (`plot_hf.models.pretrained`). A checkpoint that cannot be had is an
        error before any data is loaded (offline, `HF_HUB_OFFLINE=1`, only the local cache is read).
    model_args (`dict`, *optional*): keyword arguments of the timm architecture (e.g. `{"drop_rate": 0.1}`,
        `{"layers": [1, 1, 1, 1]}`), or config overrides of a transformers checkpoint (`{"drop_path_rate": 0.1}`).
    image_mean, image_std (`list[float]`, *optional*): normalisation; default: the checkpoint's (pretrained), else
        the data transform's.
    crop_pct (`float`, *optional*): eval centre-crop fraction of the `imagenet` transform; default: the
        checkpoint's (pretrained), else 0.875.
    head_lr_scale (`float`, defaults to `1.0`): the classifier's learning rate is `learning_rate` times this.
    layer_decay (`float`, *optional*): layer-wise learning-rate decay of a timm backbone (BEiT / MAE
        fine-tuning): a block `d` layers below the classifier learns at `layer_decay ** d` times the rate.
        Either setting builds the optimizer's groups with `plot_hf.models.param_groups` (no weight decay on 1-D
        parameters and position embeddings, as timm's fine-tuning does).
    baseline_metrics (`str`, *optional*): a `metrics.json` of a baseline run, compared in the model card.
    baseline (`str`, *optional*): a baseline of `plot_hf.baselines.BASELINES` (e.g. `ldam_drw`); its loss,
        sampler, classifier and stage-2 defaults fill every key the recipe does not set.
    classifier (`str`, defaults to `"linear"`): `"normed"` swaps in the cosine `NormedLinear` (LDAM, GCL).
    stage2 (`dict`, *optional*): classifier re-training after stage 1, fields of `plot_hf.stage2.Stage2Config`.
    """

    model_name: str = field(default="resnet32_cifar", metadata={"help": "timm architecture or saved model."})
    model_args: dict | None = field(default=None, metadata={"help": "Keyword arguments of the architecture."})
    baseline_metrics: str | None = field(default=None, metadata={"help": "metrics.json of a baseline run."})
    baseline: str | None = field(default=None, metadata={"help": "Baseline of plot_hf.baselines.BASELINES."})
    classifier: str = field(default="linear", metadata={"help": "Classifier head: linear or normed (cosine)."})
    image_mean: list[float] | None = field(default=None, metadata={"help": "Normalisation mean (override)."})
    image_std: list[float] | None = field(default=None, metadata={"help": "Normalisation std (override)."})
    crop_pct: float | None = field(default=None, metadata={"help": "Eval centre-crop fraction (override)."})
    head_lr_scale: float = field(default=1.0, metadata={"help": "Classifier learning rate / learning_rate."})
    layer_decay: float | None = field(default=None, metadata={"help": "Layer-wise learning-rate decay (timm)."})
    stage2: dict | None = field(default=None, metadata={"help": "Stage 2 (plot_hf.stage2.Stage2Config)."})


@dataclass
class Recipe:
    model: ModelArguments
    data: DataConfig
    training: PLOTConfig
    raw: dict[str, Any]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.raw, sort_keys=False)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _matches(value: Any, annotation: Any) -> bool:
    """Loose check of a YAML value against a field annotation (ints pass as floats, strings for Literals)."""
    if annotation is Any or value is None:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (list, tuple):
        return isinstance(value, list | tuple)
    if origin is dict:
        return isinstance(value, dict)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type):
        return isinstance(value, (annotation, str))  # enums accept their string values
    return True


def _check(section: str, values: dict[str, Any], types_: dict[str, Any]) -> None:
    for key, value in values.items():
        if key not in types_:
            close = difflib.get_close_matches(key, list(types_), n=3)
            hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
            if len(types_) <= 20:  # a small section: list every valid key
                hint += f" Valid keys: {', '.join(types_)}."
            raise ValueError(f"Unknown recipe key `{section}{key}`.{hint}")
        if not _matches(value, types_[key]):
            raise ValueError(
                f"Recipe key `{section}{key}` expects {getattr(types_[key], '__name__', types_[key])}, "
                f"got {value!r} ({type(value).__name__})."
            )


def _check_recipe_values(top: dict[str, Any]) -> None:
    """Checks of the recipe's values that need to know which keys the user wrote, before anything is built:
    ``moo_framework: plain`` against an explicit ``moo_until_epoch`` / ``sam_rho`` / ``vc_weight``; the keys and
    types of ``m2m`` (:class:`~plot_hf.m2m.M2mConfig`) and of the CIFAR ResNets' ``model_args``."""
    if top.get("moo_framework") == "plain":
        epochs = top.get("num_train_epochs", PLOTConfig.__dataclass_fields__["num_train_epochs"].default)
        check_plain_framework({k: top[k] for k in PLAIN_FRAMEWORK_KEYS if k in top}, float(epochs))
    if isinstance(top.get("m2m"), dict):
        _check("m2m.", top["m2m"], _field_types(M2mConfig))
    model_name = top.get("model_name", ModelArguments.model_name)
    if isinstance(top.get("model_args"), dict) and model_name in CIFAR_ARCHITECTURES:
        hints = typing.get_type_hints(CifarResNet.__init__)
        _check("model_args.", top["model_args"], {k: hints.get(k, Any) for k in CIFAR_MODEL_ARGS})


CIFAR_MODEL_ARGS = tuple(name for name in inspect.signature(CifarResNet).parameters if name != "unknown")
"""The keyword arguments of the CIFAR ResNets (``model_args`` of ``resnet32_cifar`` and its siblings)."""


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """``['--a', '1', '--data.b=x', '--flag']`` -> ``{'a': 1, 'data.b': 'x', 'flag': True}`` (values as YAML)."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise ValueError(f"Unexpected command-line argument {token!r}; use `--key value`.")
        key = token[2:]
        if "=" in key:
            key, text = key.split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            text, i = argv[i + 1], i + 1
        else:
            text = "true"
        overrides[key.replace("-", "_") if "." not in key else key] = read_yaml(text)
        i += 1
    return overrides


def load_recipe(path: str | Path | None, argv: list[str] | None = None) -> Recipe:
    """Read a recipe (or none: all defaults), apply ``argv`` overrides, validate, build the dataclasses."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Recipe file {str(path)!r} does not exist.")
        loaded = read_yaml(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"Recipe {str(path)!r} must be a YAML mapping of keys to values.")
        raw = loaded
    raw = {**raw, "data": dict(raw.get("data") or {})}
    for key, value in parse_overrides(argv or []).items():
        if key.startswith("data."):
            raw["data"][key[5:]] = value
        else:
            raw[key] = value

    raw = expand_baseline(raw)
    data_values = raw["data"]
    model_types, train_types = _field_types(ModelArguments), _field_types(PLOTConfig)
    top = {k: v for k, v in raw.items() if k != "data"}
    _check("data.", data_values, _field_types(DataConfig))
    _check("", top, {**model_types, **train_types})
    _check_recipe_values(top)
    model_values = {k: v for k, v in top.items() if k in model_types}
    train_values = {k: v for k, v in top.items() if k not in model_types}
    train_values.setdefault("output_dir", "outputs/plot-hf")
    (training,) = HfArgumentParser(PLOTConfig).parse_dict(train_values)
    return Recipe(model=ModelArguments(**model_values), data=DataConfig(**data_values), training=training, raw=raw)
