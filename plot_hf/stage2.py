"""Stage 2 of the two-stage baselines: classifier re-training after stage 1 (``stage2:`` in a recipe).

* ``crt`` -- classifier re-training, Kang et al., "Decoupling Representation and Classifier for Long-Tailed
  Recognition" (ICLR 2020): the features are frozen (every module but the classifier is kept in eval mode,
  so batch-norm statistics do not move either), the classifier is re-initialised and trained with
  class-balanced sampling and cross-entropy.
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

Stage 2 never runs PLOT (``moo_until_epoch = 0``) and never uses mixup. It uses a cosine learning-rate
schedule without warm-up over ``epochs`` epochs, starting at ``learning_rate``. With the class-balanced
sampler an epoch holds ``n_max * C`` draws, the epoch of cRT's ``ClassAwareSampler`` (10 epochs in cRT and
MiSLAS), so the stage-2 length does not shrink with the size of the training set.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from .models.hf import classifier_name

METHODS = ("crt", "mislas", "gcl")
_DEFAULT_LOSS = {
    "crt": ("ce", {}),
    "mislas": ("label_aware_smoothing", {"smooth_head": 0.3, "smooth_tail": 0.0}),
    "gcl": ("gcl", {"noise_mul": 0.5, "s": 30.0, "gamma": 1.0}),
}


@dataclass
class Stage2Config:
    """Stage 2 of a recipe.

    method: ``"crt"``, ``"mislas"`` or ``"gcl"`` (see the module docstring).
    epochs: stage-2 epochs of ``n_max * C`` class-balanced draws (cRT and MiSLAS use 10).
    learning_rate: initial rate of the cosine schedule.
    sampler: training sampler (``"class_balanced"`` in all three methods).
    loss_type / loss_kwargs: the stage-2 loss (default per method: ``ce``, ``label_aware_smoothing``, ``gcl``).
    reinit_classifier: re-initialise the classifier first (default: only for ``crt``).
    weight_decay: stage-2 weight decay (default: stage 1's).
    """

    method: Literal["crt", "mislas", "gcl"] = "crt"
    epochs: float = 10.0
    learning_rate: float = 0.05
    sampler: str = "class_balanced"
    loss_type: str | None = None
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    reinit_classifier: bool | None = None
    weight_decay: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"`stage2.method`={self.method!r} is invalid: choose one of {METHODS}.")
        if not self.epochs > 0:
            raise ValueError(f"`stage2.epochs` must be > 0, got {self.epochs}.")
        default_type, default_kwargs = _DEFAULT_LOSS[self.method]
        if self.loss_type is None:
            self.loss_type = default_type
            self.loss_kwargs = {**default_kwargs, **(self.loss_kwargs or {})}
        if self.reinit_classifier is None:
            self.reinit_classifier = self.method == "crt"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Stage2Config:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown `stage2` key(s) {unknown}; valid keys: {sorted(names)}.")
        return cls(**values)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def trainable_names(model: nn.Module, method: str) -> list[str]:
    """Names of the parameters stage 2 trains: the classifier's, plus batch-norm scale/shift for MiSLAS."""
    head = classifier_name(model)
    names = [n for n, _ in model.named_parameters() if n.startswith(head + ".")]
    if method == "mislas":
        norms = {n for n, m in model.named_modules() if _is_norm(m)}
        names += [n for n, _ in model.named_parameters() if n.rpartition(".")[0] in norms]
    return names


def _keep_eval(module: nn.Module) -> None:
    """Put ``module`` in eval mode and make ``.train()`` leave it there (frozen features)."""
    module.eval()
    module.train = types.MethodType(lambda self, mode=True: self, module)  # type: ignore[method-assign]


def _frozen_modules(model: nn.Module, method: str) -> Iterator[nn.Module]:
    """Leaf modules kept in eval mode: all but the classifier (cRT, GCL); all but batch norm and the
    classifier (MiSLAS)."""
    head = classifier_name(model)
    for name, module in model.named_modules():
        if next(module.children(), None) is not None or name == head or name.startswith(head + "."):
            continue
        if method == "mislas" and _is_norm(module):
            continue
        yield module


def prepare_model(model: nn.Module, config: Stage2Config) -> list[str]:
    """Freeze ``model`` for stage 2 in place (``requires_grad``, eval mode of frozen modules, optional
    classifier re-initialisation); returns the names of the trainable parameters."""
    names = set(trainable_names(model, config.method))
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    for module in _frozen_modules(model, config.method):
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
    """The stage-2 ``PLOTConfig``: stage 1's, with PLOT and mixup off and the stage-2 loss, sampler, schedule."""
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
        lr_scheduler_type="cosine",
        warmup_steps=0,
        resume_from_checkpoint=None,
    )


def _stage2_trainer_class() -> type:
    from .losses import ClassBalancedSampler, SquareRootSampler
    from .trainer import PLOTTrainer

    class Stage2Trainer(PLOTTrainer):
        """PLOTTrainer whose class-aware sampler keeps its own epoch length (``n_max * C`` for
        class-balanced sampling, cRT's ``ClassAwareSampler``)."""

        def _get_train_sampler(self, train_dataset=None):
            if self.args.train_sampler == "random":
                return super()._get_train_sampler(train_dataset)
            from .baselines.sampling import dataset_labels

            labels = dataset_labels(train_dataset if train_dataset is not None else self.train_dataset)
            cls = ClassBalancedSampler if self.args.train_sampler == "class_balanced" else SquareRootSampler
            return cls(labels, generator=torch.Generator().manual_seed(self.args.seed))

    return Stage2Trainer


def run_stage2(trainer: Any, config: Stage2Config | dict[str, Any]) -> Any:
    """Run stage 2 on ``trainer``'s model and data; returns the stage-2 ``PLOTTrainer`` (its log history is
    stage 1's followed by stage 2's, each stage-2 entry tagged ``"stage": 2``)."""
    if isinstance(config, dict):
        config = Stage2Config.from_dict(config)
    model = trainer.model
    prepare_model(model, config)
    second = _stage2_trainer_class()(
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
