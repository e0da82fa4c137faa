"""The split's per-class module-gradient kernels against a loop of per-sample backward passes summed by class."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plot_hf.moo.split import ClassGroups, _add_per_class_module_grads

# Class 0 has one sample, class 2 three, class 1 and the last class none (absent), class 3 one, class 4 two.
POSITIONS = torch.tensor([2, 0, 4, 2, 3, 4, 2])
NUM = 6


def reference(module: nn.Module, inputs: torch.Tensor, deltas: torch.Tensor, positions: torch.Tensor, num: int):
    """``sum_{i in k} J_m(a_i)^T delta_i`` by one backward per sample, summed by class in a Python loop."""
    params = dict(module.named_parameters())
    result = {name: torch.zeros(num, *p.shape, dtype=torch.float64) for name, p in params.items()}
    for i in range(inputs.shape[0]):
        out = module(inputs[i : i + 1])
        grads = torch.autograd.grad((out * deltas[i : i + 1]).sum(), list(params.values()))
        for name, g in zip(params, grads, strict=True):
            result[name][positions[i]] += g.double()
    return result


def split_kernel(module: nn.Module, inputs: torch.Tensor, deltas: torch.Tensor, positions: torch.Tensor, num: int,
                 times: int = 1):
    params = {name: p.detach() for name, p in module.named_parameters()}
    targets = {name: torch.zeros(num, *p.shape) for name, p in params.items()}
    groups = ClassGroups(positions, num)
    for _ in range(times):  # a module run several times adds up
        _add_per_class_module_grads(module, params, inputs, deltas, groups, targets, chunk_size=None)
    return targets


MODULES = {
    "linear over tokens": (lambda: nn.Linear(5, 4), (3, 5), (3, 4)),
    "linear over tokens, no bias": (lambda: nn.Linear(5, 4, bias=False), (2, 3, 5), (2, 3, 4)),
    "linear, one row per sample": (lambda: nn.Linear(5, 4), (5,), (4,)),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3, padding=1, stride=2), (3, 6, 6), (4, 3, 3)),
    "conv2d, no bias": (lambda: nn.Conv2d(3, 2, 2, bias=False), (3, 4, 4), (2, 3, 3)),
    "layer norm (generic per-sample path)": (lambda: nn.LayerNorm(5), (3, 5), (3, 5)),
    "group norm (generic per-sample path)": (lambda: nn.GroupNorm(2, 4), (4, 3, 3), (4, 3, 3)),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_kernel_equals_per_sample_backward_passes_summed_by_class(name):
    factory, in_shape, out_shape = MODULES[name]
    torch.manual_seed(0)
    module = factory()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()  # norm layers start at weight 1, bias 0: make every parameter matter
    b = POSITIONS.numel()
    inputs, deltas = torch.randn(b, *in_shape), torch.randn(b, *out_shape)
    expected = reference(module, inputs, deltas, POSITIONS, NUM)
    got = split_kernel(module, inputs, deltas, POSITIONS, NUM)
    assert set(got) == set(expected)
    for param in expected:
        torch.testing.assert_close(got[param].double(), expected[param], rtol=1e-5, atol=1e-5)
        assert got[param][1].abs().max() == 0 and got[param][NUM - 1].abs().max() == 0  # absent classes
        assert got[param][0].abs().max() > 0  # the class with one sample
    twice = split_kernel(module, inputs, deltas, POSITIONS, NUM, times=2)
    for param in expected:
        torch.testing.assert_close(twice[param].double(), 2 * expected[param], rtol=1e-5, atol=1e-5)


def test_kernels_write_into_strided_column_views():
    """The split writes each parameter's per-class gradients into its columns of one K x P matrix."""
    torch.manual_seed(1)
    module = nn.Linear(3, 2)
    inputs, deltas = torch.randn(POSITIONS.numel(), 4, 3), torch.randn(POSITIONS.numel(), 4, 2)
    out = torch.zeros(NUM, 1 + 6 + 2 + 1)
    targets = {"weight": out[:, 1:7].view(NUM, 2, 3), "bias": out[:, 7:9].view(NUM, 2)}
    params = {name: p.detach() for name, p in module.named_parameters()}
    _add_per_class_module_grads(module, params, inputs, deltas, ClassGroups(POSITIONS, NUM), targets, None)
    expected = reference(module, inputs, deltas, POSITIONS, NUM)
    torch.testing.assert_close(out[:, 1:7].double(), expected["weight"].reshape(NUM, 6), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 7:9].double(), expected["bias"], rtol=1e-5, atol=1e-5)
    assert out[:, 0].abs().max() == 0 and out[:, 9].abs().max() == 0
