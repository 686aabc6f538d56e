"""The paper's setting inside the bench (PAPER): UnitMem's global top p % of fc1 units scaled by 0.5.

Kasliwal et al. scale the fc1 weight rows of the top p % units by 0.5 (the ``paper`` edit) and
compare against as many random units and the lowest-UnitMem units. Here each point runs the whole
extraction attack and the quality evaluation of ``iarmem sweep`` (``measure_point``), with several
random draws, so the paper's row can be read beside INJ and DEL with intervals: a Wilson interval
on the planted images extracted for the top and lowest units, a bootstrap interval over draws for
the random ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from iarmem.bench.score import bootstrap_interval
from iarmem.fileio import write_json
from iarmem.mitigate.edit import temporary_edit
from iarmem.mitigate.select import select_units
from iarmem.mitigate.sweep import SweepContext, measure_point
from iarmem.progress import log

TOPS = (1.0, 10.0)  # the paper's RAR-XXL low end and its VAR-d30 setting
FACTOR = 0.5
FILE = "paper.json"


def points(tops: tuple[float, ...], draws: int) -> list[dict[str, Any]]:
    """Unedited first, then per p: the top units, the lowest ones and ``draws`` random draws."""
    pts: list[dict[str, Any]] = [{"name": "unedited", "p": 0.0, "control": "none", "draw": 0}]
    for p in tops:
        pts += [{"name": f"top{p:g}%", "p": p, "control": "none", "draw": 0},
                {"name": f"lowest{p:g}%", "p": p, "control": "lowest", "draw": 0}]
        pts += [{"name": f"random{p:g}%-{c}", "p": p, "control": "random", "draw": c} for c in range(draws)]
    return pts


def run_paper(ctx: SweepContext, tops: tuple[float, ...], draws: int, out: Path, seed: int) -> list[dict[str, Any]]:
    """Every point (those already in ``out``/paper.json are kept: a killed run resumes)."""
    path = out / FILE
    done = {r["name"]: r for r in json.loads(path.read_text())} if path.is_file() else {}
    assert ctx.loc is not None
    ctx.prepare()
    rows = []
    pts = points(tops, draws)
    for i, pt in enumerate(pts, 1):
        if pt["name"] in done:
            rows.append(done[pt["name"]])
            continue
        if pt["p"] == 0:
            row = {**pt, "units": 0, **measure_point(ctx, ctx.attack)}
        else:
            sel = select_units(ctx.loc, pt["p"], "global", None, None, pt["control"], seed + pt["draw"])
            with temporary_edit(ctx.iar, sel.units, "paper", FACTOR):
                row = {**pt, "units": sel.count, **measure_point(ctx, ctx.attack)}
        rows.append(row)
        write_json(path, rows)
        log(f"bench paper {i}/{len(pts)} {pt['name']}: planted extracted {row['planted_extracted']}/"
            f"{row['planted_generated']}, FID {row['fid']:.2f}")
    return rows


def _wilson(k: int, n: int) -> list[float]:
    from scipy.stats import binomtest  # on first use: importing scipy.stats takes ~1.5 s

    ci = binomtest(k, n).proportion_ci(method="wilson")
    return [float(ci.low), float(ci.high)]


def summarize_paper(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Per (p, who): planted extraction rate with its interval, FID and class accuracy."""
    out = []
    for (p, who), rs in _groups(rows).items():
        n = rs[0]["planted_generated"] or 0
        rates = [r["planted_extracted"] / n for r in rs] if n else []
        row: dict[str, Any] = {"p": p, "who": who, "draws": len(rs), "units": rs[0]["units"],
                               "planted_rate": float(np.mean(rates)) if rates else None,
                               "fid": float(np.mean([r["fid"] for r in rs])),
                               "class_accuracy": _mean([r["class_accuracy"] for r in rs])}
        if rates:
            row["planted_ci95"] = (list(bootstrap_interval(rates, seed)) if len(rs) > 1
                                   else _wilson(rs[0]["planted_extracted"], n))
        if len(rs) > 1:
            row["fid_ci95"] = list(bootstrap_interval([r["fid"] for r in rs], seed))
        out.append(row)
    return out


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[float, str], list[dict[str, Any]]]:
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for r in rows:
        who = "unedited" if r["p"] == 0 else {"none": "top", "lowest": "lowest", "random": "random"}[r["control"]]
        groups.setdefault((r["p"], who), []).append(r)
    return groups


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def paper_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per (p, who)."""
    lines = ["| p % | units | who | planted extracted (95 % CI) | FID | class accuracy |", "|---|---|---|---|---|---|"]
    for r in rows:
        rate = "-" if r["planted_rate"] is None else (
            f"{r['planted_rate']:.2f} ({r['planted_ci95'][0]:.2f}-{r['planted_ci95'][1]:.2f})")
        who = r["who"] + (f" ({r['draws']} draws)" if r["draws"] > 1 else "")
        acc = "-" if r["class_accuracy"] is None else f"{r['class_accuracy']:.3f}"
        lines.append(f"| {r['p']:g} | {r['units']} | {who} | {rate} | {r['fid']:.2f} | {acc} |")
    return "\n".join(lines) + "\n"
