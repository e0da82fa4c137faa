"""Imbalance profiles and the three selection rules, on label arrays (no images)."""

from __future__ import annotations

import numpy as np
import pytest

from plot_hf.data.profiles import class_counts
from plot_hf.data.selection import (
    first_n_selection,
    load_indices,
    reference_selection,
    save_indices,
    seeded_selection,
    select_indices,
)

from .test_data_fixtures import CIFAR10_IF100, cifar_labels, ldam_reference


@pytest.mark.parametrize(
    ("num_classes", "n_max", "imb", "profile", "total"),
    [
        (10, 5000, 100, "exponential", 12_406),
        (10, 5000, 50, "exponential", 13_996),
        (10, 5000, 10, "exponential", 20_431),
        (10, 5000, 200, "exponential", 11_203),
        (100, 500, 100, "exponential", 10_847),
        (100, 500, 50, "exponential", 12_608),
        (100, 500, 10, "exponential", 19_573),
        (100, 500, 200, "exponential", 9_502),
        (10, 5000, 100, "step", 25_250),
        (100, 500, 100, "step", 25_250),
        (10, 5000, 1, "exponential", 50_000),
    ],
)
def test_profile_totals(num_classes, n_max, imb, profile, total):
    assert sum(class_counts(num_classes, n_max, imb, profile)) == total


def test_cifar10_if100_counts_exact():
    assert class_counts(10, 5000, 100) == CIFAR10_IF100
    c100 = class_counts(100, 500, 100)
    assert (c100[0], c100[-1]) == (500, 5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"imbalance_factor": 0.5}, "imbalance_factor"),
        ({"profile": "linear"}, "profile"),
        ({"max_per_class": 10, "imbalance_factor": 20}, "0 images"),
    ],
)
def test_profile_errors(kwargs, match):
    args = {"num_classes": 10, "max_per_class": 5000, "imbalance_factor": 100} | kwargs
    with pytest.raises(ValueError, match=match):
        class_counts(**args)


@pytest.mark.parametrize(("num_classes", "per_class"), [(10, 5000), (100, 500)])
def test_reference_equals_ldam_procedure(num_classes, per_class):
    labels = cifar_labels(num_classes, per_class, seed=3)
    counts = class_counts(num_classes, per_class, 100)
    ours = reference_selection(labels, counts, seed=0)
    np.testing.assert_array_equal(ours, ldam_reference(labels, counts))


def test_plot_selection_is_the_reference_draw_under_seed_50():
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 1, 2, 0, 1, 2])
    # np.random.seed(50); per class 0, 1, 2: np.random.shuffle(np.where(labels == c)[0]), keep 4 / 2 / 1
    np.testing.assert_array_equal(select_indices(labels, [4, 2, 1], "plot", seed=0), [6, 3, 9, 1, 7, 2, 11])
    np.testing.assert_array_equal(select_indices(labels, [4, 2, 1], "plot", seed=9), [6, 3, 9, 1, 7, 2, 11])
    for num_classes, per_class in ((10, 5000), (100, 500)):
        cifar = cifar_labels(num_classes, per_class, seed=4)
        counts = class_counts(num_classes, per_class, 100)
        np.testing.assert_array_equal(select_indices(cifar, counts, "plot"), ldam_reference(cifar, counts, seed=50))
        assert not np.array_equal(select_indices(cifar, counts, "plot"), select_indices(cifar, counts, "reference"))


@pytest.mark.parametrize("num_classes", [10, 100])
def test_counts_equal_the_plot_configs_cifar_imb_ratio(num_classes):
    """``img_max * cifar_imb_ratio ** (k / (C - 1))`` with the configs' ratios 0.005 / 0.01 / 0.02."""
    img_max = 50000 / num_classes
    for imbalance_factor, ratio in ((200, 0.005), (100, 0.01), (50, 0.02)):
        expected = [int(img_max * ratio ** (k / (num_classes - 1.0))) for k in range(num_classes)]
        assert class_counts(num_classes, int(img_max), imbalance_factor) == expected


def test_reference_leaves_global_numpy_state_alone():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    reference_selection(cifar_labels(10, 50), class_counts(10, 50, 10))
    assert np.random.rand() == expected


def test_selections_deterministic_and_counted():
    labels = cifar_labels(10, 500, seed=1)
    counts = class_counts(10, 500, 100)
    keys = [f"img_{i}.png" for i in range(len(labels))]
    for method in ("reference", "plot", "first", "seeded"):
        a = select_indices(labels, counts, method, seed=7, keys=keys)
        b = select_indices(labels, counts, method, seed=7, keys=keys)
        np.testing.assert_array_equal(a, b)
        assert np.bincount(labels[a], minlength=10).tolist() == counts
        assert len(set(a.tolist())) == len(a)
        # grouped by class, ascending
        assert (np.diff(labels[a]) >= 0).all()


def test_first_n_is_dataset_order():
    labels = np.array([1, 0, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(first_n_selection(labels, [2, 1]), [1, 3, 0])


def test_seeded_independent_of_row_order_and_seed_changes_draw():
    labels = cifar_labels(10, 200, seed=2)
    counts = class_counts(10, 200, 10)
    keys = np.array([f"file_{i}.png" for i in range(len(labels))])
    chosen = set(keys[seeded_selection(labels, counts, keys.tolist(), seed=5)])
    perm = np.random.default_rng(0).permutation(len(labels))
    chosen_perm = set(keys[perm][seeded_selection(labels[perm], counts, keys[perm].tolist(), seed=5)])
    assert chosen == chosen_perm
    other = set(keys[seeded_selection(labels, counts, keys.tolist(), seed=6)])
    assert other != chosen


def test_selection_errors():
    labels = cifar_labels(3, 10)
    with pytest.raises(ValueError, match="class 2 has 10 < 11"):
        first_n_selection(labels, [10, 10, 11])
    with pytest.raises(ValueError, match="keys"):
        select_indices(labels, [1, 1, 1], "seeded")
    with pytest.raises(ValueError, match="choose one of"):
        select_indices(labels, [1, 1, 1], "random")


def test_save_load_indices_roundtrip(tmp_path):
    path = tmp_path / "indices.json"
    save_indices(path, {"train": np.array([3, 1, 2])}, seed=0, selection="reference")
    payload = load_indices(path)
    assert payload["indices"]["train"] == [3, 1, 2]
    assert payload["seed"] == 0
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_indices(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="indices"):
        load_indices(tmp_path / "bad.json")
