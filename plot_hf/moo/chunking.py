"""Chunk sizes of batched per-class vector-Jacobian products from a memory bound (``moo_chunk_memory_mb``).

A batched VJP over ``c`` classes (``is_grads_batched``) runs the backward of the replayed forward (the MOO stage
and everything after it) once, with ``c`` cotangents at every operation, shaped like the activations that the
forward saved for backward, and returns ``c`` gradient rows of ``P`` numbers. The estimate of its extra memory
is ``c * (A + P * s)`` bytes, with ``A`` the bytes that the forward saved for backward (activations, the
parameters themselves left out), ``P`` the number of MOO parameters and ``s`` the bytes of one gradient entry.
It counts every activation's cotangent as alive at once, while autograd frees each one once it is used: an
estimate from above, not a proof (a cotangent of an operation that saves nothing, such as an addition, is not
counted; few are alive at once); how loose it is on ResNet-32 is measured in ``benchmarks/README.md``. The
chunk is the largest ``c`` within the bound, and at least 1 (one class at a time, the loop's memory).

``A`` is measured, not modelled: :func:`count_saved_bytes` records the storages that autograd saves during the
forward (``torch.autograd.graph.saved_tensors_hooks``), each storage once. Only shapes are read: no value
crosses to the host.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

__all__ = ["SavedBytes", "chunk_for_memory", "count_saved_bytes"]


@dataclass
class SavedBytes:
    """Bytes of the distinct storages saved for backward inside :func:`count_saved_bytes`."""

    nbytes: int = 0
    _seen: set[int] = field(default_factory=set, repr=False)


@contextmanager
def count_saved_bytes(exclude: Iterable[torch.Tensor] = ()) -> Iterator[SavedBytes]:
    """Within this context, count the bytes of every storage that autograd saves for backward, once each,
    leaving out the storages of ``exclude`` (the parameters: a batched VJP does not copy them per class).
    The saved tensors themselves are kept as they are (the hooks pack and unpack the same tensor)."""
    saved = SavedBytes()
    saved._seen.update(t.untyped_storage().data_ptr() for t in exclude)

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in saved._seen:
            saved._seen.add(storage.data_ptr())
            saved.nbytes += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield saved


def chunk_for_memory(bound_bytes: float, saved_bytes: int, num_params: int, itemsize: int) -> int:
    """The largest ``c >= 1`` with ``c * (saved_bytes + num_params * itemsize) <= bound_bytes``."""
    if not bound_bytes > 0:
        raise ValueError(f"The memory bound must be a positive number of bytes, got {bound_bytes!r}.")
    per_class = saved_bytes + num_params * itemsize
    return max(1, int(bound_bytes // per_class)) if per_class > 0 else 1
