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

The bound is over images, not over classes: a "1" is drawn by any model far more easily than an
"8", so a never-trained "1" passes more often than the bound says. Given class labels, each class
also gets its own bar from the bar half's images of that class (Mondrian conformal: more
calibration images of the targets' classes buy a tighter bound), and an image prompted with class
c is judged at the higher of the two bars: it passes with chance at most the overall bound and at
most its class's own (a_c + 1) / (m_c + 1). The overall bar is set only on the class-balanced
images (``marginal``), so that extra images of a few classes do not tilt it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from iarmem.attack.decide import Decision, Metric, allowed_count, tail_value


@dataclass(frozen=True)
class ClassBar:
    """One class's own bar on the standardised score, from the bar half's images of that class."""

    label: int
    barred: int  # m_c
    allowed: int  # a_c
    level: float
    union_passes: int  # of the m_c, passed by some try at the rule's (higher) bar

    @property
    def bound(self) -> float:
        return (self.allowed + 1) / (self.barred + 1)


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
    # per try, the standardisation and the metric's floors, so that a class's level maps to bars
    scale: tuple[tuple[float, ...], ...] = ()  # (mean own, std own, mean gap, std gap)
    floors: tuple[float, float, float] = (-math.inf, -math.inf, -math.inf)  # threshold, margin, other-image bar
    classes: tuple[ClassBar, ...] = ()  # empty: one bar for every class

    @property
    def bound(self) -> float:
        """The chance, at most, that a never-trained image passes some try: (a + 1) / (m + 1)."""
        return (self.allowed + 1) / (self.barred + 1)

    def class_bar(self, label: int) -> ClassBar | None:
        return next((c for c in self.classes if c.label == label), None)

    def bars(self, labels_N: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[K, N] threshold, margin and other-image bar of every try for rows prompted with ``labels_N``: the
        overall bars, raised to the row's class bar where that is higher."""
        labels_N = np.asarray(labels_N, dtype=np.int64)
        t = np.repeat(np.asarray(self.thresholds)[:, None], len(labels_N), 1)
        m = np.repeat(np.asarray(self.margins)[:, None], len(labels_N), 1)
        o = np.repeat(np.asarray(self.other_bars)[:, None], len(labels_N), 1)
        for c in self.classes:
            if c.level <= self.level:
                continue
            rows = labels_N == c.label
            tc, mc, oc = _at_level(self.scale, self.floors, c.level)
            t[:, rows], m[:, rows], o[:, rows] = tc[:, None], mc[:, None], oc[:, None]
        return t, m, o

    def decision(self, k: int) -> Decision:
        rule = (f"calibrated with the other tries on {self.calibration} never-trained images: a never-trained "
                f"image passes some try with chance <= {self.bound:.2%}")
        return Decision(self.thresholds[k], rule, self.margins[k], rule, other_threshold=self.other_bars[k])

    def describe(self) -> str:
        text = (f"the {len(self.thresholds)} tries calibrated together on {self.calibration} never-trained images "
                f"(one standardised score; half standardise, {self.barred} set the bar {self.level:.3g}, "
                f"{self.union_passes} of them extracted by some try): "
                f"a never-trained image passes some try with chance <= {self.bound:.2%} (--fpr {self.fpr:.2%})")
        if self.classes:
            worst = max(self.classes, key=lambda c: c.bound)
            text += (f"; class by class too, on {min(c.barred for c in self.classes)}-"
                     f"{max(c.barred for c in self.classes)} images a class: a never-trained image of class c "
                     f"passes with chance <= its class's bound (at most {worst.bound:.2%}, class {worst.label})")
        return text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"bound": self.bound, "rule": self.describe(),
                               "class_bounds": {str(c.label): c.bound for c in self.classes}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TryRules:
        return cls(tuple(float(x) for x in d["thresholds"]), tuple(float(x) for x in d["margins"]),
                   tuple(float(x) for x in d["other_bars"]), float(d["fpr"]), int(d["calibration"]),
                   int(d["barred"]), float(d["level"]), int(d["allowed"]), int(d["union_passes"]),
                   tuple(tuple(float(x) for x in row) for row in d.get("scale", ())),
                   tuple(float(x) for x in d.get("floors", (-math.inf,) * 3)),  # type: ignore[arg-type]
                   tuple(ClassBar(int(c["label"]), int(c["barred"]), int(c["allowed"]), float(c["level"]),
                                  int(c["union_passes"])) for c in d.get("classes", ())))


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


def _at_level(scale: tuple[tuple[float, ...], ...], floors: tuple[float, float, float],
              level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per try: the threshold, margin and other-image bar that a standardised bar ``level`` means."""
    mu_o, sd_o, mu_g, sd_g = (np.asarray(x, dtype=np.float64) for x in scale)
    eps = 1e-9  # the image at the bar must not pass by rounding
    t = np.maximum(floors[0], mu_o + level * sd_o + eps)
    return t, np.maximum(floors[1], mu_g + level * sd_g + eps), np.maximum(t, floors[2])


def _level(score: np.ndarray, fpr: float) -> tuple[int, float]:
    """The split-conformal bar of ``score`` (m images): a = floor(fpr (m + 1)) - 1 at least 0, and the value."""
    allowed = max(0, allowed_count(fpr, len(score) + 1) - 1)
    return allowed, tail_value(score, allowed)


def union_rules(metric: Metric, own_KN: np.ndarray, gap_KN: np.ndarray, fpr: float,
                labels_N: np.ndarray | None = None, marginal_N: np.ndarray | None = None) -> TryRules:
    """Thresholds and margins of K tries from their similarities on n >= 2 never-trained images ([K, n] each).

    With ``labels_N`` every class present also gets its own bar; ``marginal_N`` marks the class-balanced
    images the overall bar is set on (default: all).
    """
    own_KN, gap_KN = np.asarray(own_KN, dtype=np.float64), np.asarray(gap_KN, dtype=np.float64)
    n = own_KN.shape[1]
    if n < 2:
        raise ValueError("calibrating the tries together needs at least 2 never-trained images")
    fit, bar = slice(0, None, 2), slice(1, None, 2)  # slices, not masks: the same sums as one try alone
    marginal = np.ones(n, dtype=bool) if marginal_N is None else np.asarray(marginal_N, dtype=bool)
    if not marginal[bar].any():
        marginal = np.ones(n, dtype=bool)
    mu_o, sd_o = _standardise(own_KN[:, fit])
    mu_g, sd_g = _standardise(gap_KN[:, fit])
    z_o = (np.nan_to_num(own_KN[:, bar], nan=-math.inf) - mu_o[:, None]) / sd_o[:, None]
    z_g = (np.nan_to_num(gap_KN[:, bar], nan=-math.inf) - mu_g[:, None]) / sd_g[:, None]
    score_M = np.minimum(z_o, z_g).max(0)
    on_bar = marginal[bar]
    allowed, level = _level(score_M[on_bar], fpr)
    scale = tuple(tuple(float(v) for v in x) for x in (mu_o, sd_o, mu_g, sd_g))
    floors = (float(metric.lo), float(metric.margin), float(metric.default_threshold))
    t, m, others = _at_level(scale, floors, level)
    own_bar, gap_bar = own_KN[:, bar], gap_KN[:, bar]
    passes = int(union_passes(own_bar[:, on_bar], gap_bar[:, on_bar], t, m).sum())
    classes = []
    if labels_N is not None:
        lab_M = np.asarray(labels_N, dtype=np.int64)[bar]
        for c in np.unique(lab_M).tolist():
            rows = lab_M == c
            a_c, level_c = _level(score_M[rows], fpr)
            tc, mc, _ = _at_level(scale, floors, max(level, level_c))
            classes.append(ClassBar(int(c), int(rows.sum()), a_c, float(level_c),
                                    int(union_passes(own_bar[:, rows], gap_bar[:, rows], tc, mc).sum())))
    return TryRules(tuple(float(x) for x in t), tuple(float(x) for x in m), tuple(float(x) for x in others), fpr,
                    n, int(on_bar.sum()), float(level), allowed, passes, scale, floors, tuple(classes))
