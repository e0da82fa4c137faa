"""Lazy transforms, the collator and mixup."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from plot_hf.data import DataConfig, build_datasets, build_transforms, collate_fn

from .test_data_fixtures import cifar_small


def test_cifar_transforms_shapes_and_eval_is_deterministic():
    train_tf, eval_tf = build_transforms("cifar")
    img = Image.new("RGB", (32, 32), (200, 10, 30))
    assert train_tf(img).shape == eval_tf(img).shape == (3, 32, 32)
    torch.testing.assert_close(eval_tf(img), eval_tf(img))
    # normalised with the CIFAR statistics
    assert eval_tf(img)[0, 0, 0].item() == pytest.approx((200 / 255 - 0.4914) / 0.2023, rel=1e-5)


def test_imagenet_transforms_use_timm_sizes():
    train_tf, eval_tf = build_transforms("imagenet")
    img = Image.new("RGB", (300, 260), (1, 2, 3))
    assert train_tf(img).shape == eval_tf(img).shape == (3, 224, 224)
    names = [type(t).__name__ for t in eval_tf.transforms]
    assert names[:2] == ["Resize", "CenterCrop"] and eval_tf.transforms[0].size == 256
    assert "ColorJitter" not in [type(t).__name__ for t in train_tf.transforms]
    with pytest.raises(ValueError, match="transform"):
        build_transforms("autoaugment")


def test_lazy_transform_and_collate():
    data = build_datasets(DataConfig(source="disk", path=cifar_small(), imbalance_factor=10))
    assert "pixel_values" not in data.train.column_names
    view = data.with_transforms()
    row = view.train[0]
    assert set(row) == {"pixel_values", "labels"} and row["pixel_values"].shape == (3, 32, 32)
    batch = collate_fn([view.test[i] for i in range(5)])
    assert batch["pixel_values"].shape == (5, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == (5,)
    # the underlying Arrow data is untouched
    assert data.train.column_names == ["image", "labels"]


