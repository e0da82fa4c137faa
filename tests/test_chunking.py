"""Chunks of batched per-class VJPs sized from a memory bound: the saved-bytes count against hand-counted
autograd saves, the chunk formula, and the PLOT step's wiring (chunk sizes it uses; same gradients)."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import pytest
import timm
import torch
import torch.nn.functional as F

import plot_hf  # noqa: F401
import plot_hf.step as step_module
from plot_hf import PLOTConfig
from plot_hf.models.introspection import class_prior_anchor, resolve_moo_parameters
from plot_hf.moo.chunking import chunk_for_memory, count_saved_bytes
from plot_hf.step import PLOTStep

from .helpers import Wrapper


def test_saved_bytes_are_the_hand_counted_saves_each_storage_once():
    x = torch.randn(5, 7, requires_grad=True)
    weight = torch.randn(7, requires_grad=True)
    with count_saved_bytes(exclude=[weight]) as saved:
        y = x.exp()  # saves its result y
        z = y.sin()  # saves its input y again: the same storage, counted once
        w = z * weight  # saves both operands: z (new) and the weight (excluded)
    assert saved.nbytes == y.nbytes + z.nbytes == 2 * 5 * 7 * 4
    with count_saved_bytes() as everything:
        (x.exp().sin() * weight).sum()
    assert everything.nbytes == saved.nbytes + weight.nbytes
    w.sum().backward()  # the hooks kept the saved tensors as they were
    torch.testing.assert_close(weight.grad, (x.detach().exp().sin()).sum(0))


def test_chunk_is_the_largest_count_within_the_bound():
    per_class = 1000 + 50 * 4
    assert chunk_for_memory(3 * per_class, 1000, 50, 4) == 3
    assert chunk_for_memory(3 * per_class - 1, 1000, 50, 4) == 2
    assert chunk_for_memory(10, 1000, 50, 4) == 1  # below one class: still one class at a time
    with pytest.raises(ValueError, match="positive number of bytes"):
        chunk_for_memory(0, 1000, 50, 4)


def _run(chunk_memory_mb, monkeypatch):
    """One PLOT step (batched VJPs) on a ResNet-20 with 6 classes present; returns the MOO gradients, the chunk
    sizes given to ``per_class_gradients``, the bytes the step counted and the number of MOO parameters."""
    torch.manual_seed(0)
    model = Wrapper(timm.create_model("resnet20_cifar", num_classes=6)).train()
    x, y = torch.randn(24, 3, 8, 8), torch.arange(24) % 6
    chunks, counted = [], []
    real_gradients, real_count = step_module.per_class_gradients, step_module.count_saved_bytes

    def spy_gradients(*args, **kwargs):
        chunks.append(kwargs["chunk_size"])
        return real_gradients(*args, **kwargs)

    @contextmanager
    def spy_count(*args, **kwargs):
        with real_count(*args, **kwargs) as saved:
            yield saved
        counted.append(saved.nbytes)

    monkeypatch.setattr(step_module, "per_class_gradients", spy_gradients)
    monkeypatch.setattr(step_module, "count_saved_bytes", spy_count)
    moo = resolve_moo_parameters(model, None)
    step = PLOTStep(moo=moo, solver_name="cagrad", solver_kwargs={}, rho=0.05, keep_fraction=0.0, vc_weight=0.1,
                    gradient_method="batched", chunk_memory_mb=chunk_memory_mb)
    table = class_prior_anchor([40, 30, 20, 10, 5, 2])
    step.run(model=model, unwrapped=model, pixel_values=x, group_labels=y,
             per_sample_loss=lambda logits: F.cross_entropy(logits, y, reduction="none"),
             anchor_for=lambda c: table[c].double() / table[c].sum(), backward=lambda loss: loss.backward(),
             loss_scale=1.0, autocast=nullcontext, forward_context=nullcontext)
    return {n: p.grad.clone() for n, p in model.named_parameters()}, chunks, counted, moo.numel


def test_step_sizes_its_chunks_from_the_bound_and_gets_the_same_gradients(monkeypatch):
    whole, chunks, counted, _ = _run(None, monkeypatch)
    assert chunks == [None] and counted == []  # no bound: all classes in one call, nothing counted
    one, chunks, counted, numel = _run(1e-9, monkeypatch)  # below one class's need: one class per call
    assert chunks == [1] and len(counted) == 1 and counted[0] > 0
    per_class = counted[0] + numel * 4  # bytes: activations saved by the forward + one float32 gradient row
    for name in whole:
        torch.testing.assert_close(one[name], whole[name], rtol=1e-5, atol=1e-7, msg=name)
    for k in (2, 4):  # a bound of exactly k classes' bytes gives chunks of k; a byte less, k - 1
        _, chunks, counted, _ = _run(k * per_class / 2**20, monkeypatch)
        assert counted == [per_class - numel * 4] and chunks == [k]
        _, chunks, _, _ = _run((k * per_class - 1) / 2**20, monkeypatch)
        assert chunks == [k - 1]


def test_the_two_chunk_knobs_are_exclusive_and_the_bound_positive(tmp_path):
    with pytest.raises(ValueError, match="`moo_chunk_memory_mb`=512 is invalid: `moo_chunk_size` is 8"):
        PLOTConfig(output_dir=str(tmp_path), moo_chunk_size=8, moo_chunk_memory_mb=512)
    for bad in (0, -1.0, True, "1GB"):
        with pytest.raises(ValueError, match="`moo_chunk_memory_mb`=.* positive number of MiB"):
            PLOTConfig(output_dir=str(tmp_path), moo_chunk_memory_mb=bad)


def test_analysis_gradients_with_a_memory_bound_equal_the_loop(monkeypatch):
    import plot_hf.analysis.measures as measures

    torch.manual_seed(0)
    model = Wrapper(timm.create_model("resnet20_cifar", num_classes=4))
    batches = [{"pixel_values": torch.randn(12, 3, 8, 8), "labels": torch.arange(12) % 4} for _ in range(2)]
    params = list(model.timm_model.layer3.parameters())

    def loss(logits, labels):
        return F.cross_entropy(logits, labels, reduction="none")

    looped = measures.class_gradients(model, params, batches, loss, method="loop")
    chunks = []
    real = measures.per_class_gradients
    monkeypatch.setattr(measures, "per_class_gradients",
                        lambda *a, **k: chunks.append(k["chunk_size"]) or real(*a, **k))
    bounded = measures.class_gradients(model, params, batches, loss, method="batched", chunk_memory_mb=1e-9)
    assert chunks == [1, 1]  # one class per batched call, on each batch
    torch.testing.assert_close(bounded.matrix, looped.matrix, rtol=1e-6, atol=1e-9)
