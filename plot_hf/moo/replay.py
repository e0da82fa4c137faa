"""Re-run a network from an inner stage without recomputing what comes before it.

PLOT evaluates the loss twice per step: at the current parameters, and after perturbing the parameters of
one stage (SAM). Everything before that stage is unchanged, so its outputs (and their autograd graph) can be
reused. :class:`StageReplay` records, during the first forward, the output of every module that finishes
before the stage starts and is a direct child of one of the stage's ancestors; during a replayed forward those
modules return their recorded outputs instead of running. Functional operations between modules run again
(they are cheap and deterministic); the first replay checks that the stage receives exactly the recorded
input and raises otherwise (e.g. random functional ops before the stage).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def _ancestors(root: nn.Module, stage_name: str) -> list[nn.Module]:
    parts = stage_name.split(".") if stage_name else []
    chain, module = [root], root
    for part in parts[:-1]:
        module = getattr(module, part)
        chain.append(module)
    return chain


class StageReplay:
    """Record the pre-stage computation of ``root`` once; replay it for later forwards from ``stage_name``."""

    def __init__(self, root: nn.Module, stage_name: str):
        self.root = root
        self.stage_name = stage_name
        self.stage = root.get_submodule(stage_name)
        ancestors = _ancestors(root, stage_name)
        ancestor_ids = {id(m) for m in ancestors}
        self._children: list[nn.Module] = []
        for parent in ancestors:
            for child in parent.children():
                if child is not self.stage and id(child) not in ancestor_ids:
                    self._children.append(child)
        self._outputs: dict[int, deque] = defaultdict(deque)
        self._run_after_stage: set[int] = set()
        self._recomputed_names: tuple[frozenset[int], list[str]] | None = None
        self._stage_input: torch.Tensor | None = None
        self._stage_started = False
        self._verified = False

    @contextmanager
    def record(self) -> Iterator[None]:
        """Within this context, a forward of ``root`` records what the stage needs."""
        self._outputs.clear()
        self._run_after_stage.clear()
        self._stage_input = None
        self._stage_started = False

        def on_output(module: nn.Module, args: tuple, output: object) -> None:
            if not self._stage_started:
                self._outputs[id(module)].append(output)
            else:
                self._run_after_stage.add(id(module))

        def on_stage(module: nn.Module, args: tuple) -> None:
            if self._stage_started:
                raise RuntimeError(f"The MOO stage `{self.stage_name}` ran twice in one forward; it cannot be replayed.")
            self._stage_started = True
            self._stage_input = args[0] if args else None

        handles = [child.register_forward_hook(on_output) for child in self._children]
        handles.append(self.stage.register_forward_pre_hook(on_stage))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        if not self._stage_started:
            raise RuntimeError(f"The MOO stage `{self.stage_name}` did not run in the forward pass.")

    def recomputed_buffers(self) -> dict[str, torch.Tensor]:
        """The buffers of the modules that run again in a replayed forward (the stage, what follows it, and
        anything before it that was not recorded), by name: the ones a replayed forward could update.
        Buffers of replayed modules are left out: their forward does not run. The names are worked out once
        per set of replayed modules (the same every step), the tensors looked up each call."""
        replayed = frozenset(
            id(child) for child in self._children if self._outputs.get(id(child)) and id(child) not in self._run_after_stage
        )
        if self._recomputed_names is None or self._recomputed_names[0] != replayed:
            skipped: set[int] = set()
            for module in self.root.modules():
                if id(module) in replayed:
                    skipped.update(id(m) for m in module.modules())
            names = [
                f"{module_name}.{name}" if module_name else name
                for module_name, module in self.root.named_modules()
                if id(module) not in skipped
                for name, _ in module.named_buffers(recurse=False)
            ]
            self._recomputed_names = (replayed, names)
        return {name: self.root.get_buffer(name) for name in self._recomputed_names[1]}

    @property
    def stage_input(self) -> torch.Tensor | None:
        return self._stage_input

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Within this context, a forward of ``root`` reuses the recorded outputs of the pre-stage modules."""
        queues = {key: deque(values) for key, values in self._outputs.items()}
        started = {"flag": False}
        patched: list[nn.Module] = []

        for child in self._children:
            queue = queues.get(id(child))
            if not queue:
                continue
            original = child.forward

            def replayed(*args, _queue=queue, _original=original, **kwargs):
                if not started["flag"] and _queue:
                    return _queue.popleft()
                return _original(*args, **kwargs)

            child.forward = replayed  # instance attribute shadows the class method
            patched.append(child)

        def on_stage(module: nn.Module, args: tuple) -> None:
            started["flag"] = True
            if not self._verified:
                received = args[0] if args else None
                same = received is self._stage_input or (
                    isinstance(received, torch.Tensor)
                    and isinstance(self._stage_input, torch.Tensor)
                    and received.shape == self._stage_input.shape
                    and torch.equal(received, self._stage_input)
                )
                if not same:
                    raise RuntimeError(
                        f"Replaying the forward up to `{self.stage_name}` did not reproduce its input: the model runs "
                        "random or stateful functional operations before that stage. Choose a later MOO stage."
                    )
                self._verified = True

        handle = self.stage.register_forward_pre_hook(on_stage)
        try:
            yield
        finally:
            handle.remove()
            for child in patched:
                del child.forward
