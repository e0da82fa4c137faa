"""The cheap PLOT modes: one-pass per-class gradients (GroupNorm), the Gramian sketch, amortised solving and
class groups, each against the exact per-class gradients; and the trainer with each mode."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import plot_hf  # noqa: F401
from plot_hf import PLOTConfig, PLOTTrainer
from plot_hf.models import create_image_classifier
from plot_hf.models.introspection import class_prior_anchor
from plot_hf.moo import gramian, per_class_gradients, per_class_objectives
from plot_hf.moo.amortised import CoefficientCache, weighted_gradient
from plot_hf.moo.class_groups import frequency_groups, group_anchor_table
from plot_hf.moo.sketch import frozen_batch_stats, sketch_gramian
from plot_hf.moo.solvers import SOLVERS
from plot_hf.moo.split import CrossSampleCouplingError
from plot_hf.step import PLOTStep

from .helpers import Wrapper, collate, forbid_host_reads, tensor_dataset, tiny_model
from .step_helpers import build_step, run_step


def _model(arch: str, classes: int = 6, seed: int = 0) -> Wrapper:
    torch.manual_seed(seed)
    if arch == "resnet20_cifar_gn":  # a smaller GroupNorm network for the slower tests
        return Wrapper(timm.create_model("resnet20_cifar", num_classes=classes, norm="group")).train()
    return Wrapper(timm.create_model(arch, num_classes=classes)).train()


def _batch(classes: int = 6, n: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


def _step(model, method, **config) -> PLOTStep:
    return build_step(model, [1] * 6, moo_solver="cagrad", cagrad_alpha=0.5, cagrad_rescale=1, moo_anchor="uniform",
                      sam_rho=0.05, sam_keep_fraction=0.0, vc_weight=0.1, moo_gradient_method=method, **config)


def _run(step, model, x, y):
    model.zero_grad()
    run_step(step, model, x, y)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_per_sample_split_equals_loop_on_groupnorm(chunk_size):
    """Also with ``moo_chunk_size`` (samples per vectorised per-sample call)."""
    x, y = _batch()
    grads = {}
    for method in ("loop", "per_sample_split"):
        model = _model("resnet32_cifar_gn")
        grads[method] = _run(_step(model, method, moo_chunk_size=chunk_size), model, x, y)
    for name, g in grads["loop"].items():
        torch.testing.assert_close(grads["per_sample_split"][name], g, rtol=1e-5, atol=1e-5, msg=name)


def test_per_sample_split_refuses_train_mode_batch_norm():
    model = _model("resnet32_cifar")
    x, y = _batch()
    with pytest.raises(CrossSampleCouplingError, match=r"timm_model\.layer3\.0\.bn1"):
        _run(_step(model, "per_sample_split"), model, x, y)


def _exact_and_objective_fn(seed: int = 0):
    torch.manual_seed(seed)
    model = Wrapper(timm.create_model("resnet20_cifar", num_classes=6)).train()
    x, y = _batch(n=12)
    params = [p for n, p in model.named_parameters() if ".layer3." in n]
    names = [n for n, p in model.named_parameters() if ".layer3." in n]
    classes, _ = per_class_objectives(torch.zeros(len(y)), y)
    position = torch.searchsorted(classes, y)
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def objectives_of(values):
        with frozen_batch_stats(model):
            out = torch.func.functional_call(model, {**buffers, **dict(zip(names, values, strict=True))}, (x,))
        losses = F.cross_entropy(out, y, reduction="none")
        return losses.new_zeros(classes.numel()).index_add(0, position, losses) / len(y)

    objectives = objectives_of(params)
    exact = gramian(per_class_gradients(objectives, params))
    return exact, objectives_of, params


def test_sketch_gramian_is_unbiased_and_accurate_at_large_dim():
    exact, objectives_of, params = _exact_and_objective_fn()
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sketch_gramian(objectives_of, params, 4, generator=gen)[0] for _ in range(30)])
    # unbiased: every entry of the mean within 5 standard errors of the exact Gramian
    stderr = draws.std(0) / 30**0.5
    assert bool(((draws.mean(0) - exact).abs() <= 5 * stderr + 1e-6 * exact.abs().max()).all())
    # accurate at large d: relative error ~ sqrt(2 / d) (~0.1 at d = 256)
    big = sketch_gramian(objectives_of, params, 256, generator=gen)[0]
    assert float((big - exact).norm() / exact.norm()) < 0.3


def test_amortised_solver_called_every_k_steps_and_direction_is_weighted_sum(monkeypatch):
    calls = []

    class Counting(SOLVERS["cagrad"]):
        def weights(self, gramian, anchor, losses):
            calls.append(gramian.shape[0])
            return super().weights(gramian, anchor, losses)

    monkeypatch.setitem(SOLVERS._entries, "cagrad", Counting)
    model = _model("resnet20_cifar_gn")
    step = _step(model, "loop", moo_solve_every=2)
    for i in range(3):
        x, y = _batch(seed=10 + i)
        grads = _run(step, model, x, y)
    assert len(calls) == 2  # steps 0 and 2
    # A step without a solve: d = sum_k lambda_k g_k with the stored coefficients.
    x, y = _batch(seed=30)
    stored = step.policy.recall(torch.unique(y))
    grads = _run(step, model, x, y)
    assert len(calls) == 2
    reference = _model("resnet20_cifar_gn")
    reference.load_state_dict(model.state_dict())
    ref_step = _step(reference, "loop")
    moo = ref_step.moo
    # G at the perturbed point, as the step sees it: rebuild with the same SAM perturbation.
    captured = {}
    orig = plot_hf.moo.gramian_sources.per_class_gradients

    def capture(objectives, params, **kw):
        captured["G"] = orig(objectives, params, **kw)
        return captured["G"]

    monkeypatch.setattr(plot_hf.moo.gramian_sources, "per_class_gradients", capture)
    _run(ref_step, reference, x, y)
    expected = stored @ captured["G"]
    got = torch.cat([grads[n].reshape(-1) for n in moo.names])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_weighted_gradient_equals_coefficients_times_G():
    _, objectives_of, params = _exact_and_objective_fn()
    objectives = objectives_of(params)  # (the BN model, in train mode)
    lam = torch.rand(objectives.numel())
    g = per_class_gradients(objectives, params)
    torch.testing.assert_close(weighted_gradient(objectives, lam, params), lam @ g, rtol=1e-5, atol=1e-7)


def test_coefficient_cache_defaults_to_one():
    cache = CoefficientCache(2, size=10)
    assert cache.should_solve() and not cache.should_solve() and cache.should_solve()
    cache.store(torch.tensor([1, 4]), torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(cache.lookup(torch.tensor([0, 1, 4, 9])), torch.tensor([1.0, 2.0, 3.0, 1.0]))


def test_sized_coefficient_cache_reads_nothing_on_the_host():
    cache = CoefficientCache(2, size=10)
    with forbid_host_reads():
        cache.store(torch.tensor([1, 4]), torch.tensor([2.0, 3.0]))
        cache.store(torch.tensor([4, 7]), torch.tensor([5.0, 6.0]))
        cache.store(torch.tensor([1, 9]), torch.tensor([float("nan"), float("inf")]))  # a failed solve
        looked_up = cache.lookup(torch.tensor([0, 1, 4, 7, 9]))
    torch.testing.assert_close(looked_up, torch.tensor([1.0, 2.0, 5.0, 6.0, 1.0]))  # failed values not kept


def test_class_group_objectives_sum_to_batch_mean():
    counts = [100, 50, 40, 20, 10, 8, 5, 2]
    bins = frequency_groups(counts, 3)
    assert bins.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    losses, y = torch.rand(40), torch.randint(0, 8, (40,))
    _, objectives = per_class_objectives(losses, bins[y])
    torch.testing.assert_close(objectives.sum(), losses.mean())
    table = group_anchor_table(class_prior_anchor(counts), bins)
    assert table.shape == (3,) and bool((table[1:] > table[:-1]).all())  # tail groups weigh more


@pytest.mark.parametrize(
    "overrides",
    [
        dict(moo_gradient_method="batched", moo_chunk_size=2),
        dict(moo_gradient_method="batched", moo_chunk_memory_mb=0.5),
        dict(moo_gradient_method="sketch", moo_sketch_dim=8),
        dict(moo_solve_every=2),
        dict(moo_class_groups=2),
        dict(moo_gradient_method="per_sample_split", moo_class_groups=2, moo_solve_every=2),
    ],
)
def test_trainer_runs_each_mode(tmp_path, overrides):
    model = tiny_model("resnet20_cifar")
    if overrides.get("moo_gradient_method") == "per_sample_split":  # needs GroupNorm
        torch.manual_seed(0)
        model = create_image_classifier("resnet20_cifar", ["a", "b", "c", "d"], input_size=(3, 8, 8),
                                        model_args={"norm": "group"})
    args = PLOTConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, max_steps=3, use_cpu=True,
                      save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=1,
                      dataloader_num_workers=0, optim="sgd", learning_rate=0.05, **overrides)
    trainer = PLOTTrainer(model=model, args=args, train_dataset=tensor_dataset(), data_collator=collate)
    trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert any("plot/num_classes" in h for h in trainer.state.log_history)


class _SharedConvStage(torch.nn.Module):
    """A GroupNorm network whose MOO stage runs one conv twice (shared weights) and a GroupNorm once."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.stage = torch.nn.ModuleDict({"conv": torch.nn.Conv2d(4, 4, 3, padding=1), "norm": torch.nn.GroupNorm(2, 4)})
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = self.stage["conv"](torch.relu(self.stage["conv"](h)))
        return self.fc(torch.relu(self.stage["norm"](h)).mean(dim=(2, 3)))


def test_split_matrix_equals_the_loop_with_a_module_run_twice():
    from plot_hf.moo.split import SplitCapture

    torch.manual_seed(0)
    model = _SharedConvStage()
    x, y = torch.randn(10, 3, 6, 6), torch.arange(10) % 5
    names = [n for n, _ in model.named_parameters() if n.startswith("stage.")]
    params = dict(model.named_parameters())
    split = SplitCapture(model, "stage", names)
    with split.capture():
        losses = F.cross_entropy(model(x), y, reduction="none")
    classes, objectives = per_class_objectives(losses, y)
    looped = per_class_gradients(objectives, [params[n] for n in names])
    matrix = split.per_class_gradients(objectives, torch.searchsorted(classes, y), {n: params[n] for n in names})
    torch.testing.assert_close(matrix, looped, rtol=1e-5, atol=1e-7)
