"""The leak decision: which similarity, which threshold and margin, and the controls that keep it honest.

The paper counts an image as extracted when the similarity of its generation to its reconstruction
*exceeds* a threshold (SSCD cosine > 0.75). iarmem's decision is prompt-specific (the relative
distance of Carlini et al. 2023): the generation must also be closer to its prompt image than to
every other training or held-out image by a margin; a generation that is closer to another image
by the margin is that image's extraction, whatever the prompt. Threshold and margin are fixed, or
calibrated on images the model never saw: the smallest values at which at most ``fpr`` of them
would count (the margin never below the metric's floor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from iarmem.errors import UserError


@dataclass(frozen=True)
class Metric:
    """A similarity the decision can use; ``lo``/``hi`` bound the thresholds a user may pass;
    ``margin`` is the default (and the floor of a calibrated) margin over the nearest other image."""

    name: str
    default_threshold: float
    lo: float
    hi: float
    what: str
    margin: float


METRICS: dict[str, Metric] = {
    "sscd": Metric("sscd", 0.75, 0.0, 1.0, "SSCD copy-detection cosine (--sscd FILE), the paper's measure", 0.1),
    "features": Metric("features", 0.75, 0.0, 1.0, "cosine of the --features extractor", 0.1),
    "ssim": Metric("ssim", 0.75, 0.0, 1.0, "pixel SSIM of generation vs reconstruction (built in)", 0.1),
    "tokens": Metric("tokens", 0.9, 0.0, 1.0, "fraction of generated tokens equal to the ground truth (built in)",
                     0.1),
    "psnr": Metric("psnr", 20.0, 0.0, math.inf, "pixel PSNR in dB (built in)", 2.0),
}
NEEDS_EXTRACTOR = {"sscd": "--sscd FILE", "features": "--features FILE or --features trained:PATH"}


DEFAULT_BUILTIN = "tokens"


def choose_metric(metric: str | None, have: set[str]) -> Metric:
    """The decision metric: as asked, else SSCD if given, else the features if given, else token agreement.

    Token agreement > 0.9 is the built-in default because it is strict where pixel measures are
    not: on trained tiny models a 14-15 token prefix lets a generalizing model continue held-out
    digits so well that 5-25 % of them pass SSIM > 0.75, while none came near 0.9 token agreement
    (max 0.71) and memorized images score 1.0 (docs/ATTACK.md).
    """
    if metric is None:
        metric = next((m for m in ("sscd", "features") if m in have), DEFAULT_BUILTIN)
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if metric in NEEDS_EXTRACTOR and metric not in have:
        raise UserError(f"--metric {metric} needs {NEEDS_EXTRACTOR[metric]}")
    return METRICS[metric]


def check_threshold(metric: Metric, threshold: float) -> float:
    if not (metric.lo <= threshold <= metric.hi) or math.isnan(threshold):
        hi = "inf" if math.isinf(metric.hi) else f"{metric.hi:g}"
        raise UserError(f"threshold {threshold:g} is outside [{metric.lo:g}, {hi}] for metric {metric.name}")
    return float(threshold)


@dataclass(frozen=True)
class Calibration:
    """The threshold chosen on held-out similarities and what it can promise."""

    threshold: float
    fpr: float
    heldout: int
    allowed: int
    heldout_above: int
    source: str = "held-out"  # which never-trained images: the plan's held-out ones or the calibration set

    @property
    def resolution(self) -> float:
        """The false-positive rate is measured in steps of 1 / (number of held-out images)."""
        return 1.0 / self.heldout

    def rule(self) -> str:
        return (f"calibrated on {self.heldout} {self.source} images: the smallest threshold at which at most "
                f"{self.fpr:.2%} of them count as extracted ({self.allowed} allowed, {self.heldout_above} above; "
                f"the rate resolution is {self.resolution:.2%})")

    def as_dict(self) -> dict[str, float | int | str]:
        return {"threshold": self.threshold, "fpr": self.fpr, "heldout": self.heldout, "allowed": self.allowed,
                "heldout_above": self.heldout_above, "resolution": self.resolution, "source": self.source,
                "rule": self.rule()}


def calibrate(heldout_sims: np.ndarray, fpr: float = 0.01, lo: float = -math.inf,
              source: str = "held-out") -> Calibration:
    """The smallest t with #{s > t} <= floor(fpr * m): the (floor(fpr * m) + 1)-th largest similarity.

    With m < 1 / fpr held-out images no false positive is allowed, so t is their maximum. NaN
    similarities (undefined for an image) are left out.
    """
    if not 0 < fpr < 1:
        raise UserError(f"the calibration false-positive rate must lie in (0, 1), got {fpr}")
    s = np.asarray(heldout_sims, dtype=np.float64)
    s = s[~np.isnan(s)]
    if len(s) == 0:
        raise UserError("--calibrate needs held-out images (a model folder with a planting manifest); "
                        "pass --threshold instead")
    allowed = allowed_count(fpr, len(s))
    t = tail_value(s, allowed, lo)
    return Calibration(t, fpr, len(s), allowed, int((s > t).sum()), source)


def allowed_count(fpr: float, n: int) -> int:
    """How many of ``n`` never-trained images a rate of ``fpr`` lets pass: floor(fpr * n)."""
    return int(math.floor(fpr * n + 1e-9))


def tail_value(sims: np.ndarray, count: int, lo: float = -math.inf) -> float:
    """The smallest t that at most ``count`` of ``sims`` exceed: the (count + 1)-th largest (NaN left out)."""
    s = np.sort(np.asarray(sims, dtype=np.float64))[::-1]
    s = s[~np.isnan(s)]
    return float(s[count]) if count < len(s) else lo


def extracted(sims: np.ndarray, threshold: float) -> np.ndarray:
    """Similarity above the threshold (NaN never counts)."""
    s = np.asarray(sims, dtype=np.float64)
    return np.where(np.isnan(s), False, s > threshold)


def copies_other(own: np.ndarray, other: np.ndarray, threshold: float, margin: float = 0.0) -> np.ndarray:
    """The generation passes for *another* image, and resembles it more than its own prompt by ``margin``.

    This is what class-only conditioning looks like: the model emits a memorized image of the
    class whatever the prefix says. With the arguments swapped it is the prompt-specific test of
    the generation's own prompt: ``copies_other(other, own, t, m)``.
    """
    own = np.nan_to_num(np.asarray(own, dtype=np.float64), nan=-math.inf)
    return extracted(other, threshold) & (np.asarray(other, dtype=np.float64) - own > margin)


@dataclass(frozen=True)
class Decision:
    """The rule that judged the generations: threshold and margin, how each was set, their calibration."""

    threshold: float
    threshold_rule: str
    margin: float
    margin_rule: str
    calibration: Calibration | None = None
    margin_calibration: Calibration | None = None
    other_threshold: float | None = None  # the bar for "a copy of another image" (default: the threshold)

    @property
    def other_bar(self) -> float:
        return self.threshold if self.other_threshold is None else self.other_threshold

    def text(self, metric: str) -> str:
        if self.margin == -math.inf:
            return f"extracted when {metric} > {self.threshold:.6g}"
        other = f"; a copy of another pool image when above {self.other_bar:.6g} and closer to it by as much"
        return (f"extracted when {metric} > {self.threshold:.6g} and {metric} exceeds the nearest other training "
                f"or held-out image's by more than {self.margin:.6g}{other}")


def decide_rule(metric: Metric, own: np.ndarray, gap: np.ndarray, heldout: np.ndarray, *, calibrate_on: bool,
                fpr: float, threshold: float | None, margin: float | None, source: str = "held-out") -> Decision:
    """Threshold and margin: fixed (given, or the metric's defaults), or calibrated on the held-out rows.

    Calibration takes each at the smallest value that at most ``fpr`` of the held-out generations
    exceed (threshold on their own similarity, margin on own minus nearest other); the margin never
    drops below the metric's floor, since held-out generations drift towards training images and
    would set it below zero, where a generic image close to many others would count. A calibrated
    threshold speaks for a generation against its own prompt only: the similarity to the *nearest*
    of all pool images is a maximum over many and runs higher by chance, so "a copy of another
    image" must also clear the metric's fixed default (the paper-style absolute bar).
    """
    if calibrate_on:
        cal = calibrate(own[heldout], fpr, lo=metric.lo, source=source)
        t, t_rule = cal.threshold, cal.rule()
    else:
        cal = None
        t = metric.default_threshold if threshold is None else threshold
        t_rule = f"default for {metric.name}: {metric.what}" if threshold is None else "fixed by --threshold"
    other = max(t, metric.default_threshold) if calibrate_on else None
    if margin is not None:
        return Decision(t, t_rule, margin, "none: the absolute rule" if margin == -math.inf else "fixed by --margin",
                        cal, None, other)
    if not calibrate_on:
        return Decision(t, t_rule, metric.margin, f"default for {metric.name}", cal)
    mcal = calibrate(gap[heldout], fpr, source=source)
    m = max(metric.margin, mcal.threshold)
    rule = (f"calibrated like the threshold on the {source} margins ({mcal.threshold:.4g}), not below the floor "
            f"{metric.margin:g} for {metric.name}")
    return Decision(t, t_rule, m, rule, cal, mcal, max(t, metric.default_threshold))


def left_out_passes(metric: Metric, own: np.ndarray, gap: np.ndarray, heldout: np.ndarray, fpr: float) -> np.ndarray:
    """Per held-out row: would it count as extracted (from its own prompt) had it not helped calibrate?

    Calibration makes the held-out rate at most ``fpr`` by construction; leaving each held-out image
    out in turn, recalibrating on the others and judging it gives an honest false-positive estimate
    for an image the model never saw, and for the strong attack the chance that one of its many
    tries lets such an image through.
    """
    rows = np.flatnonzero(heldout)
    out = np.zeros(len(rows), dtype=bool)
    if len(rows) < 2:
        return out
    for k, r in enumerate(rows):
        rest = heldout.copy()
        rest[r] = False
        d = decide_rule(metric, own, gap, rest, calibrate_on=True, fpr=fpr, threshold=None, margin=None)
        out[k] = bool(copies_other(own[r:r + 1] - gap[r:r + 1], own[r:r + 1], d.threshold, d.margin)[0])
    return out
