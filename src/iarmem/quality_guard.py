"""The FID a decision reads, and its change: the mean over paired sampling seeds.

One FID draw on the tiny models (200 generations) moves about 10 % with the sampling seed alone
(docs/RESULTS.md section 10), as much as the repair's 10 % guard. Every measurement of a repair
draws the same seeds (``fid_draws``), so an edit and the unedited model are compared seed for seed
and the guard reads the mean. Plain numbers, no torch: the report reads the same figures.
"""

from __future__ import annotations

from typing import Any


def mean_of(q: dict[str, Any], key: str) -> float | None:
    """The mean of ``key`` over the sampling seeds drawn (``KEY_draws``), else the one draw (None if absent)."""
    draws = q.get(f"{key}_draws")
    if draws:
        return sum(draws) / len(draws)
    return None if q.get(key) is None else float(q[key])


def mean_fid(q: dict[str, Any]) -> float:
    """The mean FID over the sampling seeds drawn (``fid_draws``), else the one draw (``fid``)."""
    m = mean_of(q, "fid")
    if m is None:
        raise KeyError("a quality record without fid")
    return m


def paired(q: dict[str, Any], q0: dict[str, Any], key: str) -> tuple[list[float], list[float]]:
    """The draws of ``key`` both records hold, seed for seed: every measurement draws the seeds in the same order,
    and a verdict near a bar draws more (``settle`` in the repair), so the shorter list's seeds are the common
    ones. Empty lists when either record has no draws (or a draw without the value: no classifier)."""
    a, b = q.get(f"{key}_draws") or [], q0.get(f"{key}_draws") or []
    n = min(len(a), len(b))
    if any(v is None for v in a[:n] + b[:n]):
        return [], []
    return [float(x) for x in a[:n]], [float(y) for y in b[:n]]


def mean_se(d: list[float]) -> tuple[float, float]:
    """Mean of at least two paired changes ``d`` and its standard error."""
    m = sum(d) / len(d)
    return m, (sum((x - m) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5


def relative_fid(q: dict[str, Any], q0: dict[str, Any]) -> float:
    """Relative FID increase of ``q`` over ``q0``: the means over the seeds both drew, else one draw each (a
    measurement journalled before the draws, or ``--quality-draws 1``)."""
    a, b = paired(q, q0, "fid")
    if not a:
        a, b = [float(q["fid"])], [float(q0["fid"])]
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    return (ma - mb) / mb if mb else float("inf")


def paired_change(q: dict[str, Any], q0: dict[str, Any], key: str) -> tuple[float, float | None] | None:
    """Mean change of ``key`` from ``q0`` to ``q`` over the paired draws and its standard error (None with one
    draw each). Class accuracy over 200 generations moves about 3 points with the seed alone (binomial, at
    0.4-0.8), so a 2-point bar needs the error beside the change."""
    a, b = paired(q, q0, key)
    if len(a) >= 2:
        return mean_se([x - y for x, y in zip(a, b)])
    if q.get(key) is None or q0.get(key) is None:
        return None
    return float(q[key]) - float(q0[key]), None


def relative_fid_se(q: dict[str, Any], q0: dict[str, Any]) -> float | None:
    """Standard error of ``relative_fid`` over the paired draws (None under two): the per-seed changes scaled by
    the unedited mean, whose mean is the relative change itself."""
    a, b = paired(q, q0, "fid")
    mb = sum(b) / len(b) if b else 0.0
    if len(a) < 2 or not mb:
        return None
    return mean_se([(x - y) / mb for x, y in zip(a, b)])[1]


def unsettled(q: dict[str, Any], q0: dict[str, Any], max_fid_increase: float, max_accuracy_drop: float | None,
              z: float = 2.0, floor: dict[str, float] | None = None) -> bool:
    """Whether the guard's verdict on ``q`` could flip with the sampling seeds: no bar is crossed by more than
    ``z`` standard errors, and some bar is within ``z`` of the change. More paired draws then settle it; a
    change clearly over one bar, or clearly within all, is settled already. ``floor`` (``noise_floor``): the
    spread of one paired change per key; a standard error is taken as at least floor / sqrt(draws), since the
    error of three draws is itself a guess (tiny-rar s2 inj. 0: three seeds read -6.0 +- 1.2 points, nine -2.3)."""
    over, near = False, False
    floor = floor or {}
    n = len(paired(q, q0, "fid")[0])

    def floored(se: float | None, key: str) -> float | None:
        f = floor.get(key)
        return se if se is None or f is None or n < 2 else max(se, f / n ** 0.5)

    checks: list[tuple[float, float | None, float]] = [(relative_fid(q, q0), floored(relative_fid_se(q, q0), "fid"),
                                                        max_fid_increase)]
    acc = paired_change(q, q0, "class_accuracy")
    if max_accuracy_drop is not None and acc is not None:
        se = floored(acc[1], "class_accuracy")
        checks.append((-100 * acc[0], None if se is None else 100 * se, max_accuracy_drop))
    for value, se, bar in checks:
        if se is None:
            over |= value > bar
            continue
        over |= value - z * se > bar
        near |= abs(value - bar) <= z * se
    return near and not over


def noise_floor(q0: dict[str, Any]) -> dict[str, float]:
    """The spread of one paired change, from the unedited model's own draws: sqrt(2) x their std (relative for
    FID), as for two independent draws; the pairing narrows it little on the tiny models (docs/RESULTS.md section
    10, thirteenth session: per-draw std of the change 1.5-1.8 x the unedited std)."""
    out: dict[str, float] = {}
    for key in ("fid", "class_accuracy"):
        d = [float(v) for v in q0.get(f"{key}_draws") or [] if v is not None]
        if len(d) < 2:
            continue
        m = sum(d) / len(d)
        sd = (sum((x - m) ** 2 for x in d) / (len(d) - 1)) ** 0.5
        out[key] = 2 ** 0.5 * (sd / m if key == "fid" and m else sd)
    return out


def refusal(q: dict[str, Any], q0: dict[str, Any], max_fid_increase: float,
            max_accuracy_drop: float | None) -> str | None:
    """Why the guard refuses ``q`` against the unedited ``q0`` (None: within it). FID may rise by
    ``max_fid_increase`` (relative); class accuracy may fall by ``max_accuracy_drop`` points (None: not guarded),
    both read as means over the paired draws. A record without class accuracy (no classifier) is judged on FID."""
    reasons = []
    rel = relative_fid(q, q0)
    if rel > max_fid_increase:
        reasons.append(f"{100 * rel:.1f} % FID, over --max-quality-loss {100 * max_fid_increase:g} %")
    acc = paired_change(q, q0, "class_accuracy")
    if max_accuracy_drop is not None and acc is not None and -100 * acc[0] > max_accuracy_drop:
        se = "" if acc[1] is None else f" +- {100 * acc[1]:.1f}"
        reasons.append(f"{100 * acc[0]:+.1f}{se} points of class accuracy, over --max-accuracy-drop "
                       f"{max_accuracy_drop:g}")
    return " and ".join(reasons) or None
