"""M2m: over-sampling the tail by translating head-class samples into tail classes.

Kim, Jeong and Shin, "M2m: Imbalanced Classification via Major-to-minor Translation" (CVPR 2020), after
alinlab/M2m (``train.py``: ``train_net``, ``generation``). Simplified but faithful:

1. Stage 1: a classifier ``g`` is trained on the imbalanced data with plain ERM. Here ``g`` is a frozen copy
   of the model being trained, taken at ``start_epoch`` (the model has been trained with ERM until then;
   the reference loads a separately trained ERM network and starts generation at its ``warm`` epoch, 160 of
   200). ``generator_path`` loads a saved classifier instead.
2. From ``start_epoch`` the batches come from the class-balanced (over-sampled) sampler
   (``train_sampler="class_balanced"``, ``resample_from_epoch=start_epoch``). A sample of class ``k`` in
   such a batch is a *generation target* with probability ``1 - n_k / n_max`` (:func:`generation_targets`).
3. For each target, a seed is drawn from the batch with probability proportional to
   ``p_accept = 1 - beta^((n_{k0} - n_k)^+)`` (:func:`choose_seeds`): only more frequent classes ``k0`` seed
   a class ``k``.
4. The seed ``x0`` (plus a random L2 perturbation of radius ``noise_radius``) is moved by ``attack_iters``
   normalised gradient steps of size ``step_size`` on ``CE(g(x), k) + lam * classwise(f(x), k0)``, ``f`` the
   model being trained (in eval mode), ``classwise`` the reference's ``classwise_loss`` (mean of
   ``f(x)`` with the seed-class logit negated) (:func:`translate`).
5. A translation is accepted when ``g`` gives class ``k`` probability ``>= gamma`` and a Bernoulli draw with
   ``p_accept`` succeeds; an accepted sample replaces the target in the batch (label ``k``); a rejected one
   leaves the over-sampled original in place (plain over-sampling, as in the reference).

Departures: the reference clamps images to [0, 1] before normalising; here inputs are already normalised and
are clamped to the batch's value range. Success rates are logged as ``m2m/accepted``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .step import logits_of
from .trainer import PLOTTrainer


@dataclass
class M2mConfig:
    """M2m's hyper-parameters (defaults: alinlab/M2m's CIFAR runs as we read them).

    start_epoch: epoch from which over-sampling and generation run (the reference's ``warm``, 160 of 200).
    beta: seed acceptance ``1 - beta^(n_k0 - n_k)``.  gamma: acceptance threshold of ``g``'s confidence.
    lam: weight of the seed-class term on ``f``.  step_size / attack_iters: the L2 gradient steps.
    noise_radius: L2 radius of the random start.  generator_path: a saved stage-1 classifier (optional).
    """

    start_epoch: float = 0.0
    beta: float = 0.999
    gamma: float = 0.9
    lam: float = 0.5
    step_size: float = 0.1
    attack_iters: int = 10
    noise_radius: float = 0.5
    generator_path: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> M2mConfig:
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown `m2m` key(s) {unknown}; valid keys: {sorted(names)}.")
        return cls(**values)


def generation_targets(labels: Tensor, counts: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Indices of the batch samples to replace by translations: class ``k`` with probability
    ``1 - n_k / n_max`` (never the head class)."""
    counts = counts.to(labels.device, torch.float64)
    keep = counts[labels] / counts.max()
    draw = torch.rand(labels.shape, generator=generator, dtype=torch.float64).to(labels.device)
    return torch.nonzero(draw >= keep).flatten()


def choose_seeds(
    target_labels: Tensor, seed_labels: Tensor, counts: Tensor, beta: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """For each target class, a seed index into ``seed_labels``, drawn with probability proportional to
    ``p_accept = 1 - beta^((n_seed - n_target)^+)``. Returns (seed index, p_accept of the chosen seed,
    valid mask: targets with at least one more frequent class among the seeds)."""
    counts = counts.to(target_labels.device, torch.float64)
    delta = (counts[seed_labels][None, :] - counts[target_labels][:, None]).clamp_min(0.0)
    p_accept = 1.0 - beta ** delta
    valid = p_accept.sum(1) > 0
    weights = torch.where(valid[:, None], p_accept, torch.ones_like(p_accept))
    index = torch.multinomial(weights.cpu().float(), 1, generator=generator).flatten().to(target_labels.device)
    chosen = p_accept.gather(1, index[:, None]).flatten()
    return index, chosen, valid


def _l2_normalise(x: Tensor) -> Tensor:
    flat = x.flatten(1).norm(dim=1).clamp_min(1e-12)
    return x / flat.view(-1, *([1] * (x.ndim - 1)))


def translate(
    g: nn.Module, f: nn.Module, seeds: Tensor, seed_labels: Tensor, targets: Tensor, config: M2mConfig,
    bounds: tuple[float, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Move ``seeds`` towards ``targets`` under ``g`` (M2m's ``generation``); returns (x*, g's probability
    of the target class at x*). ``g`` and ``f`` are used as given (put them in eval mode)."""
    lo, hi = bounds if bounds is not None else (float(seeds.min()), float(seeds.max()))
    x = seeds.detach()
    if config.noise_radius > 0:
        noise = _l2_normalise(torch.randn_like(x)) * config.noise_radius * torch.rand(
            x.shape[0], device=x.device).view(-1, *([1] * (x.ndim - 1)))
        x = (x + noise).clamp(lo, hi)
    for _ in range(config.attack_iters):
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(logits_of(g(pixel_values=x)), targets)
        if config.lam:
            logits_f = logits_of(f(pixel_values=x))
            sign = torch.ones_like(logits_f).scatter_(1, seed_labels[:, None], -1.0)
            loss = loss + config.lam * (logits_f * sign).mean()
        (grad,) = torch.autograd.grad(loss, [x])
        x = (x - config.step_size * _l2_normalise(grad)).clamp(lo, hi)
    x = x.detach()
    with torch.no_grad():
        probs = logits_of(g(pixel_values=x)).softmax(-1).gather(1, targets[:, None]).flatten()
    return x, probs


class M2mTrainer(PLOTTrainer):
    """A :class:`~plot_hf.PLOTTrainer` whose batches, from ``m2m.start_epoch`` on, carry M2m's translated tail
    samples (see the module docstring). PLOT (or the plain step) then trains on the modified batch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.m2m_config = M2mConfig.from_dict(self.args.m2m)
        self.generator_model: nn.Module | None = None
        self._m2m_counts = torch.as_tensor(self.class_counts, dtype=torch.float64)

    def _generator(self, model: nn.Module) -> nn.Module:
        if self.generator_model is None:
            if self.m2m_config.generator_path:
                from .models.hf import load_image_classifier

                g = load_image_classifier(self.m2m_config.generator_path)
            else:
                g = copy.deepcopy(self.accelerator.unwrap_model(model))
            g.to(self.args.device).eval()
            for param in g.parameters():
                param.requires_grad_(False)
            self.generator_model = g
        return self.generator_model

    def m2m_batch(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        """The batch with accepted translations in place of the generation targets."""
        inputs = self._prepare_inputs(inputs)
        x, labels = inputs["pixel_values"], inputs["labels"]
        targets = generation_targets(labels, self._m2m_counts)
        if targets.numel() == 0:
            return inputs
        target_labels = labels[targets]
        seed_index, p_accept, valid = choose_seeds(target_labels, labels, self._m2m_counts, self.m2m_config.beta)
        g = self._generator(model)
        was_training = model.training
        model.eval()
        try:
            generated, probs = translate(
                g, model, x[seed_index], labels[seed_index], target_labels, self.m2m_config,
                bounds=(float(x.min()), float(x.max())),
            )
        finally:
            model.train(was_training)
        accept = valid & (probs >= self.m2m_config.gamma) & (torch.rand_like(p_accept) < p_accept)
        x = x.clone()
        x[targets[accept]] = generated[accept].to(x.dtype)
        self._plot_logs["m2m/accepted"].append(float(accept.float().mean()))
        return {**inputs, "pixel_values": x}

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Tensor:
        if (self.state.epoch or 0.0) >= self.m2m_config.start_epoch:
            inputs = self.m2m_batch(model, inputs)
        return super().training_step(model, inputs, num_items_in_batch)
