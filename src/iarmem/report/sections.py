"""The report's sections on UnitMem, extraction, mitigation, the sweep, image quality and the
findings, each built from the files its stage wrote (and skipped with a note when no run of that
stage is among the folders). Every function returns an HTML fragment."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from iarmem.localize.summary import views_text
from iarmem.report.charts import extraction_bars
from iarmem.report.discover import UNEDITED, ModelGroup, Run
from iarmem.report.fmt import DASH, GROUPS, as_dict, missing, num, rate, run_label, variant_label
from iarmem.report.html import code, esc, figure, grid, note, read_image, table
from iarmem.report.sentences import bin_range, where_sentence

# ---------------------------------------------------------------- localization


def _loc_caption(g: ModelGroup, r: Run, s: dict[str, Any], sentence: str | None) -> str:
    v = "" if (r.variant is None or r.variant.role == "unedited") else f" &middot; {variant_label(r)}"
    facts = [f"{s['num_images']:,} images" if isinstance(s.get("num_images"), int) else "",
             views_text(s) if s.get("views") else "", f"stat {s['stat']}" if s.get("stat") else "",
             f"subset {s['subset']}" if s.get("subset") else ""]
    head = f"<b>{esc(g.label)}</b>{v} &middot; {run_label(r)} &middot; " + ", ".join(f for f in facts if f)
    return head + (f'<p class="sentence">{esc(sentence)}</p>' if sentence else "")


def _peak(s: dict[str, Any]) -> str:
    grid_ = s.get("per_layer_bin") or []
    cells = [(float(v), li, k) for li, row in enumerate(grid_) for k, v in enumerate(row) if v is not None]
    if not cells:
        return DASH
    v, li, k = max(cells)
    layers, labels = s.get("layers") or [], list(as_dict(s.get("bins")).get("labels") or [])
    block = layers[li].get("block", li) if li < len(layers) else li
    scales = s.get("family") == "var"
    at = bin_range(labels, k, k, scales) if k < len(labels) else f"bin {k}"
    return f"{v:.3f} (block {block}, {esc(at)})"


def _group_shares(s: dict[str, Any]) -> str:
    out = []
    for gr in s.get("groups") or []:
        sh, ex = as_dict(gr.get("shares")), as_dict(gr.get("expected_shares"))
        if "planted" in sh:
            tied = f"; {rate(sh['none'])} tied, owned by none" if sh.get("none") else ""
            out.append(f"top {gr.get('percent')}%: {rate(sh['planted'])} (chance {rate(ex.get('planted'))}){tied}")
    return "<br>".join(out) or DASH


def localization_section(groups: list[ModelGroup]) -> str:
    cards, rows, extra = [], [], []
    for g in groups:
        for r in g.of("localize"):
            s = as_dict(r.json("summary.json"))
            sentence = where_sentence(s, g.label) if s else None
            caption = _loc_caption(g, r, s, sentence)
            if not s:
                caption += note("no summary.json (the run did not finish)")
            cards.append(figure(read_image(r.path / "heatmap.png"), f"UnitMem heat map of {g.label}", caption))
            top1 = next((t for t in s.get("top_shares") or [] if t.get("percent") == 1), {})
            bins = as_dict(s.get("bins"))
            rows.append([f"<b>{esc(g.label)}</b>", variant_label(r), run_label(r), num(s.get("num_images")),
                         esc(views_text(s)) if s.get("views") else DASH, esc(s.get("stat", DASH)),
                         num(bins.get("count")), _peak(s),
                         num(top1.get("min_unitmem"), 3), _group_shares(s)])
            figs = [figure(read_image(r.path / name), f"{name} of {r.name}", f"{esc(what)} &middot; {run_label(r)}")
                    for name, what in (("blocks.png", "mean UnitMem per block, one line per bin"),
                                       ("top_images.png", "images driving the most top-1% units"))
                    if (r.path / name).is_file()]
            if figs:
                extra.append(f"<details><summary>{esc(g.label)}: UnitMem per block and the images driving the top "
                             f"units ({esc(r.name)})</summary>{grid(figs)}</details>")
    if not cards:
        return missing("localize", "`iarmem localize MODEL DATA --out RUN` writes the UnitMem maps")
    body = grid(cards)
    body += note("Heat maps: mean UnitMem per block &times; scale (VAR) or block &times; token bin (RAR, LlamaGen). "
                 "The sentence is computed from summary.json: the blocks holding most of the top 1% units (ranked "
                 "by their largest UnitMem over bins), the narrowest run of bins holding half of their top (unit, "
                 "bin) pairs, and the share of those units whose most activating image is planted, against that "
                 "group's share of the images localized (chance). The class-only first position (VAR's 1x1 scale) is "
                 "left out unless the run kept it: every image of a class gives it the same activation; a unit whose "
                 "maximum several images tie for is owned by none of them.")
    body += table(["model", "variant", "run", "images", "views", "stat", "bins", "highest mean UnitMem",
                   "top-1% min UnitMem", "planted share of top units"], rows, id_="localization",
                  numeric=[False, False, False, True, False, False, True, False, True, False], wide=(9,), stack=True)
    return body + "".join(extra)


# ---------------------------------------------------------------- extraction


def _ext_caption(g: ModelGroup, r: Run, s: dict[str, Any]) -> str:
    head = f"<b>{variant_label(r)}</b> &middot; {run_label(r)}"
    if not s:
        return head + note("no summary.json (the run did not finish)")
    rates = as_dict(s.get("rates"))
    rate_text = ", ".join(f"{k.replace('heldout', 'held-out')} {rate(rates[k])}" for k in GROUPS if k in rates)
    text = f"<b>{num(s.get('extracted'))}</b> training images extracted from {num(s.get('candidates'))} candidates"
    if s.get("precision") is not None:
        text += f" (precision {rate(s['precision'])}, held-out false positives {num(s.get('heldout_false_positives'))})"
    if rate_text:
        text += f"; by their own prompt: {rate_text}"
    return f"{head}<br>{text}<br>{esc(s.get('decision', ''))}"


def _strong(s: dict[str, Any]) -> str:
    st = as_dict(s.get("strong"))
    if not st:
        return DASH
    head = f"{num(st.get('extracted'))} ({len(st.get('beyond_default') or [])} beyond the default; held-out "
    cal = st.get("calibration")
    if cal:  # tries calibrated together on never-trained images: the held-out controls are out of sample
        return (head + f"{num(st.get('heldout_false_positives'))} out of sample; calibration "
                f"{num(st.get('calibration_false_positives'))} of {num(cal.get('calibration'))})")
    return head + (f"{num(st.get('heldout_false_positives'))}, left out "
                   f"{num(st.get('heldout_left_out_false_positives'))})")


def membership_table(groups: list[ModelGroup]) -> str:
    """AUC and TPR at 1 % FPR of the membership scores, per statistic and member group."""
    rows = []
    for g in groups:
        for r in g.of("extract"):
            mia = as_dict(as_dict(r.json("summary.json")).get("membership"))
            for stat, what in (("mia_loss", "loss"), ("mia_cfg", "guidance difference")):
                per = as_dict(mia.get(stat))
                if not per:
                    continue
                cells = [f"{num(as_dict(per.get(k)).get('auc'), 3)} / {rate(as_dict(per.get(k)).get('tpr'))}"
                         if k in per else DASH for k in ("planted", "ordinary", "members")]
                rows.append([f"<b>{esc(g.label)}</b>", variant_label(r), run_label(r), esc(what), *cells,
                             num(mia.get("heldout"))])
    if not rows:
        return ""
    return ("<h3>Membership inference</h3>"
            + table(["model", "variant", "run", "score", "planted: AUC / TPR", "ordinary: AUC / TPR",
                     "all members: AUC / TPR", "held-out"], rows, id_="membership", stack=True)
            + note("Per image, from the teacher-forced pass of the attack's scoring: the loss, and the conditional "
                   "minus unconditional log-likelihood (the guidance difference of Kowalczuk et al. 2025). AUC "
                   "against the held-out images (0.5: chance); TPR at a false-positive rate of at most 1 %, whose "
                   "resolution is one held-out image."))


def _copies(s: dict[str, Any]) -> str:
    c = as_dict(s.get("copies_other"))
    return ", ".join(f"{k.replace('heldout', 'held-out')} {v}" for k, v in c.items()) if c else DASH


def extraction_section(groups: list[ModelGroup]) -> str:
    rows, blocks = [], []
    for g in groups:
        runs = g.of("extract")
        if not runs:
            continue
        figs, chart = [], []
        for r in runs:
            s = as_dict(r.json("summary.json"))
            rates = as_dict(s.get("rates"))
            prefix = as_dict(s.get("prefix"))
            rows.append([f"<b>{esc(g.label)}</b>", variant_label(r), run_label(r),
                         f"{num(s.get('extracted'))}/{num(s.get('candidates'))}",
                         *[rate(rates.get(k)) for k in GROUPS], rate(s.get("precision")), _copies(s),
                         _strong(s), esc(s.get("decision", DASH)), esc(prefix.get("rule", DASH))])
            figs.append(figure(read_image(r.path / "extracted.png"), f"extracted images of {r.name}",
                               _ext_caption(g, r, s)))
            if isinstance(s.get("extracted"), int):
                chart.append(((r.variant or UNEDITED).label, s["extracted"],
                              int(s.get("candidates") or 0), rates))
        bars = ""
        if len(chart) >= 2:
            png = extraction_bars([c[0] for c in chart], [c[1] for c in chart], [c[2] for c in chart],
                                  [c[3] for c in chart])
            bars = grid([figure(png, f"extraction before and after mitigation, {g.label}",
                                f"<b>{esc(g.label)}</b>: extracted images and extraction rates per model variant")])
        blocks.append(f"<h3>{esc(g.label)}: leaked images before and after mitigation</h3>{grid(figs)}{bars}")
    if not rows:
        return missing("extract", "`iarmem extract MODEL DATA --out RUN` runs the extraction attack")
    body = table(["model", "variant", "run", "extracted / candidates", "planted", "ordinary", "held-out",
                  "precision", "copies another image", "strong attack", "decision rule", "prefix"], rows,
                 id_="extraction", numeric=[False, False, False, True, True, True, True, True, False, False, False,
                                            False], wide=(10, 11), stack=True)
    body += note("Extracted: training images judged copied, by their own prompt or by another prompt's generation "
                 "(a generation must be closer to the image than to every other training or held-out image by the "
                 "margin). Rates are per group of the planting plan, by their own prompt; precision is the planted "
                 "share of everything called extracted. Held-out images are never trained on: extracting them "
                 "would mean the rule is too loose. The strong attack (when run) tries every prefix, guided and "
                 "sampled decoding and a trigger search; 'left out' counts held-out images it would pass had they "
                 "not calibrated it. Each figure shows pairs <i>reconstruction | generation</i>, most similar first "
                 "(the closest pairs when nothing was extracted).")
    return body + membership_table(groups) + "".join(blocks)


# ---------------------------------------------------------------- mitigation


def mitigation_section(groups: list[ModelGroup]) -> str:
    rows = []
    for g in groups:
        for r in g.of("mitigate"):
            e = as_dict(r.json("edit.json"))
            sel, ed, counts = as_dict(e.get("selection")), as_dict(e.get("edit")), as_dict(e.get("counts"))
            st = as_dict(r.record.get("settings"))
            per_block = as_dict(counts.get("per_block")) or as_dict(as_dict(r.record.get("summary")).get("per_block"))
            units = counts.get("total", ed.get("units_edited"))
            total = sel.get("total_units")
            share = f" ({units / total:.1%})" if isinstance(units, int) and total else ""
            loc = as_dict(e.get("localization")).get("path") or st.get("localization")
            rows.append([f"<b>{esc(g.label)}</b>", variant_label(r), run_label(r),
                         f"{num(units)} of {num(total)}{share}", esc(ed.get("edit", st.get("edit", DASH))),
                         num(ed.get("factor", st.get("factor"))), esc(sel.get("scope", st.get("scope", DASH))),
                         esc(sel.get("reduce") or st.get("reduce") or "max"),
                         esc(", ".join(f"{b}: {n}" for b, n in per_block.items()) or DASH),
                         code(Path(loc).name) if loc else DASH])
    if not rows:
        return missing("mitigate", "`iarmem mitigate MODEL LOCALIZATION --out RUN` scales the top units")
    return (table(["model", "variant", "run", "units edited", "edit", "factor", "scope", "reduce",
                   "units per block", "localization"], rows, id_="mitigation", wide=(8,), stack=True)
            + note("The exact edit multiplies each chosen unit's output by the factor (0 removes the unit); the "
                   "paper's edit multiplies the weight row that computes the unit, bias unchanged. The random and "
                   "lowest-UnitMem controls edit as many units, so a drop in extraction that the controls do not "
                   "show is due to the units UnitMem found."))


# ---------------------------------------------------------------- sweep


SWEEP_COLUMNS = [("point", "point"), ("units", "units"), ("extracted", "extracted"), ("planted_rate", "planted"),
                 ("ordinary_rate", "ordinary"), ("heldout_rate", "held-out"), ("fid", "FID"), ("kid", "KID"),
                 ("precision", "precision"), ("recall", "recall"), ("class_accuracy", "class acc.")]


def _sweep_rows(r: Run) -> list[dict[str, Any]]:
    pts = r.json("points.json")
    if isinstance(pts, list) and all(isinstance(p, dict) for p in pts):
        return pts
    try:
        with open(r.path / "table.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    return [{k: _cell_value(v) for k, v in row.items()} for row in rows]


def _cell_value(text: str | None) -> Any:
    """A table.csv cell as the number it holds, None when empty, else the text."""
    if not text:
        return None
    try:
        return int(text) if text.isdigit() else float(text)
    except ValueError:
        return text


def pareto_points(rows: list[dict[str, Any]]) -> set[str]:
    """Points no other point beats on both extracted count and FID (the sweep's own rule)."""
    ok = [p for p in rows if isinstance(p.get("extracted"), (int, float)) and isinstance(p.get("fid"), (int, float))]
    return {str(p["point"]) for p in ok if not any(
        o["extracted"] <= p["extracted"] and o["fid"] <= p["fid"] and (o["extracted"] < p["extracted"]
                                                                         or o["fid"] < p["fid"]) for o in ok)}


def _sweep_cell(key: str, p: dict[str, Any]) -> str:
    v = p.get(key)
    if key == "point":
        return esc(v)
    if key == "extracted":
        return f"{num(v)}/{num(p.get('candidates'))}"
    if key.endswith("_rate"):
        return rate(v)
    return num(v, 4)


def sweep_headline(s: dict[str, Any], label: str = "") -> str:
    """The sweep's best top-unit edit against the unedited model and its controls, in one sentence."""
    ref, best = as_dict(s.get("reference")), as_dict(s.get("best_edit"))
    if not ref or not best:
        return ""
    ctrl = as_dict(s.get("controls_at_best"))
    controls = "; ".join(f"{c} control {v.get('extracted')} extracted, FID {num(v.get('fid'), 3)}"
                         for c, v in ctrl.items() if c != "none")
    who = f"{esc(label)}: the" if label else "The"
    text = (f"{who} sweep's best top-unit edit <b>{esc(best.get('point'))}</b> leaves {num(best.get('extracted'))} "
            f"of {num(best.get('candidates'))} extracted (unedited {num(ref.get('extracted'))}) at FID "
            f"{num(best.get('fid'), 3)} (unedited {num(ref.get('fid'), 3)})")
    return f'<p class="sentence">{text}{"; " + controls if controls else ""}.</p>'


def sweep_section(groups: list[ModelGroup]) -> str:
    parts, first = [], True
    for g in groups:
        for r in g.of("sweep"):
            rows = _sweep_rows(r)
            s = as_dict(r.json("summary.json"))
            front = set(s.get("pareto") or []) or pareto_points(rows)
            body = f"<h3>{esc(g.label)} &middot; {run_label(r)}</h3>" + sweep_headline(s)
            body += grid([figure(read_image(r.path / "pareto.png"), f"Pareto plot of {r.name}",
                                 "extracted training images against FID for every point of the grid; dashed: the "
                                 "Pareto front")])
            if rows:
                classes = ["ref" if p.get("kind") == "reference" else "front" if str(p.get("point")) in front else ""
                           for p in rows]
                body += table([h for _, h in SWEEP_COLUMNS], [[_sweep_cell(k, p) for k, _ in SWEEP_COLUMNS]
                                                              for p in rows],
                              id_="sweep-table" if first else None, row_classes=classes,
                              numeric=[False] + [True] * (len(SWEEP_COLUMNS) - 1))
                first = False
            else:
                body += note("no points.json or table.csv yet (the sweep did not finish a point)")
            parts.append(body)
    if not parts:
        return missing("sweep", "`iarmem sweep MODEL DATA LOCALIZATION --out RUN` runs the edit/defense grid")
    return "".join(parts) + note("Points: <i>topP%xF</i> scales the top P % units by F; <i>random</i> and "
                                 "<i>lowest</i> are the controls; <i>noiseS</i> is the logit-noise defense. Bold: "
                                 "the unedited model; &#9733;: on the Pareto front (fewer extracted images and lower "
                                 "FID cannot both be had).")


# ---------------------------------------------------------------- quality


QUALITY_KEYS = [("fid", "FID"), ("kid_mean", "KID"), ("precision", "precision"), ("recall", "recall"),
                ("density", "density"), ("coverage", "coverage"), ("class_accuracy", "class acc.")]


def quality_section(groups: list[ModelGroup]) -> str:
    rows, blocks, features = [], [], set()
    for g in groups:
        figs = []
        for r in g.of("evaluate"):
            m = as_dict(r.json("metrics.json"))
            feats = as_dict(m.get("features"))
            if feats.get("name"):
                features.add(str(feats["name"]))
            cells = [num(m.get(k), 4) for k, _ in QUALITY_KEYS]
            if isinstance(m.get("kid_std"), (int, float)) and m.get("kid_mean") is not None:
                cells[1] += f" &plusmn; {m['kid_std']:.2g}"
            rows.append([f"<b>{esc(g.label)}</b>", variant_label(r), run_label(r), *cells, num(m.get("n_samples")),
                         num(m.get("n_reference"))])
            sampling = as_dict(m.get("sampling"))
            cfg = f"cfg {sampling.get('cfg')}" if "cfg" in sampling else ""
            cap = (f"<b>{variant_label(r)}</b> &middot; {run_label(r)}<br>FID {num(m.get('fid'), 4)}, precision "
                   f"{num(m.get('precision'), 3)}, recall {num(m.get('recall'), 3)}"
                   + (f", class accuracy {num(m.get('class_accuracy'), 3)}" if m.get("class_accuracy") is not None
                      else "") + (f"; {esc(cfg)}" if cfg else ""))
            figs.append(figure(read_image(r.path / "samples.png"), f"samples of {r.name}", cap))
        if figs:
            blocks.append(f"<h3>{esc(g.label)}: samples</h3>{grid(figs)}")
    if not rows:
        return missing("evaluate", "`iarmem evaluate MODEL DATA --out RUN` measures FID, KID, precision / recall")
    body = table(["model", "variant", "run", *[h for _, h in QUALITY_KEYS], "samples", "real images"], rows,
                 id_="quality", numeric=[False, False, False] + [True] * (len(QUALITY_KEYS) + 2))
    body += note("Lower FID / KID and higher precision, recall and class accuracy are better. Numbers compare only "
                 "between runs with the same feature network, dataset and sample count"
                 + (f" (features here: {esc(', '.join(sorted(features)))})" if features else "") + ".")
    return body + "".join(blocks)


# ---------------------------------------------------------------- findings (the top of the report)
