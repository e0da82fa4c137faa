"""Stage 2 of the two-stage baselines: classifier re-training after stage 1 (``stage2:`` in a recipe).

* ``crt_mixup`` -- the classifier re-training of cRT+Mixup as the PLOT reference code runs it
  (zzpustc/PLOT ``train_cifar.py``, sampler "Decoup", epochs 200-229 of the released CIFAR configs). Only the
  classifier trains: every other parameter has ``requires_grad`` off, but the model stays in train mode, so
  batch-norm running statistics keep moving. The classifier is not re-initialised. A new SGD over the
  classifier, with weight decay on all of its parameters (bias included); learning rate constant, 0.01 (the
  reference sets a tenth of the stage-1 base rate, 0.01 in every CIFAR config; here it is the absolute
  ``learning_rate``). Class-aware sampling, an epoch holding as many draws as the training set. The loss perturbs the
  pooled features ``f`` (the classifier's input) per class: with ``w_k = log(n_max / n_k + 0.01) / div``
  (``div`` 2), for every class ``y`` in the batch ``g_y = d(mean of CE over class y's samples) / df`` and
  ``delta = w_y * g_y / ||g_y||`` on class ``y``'s rows (norm over the whole ``g_y`` tensor, a constant:
  no gradient flows through it), and

      loss = a * mean_i(w_{y_i} * CE(h(f_i + delta_i), y_i)) + (1 - a) * mean_i(CE(h(f_i), y_i)),
      a = min((e + 1) / epochs, 1)  for stage-2 epoch e = 0, 1, ..., epochs - 1

  (the reference's ``(epoch - 200 + 1) / 30`` capped at ``up_limit`` 1). See :func:`feature_perturbation`.
  Departures: the reference re-loads the stage-1 checkpoint that scored best on the test split, here stage 2
  starts from the last stage-1 model; class-aware draws are i.i.d. (the reference cycles through shuffled class
  and sample lists); a class whose gradient is exactly zero gets no perturbation (the reference divides by
  zero).
* ``crt`` -- a plain classifier re-training in the manner of Kang et al., "Decoupling Representation and
  Classifier for Long-Tailed Recognition" (ICLR 2020): the features are frozen (every module but the classifier
  is kept in eval mode, so batch-norm statistics do not move either), the classifier is re-initialised and
  trained with class-balanced sampling and plain cross-entropy under a cosine schedule (10 epochs of
  ``n_max * C`` draws). It is not what the PLOT reference runs (see ``crt_mixup``).
* ``mislas`` -- Zhong et al., "Improving Calibration for Long-Tailed Recognition" (CVPR 2021), stage 2:
  label-aware smoothing (:class:`~plot_hf.losses.LabelAwareSmoothingLoss`) and *shift learning* on batch
  norm: only the batch-norm affine parameters (scale and shift) and the classifier are trainable; the
  batch-norm layers run in train mode, so their running statistics are re-estimated under class-balanced
  sampling (as in dvlab-research/MiSLAS, where the whole model is in train mode in stage 2). The classifier
  is fine-tuned, not re-initialised.
* ``gcl`` -- Li, Cheung and Lu, "Long-tailed Visual Recognition via Gaussian Clouded Logit Adjustment"
  (CVPR 2022), stage 2 "classifier re-balancing": frozen features, the classifier fine-tuned with
  class-balanced sampling and the clouded loss with a focal term (``gamma`` 1; Keke921/GCLLoss's
  ``train_cls`` mode). Simplified: the reference's separate learning-rate and re-sampling options are not
  reproduced.

Stage 2 never runs PLOT (``moo_until_epoch = 0``) and never uses mixup. With ``epoch_length="balanced"`` the
class-aware sampler's epoch holds ``n_max * C`` draws, the epoch of cRT's ``ClassAwareSampler`` (10 epochs in
cRT and MiSLAS), so the stage-2 length does not shrink with the size of the training set; with ``"dataset"``
(``crt_mixup``) it holds as many draws as the training set, as in the PLOT reference.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .losses.samplers import SAMPLERS, build_sampler
from .models.hf import classifier_name

METHODS = ("crt_mixup", "crt", "mislas", "gcl")
EPOCH_LENGTHS = ("dataset", "balanced")


@dataclass(frozen=True)
class _MethodDefaults:
    loss_type: str
    loss_kwargs: dict[str, Any]
    epochs: float
    learning_rate: float
    lr_scheduler_type: str
    reinit_classifier: bool
    eval_frozen_modules: bool
    epoch_length: str
    feature_perturbation: bool


_DEFAULTS = {
    "crt_mixup": _MethodDefaults("ce", {}, 30.0, 0.01, "constant", False, False, "dataset", True),
    "crt": _MethodDefaults("ce", {}, 10.0, 0.05, "cosine", True, True, "balanced", False),
    "mislas": _MethodDefaults(
        "label_aware_smoothing", {"smooth_head": 0.3, "smooth_tail": 0.0}, 10.0, 0.05, "cosine", False, True,
        "balanced", False,
    ),
    "gcl": _MethodDefaults(
        "gcl", {"noise_mul": 0.5, "s": 30.0, "gamma": 1.0}, 10.0, 0.05, "cosine", False, True, "balanced", False
    ),
}


@dataclass
class Stage2Config:
    """Stage 2 of a recipe; every field left ``None`` takes the method's default (module docstring).

    method: ``"crt_mixup"``, ``"crt"``, ``"mislas"`` or ``"gcl"``.
    epochs: stage-2 epochs (30 for ``crt_mixup``, 10 otherwise).
    learning_rate: stage-2 learning rate (``crt_mixup`` 0.01, else 0.05).
    lr_scheduler_type: ``constant`` (``crt_mixup``) or ``cosine`` without warm-up (the others).
    sampler: training sampler, a name of :data:`~plot_hf.losses.samplers.SAMPLERS` (``"class_balanced"``).
    epoch_length: draws per epoch: ``"dataset"`` (the training-set size; ``crt_mixup``) or ``"balanced"``
        (``n_max * C``, cRT's epoch; the others).
    loss_type / loss_kwargs: the stage-2 loss (``ce``, ``ce``, ``label_aware_smoothing``, ``gcl``).
    reinit_classifier: re-initialise the classifier first (only ``crt``).
    eval_frozen_modules: keep every module without a trained parameter in eval mode, so batch-norm statistics
        stop moving (``crt``, ``gcl``; ``mislas`` trains batch norm, so only its other layers); ``False``
        freezes by ``requires_grad`` only and the model stays in train mode (``crt_mixup``).
    feature_perturbation: the class-wise feature-perturbation loss of the PLOT reference (``crt_mixup``).
    perturbation_div: ``div`` of the class weights ``w_k = log(n_max / n_k + 0.01) / div`` (2 in the reference).
    shift_batch_norm: MiSLAS's shift learning (batch norm in train mode, its scale and shift trained); the
        MiSLAS configs turn it off for CIFAR-10 (``shift_bn: False``). Only read by ``mislas``.
    weight_decay: stage-2 weight decay (default: stage 1's).
    decay_all_parameters: weight decay on every trained parameter, biases included (``crt_mixup``, as the
        reference's ``torch.optim.SGD``); ``False`` keeps ``Trainer``'s rule (no decay on biases and norms).
    """

    method: Literal["crt_mixup", "crt", "mislas", "gcl"] = "crt"
    epochs: float | None = None
    learning_rate: float | None = None
    lr_scheduler_type: str | None = None
    sampler: str = "class_balanced"
    epoch_length: Literal["dataset", "balanced"] | None = None
    loss_type: str | None = None
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    reinit_classifier: bool | None = None
    eval_frozen_modules: bool | None = None
    feature_perturbation: bool | None = None
    perturbation_div: float = 2.0
    shift_batch_norm: bool = True
    weight_decay: float | None = None
    decay_all_parameters: bool | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"`stage2.method`={self.method!r} is invalid: choose one of {METHODS}.")
        defaults = _DEFAULTS[self.method]
        if self.loss_type is None:
            self.loss_type = defaults.loss_type
            self.loss_kwargs = {**defaults.loss_kwargs, **(self.loss_kwargs or {})}
        for name in ("epochs", "learning_rate", "lr_scheduler_type", "reinit_classifier", "eval_frozen_modules",
                     "epoch_length", "feature_perturbation"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(defaults, name))
        if self.decay_all_parameters is None:
            self.decay_all_parameters = self.method == "crt_mixup"
        if not self.epochs > 0:
            raise ValueError(f"`stage2.epochs` must be > 0, got {self.epochs}.")
        if self.epoch_length not in EPOCH_LENGTHS:
            raise ValueError(f"`stage2.epoch_length`={self.epoch_length!r} is invalid: choose one of {EPOCH_LENGTHS}.")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"`stage2.sampler`={self.sampler!r} is invalid: choose one of {SAMPLERS.names()}.")
        if not self.perturbation_div > 0:
            raise ValueError(f"`stage2.perturbation_div` must be > 0, got {self.perturbation_div}.")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Stage2Config:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown `stage2` key(s) {unknown}; valid keys: {sorted(names)}.")
        return cls(**values)


# ------------------------------------------------------------------------------ feature-perturbation loss
def perturbation_class_weights(class_counts: Any, div: float = 2.0) -> Tensor:
    """``w_k = log(n_max / n_k + 0.01) / div`` as float32 ``[C]`` (the reference's ``pre_compute_class_ratio``):
    about 0.005 for the head class, growing with the imbalance towards the tail."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() < 1 or bool((counts <= 0).any()):
        raise ValueError(f"`class_counts` must be a non-empty list of positive counts, got {counts.tolist()}.")
    return (torch.log(counts.max() / counts + 0.01) / div).float()


def perturbation_mix(epoch: float, epochs: float, cap: float = 1.0) -> float:
    """``a = min((floor(epoch) + 1) / epochs, cap)``: the weight of the perturbed term in stage-2 epoch
    ``floor(epoch)`` (0-based; the reference's ``(epoch - stage + 1) / (max_epoch - stage)`` and ``up_limit``)."""
    return min((math.floor(epoch) + 1) / epochs, cap)


def feature_perturbation(
    head: nn.Module, features: Tensor, labels: Tensor, class_weights: Tensor, loss_fn: Any
) -> Tensor:
    """The constant perturbation ``delta`` of the features (shape of ``features``; see the module docstring).

    Row ``i`` of class ``y`` gets ``w_y * r_i / sqrt(sum_{j: y_j = y} ||r_j||^2)`` with ``r_i = dL_i / df_i``,
    ``L_i = loss_fn(head(f), y)_i``. This equals ``w_y * g_y / ||g_y||`` of the reference's per-class
    ``autograd.grad`` calls (the ``1 / n_y`` of the class mean cancels in the normalisation) for every head that
    maps each row on its own (``nn.Linear``, :class:`~plot_hf.losses.NormedLinear`), from ONE backward pass.
    """
    features = features.detach().requires_grad_(True)
    with torch.enable_grad():
        per_sample = loss_fn(head(features), labels)
        (rows,) = torch.autograd.grad(per_sample.sum(), features)
    squared = rows.detach().flatten(1).pow(2).sum(1).double()
    class_norm = torch.zeros(class_weights.numel(), dtype=torch.float64, device=rows.device)
    class_norm = class_norm.index_add(0, labels, squared).sqrt()[labels]
    scale = class_weights.to(rows.device, torch.float64)[labels] / class_norm
    scale = torch.where(class_norm > 0, scale, torch.zeros_like(scale))  # a zero gradient: no perturbation
    return rows.detach() * scale.to(rows.dtype).view(-1, *([1] * (rows.ndim - 1)))


def feature_perturbation_loss(
    head: nn.Module, features: Tensor, labels: Tensor, class_weights: Tensor, mix: float, loss_fn: Any
) -> Tensor:
    """``mix * mean_i(w_{y_i} * L(h(f_i + delta_i), y_i)) + (1 - mix) * mean_i(L(h(f_i), y_i))``; gradients
    reach the head only (``features`` are treated as constants)."""
    features = features.detach()
    delta = feature_perturbation(head, features, labels, class_weights, loss_fn)
    clean = loss_fn(head(features), labels)
    weights = class_weights.to(features.device, clean.dtype)[labels]
    perturbed = loss_fn(head(features + delta), labels) * weights
    return mix * perturbed.mean() + (1 - mix) * clean.mean()


@contextmanager
def captured_head_input(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """While open, ``store["features"]`` holds the input of ``model``'s classifier from the last forward."""
    store: dict[str, Tensor] = {}
    head = model.get_submodule(classifier_name(model))
    handle = head.register_forward_pre_hook(lambda module, args: store.__setitem__("features", args[0]))
    try:
        yield store
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------------- freezing
def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def trainable_names(model: nn.Module, method: str, shift_batch_norm: bool = True) -> list[str]:
    """Names of the parameters stage 2 trains: the classifier's, plus batch-norm scale/shift for MiSLAS (unless
    ``shift_batch_norm`` is off)."""
    head = classifier_name(model)
    names = [n for n, _ in model.named_parameters() if n.startswith(head + ".")]
    if method == "mislas" and shift_batch_norm:
        norms = {n for n, m in model.named_modules() if _is_norm(m)}
        names += [n for n, _ in model.named_parameters() if n.rpartition(".")[0] in norms]
    return names


def _keep_eval(module: nn.Module) -> None:
    """Put ``module`` in eval mode and make ``.train()`` leave it there (frozen features)."""
    module.eval()
    module.train = types.MethodType(lambda self, mode=True: self, module)  # type: ignore[method-assign]


def _frozen_modules(model: nn.Module, method: str, shift_batch_norm: bool = True) -> Iterator[nn.Module]:
    """Leaf modules kept in eval mode: all but the classifier (cRT, GCL, MiSLAS without shift learning); all but
    batch norm and the classifier (MiSLAS)."""
    head = classifier_name(model)
    for name, module in model.named_modules():
        if next(module.children(), None) is not None or name == head or name.startswith(head + "."):
            continue
        if method == "mislas" and shift_batch_norm and _is_norm(module):
            continue
        yield module


def prepare_model(model: nn.Module, config: Stage2Config) -> list[str]:
    """Freeze ``model`` for stage 2 in place (``requires_grad``; eval mode of frozen modules when
    ``config.eval_frozen_modules``; optional classifier re-initialisation); returns the trainable names."""
    names = set(trainable_names(model, config.method, config.shift_batch_norm))
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    if config.eval_frozen_modules:
        for module in _frozen_modules(model, config.method, config.shift_batch_norm):
            _keep_eval(module)
    if config.reinit_classifier:
        head = model.get_submodule(classifier_name(model))
        if hasattr(head, "reset_parameters"):
            head.reset_parameters()
    return sorted(names)


def release_model(model: nn.Module) -> None:
    """Undo :func:`prepare_model`'s eval-mode pinning and make every parameter trainable again."""
    for module in model.modules():
        if "train" in vars(module):
            del module.train
    for param in model.parameters():
        param.requires_grad_(True)


def stage2_args(args: Any, config: Stage2Config) -> Any:
    """The stage-2 ``PLOTConfig``: stage 1's, with PLOT and mixup off and the stage-2 loss, sampler, schedule
    (``crt_mixup`` also keeps the last partial batch, as the reference's class-aware loader does)."""
    return dataclasses.replace(
        args,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        weight_decay=args.weight_decay if config.weight_decay is None else config.weight_decay,
        moo_until_epoch=0.0,
        moo_framework="plot",
        mixup_alpha=0.0,
        loss_type=config.loss_type,
        loss_kwargs=dict(config.loss_kwargs),
        train_sampler=config.sampler,
        resample_from_epoch=0.0,
        m2m=None,
        lr_milestones=None,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=0,
        dataloader_drop_last=False if config.method == "crt_mixup" else args.dataloader_drop_last,
        resume_from_checkpoint=None,
    )


def _stage2_trainer_class() -> type:
    from .baselines.sampling import dataset_labels
    from .trainer import PLOTTrainer

    class Stage2Trainer(PLOTTrainer):
        """PLOTTrainer for stage 2 (:class:`Stage2Config` in ``stage2_config``): its sampler with the stage-2
        epoch length, weight decay on every trained parameter when asked, the feature-perturbation loss."""

        def __init__(self, *args: Any, stage2_config: Stage2Config, **kwargs: Any) -> None:
            self.stage2_config = stage2_config
            super().__init__(*args, **kwargs)
            div = stage2_config.perturbation_div
            self.perturbation_weights = perturbation_class_weights(self.class_counts, div)

        def _get_train_sampler(self, train_dataset=None):
            if self.args.train_sampler == "random":
                return super()._get_train_sampler(train_dataset)
            labels = dataset_labels(train_dataset if train_dataset is not None else self.train_dataset)
            draws = len(labels) if self.stage2_config.epoch_length == "dataset" else None
            generator = torch.Generator().manual_seed(self.args.seed)
            return build_sampler(self.args.train_sampler, labels, draws, generator)

        def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
            if self.stage2_config.decay_all_parameters:
                return [name for name, _ in model.named_parameters()]
            return super().get_decay_parameter_names(model)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not (self.stage2_config.feature_perturbation and model.training and "labels" in inputs):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            unwrapped = self.accelerator.unwrap_model(model)
            with captured_head_input(unwrapped) as store:
                outputs = model(**inputs)
            head = unwrapped.get_submodule(classifier_name(unwrapped))
            mix = perturbation_mix(self.state.epoch or 0.0, self.stage2_config.epochs)
            loss = feature_perturbation_loss(
                head, store["features"], labels, self.perturbation_weights, mix, self.loss_fn
            )
            return (loss, outputs) if return_outputs else loss

    return Stage2Trainer


def run_stage2(trainer: Any, config: Stage2Config | dict[str, Any]) -> Any:
    """Run stage 2 on ``trainer``'s model and data; returns the stage-2 ``PLOTTrainer`` (its log history is
    stage 1's followed by stage 2's, each stage-2 entry tagged ``"stage": 2``)."""
    if isinstance(config, dict):
        config = Stage2Config.from_dict(config)
    model = trainer.model
    prepare_model(model, config)
    second = _stage2_trainer_class()(
        stage2_config=config,
        model=model,
        args=stage2_args(trainer.args, config),
        train_dataset=trainer.train_dataset,
        eval_dataset=trainer.eval_dataset,
        data_collator=trainer.data_collator,
        compute_metrics=trainer.compute_metrics,
        preprocess_logits_for_metrics=trainer.preprocess_logits_for_metrics,
    )
    try:
        second.train()
    finally:
        release_model(model)
    offset = trainer.state.epoch or 0.0
    tagged = [{**entry, "epoch": offset + entry.get("epoch", 0.0), "stage": 2} for entry in second.state.log_history]
    second.state.log_history = list(trainer.state.log_history) + tagged
    return second
