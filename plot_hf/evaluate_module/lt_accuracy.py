"""`lt_accuracy`: long-tailed accuracy as a local ``evaluate`` metric (loads offline).

Load it by the path of this file (``evaluate.load`` looks for ``<folder>/<folder>.py`` when given a folder)::

    import evaluate

    metric = evaluate.load("path/to/plot_hf/evaluate_module/lt_accuracy.py")
    metric.compute(predictions=[0, 1, 2], references=[0, 1, 1], train_counts=[500, 50, 5])

It wraps ``plot_hf.metrics.lt_metrics``; see there for the definitions.
"""

import datasets
import evaluate

from plot_hf.metrics import lt_metrics

_DESCRIPTION = (
    "Long-tailed recognition metrics: top-1 accuracy, many/medium/few-shot accuracy (mean per-class "
    "accuracy within the group of classes by training count), macro and per-class accuracy; with logits "
    "as predictions also top-5 accuracy, NLL and ECE (15 bins). Groups use the strict rule by default "
    "(many > 100, few < 20 training images); rule='inclusive' gives >= 100 / <= 20. Empty groups are left out."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids (N,) or logits (N, C).
    references: true class ids (N,).
    train_counts: training-set count of each of the C classes (required).
    many_threshold (int, defaults to 100), few_threshold (int, defaults to 20),
    rule ("strict" or "inclusive", defaults to "strict"), num_bins (int, defaults to 15),
    per_class (bool, defaults to True).
Returns:
    dict with accuracy, many_shot_accuracy, medium_shot_accuracy, few_shot_accuracy (non-empty groups only),
    macro_accuracy, per_class_accuracy, and with logits top5_accuracy (C >= 5), nll, ece.
Examples:
    >>> metric = evaluate.load("plot_hf/evaluate_module/lt_accuracy.py")  # doctest: +SKIP
    >>> metric.compute(predictions=[0, 1, 2, 2], references=[0, 1, 2, 0],
    ...                train_counts=[500, 50, 5])["accuracy"]  # doctest: +SKIP
    0.75
"""

_CITATION = """\
@inproceedings{zhou2024pareto,
  title     = {Pareto Deep Long-Tailed Recognition: A Conflict-Averse Solution},
  author    = {Zhou, Zhipeng and Liu, Liu and Zhao, Peilin and Gong, Wei},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2024}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LtAccuracy(evaluate.Metric):
    """Long-tailed accuracy (top-1, many/medium/few-shot, per-class, top-5, NLL, ECE)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
                datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("float32")),
                        "references": datasets.Value("int64"),
                    }
                ),
            ],
            reference_urls=["https://github.com/zzpustc/PLOT"],
        )

    def _compute(
        self,
        predictions,
        references,
        train_counts=None,
        many_threshold: int = 100,
        few_threshold: int = 20,
        rule: str = "strict",
        num_bins: int = 15,
        per_class: bool = True,
    ) -> dict:
        if train_counts is None:
            raise ValueError("`train_counts` is required: pass compute(..., train_counts=[n_0, ..., n_{C-1}]).")
        return lt_metrics(
            predictions,
            references,
            train_counts,
            many_threshold=many_threshold,
            few_threshold=few_threshold,
            rule=rule,
            num_bins=num_bins,
            per_class=per_class,
        )
