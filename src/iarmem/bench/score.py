"""Scoring a localizer against injected units: recall in its top k %, and what chance gives.

Two readings of a UnitMem localization, both over the fc1 units of every block:

- ``per_image``: the units whose peak-UnitMem bin is owned by the image (its argmax image), ranked
  by UnitMem. A unit no image owns alone, or another image owns, is not named for this image, so a
  localizer that names fewer than k % units for it can only recall what it named. A per-image
  method (zscore, gradient, mask) ranks every unit by the image's own score instead.
- ``global``: the paper's ranking, every unit by UnitMem, regardless of owner.

Recall at k: the share of the injected units among the first ``round(k % x units)`` of a ranking.
A random ranking recalls k % in expectation (the baseline printed beside every figure).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from iarmem.localize.summary import percent_count
from iarmem.mitigate.forget import READINGS, image_ranking
from iarmem.mitigate.localization import Localization


def recall_at(order: np.ndarray, truth_flat: np.ndarray, k_percent: float, total: int) -> float:
    """Share of ``truth_flat`` among the first k % (of ``total`` units) of ``order``."""
    top = order[:percent_count(total, k_percent)]
    return float(np.isin(truth_flat, top).mean()) if len(truth_flat) else float("nan")


def score_injection(loc: Localization, image_id: int, units: dict[str, tuple[int, ...]],
                    ks: tuple[float, ...]) -> dict[str, float | int]:
    """Recall of the injected ``units`` at every k %, for both readings, with the random expectation."""
    out: dict[str, float | int] = {}
    for reading in READINGS:
        scores, order = image_ranking(loc, image_id, reading)
        truth = scores.to_flat(units)
        total = len(scores.flat)
        out[f"{reading}_named"] = int(len(order))
        for k in ks:
            out[f"{reading}_recall_at_{k:g}"] = recall_at(order, truth, k, total)
    for k in ks:
        out[f"random_recall_at_{k:g}"] = k / 100.0
    return out


def bootstrap_interval(values: Sequence[float], seed: int, draws: int = 2000) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean (over images)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    means = v[np.random.default_rng(seed).integers(0, len(v), (draws, len(v)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
