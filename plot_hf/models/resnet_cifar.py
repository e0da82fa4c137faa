"""The CIFAR ResNets of He et al. (2016) as used by LDAM-DRW and PLOT, registered with timm.

``resnet32_cifar``: 3 stages of 5 BasicBlocks with 16 / 32 / 64 channels, option-A (zero-padding)
shortcuts, a 3x3 stem without pooling, global average pooling and a linear classifier (about 0.46M
parameters at 10 classes). This is the standard network of Cao et al.; the PLOT reference code's copy has
4 blocks in its last stage, a quirk this project does not reproduce.

``classifier="normed"`` (a model argument, so it is saved in the config and rebuilt on load) gives the cosine
classifier of LDAM-DRW (:class:`~plot_hf.losses.NormedLinear`) instead of the linear one.

``classifier_init`` (a model argument) initialises the linear classifier: ``"kaiming_normal"`` (default, as
LDAM-DRW's code, which applies its Kaiming initialisation to ``nn.Linear`` too) or ``"torch_default"``
(``nn.Linear``'s own initialisation, uniform in ``+-1/sqrt(fan_in)``: the PLOT reference code, whose Kaiming
initialisation runs before its classifier is created). The CIFAR recipes use ``"torch_default"``. The
convolutions are Kaiming-normal either way; ``reset_classifier`` gives a new head ``nn.Linear``'s own.

``resnet32_cifar_gn``: the same network with GroupNorm instead of BatchNorm. Its samples do not interact
through normalisation, so a class's gradient is exactly the sum of its samples' gradients.

Every model has timm's face: ``forward_features``, ``forward_head(pre_logits=)``, ``reset_classifier``,
``get_classifier``; its stages are ``layer1``, ``layer2``, ``layer3`` (PLOT's MOO stage is ``layer3``).
Importing :mod:`plot_hf` registers them, which is what lets ``AutoModelForImageClassification`` rebuild a
saved model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

CIFAR_ARCHITECTURES = ("resnet20_cifar", "resnet32_cifar", "resnet32_cifar_gn", "resnet56_cifar")
CLASSIFIER_INITS = ("kaiming_normal", "torch_default")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def _group_norm(num_channels: int, groups: int = 8) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, num_channels), num_channels)


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.extra_channels // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, self.extra_channels - pad))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with normalisation, ReLU, and an identity or option-A shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm_layer: type[nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm_layer(planes)
        self.act = nn.ReLU()
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut = PadShortcut(planes - in_planes) if needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet with ``depth = 6 n + 2`` (n blocks per stage) and timm's model interface."""

    def __init__(
        self,
        blocks_per_stage: tuple[int, int, int] = (5, 5, 5),
        widths: tuple[int, int, int] = (16, 32, 64),
        num_classes: int = 10,
        in_chans: int = 3,
        norm: str = "batch",
        classifier: str = "linear",
        drop_rate: float = 0.0,
        classifier_init: str = "kaiming_normal",
        **unknown: object,
    ):
        super().__init__()
        if unknown:  # a misspelt `model_args` key must not leave the default architecture silently
            code = CifarResNet.__init__.__code__  # (no `inspect`: saved models ship this file as their code)
            accepted = code.co_varnames[1:code.co_argcount]
            raise TypeError(f"Unknown `model_args` key(s) {sorted(unknown)} of the CIFAR ResNet; it accepts: "
                            f"{', '.join(accepted)}.")
        if norm not in ("batch", "group"):
            raise ValueError(f"`norm` must be 'batch' or 'group', got {norm!r}.")
        if classifier not in ("linear", "normed"):
            raise ValueError(f"`classifier` must be 'linear' or 'normed', got {classifier!r}.")
        if classifier_init not in CLASSIFIER_INITS:
            raise ValueError(f"`classifier_init` must be one of {CLASSIFIER_INITS}, got {classifier_init!r}.")
        self.classifier_init = classifier_init
        norm_layer = nn.BatchNorm2d if norm == "batch" else _group_norm
        self.classifier_kind = classifier
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = widths[-1]
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = norm_layer(widths[0])
        self.act1 = nn.ReLU()
        stages, in_planes = [], widths[0]
        for index, (n_blocks, planes) in enumerate(zip(blocks_per_stage, widths, strict=True)):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(in_planes if b == 0 else planes, planes, stride if b == 0 else 1, norm_layer)
                      for b in range(n_blocks)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = self._make_classifier(num_classes)
        self.feature_info = [
            {"num_chs": w, "reduction": 2**i, "module": f"layer{i + 1}"} for i, w in enumerate(widths)
        ]
        self._init_weights()

    def _make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        if self.classifier_kind == "normed":
            from ..losses.normed_linear import NormedLinear

            return NormedLinear(self.num_features, num_classes)
        return nn.Linear(self.num_features, num_classes)

    def _init_weights(self) -> None:
        # Kaiming-normal for the convolutions (LDAM-DRW and PLOT code), and for the linear classifier only with
        # classifier_init="kaiming_normal" (LDAM-DRW); "torch_default" keeps nn.Linear's own (PLOT code).
        kinds = (nn.Conv2d, nn.Linear) if self.classifier_init == "kaiming_normal" else (nn.Conv2d,)
        for module in self.modules():
            if isinstance(module, kinds):
                nn.init.kaiming_normal_(module.weight)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.fc = self._make_classifier(num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: object) -> dict:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "resnet32_cifar.untrained": _cfg(),
        "resnet32_cifar_gn.untrained": _cfg(),
        "resnet20_cifar.untrained": _cfg(),
        "resnet56_cifar.untrained": _cfg(),
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs: object) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, variant, pretrained, feature_cfg={"flatten_sequential": True}, **kwargs)


@register_model
def resnet32_cifar(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    """ResNet-32 for 32x32 images: 5/5/5 BasicBlocks, 16/32/64 channels, BatchNorm."""
    return _create("resnet32_cifar", pretrained, **{"blocks_per_stage": (5, 5, 5), **kwargs})


@register_model
def resnet32_cifar_gn(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    """ResNet-32 with GroupNorm (8 groups): no cross-sample coupling, exact one-pass class gradients."""
    return _create("resnet32_cifar_gn", pretrained, **{"blocks_per_stage": (5, 5, 5), "norm": "group", **kwargs})


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    """ResNet-20 for 32x32 images: 3/3/3 BasicBlocks, 16/32/64 channels."""
    return _create("resnet20_cifar", pretrained, **{"blocks_per_stage": (3, 3, 3), **kwargs})


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    """ResNet-56 for 32x32 images: 9/9/9 BasicBlocks, 16/32/64 channels."""
    return _create("resnet56_cifar", pretrained, **{"blocks_per_stage": (9, 9, 9), **kwargs})


