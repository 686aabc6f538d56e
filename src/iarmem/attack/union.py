"""The strong attack's tries calibrated together, so that its stated false-positive rate holds for the union.

The strong attack calls an image extracted when *any* of its 38-62 tries does. Calibrating each try
alone at rate ``fpr`` lets a never-trained image through with up to tries x fpr chance: on 50
never-trained images per tiny model, tries calibrated one by one on the 20 held-out images called
6-16 % of them extracted (docs/RESULTS.md, section 10). Putting every try at its calibration maximum
does not cure it: a new image tops one of K independent tries with chance about K / (n + 1).

So the tries share one statistic. Each try's own similarity and margin (own minus the nearest other
image's) are standardised by their mean and std over half of the n never-trained calibration images
(every other one); an image's score is the largest, over tries, of the smaller of its two
standardised values (a try extracts when both are high). The bar is the (a + 1)-th largest score of
the other half's m images, a = floor(fpr x (m + 1)) - 1: the split-conformal choice. A never-trained
image exchangeable with the calibration images then scores above it with chance at most
(a + 1) / (m + 1) <= fpr over calibration draws, however many tries there are (with m + 1 < 1 / fpr:
the largest score, and the bound 1 / (m + 1) is stated). Standardising on the same images that set
the bar would break that: on 40 simulated independent tries and 200 images it let 1.6 % through at
a stated 1 %. In each try the bar is a threshold and a margin (the margin never below the metric's
floor). The rules can be stored and reused: the repair calibrates once, on the unedited model, and
judges every edited state by the same bars.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from iarmem.attack.decide import Decision, Metric, allowed_count, tail_value


@dataclass(frozen=True)
class TryRules:
    """Per try (in the strong attack's order): threshold, margin and the bar for a copy of another image."""

    thresholds: tuple[float, ...]
    margins: tuple[float, ...]
    other_bars: tuple[float, ...]
    fpr: float
    calibration: int  # never-trained images the rules were calibrated on
    barred: int  # m: those of them that set the bar (the others standardise)
    level: float  # the bar on the standardised score
    allowed: int  # a: of the m, scored above the bar
    union_passes: int  # of the m, passed by some try (in sample; <= allowed)

    @property
    def bound(self) -> float:
        """The chance, at most, that a never-trained image passes some try: (a + 1) / (m + 1)."""
        return (self.allowed + 1) / (self.barred + 1)

    def decision(self, k: int) -> Decision:
        rule = (f"calibrated with the other tries on {self.calibration} never-trained images: a never-trained "
                f"image passes some try with chance <= {self.bound:.2%}")
        return Decision(self.thresholds[k], rule, self.margins[k], rule, other_threshold=self.other_bars[k])

    def describe(self) -> str:
        return (f"the {len(self.thresholds)} tries calibrated together on {self.calibration} never-trained images "
                f"(one standardised score; half standardise, {self.barred} set the bar {self.level:.3g}, "
                f"{self.union_passes} of them extracted by some try): "
                f"a never-trained image passes some try with chance <= {self.bound:.2%} (--fpr {self.fpr:.2%})")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"bound": self.bound, "rule": self.describe()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TryRules:
        return cls(tuple(float(x) for x in d["thresholds"]), tuple(float(x) for x in d["margins"]),
                   tuple(float(x) for x in d["other_bars"]), float(d["fpr"]), int(d["calibration"]),
                   int(d["barred"]), float(d["level"]), int(d["allowed"]), int(d["union_passes"]))


def union_passes(own_KN: np.ndarray, gap_KN: np.ndarray, thresholds: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """Per image: does some try k have own > threshold_k and own minus nearest other > margin_k (NaN never)."""
    own = np.nan_to_num(own_KN, nan=-math.inf)
    gap = np.nan_to_num(gap_KN, nan=-math.inf)
    return ((own > thresholds[:, None]) & (gap > margins[:, None])).any(0)


def _standardise(x_KN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per try: mean and std over the images (infinite values left out; std floored, so a constant try still
    orders)."""
    finite = np.where(np.isfinite(x_KN), x_KN, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a try with no finite value: mean 0, std floor
        mu, sd = np.nanmean(finite, 1), np.nanstd(finite, 1)
    return np.nan_to_num(mu, nan=0.0), np.maximum(np.nan_to_num(sd, nan=0.0), 1e-6)


def union_rules(metric: Metric, own_KN: np.ndarray, gap_KN: np.ndarray, fpr: float) -> TryRules:
    """Thresholds and margins of K tries from their similarities on n >= 2 never-trained images ([K, n] each)."""
    own_KN, gap_KN = np.asarray(own_KN, dtype=np.float64), np.asarray(gap_KN, dtype=np.float64)
    if own_KN.shape[1] < 2:
        raise ValueError("calibrating the tries together needs at least 2 never-trained images")
    fit, bar = slice(0, None, 2), slice(1, None, 2)
    mu_o, sd_o = _standardise(own_KN[:, fit])
    mu_g, sd_g = _standardise(gap_KN[:, fit])
    z_o = (np.nan_to_num(own_KN[:, bar], nan=-math.inf) - mu_o[:, None]) / sd_o[:, None]
    z_g = (np.nan_to_num(gap_KN[:, bar], nan=-math.inf) - mu_g[:, None]) / sd_g[:, None]
    score_M = np.minimum(z_o, z_g).max(0)
    m_bar = score_M.shape[0]
    allowed = max(0, allowed_count(fpr, m_bar + 1) - 1)
    level = tail_value(score_M, allowed)
    eps = 1e-9  # the image at the bar must not pass by rounding
    t = np.maximum(metric.lo, mu_o + level * sd_o + eps)
    m = np.maximum(metric.margin, mu_g + level * sd_g + eps)
    passes = int(union_passes(own_KN[:, bar], gap_KN[:, bar], t, m).sum())
    others = tuple(float(max(x, metric.default_threshold)) for x in t)
    return TryRules(tuple(float(x) for x in t), tuple(float(x) for x in m), others, fpr, own_KN.shape[1], m_bar,
                    float(level), allowed, passes)
