"""ONE optimiser step of ``PLOTTrainer.train()`` equals ONE step of the PLOT reference code.

The reference step (``zzpustc/PLOT``, ``train_cifar.py``'s ``train`` with ``utils/pareto.py``'s ``cagrad``) is
re-implemented here from its semantics, independently of plot-hf's step: a clean forward (on the mixed inputs
with mixup, whose mixup loss gives the SAM direction), ``.data`` perturbation of ``layer3``, a second forward
of ``layer3`` and the head from the recorded ``layer2`` output, plain cross-entropy on the FIRST label there,
the variability-collapse term over classes with two samples or more, a backward of the total into ``.grad``,
one ``torch.autograd.grad`` call per class present, CAGrad solved by SciPy's SLSQP (started from and anchored
at the class prior ``log(n_max / n_k + 0.01) / 2``), the direction written into ``layer3``'s ``.grad`` (times
K), the restore ``p.data = r * p.data + (1 - r) * origin`` and one ``torch.optim.SGD`` step over every
parameter at the rate of epoch 0 of the reference's warm-up schedule (stepped at the start of the epoch).

plot-hf's side uses its public API only: a ``PLOTConfig`` (every setting the comparison needs is an option),
a model and a dataset of one batch. The mixing draws are the same on both sides: the data collator records
the random-number generators' states when it builds the batch, and the reference starts from them.

One documented difference is not compared: batch-norm running statistics of ``layer3`` (the reference updates
them a second time in its re-forward; plot-hf once). The SLSQP solve uses analytic gradients and tight
tolerances (the reference lets SciPy difference the objective at ``ftol=1e-6``), so that solver accuracy does
not blur the comparison. The SAM radius and the weights of the variability collapse and of the weight decay
are larger than the released configs' so that each term moves the parameters by much more than the tolerance.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from scipy.optimize import minimize

import plot_hf  # noqa: F401
from plot_hf import PLOTConfig, PLOTTrainer
from plot_hf.models import create_image_classifier

NUM_CLASSES, BATCH = 5, 32
COUNTS = [400, 120, 40, 15, 6]
RHO, VC, WD, ALPHA_CAGRAD, MOMENTUM, LR = 0.05, 0.1, 5e-2, 0.5, 0.9, 0.1
# epoch 0 of the reference: WarmupMultiStepLR(warmup_epochs=5, warmup_factor=1/3) after one scheduler.step()
LR_EPOCH_0 = LR * (1 / 3 * (1 - 1 / 5) + 1 / 5)
TOLERANCE = 1e-4  # relative, per parameter tensor
UPDATE_TOLERANCE = 1e-3  # relative, per tensor of one step's update


def _one_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """32x32 random images whose mean depends on the class; class 4 appears once (no std term for it)."""
    rng = np.random.default_rng(seed)
    labels = np.array([0] * 12 + [1] * 9 + [2] * 6 + [3] * 4 + [4] * 1)
    rng.shuffle(labels)
    pixels = rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32) + 0.2 * labels[:, None, None, None]
    return torch.from_numpy(pixels), torch.from_numpy(labels)


class _RecordingCollator:
    """Stacks the rows, and records the batch and the generators' states at that moment (the mixing draws)."""

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = {
            "pixel_values": torch.stack([torch.as_tensor(r["pixel_values"]) for r in rows]),
            "labels": torch.as_tensor([int(r["labels"]) for r in rows]),
        }
        self.batch = {k: v.clone() for k, v in batch.items()}
        self.states = (torch.get_rng_state(), np.random.get_state())
        return batch


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_image_classifier("resnet20_cifar", [f"c{i}" for i in range(NUM_CLASSES)], input_size=(3, 32, 32))


def _plot_hf_step(tmp_path, model, keep_fraction: float, mixup_alpha: float, **overrides):
    """One optimiser step of PLOTTrainer.train() on a dataset of one batch; returns the collator's record."""
    x, y = _one_batch()
    dataset = Dataset.from_dict({"pixel_values": list(x.numpy()), "labels": y.tolist()}).with_format("torch")
    options = dict(
        output_dir=str(tmp_path), use_cpu=True, seed=0, report_to=[], save_strategy="no", disable_tqdm=True,
        per_device_train_batch_size=BATCH, num_train_epochs=1, train_drop_last=True,
        learning_rate=LR, optim="sgd", optim_args=f"momentum={MOMENTUM}", weight_decay=WD,
        weight_decay_all_parameters=True, max_grad_norm=0.0,
        lr_milestones=[160, 180], lr_warmup_epochs=5, lr_decay=0.1, lr_schedule_timing="epoch_start",
        moo_until_epoch=30, moo_solver="cagrad", cagrad_alpha=ALPHA_CAGRAD, cagrad_rescale=1,
        moo_anchor="class_prior", sam_rho=RHO, sam_keep_fraction=keep_fraction, vc_weight=VC,
        mixup_alpha=mixup_alpha, moo_loss="first_label", class_counts=COUNTS, moo_gradient_method="loop",
    )
    options.update(overrides)
    collator = _RecordingCollator()
    trainer = PLOTTrainer(model=model, args=PLOTConfig(**options), train_dataset=dataset, data_collator=collator)
    trainer.train()
    assert trainer.state.global_step == 1
    return collator


def _reference_cagrad(columns: torch.Tensor, prior: np.ndarray) -> torch.Tensor:
    """``utils/pareto.py``'s ``cagrad`` (rescale 1) followed by ``overwrite_grad``'s factor K, for the P x K
    matrix of per-class gradients ``columns`` and the normalised class prior of the classes present."""
    num = columns.shape[1]
    gram = (columns.T.double() @ columns.double()).numpy()
    c = ALPHA_CAGRAD * np.sqrt(gram.mean() + 1e-8) + 1e-8

    def objective(w):
        return w @ gram @ prior + c * np.sqrt(w @ gram @ w + 1e-8)

    def gradient(w):
        return gram @ prior + c * (gram @ w) / np.sqrt(w @ gram @ w + 1e-8)

    result = minimize(
        objective, prior.copy(), jac=gradient, method="SLSQP", bounds=[(0.0, 1.0)] * num,
        constraints=[{"type": "eq", "fun": lambda w: 1 - w.sum(), "jac": lambda w: -np.ones(num)}],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    assert result.success, result.message
    weighted = columns.double() @ torch.from_numpy(result.x)
    direction = columns.double().mean(1) + c / (weighted.norm() + 1e-8) * weighted
    return (direction / (1 + ALPHA_CAGRAD**2) * num).float()


def _reference_step(model, x, y, keep_fraction: float, mixup_alpha: float, states) -> None:
    """The reference's training step on one batch, in place on ``model`` (TimmWrapper around resnet20_cifar)."""
    net = model.timm_model
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR_EPOCH_0, momentum=MOMENTUM, weight_decay=WD)

    def features(images):  # the reference's forward up to `fea` (layer2's output)
        return net.layer2(net.layer1(net.act1(net.bn1(net.conv1(images)))))

    def forward_again(fea):
        return net.fc(net.global_pool(net.layer3(fea)).flatten(1))

    if mixup_alpha > 0:  # utils.mixup_data, from the generators' states of the plot-hf run
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        lam = np.random.beta(mixup_alpha, mixup_alpha)
        index = torch.randperm(x.shape[0])
        fea = features(lam * x + (1 - lam) * x[index])
        logits = forward_again(fea)
        loss_ori = lam * F.cross_entropy(logits, y, reduction="none")
        loss_ori = loss_ori + (1 - lam) * F.cross_entropy(logits, y[index], reduction="none")
    else:
        fea = features(x)
        loss_ori = F.cross_entropy(forward_again(fea), y, reduction="none")
    optimizer.zero_grad()
    loss_ori.mean().backward(retain_graph=True)

    stage = list(net.layer3.parameters())
    grad_norm = torch.norm(torch.stack([p.grad.norm(p=2) for p in stage]), p=2) + 1e-12
    origin = [p.data.clone() for p in stage]
    for p in stage:
        p.data = p.data + RHO * p.grad / grad_norm

    loss_sam = F.cross_entropy(forward_again(fea), y, reduction="none")  # first label only
    labels = y.numpy()
    present = np.unique(labels)
    stds = [torch.std(loss_sam[torch.from_numpy(labels == k)]) for k in present if (labels == k).sum() > 1]
    optimizer.zero_grad()
    (loss_sam.mean() + VC * sum(stds) / len(stds)).backward(retain_graph=True)

    columns = []
    for k in present:
        grads = torch.autograd.grad(loss_sam[torch.from_numpy(labels == k)].sum() / x.shape[0], stage, retain_graph=True)
        columns.append(torch.cat([g.reshape(-1) for g in grads]))
    weights = np.log(max(COUNTS) / np.array(COUNTS, dtype=np.float64) + 0.01) / 2
    direction = _reference_cagrad(torch.stack(columns, 1), weights[present] / weights[present].sum())
    offset = 0
    for p in stage:
        p.grad = direction[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    for p, saved in zip(stage, origin, strict=True):
        p.data = keep_fraction * p.data + (1 - keep_fraction) * saved
    optimizer.step()


def relative_differences(model, reference) -> dict[str, float]:
    """``||p - q|| / ||q||`` for every parameter (names of ``model``)."""
    ours = dict(model.named_parameters())
    return {
        name: float((ours[name].detach() - q.detach()).norm() / q.detach().norm().clamp_min(1e-30))
        for name, q in reference.named_parameters()
    }


def relative_update_differences(initial, model, reference) -> dict[str, float]:
    """``||(p - p0) - (q - p0)|| / ||q - p0||`` for every parameter: how far the updates of one step differ."""
    ours, start = dict(model.named_parameters()), dict(initial.named_parameters())
    return {
        name: float((ours[name] - q).detach().norm() / (q - start[name]).detach().norm().clamp_min(1e-30))
        for name, q in reference.named_parameters()
    }


def compare_one_step(tmp_path, keep_fraction: float, mixup_alpha: float, **overrides):
    """Both steps from the same initial model; returns (initial, plot-hf's, reference's) models."""
    model = _model()
    initial, reference = copy.deepcopy(model), copy.deepcopy(model)
    record = _plot_hf_step(tmp_path, model, keep_fraction, mixup_alpha, **overrides)
    x, y = _one_batch()
    assert torch.equal(record.batch["labels"].sort().values, y.sort().values)
    _reference_step(reference, record.batch["pixel_values"], record.batch["labels"], keep_fraction,
                    mixup_alpha, record.states)
    return initial, model, reference


@pytest.mark.parametrize("mixup_alpha", [0.0, 1.0])
@pytest.mark.parametrize("keep_fraction", [0.0, 0.5, 1.0])
def test_one_trainer_step_equals_the_reference_step(tmp_path, keep_fraction, mixup_alpha):
    initial, ours, reference = compare_one_step(tmp_path, keep_fraction, mixup_alpha)
    differences = relative_differences(ours, reference)
    worst = max(differences, key=differences.get)
    assert differences[worst] < TOLERANCE, (worst, differences[worst])
    # The updates themselves agree too (a stronger statement than the parameters, which move little in a step).
    updates = relative_update_differences(initial, ours, reference)
    worst = max(updates, key=updates.get)
    assert updates[worst] < UPDATE_TOLERANCE, (worst, updates[worst])


@pytest.mark.slow
def test_departures_from_the_reference_change_the_step(tmp_path):
    """Each option the comparison sets matters: the mixup loss at the perturbed point, Trainer's weight-decay
    rule (no decay on biases) and PyTorch's schedule timing each change some tensor's update by far more than
    the tolerance."""
    for overrides in ({"moo_loss": "mixup"}, {"weight_decay_all_parameters": False},
                      {"lr_schedule_timing": "epoch_end"}):
        initial, ours, reference = compare_one_step(tmp_path, 0.5, 1.0, **overrides)
        assert max(relative_update_differences(initial, ours, reference).values()) > 10 * UPDATE_TOLERANCE, overrides


@pytest.mark.slow
def test_keep_fraction_and_mixup_change_the_step(tmp_path):
    """The cases above are distinct: a different keep fraction or no mixup gives different parameters."""
    initial, results = _model(), {}
    for keep, mixup in ((0.0, 1.0), (1.0, 1.0), (0.0, 0.0)):
        model = copy.deepcopy(initial)
        _plot_hf_step(tmp_path, model, keep, mixup)
        results[keep, mixup] = model
    for other in ((1.0, 1.0), (0.0, 0.0)):
        changes = relative_update_differences(initial, results[0.0, 1.0], results[other])
        assert max(changes.values()) > 10 * UPDATE_TOLERANCE, other
