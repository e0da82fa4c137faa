"""The options that make a run the reference code's: loss at the perturbed point, weight decay on every
parameter, the schedule's timing, the classifier's initialisation, and the card's list of departures."""

from __future__ import annotations

import math

import pytest
import timm
import torch

import plot_hf  # noqa: F401
from plot_hf import PLOTConfig, PLOTTrainer
from plot_hf.model_card import build_model_card, reference_departures
from plot_hf.schedule import warmup_multistep_schedule

from .helpers import collate, tensor_dataset, tiny_model


@pytest.mark.parametrize(
    ("key", "value"),
    [("moo_loss", "second_label"), ("lr_schedule_timing", "start"), ("weight_decay_all_parameters", "yes"),
     ("train_drop_last", 1)],
)
def test_bad_values_name_the_key(tmp_path, key, value):
    with pytest.raises(ValueError, match=key):
        PLOTConfig(output_dir=str(tmp_path), **{key: value})


def _factors_by_epoch(timing: str, epochs: list[int], steps_per_epoch: int = 3) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_multistep_schedule(optimizer, steps_per_epoch=steps_per_epoch, warmup_epochs=5,
                                         milestones=[160, 180], decay=0.1, timing=timing)
    return [schedule.lr_lambdas[0](e * steps_per_epoch + 1) for e in epochs]


def test_epoch_start_timing_is_the_reference_loop():
    """The reference steps WarmupMultiStepLR before each epoch: epoch e trains with the factor of e + 1
    (``torch``'s own scheduler, stepped that way, gives the expected values independently)."""
    epochs = [0, 1, 2, 3, 4, 5, 158, 159, 178, 179, 199]
    expected = [0.4 + 1 / 15, 0.6, 0.8 - 1 / 15, 0.8 + 1 / 15, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    assert _factors_by_epoch("epoch_start", epochs) == pytest.approx(expected)
    # PyTorch's convention (stepped after each epoch) runs one epoch later.
    assert _factors_by_epoch("epoch_end", [0, 4, 159, 160]) == pytest.approx([1 / 3, 1 / 3 * 0.2 + 0.8, 1.0, 0.1])
    with pytest.raises(ValueError, match="lr_schedule_timing"):
        _factors_by_epoch("middle", [0])


def _optimizer_groups(tmp_path, all_parameters: bool) -> tuple[set[str], set[str]]:
    model = tiny_model()
    args = PLOTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], weight_decay=0.1,
                      weight_decay_all_parameters=all_parameters, moo_until_epoch=0)
    trainer = PLOTTrainer(model=model, args=args, train_dataset=tensor_dataset(), data_collator=collate)
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    return decayed, set(names.values())


def test_weight_decay_on_every_parameter(tmp_path):
    decayed, every = _optimizer_groups(tmp_path, all_parameters=True)
    assert decayed == every
    decayed, every = _optimizer_groups(tmp_path, all_parameters=False)
    biases = {n for n in every if n.endswith(".bias")}
    assert biases and decayed == every - biases  # Trainer's rule: biases undecayed


def test_classifier_init_choices():
    bound = 1 / math.sqrt(64)  # nn.Linear's own: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    torch.manual_seed(0)
    default = timm.create_model("resnet32_cifar", num_classes=100, classifier_init="torch_default")
    assert default.fc.weight.abs().max() <= bound and default.fc.bias.abs().max() <= bound
    torch.manual_seed(0)
    kaiming = timm.create_model("resnet32_cifar", num_classes=100)
    assert kaiming.fc.weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.05)
    assert kaiming.fc.weight.abs().max() > 2 * bound
    with pytest.raises(ValueError, match="classifier_init"):
        timm.create_model("resnet32_cifar", classifier_init="xavier")


def test_departures_listed_for_defaults_and_none_beyond_the_documented_for_reference_settings(tmp_path):
    reference = PLOTConfig(
        output_dir=str(tmp_path), weight_decay=2e-4, weight_decay_all_parameters=True, lr_milestones=[160, 180],
        lr_schedule_timing="epoch_start", train_drop_last=True, max_grad_norm=0.0, mixup_alpha=1.0,
    )
    exact = reference_departures(reference, "resnet32_cifar", {"classifier_init": "torch_default"})
    assert len(exact) == 3 and "Batch-norm" in exact[0] and "interior-point" in exact[1] and "5/5/5" in exact[2]
    defaults = PLOTConfig(output_dir=str(tmp_path), weight_decay=2e-4, mixup_alpha=1.0, moo_loss="mixup")
    listed = " ".join(reference_departures(defaults, "resnet32_cifar"))
    for phrase in ("mixup loss", "biases", "schedule", "smaller batch", "clipped", "Kaiming"):
        assert phrase in listed, phrase
    assert reference_departures(PLOTConfig(output_dir=str(tmp_path), moo_until_epoch=0)) == []
    card = build_model_card(model_name="m", dataset_name="d", imbalance_factor=10, backbone="b",
                            num_parameters=1, recipe_yaml="a: 1", plot_hparams={}, metrics={}, departures=exact)
    assert "Departures from the PLOT reference code" in card.content and exact[0] in card.content
    card = build_model_card(model_name="m", dataset_name="d", imbalance_factor=10, backbone="b",
                            num_parameters=1, recipe_yaml="a: 1", plot_hparams={}, metrics={})
    assert "Departures" not in card.content


def test_train_drop_last_drops_only_in_training(tmp_path):
    """70 rows, batch 32: two training batches (the last 6 rows dropped); evaluation still sees all 70."""
    args = PLOTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=32,
                      per_device_eval_batch_size=32, train_drop_last=True, moo_until_epoch=0)
    dataset = tensor_dataset(num_rows=70)
    trainer = PLOTTrainer(model=tiny_model(), args=args, train_dataset=dataset, data_collator=collate)
    assert [len(b["labels"]) for b in trainer.get_train_dataloader()] == [32, 32]
    assert sum(len(b["labels"]) for b in trainer.get_eval_dataloader(dataset)) == 70
    assert trainer.args.dataloader_drop_last is False
    plain = PLOTTrainer(model=tiny_model(), args=PLOTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[],
                        per_device_train_batch_size=32, moo_until_epoch=0), train_dataset=dataset, data_collator=collate)
    assert sum(len(b["labels"]) for b in plain.get_train_dataloader()) == 70


@pytest.mark.slow
def test_fidelity_effects_one_step_part_runs(capsys):
    """``benchmarks/fidelity_effects.py``'s one-step cosines: a table row per departure; the mixup loss at the
    perturbed point changes the MOO stage's direction, the anchor changes it less."""
    from benchmarks import fidelity_effects

    summary = fidelity_effects.main(["--seeds", "0", "--step_seeds", "1"])
    cosines = summary["step_cosines"]
    assert set(cosines) == set(fidelity_effects.STEP_DEPARTURES)
    assert all(-1 <= c <= 1 + 1e-6 for entry in cosines.values() for v in entry.values() for c in v)
    assert cosines["moo_loss=mixup (mixup loss at the perturbed point)"]["layer3"][0] < 0.99
    assert "| moo_anchor=uniform |" in capsys.readouterr().out
