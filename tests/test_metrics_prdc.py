"""Precision / recall (k-NN manifolds): 1 for identical sets, lower for shifted or collapsed sets."""

from __future__ import annotations

import numpy as np
import pytest

from iarmem.metrics import prdc


def _cloud(n: int = 400, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def test_identical_sets_score_one() -> None:
    x = _cloud()
    r = prdc(x, x, k=3)
    assert r.precision == 1.0 and r.recall == 1.0 and r.coverage == 1.0
    assert r.density >= 1.0  # every point sits in its own ball and in the balls of its neighbours


def test_duplicates_are_inside_their_zero_radius_balls() -> None:
    x = np.repeat(_cloud(50, 4), 5, axis=0)  # every point 5 times: the 3-NN radius is 0
    r = prdc(x, x, k=3)
    assert r.precision == 1.0 and r.recall == 1.0


def test_shift_lowers_precision_and_recall() -> None:
    x = _cloud()
    scores = [prdc(x, _cloud(seed=1) + shift, k=3) for shift in (0.0, 1.0, 3.0)]
    precisions = [s.precision for s in scores]
    recalls = [s.recall for s in scores]
    assert precisions[0] > 0.6 and recalls[0] > 0.6  # same distribution, other draw
    assert precisions[0] > precisions[1] > precisions[2] and recalls[0] > recalls[1] > recalls[2]
    assert precisions[2] < 0.2 and recalls[2] < 0.2


def test_collapse_keeps_precision_but_loses_recall() -> None:
    x = _cloud()
    collapsed = x[:20] + 1e-3 * _cloud(20, seed=2)  # a few realistic samples, no variety
    r = prdc(x, np.repeat(collapsed, 20, axis=0), k=3)
    assert r.precision > 0.9 and r.recall < 0.3


def test_needs_more_points_than_k() -> None:
    with pytest.raises(ValueError, match="more than k"):
        prdc(_cloud(3), _cloud(10), k=3)
    with pytest.raises(ValueError, match="dimensions"):
        prdc(_cloud(10, 4), _cloud(10, 5))
