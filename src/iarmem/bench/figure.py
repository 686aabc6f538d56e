"""One figure of a bench run: a panel per stage that ran, each beside its chance or control line.

INJ: recall of the injected units against k, per UnitMem reading, with chance (k %). DEL: self and
neg removal and the FID change against the budget, UnitMem's units against random ones; the
per-image localizers' self removal beside their own random controls. PAPER: the
planted images still extracted against p, top against lowest and random units. DUP: the share
reproduced and the membership AUC against the copies per epoch.
"""

from __future__ import annotations

import os
from typing import Any

from iarmem.fileio import atomic_path
from iarmem.plotting import pyplot


def bench_figure(summary: dict[str, Any], path: str | os.PathLike) -> None:
    panels = [(k, f) for k, f in (("inj", _inj), ("del", _del), ("del_methods", _del_methods), ("paper", _paper),
                                  ("dup", _dup)) if summary.get(k)]
    if not panels:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (key, draw) in zip(axes[0], panels):
        draw(ax, summary[key])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _inj(ax: Any, rows: list[dict[str, Any]]) -> None:
    series: dict[str, list[tuple[float, float, float, float]]] = {}
    for row in rows:
        for name, v in row["localizers"].items():
            if v["recall"] is None:
                continue
            loc, k = name.split("@")
            series.setdefault(f"{loc} (r = {row['rate']:g} %)", []).append(
                (float(k), v["recall"], v["ci95"][0], v["ci95"][1]))
    ks = sorted({p[0] for pts in series.values() for p in pts})
    for label, pts in sorted(series.items()):
        pts.sort()
        x, y = [p[0] for p in pts], [p[1] for p in pts]
        err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", ms=3, capsize=2, lw=1, label=label)
    ax.plot(ks, [k / 100 for k in ks], "k--", lw=1, label="chance (k %)")
    ax.set_xlabel("k: top k % of units named")
    ax.set_ylabel("recall of the injected units")
    ax.set_title("INJ", fontsize=9)


def _del(ax: Any, block: dict[str, Any]) -> None:
    rows = [r for r in block["rows"] if r.get("localizer") and r.get("random")]
    b = [r["budget"] for r in rows]
    for kind, style in (("localizer", "-"), ("random", ":")):
        who = "UnitMem" if kind == "localizer" else "random"
        ax.plot(b, [r[kind]["self_removed"] for r in rows], "C3" + style, marker="o", ms=3, label=f"self, {who}")
        ax.plot(b, [r[kind]["neg_removed"] or 0 for r in rows], "C0" + style, marker="x", ms=3, label=f"neg, {who}")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("budget (% of fc1 units removed)")
    ax.set_ylabel("share of memorized images removed")
    ax.set_title(f"DEL ({block['memorized']} memorized)", fontsize=9)
    fid = [(r["budget"], r["localizer"].get("fid_change"), r["random"].get("fid_change")) for r in rows]
    if any(f[1] is not None for f in fid):
        twin = ax.twinx()
        twin.plot([f[0] for f in fid], [f[1] for f in fid], "C2-", lw=1, label="FID change, UnitMem")
        twin.plot([f[0] for f in fid], [f[2] for f in fid], "C2:", lw=1, label="FID change, random")
        twin.set_ylabel("FID change", color="C2")


def _del_methods(ax: Any, blocks: dict[str, dict[str, Any]]) -> None:
    """Self removal against the budget for every per-image localizer, each beside its own random control."""
    for i, (name, block) in enumerate(sorted(blocks.items())):
        rows = [r for r in block["rows"] if r.get("localizer") and r.get("random")]
        b = [r["budget"] for r in rows]
        ax.plot(b, [r["localizer"]["self_removed"] for r in rows], f"C{i}-", marker="o", ms=3, label=f"{name}")
        ax.plot(b, [r["random"]["self_removed"] for r in rows], f"C{i}:", lw=1, label=f"random, as many as {name}")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("budget (% of fc1 units removed)")
    ax.set_ylabel("share of memorized images stopped (self)")
    ax.set_title("DEL: per-image localizers", fontsize=9)


def _paper(ax: Any, rows: list[dict[str, Any]]) -> None:
    unedited = next((r for r in rows if r["who"] == "unedited"), None)
    for who, style in (("top", "C3-o"), ("lowest", "C2-^"), ("random", "C0-x")):
        rs = sorted((r for r in rows if r["who"] == who and r["planted_rate"] is not None), key=lambda r: r["p"])
        if not rs:
            continue
        err = [[r["planted_rate"] - r["planted_ci95"][0] for r in rs], [r["planted_ci95"][1] - r["planted_rate"]
                                                                         for r in rs]]
        ax.errorbar([r["p"] for r in rs], [r["planted_rate"] for r in rs], yerr=err, fmt=style, ms=4, capsize=2,
                    lw=1, label=f"{who} units x 0.5")
    if unedited is not None and unedited["planted_rate"] is not None:
        ax.axhline(unedited["planted_rate"], color="k", ls="--", lw=1, label="unedited")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("p (% of fc1 units, global)")
    ax.set_ylabel("planted images extracted")
    ax.set_title("PAPER: top p % x 0.5", fontsize=9)


def _dup(ax: Any, block: dict[str, Any]) -> None:
    rows = [r for r in block["rows"] if r["copies"] > 0]
    held = next((r for r in block["rows"] if r["copies"] == 0), None)
    c = [r["copies"] for r in rows]
    err = [[r["extracted"] - r["extracted_ci95"][0] for r in rows], [r["extracted_ci95"][1] - r["extracted"]
                                                                     for r in rows]]
    ax.errorbar(c, [r["extracted"] for r in rows], yerr=err, fmt="C3-o", ms=4, capsize=2, lw=1, label="reproduced")
    ax.plot(c, [r["top1"] for r in rows], "C1-s", ms=3, lw=1, label="teacher-forced top-1")
    ax.plot(c, [r["auc_mia_loss"] for r in rows], "C0-^", ms=3, lw=1, label="membership AUC (loss)")
    if held is not None:
        ax.axhline(held["top1"], color="C1", ls=":", lw=1, label="top-1, held out")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("copies per epoch")
    ax.set_title(f"DUP ({100 * block['planted_share']:.1f} % of samples planted)", fontsize=9)
