"""The sweep: leak and quality over a grid of edits, their controls and the logit-noise defense.

Every grid point runs the whole extraction attack (scoring, selection, generation, decision) and
the quality evaluation on the model as edited for that point, with the same seeds, so points
differ only by the edit. Edits are applied in place and undone bit for bit (``temporary_edit``);
the reference features for FID are computed once. Finished points are saved after each one, so
``--resume`` continues a killed sweep where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iarmem.attack import AttackSettings, run_attack
from iarmem.attack.neighbours import TokenCache
from iarmem.attack.settings import load_extractors
from iarmem.data import ImageDataset, Plan
from iarmem.errors import UserError
from iarmem.features import FeatureExtractor
from iarmem.fileio import atomic_path, write_json, write_text
from iarmem.metrics.quality import evaluate_model, reference_features
from iarmem.metrics.sampling import default_sampling
from iarmem.mitigate.edit import EDITS, temporary_edit
from iarmem.mitigate.localization import Localization
from iarmem.mitigate.select import check_percent, select_units
from iarmem.models.base import IAR
from iarmem.plotting import pyplot
from iarmem.progress import log

POINTS_FILE = "points.json"
TABLE_CSV = "table.csv"
TABLE_MD = "table.md"
PARETO_PNG = "pareto.png"


@dataclass(frozen=True)
class SweepGrid:
    tops: tuple[float, ...] = (1.0, 5.0, 10.0)
    factors: tuple[float, ...] = (0.5, 0.0)
    controls: tuple[str, ...] = ("random", "lowest")
    noise: tuple[float, ...] = (0.5, 1.0, 2.0)
    edits: tuple[str, ...] = ("exact",)
    scope: str = "global"
    reduce: str | None = None
    seed: int = 0

    def validate(self) -> SweepGrid:
        for p in self.tops:
            check_percent(p, "--tops")
        if any(not f >= 0 for f in self.factors):
            raise UserError(f"--factors must be >= 0, got {list(self.factors)}")
        if any(not s > 0 for s in self.noise):
            raise UserError(f"--noise levels must be > 0, got {list(self.noise)}")
        bad = [c for c in self.controls if c not in ("random", "lowest")]
        if bad:
            raise UserError(f"unknown --controls {bad}; choose from random, lowest")
        bad = [e for e in self.edits if e not in EDITS]
        if bad:
            raise UserError(f"unknown --edits {bad}; choose from {', '.join(EDITS)}")
        if self.tops and not self.edits:
            raise UserError("--edits is empty: give exact and/or paper")
        if not self.tops and not self.noise:
            raise UserError("the sweep is empty: give --tops and/or --noise")
        return self

    def points(self) -> list[dict[str, Any]]:
        """The reference (unedited) model first, then every edit with its controls, then the noise levels."""
        pts: list[dict[str, Any]] = [{"kind": "reference"}]
        for p in self.tops:
            for e in self.edits:
                for f in self.factors:
                    for control in ("none", *self.controls):
                        pts.append({"kind": "edit", "p": p, "edit": e, "factor": f, "control": control})
        pts += [{"kind": "noise", "std": s} for s in self.noise]
        return pts


def point_id(pt: dict[str, Any]) -> str:
    if pt["kind"] == "edit":
        who = "top" if pt["control"] == "none" else pt["control"]
        return f"{who}{pt['p']:g}%x{pt['factor']:g}" + ("-paper" if pt.get("edit") == "paper" else "")
    if pt["kind"] == "noise":
        return f"noise{pt['std']:g}"
    return "unedited"


@dataclass
class SweepContext:
    """What every point shares: model, data, ground truth, extractors, reference features."""

    iar: IAR
    ds: ImageDataset
    plan: Plan | None
    loc: Localization | None
    features: FeatureExtractor
    attack: AttackSettings
    n_per_class: int
    seed: int
    batch_size: int = 32
    reference: Any = None
    extractors: dict = field(default_factory=dict)
    pool_cache: TokenCache = field(default_factory=TokenCache)  # edits never touch the tokenizer: tokenize once

    def prepare(self) -> None:
        if self.reference is not None:  # prepared already (the bench's DEL and PAPER share one context)
            return
        self.extractors = load_extractors(self.attack, self.iar.device)
        self.reference = reference_features(self.ds, self.features, family=self.iar.family,
                                            image_size=self.iar.image_size, n_per_class=self.n_per_class,
                                            seed=self.seed, show_progress=False)


def measure_point(ctx: SweepContext, attack: AttackSettings, noise: float = 0.0) -> dict[str, Any]:
    """The whole attack and the quality evaluation on ``ctx.iar`` as it is now (edited or not)."""
    summary = run_attack(ctx.iar, ctx.ds, ctx.plan, attack.replace(membership=False), extractors=ctx.extractors,
                         pool_cache=ctx.pool_cache)  # the sweep reads leak and quality, not membership
    sampling = default_sampling(ctx.iar)
    if noise > 0:
        sampling = sampling.override(logit_noise=noise)
    q = evaluate_model(ctx.iar, None, ctx.features, ctx.n_per_class, ctx.seed, reference=ctx.reference,
                       settings=sampling, batch_size=ctx.batch_size, show_progress=False)
    rates = summary.get("rates", {})
    planted = (summary.get("by_group") or {}).get("planted") or {}
    return {"extracted": summary["extracted"], "candidates": summary["candidates"],
            "planted_extracted": planted.get("extracted"), "planted_generated": planted.get("generated"),
            "planted_rate": rates.get("planted"), "ordinary_rate": rates.get("ordinary"),
            "heldout_rate": rates.get("heldout"), "fid": q["fid"], "kid": q["kid_mean"],
            "precision": q["precision"], "recall": q["recall"], "class_accuracy": q["class_accuracy"],
            "decision": summary["decision"]}


def run_point(ctx: SweepContext, grid: SweepGrid, pt: dict[str, Any]) -> dict[str, Any]:
    t0 = time.monotonic()
    row: dict[str, Any] = {"point": point_id(pt), **pt, "units": 0}
    if pt["kind"] == "edit":
        if ctx.loc is None:
            raise UserError("edit points need a localization run")
        sel = select_units(ctx.loc, pt["p"], grid.scope, grid.reduce, None, pt["control"], grid.seed)
        with temporary_edit(ctx.iar, sel.units, pt["edit"], pt["factor"]):
            row.update(measure_point(ctx, ctx.attack))
        row["units"] = sel.count
    elif pt["kind"] == "noise":
        row.update(measure_point(ctx, ctx.attack.replace(logit_noise=pt["std"]), noise=pt["std"]))
    else:
        row.update(measure_point(ctx, ctx.attack))
    row["seconds"] = round(time.monotonic() - t0, 2)
    return row


def run_sweep(ctx: SweepContext, grid: SweepGrid, out: Path, resume: bool = False) -> list[dict[str, Any]]:
    """Measure every grid point (skipping those already in ``points.json`` when resuming); write the table."""
    grid.validate()
    done: dict[str, dict[str, Any]] = {}
    if resume and (out / POINTS_FILE).is_file():
        done = {r["point"]: r for r in json.loads((out / POINTS_FILE).read_text())}
    ctx.prepare()
    rows = []
    points = grid.points()
    for i, pt in enumerate(points, 1):
        pid = point_id(pt)
        if pid in done:
            rows.append(done[pid])
            continue
        row = run_point(ctx, grid, pt)
        rows.append(row)
        write_json(out / POINTS_FILE, rows)
        log(f"sweep {i}/{len(points)} {pid}: extracted {row['extracted']}/{row['candidates']}, "
            f"FID {row['fid']:.2f} ({row['seconds']:.0f}s)")
    write_table(rows, out)
    pareto_plot(rows, out / PARETO_PNG, ctx.features.name)
    return rows


COLUMNS = ("point", "kind", "p", "edit", "factor", "control", "std", "units", "extracted", "candidates", "planted_rate",
           "ordinary_rate", "heldout_rate", "fid", "kid", "precision", "recall", "class_accuracy", "seconds")


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_table(rows: list[dict[str, Any]], out: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in COLUMNS})
    write_text(out / TABLE_CSV, buf.getvalue())
    head = ["point", "units", "extracted", "planted", "held-out", "FID", "KID", "precision", "recall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        pct = [("" if r.get(k) is None else f"{100 * r[k]:.0f}%") for k in ("planted_rate", "heldout_rate")]
        lines.append("| " + " | ".join([r["point"], str(r["units"]), f"{r['extracted']}/{r['candidates']}", *pct,
                                          _fmt(r["fid"]), _fmt(r["kid"]), _fmt(r["precision"]),
                                          _fmt(r["recall"])]) + " |")
    write_text(out / TABLE_MD, "\n".join(lines) + "\n")


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points no other point beats on both extracted count and FID (lower is better for both)."""
    front = [r for r in rows if not any(
        (o["extracted"] <= r["extracted"] and o["fid"] <= r["fid"])
        and (o["extracted"] < r["extracted"] or o["fid"] < r["fid"]) for o in rows)]
    return sorted(front, key=lambda r: r["fid"])


def label_rows(rows: list[dict[str, Any]], near: float = 0.03) -> list[int]:
    """Per point, how many earlier points sit on it (same extracted count, FID within ``near`` of the FID
    range): its label is stacked that many lines up, so coinciding points (25%x0 top and random) stay readable."""
    fids = [r["fid"] for r in rows]
    span = ((max(fids) - min(fids)) or 1.0) if fids else 1.0
    return [sum(o["extracted"] == r["extracted"] and abs(o["fid"] - r["fid"]) <= near * span for o in rows[:i])
            for i, r in enumerate(rows)]


def pareto_plot(rows: list[dict[str, Any]], path: Path, feature_name: str) -> None:
    plt = pyplot()

    style = {"none": ("o", "C3", "top units"), "random": ("x", "C0", "random units (control)"),
             "lowest": ("^", "C2", "lowest-UnitMem units (control)")}
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    seen = set()
    for r, line in zip(rows, label_rows(rows)):
        if r["kind"] == "edit":
            marker, color, label = style[r["control"]]
            text = f"{r['p']:g}%×{r['factor']:g}" + (" paper" if r.get("edit") == "paper" else "")
        elif r["kind"] == "noise":
            marker, color, label = "s", "C7", "logit noise (defense baseline)"
            text = f"σ={r['std']:g}"
        else:
            marker, color, label = "*", "k", "unedited"
            text = "unedited"
        ax.scatter(r["fid"], r["extracted"], marker=marker, color=color, s=120 if marker == "*" else 40,
                   label=None if label in seen else label, zorder=3)
        seen.add(label)
        ax.annotate(text, (r["fid"], r["extracted"]), textcoords="offset points", xytext=(4, 4 + 9 * line),
                    fontsize=7)
    front = pareto_front(rows)
    ax.plot([r["fid"] for r in front], [r["extracted"] for r in front], "--", color="0.6", lw=1, zorder=1,
            label="Pareto front")
    ax.set_xlabel(f"FID ({feature_name} features; lower is better)")
    ax.set_ylabel("extracted training images (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def grid_settings(grid: SweepGrid) -> dict[str, Any]:
    d = asdict(grid)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def best_edit(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The top-unit edit with the fewest extracted images, FID breaking ties (for summaries)."""
    edits = [r for r in rows if r["kind"] == "edit" and r["control"] == "none"]
    return min(edits, key=lambda r: (r["extracted"], r["fid"])) if edits else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ref = next((r for r in rows if r["kind"] == "reference"), None)
    out: dict[str, Any] = {"points": len(rows), "reference": ref, "pareto": [r["point"] for r in pareto_front(rows)]}
    best = best_edit(rows)
    if best is not None:
        out["best_edit"] = best
        same = [r for r in rows if r["kind"] == "edit" and r["p"] == best["p"] and r["factor"] == best["factor"]
                and r.get("edit") == best.get("edit")]
        out["controls_at_best"] = {r["control"]: {"extracted": r["extracted"], "fid": r["fid"]} for r in same}
    out["extracted_mean_by_control"] = {
        c: float(np.mean([r["extracted"] for r in rows if r["kind"] == "edit" and r["control"] == c]))
        for c in sorted({r["control"] for r in rows if r["kind"] == "edit"})}
    return out
