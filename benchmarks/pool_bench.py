"""Pool `iarmem bench` runs over model seeds: the tables of docs/RESULTS.md section 8 and a figure.

Expects ROOT/inj/s{seed}/{family}, ROOT/delpaper/s{seed}/{family} and ROOT/dup/{family} (the
layout of the runs behind docs/RESULTS.md); prints Markdown and writes --figure. Intervals:
percentile bootstrap over injections (INJ) or memorized images (DEL), pooled over seeds; PAPER
gives every seed's figure.

  .venv/bin/python benchmarks/pool_bench.py runs/bench15 --figure docs/img/bench-3seeds.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from iarmem.bench.score import bootstrap_interval  # noqa: E402

FAMILIES = {"var": "tiny-var", "rar": "tiny-rar", "llamagen": "tiny-llamagen"}
SEEDS = (0, 1, 2)
RATES = (0.5, 1.0, 2.0)
BUDGETS = (0.1, 0.5, 1.0, 2.0, 5.0)
READINGS = (("mean", "global"), ("median", "global"), ("mean", "per_image"), ("median", "per_image"))


def ci(values: list[float]) -> tuple[float, float, float]:
    lo, hi = bootstrap_interval(list(values), 0)
    return float(np.mean(values)), lo, hi


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    m, lo, hi = ci(values)
    return f"{m:.2f} ({lo:.2f}-{hi:.2f})"


def load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def inj_records(root: Path, fam: str) -> list[dict[str, Any]]:
    out = []
    for s in SEEDS:
        for p in sorted((root / f"inj/s{s}/{fam}/inj").glob("r*.json")):
            out.append({**json.loads(p.read_text()), "seed": s})
    return out


def inj_table(root: Path) -> tuple[str, dict]:
    lines = ["| family | r % | seeds | injected | ablation removes / random removes | k % | chance | "
             "mean, global | median, global | mean, per-image | median, per-image |", "|" + "---|" * 11]
    curves: dict = {}
    for fam, name in FAMILIES.items():
        recs = inj_records(root, fam)
        for rate in RATES:
            rs = [r for r in recs if r["rate"] == rate]
            ok = [r for r in rs if r["extracted"]]
            if not rs:
                continue
            abl = sum(r["ablation"]["ablated"] <= 0.9 for r in ok)
            rnd = sum(np.mean(r["ablation"]["random"]) <= 0.9 for r in ok)
            for k in (rate, 2 * rate):
                cells = []
                for stat, reading in READINGS:
                    v = [r[f"unitmem_{stat}"][f"{reading}_recall_at_{k:g}"] for r in ok if f"unitmem_{stat}" in r]
                    cells.append(fmt(v))
                    if v and k == rate:
                        curves.setdefault((fam, stat, reading), []).append((rate, *ci(v)))
                lines.append(f"| {name} | {rate:g} | {len({r['seed'] for r in rs})} | {len(ok)} / {len(rs)} | "
                             f"{abl} / {rnd} | {k:g} | {k / 100:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines), curves


def del_table(root: Path) -> tuple[str, dict]:
    lines = ["| family | seeds | memorized / planted | budget % | units | self removed: UnitMem | "
             "self removed: random | neg: UnitMem | neg: random | FID change: UnitMem | FID change: random |",
             "|" + "---|" * 11]
    curves: dict = {}
    for fam, name in FAMILIES.items():
        res = [d for d in (load(root / f"delpaper/s{s}/{fam}/del.json") for s in SEEDS) if d]
        if not res:
            continue
        mem = sum(len(d["reference"]["memorized"]) for d in res)
        cand = sum(d["reference"]["candidates"] for d in res)
        for b in BUDGETS:
            out = {}
            for kind in ("localizer", "random"):
                selfr, neg, units, dfid = [], [], [], []
                for d in res:
                    per: dict[int, list] = {}
                    for r in d["records"]:
                        if r["budget"] == b and r["variant"].startswith(kind):
                            per.setdefault(r["image"], []).append(r)
                            units.append(r["units"])
                            if "fid" in r:
                                dfid.append(r["fid"] - d["reference"]["fid"])
                    for v in per.values():
                        selfr.append(1 - np.mean([x["self_kept"] for x in v]))
                        n = np.mean([x["neg_kept"] for x in v])
                        if np.isfinite(n):
                            neg.append(1 - n)
                out[kind] = (selfr, neg, units, dfid)
                if selfr:
                    curves.setdefault((fam, kind), []).append((b, *ci(selfr)))
            a, r = out["localizer"], out["random"]
            if not a[0]:
                continue
            lines.append(f"| {name} | {len(res)} | {mem} / {cand} | {b:g} | {np.mean(a[2]):.1f} | {fmt(a[0])} | "
                         f"{fmt(r[0])} | {np.mean(a[1]):.2f} | {np.mean(r[1]):.2f} | {fmt(a[3])} | {fmt(r[3])} |")
    return "\n".join(lines), curves


def paper_table(root: Path) -> tuple[str, dict]:
    lines = ["| family | p % | units edited | planted extracted, seeds 0 / 1 / 2 | mean | FID, seeds 0 / 1 / 2 | "
             "class acc. (mean) |", "|" + "---|" * 7]
    curves: dict = {}
    for fam, name in FAMILIES.items():
        sums = [d for d in (load(root / f"delpaper/s{s}/{fam}/summary.json") for s in SEEDS) if d]
        if not sums:
            continue
        for key in [(r["p"], r["who"]) for r in sums[0]["paper"]]:
            rows = [next(r for r in d["paper"] if (r["p"], r["who"]) == key) for d in sums]
            rates = [r["planted_rate"] for r in rows]
            curves.setdefault((fam, key[1]), []).append((key[0], float(np.mean(rates)), min(rates), max(rates)))
            who = key[1] + (f" ({rows[0]['draws']} draws)" if rows[0]["draws"] > 1 else "")
            lines.append(f"| {name} | {key[0]:g} | {who} | " + " / ".join(f"{x:.2f}" for x in rates) +
                         f" | {np.mean(rates):.2f} | " + " / ".join(f"{r['fid']:.2f}" for r in rows) +
                         f" | {np.mean([r['class_accuracy'] for r in rows]):.3f} |")
    return "\n".join(lines), curves


def dup_tables(root: Path) -> tuple[str, dict]:
    parts, curves = [], {}
    for fam, name in FAMILIES.items():
        s = load(root / f"dup/{fam}/summary.json")
        if not s:
            continue
        d = s["dup"]
        parts.append(f"{name} ({100 * d['planted_share']:.1f} % of the samples planted; "
                     f"{Path(d['model']).name}):\n")
        parts.append("| copies | images | reproduced (95 % CI) | agreement | top-1 | membership AUC (loss / cfg) |\n"
                     "|---|---|---|---|---|---|")
        for r in d["rows"]:
            auc = "-" if not r["copies"] else f"{r['auc_mia_loss']:.2f} / {r['auc_mia_cfg']:.2f}"
            lo, hi = r["extracted_ci95"]
            parts.append(f"| {r['copies'] or 'held out'} | {r['images']} | {r['extracted']:.2f} ({lo:.2f}-{hi:.2f}) | "
                         f"{r['agreement']:.2f} | {r['top1']:.3f} | {auc} |")
        parts.append("")
        curves[fam] = d["rows"]
    return "\n".join(parts), curves


def figure(inj: dict, dele: dict, paper: dict, dup: dict, path: str) -> None:
    fig, axes = plt.subplots(4, 3, figsize=(12, 12), squeeze=False)
    for j, (fam, name) in enumerate(FAMILIES.items()):
        ax = axes[0][j]
        for (f, stat, reading), pts in sorted(inj.items()):
            if f == fam:
                x = [p[0] for p in pts]
                ax.errorbar(x, [p[1] for p in pts], yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]],
                            marker="o", ms=3, capsize=2, lw=1, label=f"UnitMem {stat}, {reading.replace('_', '-')}")
        ax.plot(RATES, [r / 100 for r in RATES], "k--", lw=1, label="chance")
        ax.set_title(f"{name}: INJ recall at k = r", fontsize=9)
        ax.set_xlabel("r = k (% of fc1 units)")
        ax.set_ylim(-0.02, 1.02)
        ax = axes[1][j]
        for kind, style in (("localizer", "C3-o"), ("random", "C0:x")):
            pts = dele.get((fam, kind), [])
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                            yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]], fmt=style, ms=3,
                            capsize=2, lw=1, label="UnitMem's units" if kind == "localizer" else "random units")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{name}: DEL, memorized images removed (self)", fontsize=9)
        ax.set_xlabel("budget (% of fc1 units)")
        ax = axes[2][j]
        for who, style in (("top", "C3-o"), ("lowest", "C2-^"), ("random", "C0-x"), ("unedited", "k*")):
            pts = sorted(paper.get((fam, who), []))
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                            yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]], fmt=style, ms=4,
                            capsize=2, lw=1, label=who)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{name}: PAPER, planted extracted (seed range)", fontsize=9)
        ax.set_xlabel("p (% of fc1 units) x 0.5")
        ax = axes[3][j]
        rows = [r for r in dup.get(fam, []) if r["copies"]]
        if rows:
            c = [r["copies"] for r in rows]
            ax.plot(c, [r["extracted"] for r in rows], "C3-o", ms=4, label="reproduced")
            ax.plot(c, [r["top1"] for r in rows], "C1-s", ms=3, label="top-1")
            ax.plot(c, [r["auc_mia_loss"] for r in rows], "C0-^", ms=3, label="membership AUC (loss)")
            ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{name}: DUP (seed 0)", fontsize=9)
        ax.set_xlabel("copies per epoch")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="the folder holding inj/, delpaper/ and dup/")
    ap.add_argument("--figure", help="write the pooled figure here")
    a = ap.parse_args()
    root = Path(a.root)
    inj, ic = inj_table(root)
    dele, dc = del_table(root)
    paper, pc = paper_table(root)
    dup, uc = dup_tables(root)
    print("### INJ\n\n" + inj + "\n\n### DEL\n\n" + dele + "\n\n### PAPER\n\n" + paper + "\n\n### DUP\n\n" + dup)
    if a.figure:
        figure(ic, dc, pc, uc, a.figure)


if __name__ == "__main__":
    main()
