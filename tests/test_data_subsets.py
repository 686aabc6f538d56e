"""Seeded class-balanced subsets and hold-out splits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iarmem.data import balanced_sample, balanced_subset, matched_sample, split_holdout
from iarmem.errors import UserError

LABELS = np.repeat(np.arange(10), 500)

label_arrays = st.lists(st.integers(0, 5), min_size=1, max_size=120).map(lambda xs: np.array(xs, dtype=np.int64))


def test_fraction_and_per_class_are_balanced_and_seeded() -> None:
    a = balanced_subset(LABELS, fraction=0.01, seed=0)
    assert np.bincount(LABELS[a]).tolist() == [5] * 10
    assert np.array_equal(a, balanced_subset(LABELS, fraction=0.01, seed=0))
    assert not np.array_equal(a, balanced_subset(LABELS, fraction=0.01, seed=1))
    b = balanced_subset(LABELS, per_class=3, seed=0)
    assert np.bincount(LABELS[b]).tolist() == [3] * 10
    assert set(b) <= set(balanced_subset(LABELS, per_class=7, seed=0))  # more per class: a superset
    tiny = balanced_subset(LABELS, fraction=0.0001, seed=0)
    assert np.bincount(LABELS[tiny]).tolist() == [1] * 10  # at least one per class


def test_pool_restricts_the_choice() -> None:
    pool = np.arange(0, 5000, 2)
    s = balanced_subset(LABELS, per_class=4, seed=2, pool=pool)
    assert set(s) <= set(pool) and np.bincount(LABELS[s]).tolist() == [4] * 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fraction": -0.1},
        {"fraction": 1.5},
        {"fraction": 0.0},
        {"per_class": 0},
        {"fraction": 0.1, "per_class": 2},
        {},
    ],
)
def test_bad_subset_arguments(kwargs: dict) -> None:
    with pytest.raises(UserError):
        balanced_subset(LABELS, seed=0, **kwargs)


def test_balanced_and_matched_samples() -> None:
    labels = np.array([0] * 3 + [1] * 10 + [2] * 10)
    s = balanced_sample(labels, 12, seed=0)
    assert np.bincount(labels[s]).tolist() == [3, 5, 4] or np.bincount(labels[s]).tolist() == [3, 4, 5]
    like = np.array([0, 3, 13, 14])
    m = matched_sample(labels, like, seed=0, pool=np.setdiff1d(np.arange(23), like))
    assert sorted(labels[m].tolist()) == [0, 1, 2, 2]
    like = np.array([0, 1, 2, 13])  # all of class 0: the shortfall spreads over the other classes
    m = matched_sample(labels, like, seed=0, pool=np.setdiff1d(np.arange(23), like))
    assert len(m) == 4 and sorted(labels[m].tolist())[-1] == 2 and 0 not in labels[m]
    with pytest.raises(UserError):
        balanced_sample(labels, 24, seed=0)


@settings(max_examples=60, deadline=None)
@given(labels=label_arrays, fraction=st.floats(0.001, 1.0), seed=st.integers(0, 2**32))
def test_subset_sizes_property(labels: np.ndarray, fraction: float, seed: int) -> None:
    s = balanced_subset(labels, fraction=fraction, seed=seed)
    assert len(np.unique(s)) == len(s) and np.all(np.diff(s) > 0)
    counts = np.bincount(labels, minlength=6)
    got = np.bincount(labels[s], minlength=6)
    for c in range(6):
        want = 0 if counts[c] == 0 else max(1, int(np.floor(fraction * counts[c] + 0.5)))
        assert got[c] == want
    assert np.array_equal(s, balanced_subset(labels, fraction=fraction, seed=seed))


@settings(max_examples=60, deadline=None)
@given(labels=label_arrays, data=st.data(), seed=st.integers(0, 1000))
def test_split_holdout_property(labels: np.ndarray, data: st.DataObject, seed: int) -> None:
    k = data.draw(st.integers(0, len(labels)))
    rest, held = split_holdout(labels, k, seed=seed)
    assert len(held) == k
    assert len(np.intersect1d(rest, held)) == 0
    assert np.array_equal(np.union1d(rest, held), np.arange(len(labels)))
    counts = np.bincount(labels[held], minlength=6)
    caps = np.bincount(labels, minlength=6)
    # balanced where possible: a class below the maximum count is exhausted
    top = counts.max(initial=0)
    assert all(counts[c] >= top - 1 or counts[c] == caps[c] for c in range(6) if caps[c])
