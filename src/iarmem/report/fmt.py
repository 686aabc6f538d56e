"""Formatting shared by the report's sections: numbers, rates, run and variant labels, skip notes."""

from __future__ import annotations

from typing import Any

from iarmem.report.discover import UNEDITED, Run
from iarmem.report.html import badge, code, esc, note
from iarmem.report.sentences import pct

DASH = "&ndash;"
GROUPS = ("planted", "ordinary", "heldout")


def num(x: Any, digits: int = 4) -> str:
    """A number for a table cell: ints with thousands separators, floats to ``digits`` significant digits."""
    if x is None or x == "":
        return DASH
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return esc(x)


def rate(x: Any) -> str:
    """A rate in [0, 1] as a percentage; a dash when the run has none."""
    return pct(float(x)) if isinstance(x, (int, float)) and not isinstance(x, bool) else DASH


def run_label(run: Run) -> str:
    """The run's folder name, flagged when the run did not finish."""
    flag = "" if run.finished else " " + badge(run.status if run.status != "running" else "unfinished")
    return code(run.name) + flag


def variant_label(run: Run) -> str:
    return esc((run.variant or UNEDITED).label)


def missing(stage: str, how: str) -> str:
    return note(f"No <b>{esc(stage)}</b> run among the folders; skipped. ({esc(how)})")


def as_dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}
