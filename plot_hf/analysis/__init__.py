"""Measures of the poster's claims on a model: gradient conflict between classes, preference for head classes,
and variability of the representation (neural-collapse NC1); on a checkpoint (``python -m plot_hf.analyze``) or
every N steps of a run (:class:`~plot_hf.analysis.callback.AnalysisCallback`)."""

from .measures import (
    ClassGradients,
    Features,
    class_gradients,
    conflict_measures,
    fixed_batches,
    penultimate_features,
    preference_measures,
    representation_measures,
    summary_measures,
)

__all__ = [
    "ClassGradients",
    "Features",
    "class_gradients",
    "conflict_measures",
    "fixed_batches",
    "penultimate_features",
    "preference_measures",
    "representation_measures",
    "summary_measures",
]
