"""Exact per-class gradients from ONE backward, for stages without cross-sample coupling.

When no operation in the MOO stage or after it mixes samples (GroupNorm / LayerNorm, batch norm in eval mode;
NOT batch norm in train mode), the loss ``l_i`` of sample ``i`` depends on ``theta`` only through sample
``i``'s own activations. Then, for a parametrised module ``m`` of the stage with input ``a_i`` and output
gradient ``delta_i = d(sum_j l_j / B) / d out_i`` (both per sample, from one forward and ONE backward of the
batch-mean loss through the stage),

    g_k = grad_theta L_k = sum_{i : y_i = k} J_m(a_i)^T delta_i      (per module, exactly),

computed per module without recomputing any activation gradient: for a linear layer (input ``X_i``: T x d_in
rows, output gradient ``dY_i``: T x d_out) directly per class, ``W_k = sum_{i in k} dY_i^T X_i``, as one batched
product per class size over the stacked rows of each class's samples (no per-sample gradient is formed); for a
convolution, per-sample ``delta_i @ unfold(a_i)^T`` (one batched product); for any other module, per-sample
gradients by ``torch.func.vmap`` of a VJP of the module alone; the per-sample ones summed by class (batched segment
sums, :class:`ClassGroups`). Total cost: one backward through the stage plus one weight-gradient computation per
module, whatever the number of classes.

:class:`SplitCapture` records the inputs and outputs of the stage's parametrised modules during the perturbed
forward and refuses train-mode batch norm that runs in the stage or after it (:class:`CrossSampleCouplingError`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

__all__ = ["ClassGroups", "CrossSampleCouplingError", "SplitCapture"]


class CrossSampleCouplingError(ValueError):
    """A module couples the samples of a batch (train-mode batch norm): per-sample splitting would be wrong."""


def _couples_samples(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and (
        module.training or getattr(module, "running_mean", None) is None
    )


class SplitCapture:
    """Capture per-module inputs/outputs of ``stage`` in one forward; then per-class gradients from one backward.

    ``param_names`` are the MOO parameters' names relative to ``root`` (the model run in the forward), in the
    order of the flattened gradient; ``stage_name`` the stage's module name in ``root``.
    """

    def __init__(self, root: nn.Module, stage_name: str, param_names: Sequence[str]):
        self.root = root
        self.stage_name = stage_name
        self.param_names = list(param_names)
        self.modules: dict[str, nn.Module] = {}
        owned: set[str] = set()
        for name, module in root.get_submodule(stage_name).named_modules():
            full = f"{stage_name}.{name}" if name else stage_name
            local = [f"{full}.{p}" for p, _ in module.named_parameters(recurse=False)]
            if any(p in self.param_names for p in local):
                self.modules[full] = module
                owned.update(local)
        missing = [p for p in self.param_names if p not in owned]
        if missing:
            raise ValueError(f"per_sample_split: MOO parameters {missing[:5]} are not owned by modules of `{stage_name}`.")
        self.calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Within this context, a forward records ``(module, input, output)`` and checks for coupling."""
        self.calls = []

        def record(name: str):
            def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                if len(args) != 1 or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
                    raise ValueError(f"per_sample_split: module `{name}` must map one tensor to one tensor.")
                self.calls.append((name, args[0].detach(), output))

            return hook

        started = {"stage": False}  # only modules that run in or after the stage matter

        def on_stage(module: nn.Module, args: tuple) -> None:
            started["stage"] = True

        def refuse(name: str):
            def hook(module: nn.Module, args: tuple) -> None:
                if started["stage"] and _couples_samples(module):
                    raise CrossSampleCouplingError(
                        f"moo_gradient_method='per_sample_split' needs sample-independent normalisation in and after "
                        f"the MOO stage, but `{name}` ({type(module).__name__}, train mode) couples the samples of a "
                        "batch. Use a GroupNorm/LayerNorm model (e.g. resnet32_cifar_gn), eval-mode batch norm, or "
                        "another moo_gradient_method ('loop', 'batched', 'sketch')."
                    )

            return hook

        handles = [self.root.get_submodule(self.stage_name).register_forward_pre_hook(on_stage)]
        handles += [m.register_forward_hook(record(n)) for n, m in self.modules.items()]
        handles += [
            m.register_forward_pre_hook(refuse(n))
            for n, m in self.root.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def per_class_gradients(
        self,
        objectives: torch.Tensor,
        positions: torch.Tensor,
        values: dict[str, torch.Tensor],
        *,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """The K x P per-class gradients; ``positions[i]`` is sample i's objective index in ``objectives``.

        ``values`` maps the MOO parameter names to the tensors used in the forward (the perturbed values).
        One backward of ``sum_k L_k`` through the stage gives every module's output gradient; each module's
        per-class gradients are then accumulated straight into their columns of the result.
        """
        if not self.calls:
            raise RuntimeError("per_sample_split: no forward was captured.")
        outputs = [out for _, _, out in self.calls]
        deltas = torch.autograd.grad(objectives.sum(), outputs, retain_graph=True, allow_unused=True)
        num = objectives.numel()
        columns: dict[str, slice] = {}  # each parameter's columns in the K x P result, written in place
        offset = 0
        for n in self.param_names:
            columns[n] = slice(offset, offset + values[n].numel())
            offset += values[n].numel()
        first = values[self.param_names[0]]
        out = torch.zeros(num, offset, dtype=first.dtype, device=first.device)
        groups = ClassGroups(positions, num)
        for (name, inp, _out), delta in zip(self.calls, deltas, strict=True):
            if delta is None:
                continue
            module = self.modules[name]
            local = {p: values[f"{name}.{p}"].detach() for p, _ in module.named_parameters(recurse=False)}
            targets = {p: out[:, columns[f"{name}.{p}"]].view(num, *v.shape) for p, v in local.items()}
            _add_per_class_module_grads(module, local, inp, delta, groups, targets, chunk_size)  # a module run twice adds up
        self.calls = []
        return out


class ClassGroups:
    """The samples of a batch grouped by class, and the classes grouped by their number of samples.

    ``positions[i]`` is sample i's class among ``num``. ``order`` sorts the samples by (class size, class), so the
    ``n`` classes with ``c`` samples each are one slab ``order[start : start + n c]`` holding each class's samples
    together: ``sizes`` lists ``(c, classes, slab)``. A per-class sum over such a slab is one batched operation on
    an ``n x c x ...`` view, whatever the number of classes; absent classes (``c = 0``) are left out.
    """

    def __init__(self, positions: torch.Tensor, num: int):
        self.positions = positions
        self.num = num
        counts = torch.bincount(positions, minlength=num)
        self.order = torch.argsort(counts[positions] * num + positions, stable=True)
        self.sizes: list[tuple[int, torch.Tensor, slice]] = []
        start = 0
        for c in torch.unique(counts[counts > 0]).tolist():
            classes = torch.nonzero(counts == c).flatten()
            self.sizes.append((c, classes, slice(start, start + c * classes.numel())))
            start += c * classes.numel()

    def add_sums(self, target: torch.Tensor, per_sample: torch.Tensor) -> None:
        """``target[k] += sum_{i in k} per_sample[i]`` (``target``: K x shape, ``per_sample``: B x shape)."""
        for c, classes, slab in self.sizes:
            grouped = per_sample[self.order[slab]].reshape(classes.numel(), c, *per_sample.shape[1:])
            target[classes] += grouped.sum(dim=1)


def _add_per_class_module_grads(
    module: nn.Module,
    params: dict[str, torch.Tensor],
    inputs: torch.Tensor,
    deltas: torch.Tensor,
    groups: ClassGroups,
    targets: dict[str, torch.Tensor],
    chunk_size: int | None,
) -> None:
    """``targets[p][k] += sum_{i in k} J_m(a_i)^T delta_i`` for each parameter ``p`` of ``module``."""
    if isinstance(module, nn.Linear):
        _add_linear(params, inputs, deltas, groups, targets)
        return
    if isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros":
        _add_conv2d(module, params, inputs, deltas, groups, targets)
        return

    def sample_loss(p: dict[str, torch.Tensor], a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return (functional_call(module, p, (a.unsqueeze(0),)) * d.unsqueeze(0)).sum()

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, inputs, deltas)
    for name, g in per_sample.items():
        groups.add_sums(targets[name], g)


def _add_linear(
    params: dict[str, torch.Tensor],
    inputs: torch.Tensor,
    deltas: torch.Tensor,
    groups: ClassGroups,
    targets: dict[str, torch.Tensor],
) -> None:
    """Per-class linear gradients ``W_k = dY_k^T X_k``, ``b_k = 1^T dY_k`` with ``X_k`` (``dY_k``) the rows (tokens) of
    class ``k``'s samples stacked: for the ``n`` classes of ``c`` samples, one batched product of ``n`` pairs of
    ``c T``-row matrices; no per-sample gradient is formed."""
    b, d_in, d_out = inputs.shape[0], inputs.shape[-1], deltas.shape[-1]
    x = inputs.reshape(b, -1, d_in)[groups.order]  # sorted by (class size, class)
    dy = deltas.reshape(b, -1, d_out)[groups.order]
    weight = targets["weight"]
    for _c, classes, slab in groups.sizes:
        x_k = x[slab].reshape(classes.numel(), -1, d_in)
        dy_k = dy[slab].reshape(classes.numel(), -1, d_out)
        weight[classes] += torch.bmm(dy_k.transpose(1, 2), x_k)
    if params.get("bias") is not None:
        groups.add_sums(targets["bias"], deltas.reshape(b, -1, d_out).sum(dim=1))


def _add_conv2d(
    module: nn.Conv2d,
    params: dict[str, torch.Tensor],
    inputs: torch.Tensor,
    deltas: torch.Tensor,
    groups: ClassGroups,
    targets: dict[str, torch.Tensor],
) -> None:
    """Per-class conv gradients: per-sample ``delta_i @ unfold(a_i)^T`` (one batched matmul) summed by class."""
    b, out_ch = deltas.shape[:2]
    cols = torch.nn.functional.unfold(
        inputs, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride
    )  # B x (C k k) x L
    dflat = deltas.reshape(b, out_ch, -1)  # B x O x L
    per_sample = torch.bmm(dflat, cols.transpose(1, 2))  # B x O x (C k k)
    groups.add_sums(targets["weight"], per_sample.reshape(b, *params["weight"].shape))
    if params.get("bias") is not None:
        groups.add_sums(targets["bias"], dflat.sum(dim=2))
