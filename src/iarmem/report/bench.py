"""The report's ground-truth section: what `iarmem bench` measured about the localizers.

Per bench run: the figure, then one table per stage that ran, each with its chance or control
column beside the localizer, so a reader sees at a glance whether UnitMem beats random units.
"""

from __future__ import annotations

from typing import Any

from iarmem.report.discover import ModelGroup, Run
from iarmem.report.fmt import DASH, as_dict, missing, run_label
from iarmem.report.html import esc, figure, grid, note, read_image, table


def _ci(v: Any, ci: Any, digits: int = 2) -> str:
    if v is None:
        return DASH
    text = f"{v:.{digits}f}"
    if isinstance(ci, list) and len(ci) == 2 and None not in ci:
        text += f" ({ci[0]:.{digits}f}&ndash;{ci[1]:.{digits}f})"
    return text


def _f(v: Any, fmt: str = ".2f") -> str:
    return DASH if v is None else format(v, fmt)


def _inj(rows: list[dict[str, Any]]) -> str:
    body = []
    for row in rows:
        for name, v in as_dict(row.get("localizers")).items():
            loc, k = name.split("@")
            body.append([f"{row['rate']:g}", f"{row['injected']} / {row['images']}",
                         f"{row['ablation_removes']} / {row['random_removes']}", esc(loc), esc(k),
                         _ci(v.get("recall"), v.get("ci95"), 3), f"{v['random']:.3f}"])
    return ("<h4>INJ: recall of the injected units</h4>" + table(
        ["r %", "injected", "ablation removes / random removes", "localizer", "k %", "recall (95 % CI)", "chance"],
        body, numeric=[True, True, True, False, True, True, True]))


def _del(block: dict[str, Any], name: str = "UnitMem") -> str:
    body = []
    for r in block.get("rows") or []:
        a, c = as_dict(r.get("localizer")), as_dict(r.get("random"))
        if not a or not c:
            continue
        body.append([f"{r['budget']:g}", f"{a['units_mean']:.1f}", _ci(a["self_removed"], a.get("self_removed_ci95")),
                     _f(c["self_removed"]), _f(a.get("neg_removed")), _f(c.get("neg_removed")),
                     _f(a.get("fid_change"), "+.2f"), _f(c.get("fid_change"), "+.2f")])
    ref = as_dict(block.get("unedited"))
    head = (f"<h4>DEL ({esc(name)}): {block.get('memorized')} memorized of {block.get('candidates')} planted images"
            f"{'; unedited FID ' + format(ref['fid'], '.2f') if ref.get('fid') is not None else ''}</h4>")
    if not body:
        return head + note("no memorized planted image to delete")
    return head + table(["budget %", "units", f"self removed: {name} (95 % CI)", "self removed: random",
                         f"neg removed: {name}", "neg removed: random", f"FID change: {name}", "FID change: random"],
                        body, numeric=[True] * 8)


def _paper(rows: list[dict[str, Any]]) -> str:
    body = [[f"{r['p']:g}", str(r["units"]), esc(r["who"] + (f" ({r['draws']} draws)" if r["draws"] > 1 else "")),
             _ci(r.get("planted_rate"), r.get("planted_ci95")), _f(r.get("fid")), _f(r.get("class_accuracy"), ".3f")]
            for r in rows]
    return ("<h4>PAPER: UnitMem's global top p % x 0.5 against its controls</h4>" + table(
        ["p %", "units", "units edited", "planted extracted (95 % CI)", "FID", "class acc."], body,
        numeric=[True, True, False, True, True, True]))


def _dup(block: dict[str, Any]) -> str:
    body = [[str(r["copies"]) if r["copies"] else "held out", str(r["images"]),
             _ci(r["extracted"], r.get("extracted_ci95")), _f(r["agreement"]), _f(r["top1"], ".3f"),
             DASH if not r["copies"] else f"{r['auc_mia_loss']:.2f} / {r['auc_mia_cfg']:.2f}"]
            for r in block.get("rows") or []]
    share = block.get("planted_share")
    head = "<h4>DUP: memorization against duplication" + (
        f" ({100 * share:.1f} % of the samples planted)" if share is not None else "") + "</h4>"
    return head + table(["copies per epoch", "images", "reproduced (95 % CI)", "agreement", "top-1",
                         "membership AUC (loss / cfg)"], body, numeric=[True] * 6)


def _one(g: ModelGroup, r: Run) -> str:
    s = as_dict(r.json("summary.json"))
    body = f"<h3>{esc(g.label)} &middot; {run_label(r)}</h3>"
    body += grid([figure(read_image(r.path / "bench.png"), f"bench figure of {r.name}",
                         "a panel per stage: recall against chance (INJ), removal and FID change against the budget "
                         "(DEL), planted images extracted against p (PAPER), memorization against copies (DUP)")])
    if s.get("inj"):
        body += _inj(s["inj"])
    if s.get("del"):
        body += _del(s["del"])
    for method, block in sorted(as_dict(s.get("del_methods")).items()):
        body += _del(block, method)
    if s.get("paper"):
        body += _paper(s["paper"])
    if s.get("dup"):
        body += _dup(s["dup"])
    if not s:
        body += note("no summary.json yet (the bench did not finish)")
    return body


def bench_section(groups: list[ModelGroup]) -> str:
    parts = [_one(g, r) for g in groups for r in g.of("bench")]
    if not parts:
        return missing("bench", "`iarmem bench MODEL DATA --out RUN` scores localizers on injected ground truth")
    return "".join(parts) + note(
        "INJ: units chosen at random learn a held-out image; a localizer should name them (chance: k %). "
        "DEL: removing the units a localizer (UnitMem, or a per-image method: zscore, gradient, mask, +refine) names "
        "for a memorized image should stop its extraction (self) and leave the others (neg), against as many random "
        "units of the same layers. PAPER: the paper's edit against the "
        "lowest and random units. DUP: memorization of images planted at graded duplication. See docs/BENCH.md.")
