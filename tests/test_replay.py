"""StageReplay: which modules are replayed, and which buffers a replayed forward can still update."""

from __future__ import annotations

import timm
import torch
from torch import nn

import plot_hf  # noqa: F401
from plot_hf.moo import StageReplay


class StemStageHead(nn.Module):
    """A batch-norm stem, the MOO stage, then a head with its own batch norm; ``shared`` runs on both sides."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.shared = nn.BatchNorm2d(4)
        self.stage = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.head_norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shared(self.stem(x))
        x = self.shared(self.head_norm(self.stage(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _recorded(model: nn.Module, stage: str, x: torch.Tensor) -> StageReplay:
    replay = StageReplay(model, stage)
    with replay.record():
        model(x)
    return replay


def test_recomputed_buffers_are_the_stage_and_after_for_a_cifar_resnet() -> None:
    model = timm.create_model("resnet32_cifar", num_classes=10).train()
    replay = _recorded(model, "layer3", torch.randn(4, 3, 32, 32))
    names = set(replay.recomputed_buffers())
    expected = {name for name, _ in model.named_buffers() if name.startswith("layer3.")}
    assert names == expected and len(expected) == 5 * 2 * 3  # 5 blocks x 2 BN x (mean, var, count)


def test_recomputed_buffers_include_the_head_and_modules_run_on_both_sides() -> None:
    model = StemStageHead().train()
    replay = _recorded(model, "stage", torch.randn(2, 3, 8, 8))
    modules = {name.rsplit(".", 1)[0] for name in replay.recomputed_buffers()}
    assert modules == {"stage.1", "head_norm", "shared"}  # the stem is replayed: its buffers need no copy
    # A replayed forward with those copies leaves every real buffer untouched.
    before = {name: b.clone() for name, b in model.named_buffers()}
    overrides = {name: b.clone() for name, b in replay.recomputed_buffers().items()}
    with replay.replay():
        torch.func.functional_call(model, overrides, (torch.randn(2, 3, 8, 8),))
    for name, b in model.named_buffers():
        torch.testing.assert_close(b, before[name], msg=name)
