"""Build the whole PLOT step from a :class:`plot_hf.PLOTConfig`: every varying part is chosen here, once."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..config import PLOTConfig
from ..distributed import has_sync_batch_norm, reducer_for
from ..models.introspection import class_prior_anchor, resolve_gradient_method, resolve_moo_parameters
from ..moo.class_groups import frequency_groups, group_anchor_table
from ..moo.gramian_sources import GramianSource, OnePassSplit, PerClassVJPs, SketchedGramian
from ..moo.objectives import ObjectiveIds
from ..moo.policies import coefficient_policy
from ..moo.replay import StageReplay
from ._solve import Solve
from ._step import MOOParameters, PLOTStep


def build_plot_step(
    config: PLOTConfig, model: nn.Module, class_counts: Sequence[int], *, host_reads: bool | None = None
) -> PLOTStep:
    """The PLOT step of ``model`` (the unwrapped model, whose parameters the optimizer trains) for ``config``.

    ``class_counts``: the training count of every class (the objective ids, the class-prior anchor, the
    class groups). ``host_reads``: see :class:`PLOTStep` (None: decided by the batch's device).
    The MOO parameters are ``config.moo_modules`` (default: the backbone's last stage); ``"auto"`` gradient
    method resolved for the model and ``config.device``; the cross-rank reducer for the current process group.
    """
    moo = resolve_moo_parameters(model, config.moo_modules)
    method = resolve_gradient_method(model, moo, config.moo_gradient_method, config.device)
    reducer = reducer_for(config.moo_ddp_reduce)
    if config.world_size > 1 and method == "sketch":
        raise ValueError("`moo_gradient_method='sketch'` is not reduced across ranks; use 'loop' or 'batched' with DDP.")
    class_to_group = None
    if config.moo_class_groups is not None:  # objectives = frequency-ordered class bins
        class_to_group = frequency_groups(class_counts, config.moo_class_groups)
    objective_ids = ObjectiveIds(len(class_counts), class_to_group)
    anchor_table = None if config.moo_anchor == "uniform" else class_prior_anchor(class_counts)
    if anchor_table is not None and class_to_group is not None:  # a group's preference: its classes' mean
        anchor_table = group_anchor_table(anchor_table, class_to_group)
    local_rows_only = reducer.world_size > 1 and not has_sync_batch_norm(model)  # SyncBN: every rank, every row
    return PLOTStep(
        model=model,
        moo=moo,
        replay=StageReplay(model, moo.stage_name),
        objective_ids=objective_ids,
        gramian_source=_gramian_source(config, method, model, moo, local_rows_only=local_rows_only),
        reducer=reducer,
        policy=coefficient_policy(config.moo_solve_every, objective_ids.num_ids),
        solve=Solve(config.build_solver(), anchor_table),
        rho=config.sam_rho,
        keep_fraction=config.sam_keep_fraction,
        vc_weight=config.vc_weight,
        host_reads=host_reads,
    )


def _gramian_source(
    config: PLOTConfig, method: str, model: nn.Module, moo: MOOParameters, *, local_rows_only: bool
) -> GramianSource:
    """The Gramian source of the (resolved) gradient method."""
    if method == "per_sample_split":
        return OnePassSplit(model, moo.stage_name, moo.names, chunk_size=config.moo_chunk_size)
    if method == "sketch":
        return SketchedGramian(config.moo_sketch_dim, chunk_size=config.moo_chunk_size)
    return PerClassVJPs(method, config.moo_chunk_size, config.moo_chunk_memory_mb, local_rows_only=local_rows_only)
