"""Long-tailed evaluation metrics: top-1/top-5, many/medium/few-shot accuracy, per-class accuracy, NLL, ECE.

Two ways in:

* :func:`lt_metrics` takes full logits (or predicted class ids) and the labels.
* For evaluation sets too big to hold all logits (iNaturalist: 24,426 x 8,142), pass
  ``preprocess_logits_for_metrics=make_preprocess_logits_for_metrics(k=5)`` and
  ``compute_metrics=LTMetrics(train_counts)`` to ``Trainer``: each batch of logits is reduced to
  ``k + 2`` numbers per sample (top-k class ids, max softmax probability, NLL of the true label) and
  :class:`LTMetrics` computes the same numbers as :func:`lt_metrics` on the full logits.

Both go through one reduction (:func:`reduce_logits`) and one reducer (:func:`metrics_from_reduced`), so the
two paths agree exactly. All accuracies are fractions in ``[0, 1]``.

Example:
    >>> import numpy as np
    >>> logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 2.0], [1.0, 0.0, 2.0]])
    >>> out = lt_metrics(logits, np.array([0, 1, 2, 0]), train_counts=[500, 50, 5])
    >>> out["accuracy"], out["many_shot_accuracy"], out["per_class_accuracy"]
    (0.75, 0.5, [0.5, 1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

ShotRule = Literal["strict", "inclusive"]
SHOT_RULES: tuple[str, ...] = ("strict", "inclusive")
"""The one vocabulary of shot rules, used by the data statistics, the metrics, the model cards and the recipes."""
GROUPS: tuple[str, ...] = ("many", "medium", "few")
ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]

__all__ = [
    "LTMetrics",
    "expected_calibration_error",
    "lt_metrics",
    "make_preprocess_logits_for_metrics",
    "metrics_from_reduced",
    "reduce_logits",
    "describe_shot_rule",
    "shot_groups",
]


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype in (torch.bfloat16, torch.float16) else x).numpy()
    return np.asarray(x)


def check_shot_rule(rule: str, many_threshold: int = 100, few_threshold: int = 20) -> None:
    """``ValueError`` naming the allowed rules for an unknown ``rule``, and for ``few_threshold > many_threshold``."""
    if rule not in SHOT_RULES:
        hint = " (OLTR's >= / <= rule is called 'inclusive')" if rule == "oltr" else ""
        raise ValueError(f"Unknown shot rule {rule!r}{hint}; choose one of {SHOT_RULES}.")
    if few_threshold > many_threshold:
        raise ValueError(
            f"`few_threshold` ({few_threshold}) must not exceed `many_threshold` ({many_threshold})."
        )


def describe_shot_rule(rule: ShotRule, many_threshold: int = 100, few_threshold: int = 20) -> str:
    """One sentence stating the rule and its thresholds (model cards, reports)."""
    check_shot_rule(rule, many_threshold, few_threshold)
    if rule == "inclusive":
        return f"inclusive rule: many >= {many_threshold}, few <= {few_threshold} training images, medium otherwise"
    return f"strict rule: many > {many_threshold}, few < {few_threshold} training images, medium otherwise"


def shot_groups(
    train_counts: ArrayLike,
    many_threshold: int = 100,
    few_threshold: int = 20,
    rule: ShotRule = "strict",
) -> dict[str, list[int]]:
    """Split classes into many / medium / few-shot groups by their training-set count ``n_j``.

    * ``rule="strict"`` (classifier-balancing line, Kang et al. 2020; the default):
      many if ``n_j > many_threshold``, few if ``n_j < few_threshold``, medium otherwise.
    * ``rule="inclusive"`` (OLTR, Liu et al. 2019; the PLOT reference's ``shot_acc``): many if
      ``n_j >= many_threshold``, few if ``n_j <= few_threshold``, medium otherwise.

    Returns ``{"many": [...], "medium": [...], "few": [...]}`` with ascending class ids; a group may be empty
    (CIFAR-10-LT at imbalance 100 has no few-shot class under either rule). This is the one implementation
    of the rules: :class:`plot_hf.data.ClassStats` uses it too.
    """
    check_shot_rule(rule, many_threshold, few_threshold)
    counts = _to_numpy(train_counts).astype(np.int64).reshape(-1)
    if rule == "strict":
        many, few = counts > many_threshold, counts < few_threshold
    else:
        many, few = counts >= many_threshold, counts <= few_threshold
    medium = ~(many | few)
    return {name: np.flatnonzero(mask).tolist() for name, mask in zip(GROUPS, (many, medium, few), strict=True)}


def reduce_logits(logits: ArrayLike, labels: ArrayLike | None = None, k: int = 5) -> torch.Tensor:
    """Reduce ``(N, C)`` logits to an ``(N, min(k, C) + 2)`` float32 tensor of per-sample statistics.

    Columns: the ``min(k, C)`` top class ids in descending score order, the confidence
    ``max_j softmax(z)_j``, and the negative log-likelihood ``-log softmax(z)_y`` of the label ``y``
    (NaN where the label is missing or outside ``[0, C)``, e.g. padding ``-100``). Computed in float32
    whatever the input dtype; class ids up to ``2**24`` are exact in float32.
    """
    z = torch.as_tensor(_to_numpy(logits) if not isinstance(logits, torch.Tensor) else logits.detach())
    if z.ndim != 2:
        raise ValueError(f"`logits` must have shape (N, C), got {tuple(z.shape)}.")
    z = z.float()
    log_p = torch.log_softmax(z, dim=-1)
    top = torch.topk(z, k=min(k, z.shape[1]), dim=-1).indices.float()
    confidence = log_p.max(dim=-1).values.exp()
    nll = torch.full_like(confidence, float("nan"))
    if labels is not None:
        y = torch.as_tensor(_to_numpy(labels) if not isinstance(labels, torch.Tensor) else labels)
        y = y.to(device=z.device, dtype=torch.long).reshape(-1)
        valid = (y >= 0) & (y < z.shape[1])
        picked = -log_p.gather(1, y.clamp(0, z.shape[1] - 1)[:, None]).squeeze(1)
        nll = torch.where(valid, picked, nll)
    return torch.cat([top, confidence[:, None], nll[:, None]], dim=1)


def make_preprocess_logits_for_metrics(k: int = 5) -> Callable[[Any, Any], torch.Tensor]:
    """Return a ``Trainer(preprocess_logits_for_metrics=...)`` hook reducing each batch with :func:`reduce_logits`.

    The Trainer calls it as ``hook(logits, labels)``; ``logits`` may be a tuple (model outputs beyond the
    logits), whose first element is used. Keeps ``k + 2`` floats per sample instead of ``C``.
    """
    if k < 1:
        raise ValueError(f"`k` must be >= 1, got {k}.")

    def preprocess_logits_for_metrics(logits: Any, labels: Any) -> torch.Tensor:
        if isinstance(logits, tuple | list):
            logits = logits[0]
        return reduce_logits(logits, labels, k=k)

    return preprocess_logits_for_metrics


def expected_calibration_error(
    confidence: ArrayLike, correct: ArrayLike, num_bins: int = 15
) -> float:
    """ECE with ``num_bins`` equal-width confidence bins, as in MiSLAS (Zhong et al. 2021).

    ``ECE = sum_b (|B_b| / N) * |acc(B_b) - conf(B_b)|`` where bin ``b`` holds the samples with confidence in
    ``(b / num_bins, (b + 1) / num_bins]`` and empty bins contribute 0.
    """
    conf = _to_numpy(confidence).astype(np.float64).reshape(-1)
    hit = _to_numpy(correct).astype(np.float64).reshape(-1)
    if conf.size == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # bin b collects (edges[b], edges[b + 1]]; confidences of exactly 0 fall in no bin (as in MiSLAS).
    bins = np.searchsorted(edges, conf, side="left") - 1
    inside = (bins >= 0) & (bins < num_bins)
    gap = np.bincount(bins[inside], weights=hit[inside] - conf[inside], minlength=num_bins)
    return float(np.abs(gap).sum() / conf.size)


def _per_class_accuracy(correct: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    """``acc_j = #{i: y_i = j, correct_i} / #{i: y_i = j}``; ``None`` for a class with no test sample."""
    hits = np.bincount(labels, weights=correct.astype(np.float64), minlength=num_classes)
    totals = np.bincount(labels, minlength=num_classes)
    return [float(h / t) if t > 0 else None for h, t in zip(hits, totals, strict=True)]


def _mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = labels.astype(np.int64).reshape(-1)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(
            f"`labels` must lie in [0, {num_classes}) (num_classes = len(train_counts)); "
            f"found {int(labels[bad][0])}."
        )
    return labels


def metrics_from_reduced(
    reduced: ArrayLike,
    labels: ArrayLike,
    train_counts: ArrayLike,
    *,
    many_threshold: int = 100,
    few_threshold: int = 20,
    rule: ShotRule = "strict",
    num_bins: int = 15,
    per_class: bool = True,
) -> dict[str, Any]:
    """Compute the metrics of :func:`lt_metrics` from the output of :func:`reduce_logits` (``(N, k + 2)``)."""
    stats = _to_numpy(reduced).astype(np.float64)
    if stats.ndim != 2 or stats.shape[1] < 3:
        raise ValueError(f"`reduced` must have shape (N, k + 2) with k >= 1, got {stats.shape}.")
    k = stats.shape[1] - 2
    num_classes = int(_to_numpy(train_counts).size)
    y = _check_labels(_to_numpy(labels), num_classes)
    top = stats[:, :k].astype(np.int64)
    out = _accuracy_metrics(top[:, 0], y, train_counts, many_threshold, few_threshold, rule, per_class)
    if k >= 5 and num_classes >= 5:
        out["top5_accuracy"] = float((top[:, :5] == y[:, None]).any(axis=1).mean()) if y.size else 0.0
    out["nll"] = float(stats[:, k + 1].mean()) if y.size else 0.0
    out["ece"] = expected_calibration_error(stats[:, k], top[:, 0] == y, num_bins)
    return out


def _accuracy_metrics(
    preds: np.ndarray,
    labels: np.ndarray,
    train_counts: ArrayLike,
    many_threshold: int,
    few_threshold: int,
    rule: ShotRule,
    per_class: bool,
) -> dict[str, Any]:
    """Top-1, macro and group accuracies from predicted ids; a group's accuracy is its classes' mean acc_j."""
    num_classes = int(_to_numpy(train_counts).size)
    correct = preds == labels
    acc = _per_class_accuracy(correct, labels, num_classes)
    out: dict[str, Any] = {"accuracy": float(correct.mean()) if labels.size else 0.0}
    for name, ids in shot_groups(train_counts, many_threshold, few_threshold, rule).items():
        mean = _mean_defined([acc[j] for j in ids])
        if mean is not None:
            out[f"{name}_shot_accuracy"] = mean
    macro = _mean_defined(acc)
    if macro is not None:
        out["macro_accuracy"] = macro
    if per_class:
        out["per_class_accuracy"] = acc
    return out


def lt_metrics(
    logits_or_preds: ArrayLike,
    labels: ArrayLike,
    train_counts: ArrayLike,
    *,
    many_threshold: int = 100,
    few_threshold: int = 20,
    rule: ShotRule = "strict",
    num_bins: int = 15,
    per_class: bool = True,
) -> dict[str, Any]:
    """Long-tailed metrics of a classifier on a test set, as a flat dict.

    Args:
        logits_or_preds: ``(N, C)`` logits, or ``(N,)`` predicted class ids (then only the accuracy keys).
        labels: ``(N,)`` true class ids in ``[0, C)``, ``C = len(train_counts)``.
        train_counts: ``(C,)`` training-set count of each class; defines the shot groups.
        many_threshold, few_threshold, rule: see :func:`shot_groups` (default: strict ``> 100`` / ``< 20``).
        num_bins: number of ECE bins (15, as in MiSLAS).
        per_class: include ``per_class_accuracy``.

    Returns:
        ``accuracy`` (top-1, ``mean_i [argmax z_i = y_i]``); ``top5_accuracy`` (logits with ``C >= 5``);
        ``many_shot_accuracy`` / ``medium_shot_accuracy`` / ``few_shot_accuracy`` (mean of ``acc_j`` over
        the group's classes that have test samples; the key is left out when there is none);
        ``macro_accuracy`` (mean ``acc_j`` over classes with test samples); ``per_class_accuracy``
        (``acc_j``, ``None`` for a class without test samples); ``nll`` (``mean_i -log softmax(z_i)_{y_i}``)
        and ``ece`` (:func:`expected_calibration_error` of the max softmax probability), both for logits.
        Never NaN. Ties in the logits resolve as ``torch.topk`` does.
    """
    kwargs = dict(
        many_threshold=many_threshold, few_threshold=few_threshold, rule=rule, per_class=per_class
    )
    scores = _to_numpy(logits_or_preds)
    num_classes = int(_to_numpy(train_counts).size)
    if scores.ndim == 1:
        y = _check_labels(_to_numpy(labels), num_classes)
        return _accuracy_metrics(scores.astype(np.int64), y, train_counts, **kwargs)
    if scores.ndim != 2 or scores.shape[1] != num_classes:
        raise ValueError(
            f"`logits_or_preds` must have shape (N,) or (N, {num_classes}) (len(train_counts) classes), "
            f"got {scores.shape}."
        )
    reduced = reduce_logits(torch.from_numpy(scores), torch.from_numpy(_to_numpy(labels)), k=5)
    return metrics_from_reduced(reduced, labels, train_counts, num_bins=num_bins, **kwargs)


class LTMetrics:
    """``compute_metrics`` for ``Trainer`` over logits reduced by :func:`make_preprocess_logits_for_metrics`.

    Gives the numbers of :func:`lt_metrics` on the full logits. Works with ``batch_eval_metrics=True`` too:
    the Trainer then calls it per batch with ``compute_result=False`` (the reduced statistics are kept,
    ``k + 2`` floats per sample) and ``compute_result=True`` on the last batch (metrics returned, state reset).

    Example:
        >>> trainer = Trainer(..., compute_metrics=LTMetrics(train_counts),  # doctest: +SKIP
        ...                   preprocess_logits_for_metrics=make_preprocess_logits_for_metrics(k=5))

    Args:
        train_counts: ``(C,)`` training-set count of each class.
        many_threshold, few_threshold, rule, num_bins, per_class: as in :func:`lt_metrics`. Set
            ``per_class=False`` during training to keep ``C`` numbers per evaluation out of the logs.
    """

    def __init__(
        self,
        train_counts: ArrayLike,
        *,
        many_threshold: int = 100,
        few_threshold: int = 20,
        rule: ShotRule = "strict",
        num_bins: int = 15,
        per_class: bool = True,
    ) -> None:
        self.train_counts = _to_numpy(train_counts).astype(np.int64).reshape(-1)
        shot_groups(self.train_counts, many_threshold, few_threshold, rule)  # validates the arguments
        self.kwargs = dict(
            many_threshold=many_threshold, few_threshold=few_threshold, rule=rule,
            num_bins=num_bins, per_class=per_class,
        )
        self._reduced: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"LTMetrics(num_classes={self.train_counts.size}, {args})"

    def __call__(self, eval_pred: Any, compute_result: bool | None = None) -> dict[str, Any]:
        reduced, labels = _unpack(eval_pred)
        if compute_result is None:
            return metrics_from_reduced(reduced, labels, self.train_counts, **self.kwargs)
        self._reduced.append(_to_numpy(reduced))
        self._labels.append(_to_numpy(labels).reshape(-1))
        if not compute_result:
            return {}
        reduced, labels = np.concatenate(self._reduced), np.concatenate(self._labels)
        self._reduced, self._labels = [], []
        return metrics_from_reduced(reduced, labels, self.train_counts, **self.kwargs)


def _unpack(eval_pred: Any) -> tuple[Any, Any]:
    """``(predictions, label_ids)`` of an ``EvalPrediction`` or a ``(predictions, labels)`` tuple."""
    if hasattr(eval_pred, "predictions"):
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
    else:
        predictions, labels = eval_pred[0], eval_pred[1]
    if isinstance(predictions, tuple | list):
        predictions = predictions[0]
    return predictions, labels
