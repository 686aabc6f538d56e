"""Pool the localizer bench (issue 15) over model seeds: the tables of docs/RESULTS.md section 9 and a figure.

Expects ROOT/inj/s{seed}/{family} and ROOT/del/s{seed}/{family} (`iarmem bench --methods ...`), and
optionally UNITMEM/inj/s{seed}/{family} (an earlier bench with --stats mean on the same models and
seeds: the same injections, checked unit for unit, so UnitMem is scored on them beside the new
methods). Intervals: percentile bootstrap over injections (INJ) or memorized images (DEL), pooled
over seeds.

  .venv/bin/python benchmarks/pool_localizers.py runs/b15 --unitmem runs/bench15 --figure docs/img/localizers.png
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
METHODS = ("unitmem_mean", "zscore", "gradient", "mask", "gradient+refine")
# (folder under ROOT, method, label): del2 holds the re-ranking refinement (gradient+refine after the change)
DEL_METHODS = (("del", "unitmem", "unitmem"), ("del", "zscore", "zscore"), ("del", "gradient", "gradient"),
               ("del", "mask", "mask"), ("del", "gradient+refine", "gradient+refine (one ranking, 64 units)"),
               ("del2", "gradient+refine", "gradient+refine (re-ranked, 256 units)"))


def _records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((folder / "inj").glob("r*.json"))] if folder.is_dir() else []


def inj_records(root: Path, unitmem: Path | None, family: str) -> list[dict[str, Any]]:
    """Every extracted injection of the family over the seeds, UnitMem's scores merged in when the same."""
    out = []
    for s in SEEDS:
        old = {(r["rate"], r["image"]): r for r in _records(unitmem / "inj" / f"s{s}" / family)} if unitmem else {}
        for r in _records(root / "inj" / f"s{s}" / family):
            if not r["extracted"]:
                continue
            o = old.get((r["rate"], r["image"]))
            if o is not None and o.get("units") == r.get("units") and "unitmem_mean" in o:
                r = r | {"unitmem_mean": o["unitmem_mean"]}
            out.append(r | {"seed": s})
    return out


def inj_rows(root: Path, unitmem: Path | None) -> list[list[str]]:
    rows = []
    for fam, label in FAMILIES.items():
        recs = inj_records(root, unitmem, fam)
        for rate in sorted({r["rate"] for r in recs}):
            rs = [r for r in recs if r["rate"] == rate]
            cells = [label, f"{rate:g}", str(len(rs))]
            for m in METHODS:
                reading = "global" if m == "unitmem_mean" else "per_image"
                vals = [r[m][f"{reading}_recall_at_{rate:g}"] for r in rs if m in r]
                lo, hi = bootstrap_interval(vals, 0)
                cells.append(f"{np.mean(vals):.2f} ({lo:.2f}-{hi:.2f})" if vals else "-")
            cells.append(f"{rate / 100:.3f}")
            rows.append(cells)
    return rows


def del_pooled(root: Path, family: str, method: str, budgets: tuple[float, ...],
               sub: str = "del") -> dict[float, dict[str, Any]]:
    """Per budget, over the memorized images of every seed: self / neg removal, random self, FID change."""
    per: dict[float, dict[str, list[float]]] = {b: {"self": [], "neg": [], "rand": [], "rand_neg": [], "fid": [],
                                                     "rfid": [], "units": []} for b in budgets}
    memorized = 0
    for s in SEEDS:
        f = root / sub / f"s{s}" / family / ("del.json" if method == "unitmem" else f"del-{method}.json")
        if not f.is_file():
            continue
        result = json.loads(f.read_text())
        memorized += len(result["reference"]["memorized"])
        ref_fid = result["reference"].get("fid")
        for b in budgets:
            rs = [r for r in result["records"] if r["budget"] == b]
            by_img: dict[int, dict[str, list[dict[str, Any]]]] = {}
            for r in rs:
                kind = "loc" if r["variant"] == "localizer" else "rand"
                by_img.setdefault(r["image"], {"loc": [], "rand": []})[kind].append(r)
            for v in by_img.values():
                p = per[b]
                p["self"].append(1 - np.mean([r["self_kept"] for r in v["loc"]]))
                p["rand"].append(1 - np.mean([r["self_kept"] for r in v["rand"]]))
                p["units"].append(v["loc"][0]["units"])
                for key, rows in (("neg", v["loc"]), ("rand_neg", v["rand"])):
                    neg = [r["neg_kept"] for r in rows if np.isfinite(r["neg_kept"])]
                    if neg:
                        p[key].append(1 - np.mean(neg))
                if ref_fid is not None:
                    p["fid"] += [r["fid"] - ref_fid for r in v["loc"] if "fid" in r]
                    p["rfid"] += [r["fid"] - ref_fid for r in v["rand"] if "fid" in r]
    return {b: {k: v for k, v in p.items()} | {"memorized": memorized} for b, p in per.items()}


def _ci(vals: list[float]) -> str:
    if not vals:
        return "-"
    lo, hi = bootstrap_interval(vals, 0)
    return f"{np.mean(vals):.2f} ({lo:.2f}-{hi:.2f})"


def del_rows(root: Path, budgets: tuple[float, ...]) -> list[list[str]]:
    rows = []
    for fam, label in FAMILIES.items():
        for sub, m, name in DEL_METHODS:
            pooled = del_pooled(root, fam, m, budgets, sub)
            for b in budgets:
                p = pooled[b]
                if not p["self"]:
                    continue
                rows.append([label, name, f"{b:g}", str(p["memorized"]), f"{np.mean(p['units']):.1f}", _ci(p["self"]),
                             f"{np.mean(p['rand']):.2f}", f"{np.mean(p['neg']):.2f}" if p["neg"] else "-",
                             f"{np.mean(p['rand_neg']):.2f}" if p["rand_neg"] else "-",
                             f"{np.mean(p['fid']):+.2f}" if p["fid"] else "-",
                             f"{np.mean(p['rfid']):+.2f}" if p["rfid"] else "-"])
    return rows


UNITS = {"var": 2048, "rar": 2048, "llamagen": 1536}  # fc1 units of the tiny presets


def refined_rows(root: Path) -> list[list[str]]:
    """Per family, the re-ranked refinement of the planted images (del2): how many it stopped, set sizes."""
    rows = []
    for fam, label in FAMILIES.items():
        imgs = []
        for s in SEEDS:
            f = root / "del2" / f"s{s}" / fam / "localize-gradient+refine" / "refined.json"
            if f.is_file():
                imgs += json.loads(f.read_text())["images"]
        done = [r["count"] for r in imgs if r["status"] == "refined"]
        if not imgs:
            continue
        extracted = [r for r in imgs if r["status"] != "not extracted"]
        one = max(1, round(UNITS[fam] / 100))
        rows.append([label, str(len(imgs)), str(len(extracted)), str(len(done)),
                     f"{np.median(done):.0f} ({min(done)}-{max(done)})" if done else "-",
                     f"{sum(c <= one for c in done)} / {len(extracted)}",
                     f"{np.median([r['checks'] for r in extracted]):.0f}" if extracted else "-"])
    return rows


def figure(root: Path, budgets: tuple[float, ...], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for ax, (fam, label) in zip(axes, FAMILIES.items()):
        for i, (sub, m, name) in enumerate(DEL_METHODS):
            pooled = del_pooled(root, fam, m, budgets, sub)
            b = [x for x in budgets if pooled[x]["self"]]
            if not b:
                continue
            ax.plot(b, [np.mean(pooled[x]["self"]) for x in b], f"C{i}-o", ms=3, label=name)
            ax.plot(b, [np.mean(pooled[x]["rand"]) for x in b], f"C{i}:", lw=1)
        ax.set_xscale("log")
        ax.set_title(f"{label}: DEL, 3 seeds (dotted: as many random units)", fontsize=9)
        ax.set_xlabel("units removed per image (% of fc1 units)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("memorized images no longer extracted (self)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root")
    p.add_argument("--unitmem", help="an earlier bench root with UnitMem's INJ records on the same injections")
    p.add_argument("--budgets", default="0.5,1,2")
    p.add_argument("--figure")
    args = p.parse_args()
    root, budgets = Path(args.root), tuple(float(x) for x in args.budgets.split(","))
    print("## INJ: recall of the injected units at k = r (per-image reading; UnitMem: its global reading)\n")
    print(table(["family", "r %", "injections", *METHODS, "chance"],
                inj_rows(root, Path(args.unitmem) if args.unitmem else None)))
    print("\n## DEL: removing each memorized image's units, pooled over seeds\n")
    print(table(["family", "localizer", "budget %", "memorized", "units", "self removed (95 % CI)", "random self",
                 "neg removed", "random neg", "FID change", "random FID change"], del_rows(root, budgets)))
    print("\n## The re-ranked refinement per planted image (del2)\n")
    print(table(["family", "planted (3 seeds)", "extracted", "stopped within 256 units", "units: median (range)",
                 "stopped by <= 1 % of units", "attack checks (median)"], refined_rows(root)))
    if args.figure:
        figure(root, budgets, Path(args.figure))


if __name__ == "__main__":
    main()
