"""The CIFAR ResNets registered with timm: forward/backward on every registered variant, parameter count,
and the transformers round trip (save_pretrained -> AutoModelForImageClassification) with identical logits."""

from __future__ import annotations

import pytest
import timm
import torch
from transformers import AutoModelForImageClassification

import plot_hf  # noqa: F401
from plot_hf.losses import NormedLinear
from plot_hf.models import create_image_classifier
from plot_hf.models.resnet_cifar import CIFAR_ARCHITECTURES


@pytest.mark.parametrize("architecture", CIFAR_ARCHITECTURES)
def test_registered_architecture_forward_backward(architecture, device):
    model = timm.create_model(architecture, num_classes=7).to(device)
    x = torch.randn(4, 3, 16, 16, device=device)
    logits = model(x)
    assert logits.shape == (4, 7) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (4, 64)


def test_resnet32_has_the_standard_size():
    model = timm.create_model("resnet32_cifar", num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 464_154  # 0.46M (Cao et al.'s ResNet-32)
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [5, 5, 5]


@pytest.mark.parametrize("classifier", ["linear", "normed"])
def test_save_and_auto_reload_give_identical_logits(tmp_path, classifier):
    model = create_image_classifier("resnet32_cifar", list("abcd"), classifier=classifier).eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(reloaded(pixel_values=x).logits, model(pixel_values=x).logits, rtol=0, atol=0)
    assert isinstance(reloaded.timm_model.fc, NormedLinear) == (classifier == "normed")
    assert reloaded.config.id2label == {0: "a", 1: "b", 2: "c", 3: "d"}


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown timm architecture"):
        create_image_classifier("resnet33_cifarr", list("ab"))
