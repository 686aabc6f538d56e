"""The files of an extraction run: scores.csv, candidates.csv, summary.json, extracted.png.

candidates.csv has one row per scored image (candidates, held-out controls, and scored images that
were not selected), so the planted / ordinary / held-out picture can be redrawn from it alone.
Every file is written atomically by rank 0.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from iarmem.attack.decide import METRICS, left_out_passes
from iarmem.attack.figure import save_pairs
from iarmem.attack.membership import STATISTICS, evaluate_membership
from iarmem.attack.pipeline import TOKENS_FILE, AttackResult, Selection, decoder, describe_positions
from iarmem.attack.select import rank_order, ranking_key
from iarmem.attack.settings import AttackSettings
from iarmem.attack.strong import StrongResult
from iarmem.data import ImageDataset, Plan
from iarmem.fileio import write_json, write_text
from iarmem.models.base import IAR
from iarmem.plans import group_of

SCORES_FILE = "scores.csv"
CANDIDATES_FILE = "candidates.csv"
SUMMARY_FILE = "summary.json"
FIGURE_FILE = "extracted.png"
STRONG_FILE = "strong.csv"
OUTPUTS = (CANDIDATES_FILE, SUMMARY_FILE, FIGURE_FILE, SCORES_FILE, TOKENS_FILE)
SCORE_COLUMNS = ("id", "label", "top1", "gt_prob", "loss", *STATISTICS)
MEASURES = ("tokens", "tokens_fg", "background_share", "prefix_background", "ssim", "psnr", "sscd", "features")
GROUPS = ("planted", "ordinary", "heldout", "calibration", "other")


# ---- scores (the resume point) ---------------------------------------------------------------------
def write_scores(path: Path, scores: dict[str, np.ndarray]) -> None:
    """Scores at full precision (repr), so a resumed run selects exactly the same candidates."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SCORE_COLUMNS)
    for row in zip(*(scores[k] for k in SCORE_COLUMNS)):
        w.writerow([int(row[0]), int(row[1])] + [repr(float(v)) for v in row[2:]])
    write_text(path, buf.getvalue())


def read_scores(path: Path | None, ids: np.ndarray) -> dict[str, np.ndarray] | None:
    """The scores file if it holds exactly ``ids``; None otherwise (then the run scores again)."""
    if path is None or not path.is_file():
        return None
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        out = {k: np.array([float(r[k]) for r in rows]) for k in SCORE_COLUMNS}
    except (OSError, KeyError, ValueError, TypeError):
        return None
    out["id"], out["label"] = out["id"].astype(np.int64), out["label"].astype(np.int64)
    return out if np.array_equal(out["id"], ids) else None


# ---- per-image table --------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else f"{float(v):.6f}"
    return "" if v is None else str(v)


def class_ranks(scores: dict[str, np.ndarray], by: str) -> np.ndarray:
    """Rank (1 = most suspicious) of each scored image's score within its class."""
    score, tiebreak = ranking_key(scores, by)
    order = rank_order(scores["id"], score, tiebreak)
    ranks = np.zeros(len(order), dtype=np.int64)
    for c in np.unique(scores["label"]):
        pos = order[scores["label"][order] == c]
        ranks[pos] = np.arange(1, len(pos) + 1)
    return ranks


def calibration_ids(result: AttackResult) -> np.ndarray:
    """The never-trained images outside the plan that calibrated the decision (none: the held-out did)."""
    if result.is_calibration is None:
        return np.empty(0, dtype=np.int64)
    return result.ids[result.is_calibration]


def groups_of(plan: Plan | None, ids: np.ndarray, result: AttackResult) -> np.ndarray:
    """The plan's groups, with the calibration images as their own group 'calibration'."""
    out = group_of(plan, ids)
    out[np.isin(ids, calibration_ids(result))] = "calibration"
    return out


def table(ds: ImageDataset, plan: Plan | None, s: AttackSettings, scores: dict[str, np.ndarray],
          result: AttackResult) -> list[dict[str, str]]:
    """candidates.csv as rows of strings, in id order."""
    ids = np.union1d(scores["id"], result.ids)
    groups = groups_of(plan, ids, result)
    at_score = {int(i): k for k, i in enumerate(scores["id"])}
    at_gen = {int(i): k for k, i in enumerate(result.ids)}
    ranks = class_ranks(scores, s.score_by) if len(scores["id"]) else np.zeros(0, dtype=np.int64)
    names = [m for m in MEASURES if m in result.measures]
    taken = set(result.extracted_ids().tolist())
    via: dict[int, list[int]] = {}
    for j in np.flatnonzero(result.copies_other):
        via.setdefault(int(result.measures["other_id"][j]), []).append(int(result.ids[j]))
    rows = []
    for i, g in zip(ids.tolist(), groups):
        label = int(ds.labels[i])
        row: dict[str, Any] = {"id": i, "source": ds.source_id(i), "label": label, "class": ds.classes[label],
                               "group": g}
        k, j = at_score.get(i), at_gen.get(i)
        row["is_candidate"] = bool(j is not None and result.is_candidate[j])
        row["generated"] = j is not None
        row["score_rank"] = int(ranks[k]) if k is not None else None
        for c in ("top1", "gt_prob", "loss"):
            row[c] = float(scores[c][k]) if k is not None else None
        for m in names:
            row[m] = float(result.measures[m][j]) if j is not None else None
        row["similarity"] = float(result.similarity[j]) if j is not None else None
        row["extracted"] = bool(result.extracted[j]) if j is not None else None
        row["copies_other"] = bool(result.copies_other[j]) if j is not None else None
        row["other_similarity"] = float(result.measures["other_similarity"][j]) if j is not None else None
        other = int(result.measures["other_id"][j]) if j is not None else -1
        row["other_id"] = other if other >= 0 else None
        row["image_extracted"] = i in taken
        row["extracted_via"] = " ".join(str(x) for x in via.get(i, []))
        rows.append({key: _fmt(v) for key, v in row.items()})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    if not rows:
        write_text(path, "")
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


# ---- summary ----------------------------------------------------------------------------------------
def _mean(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if len(x) else None


def by_group(plan: Plan | None, scores: dict[str, np.ndarray], result: AttackResult) -> dict[str, Any]:
    """Per planted / ordinary / held-out / other: scored, generated, extracted from their own prompt (and the
    rate per generation), images extracted by any prompt, recall, mean scores."""
    g_scored, g_gen = groups_of(plan, scores["id"], result), groups_of(plan, result.ids, result)
    taken = result.extracted_ids()
    g_taken = groups_of(plan, taken, result)
    sizes = ({"planted": len(plan.planted_ids), "ordinary": len(plan.ordinary_ids),
              "heldout": len(plan.heldout_ids), "calibration": len(calibration_ids(result)) or None}
             if plan is not None else {})
    out: dict[str, Any] = {}
    for g in GROUPS:
        sc, ge, tk = g_scored == g, g_gen == g, g_taken == g
        if not sc.any() and not ge.any() and not tk.any():
            continue
        ext, images = int(result.extracted[ge].sum()), int(tk.sum())
        out[g] = {
            "in_plan": sizes.get(g),
            "scored": int(sc.sum()),
            "mean_top1": _mean(scores["top1"][sc]),
            "generated": int(ge.sum()),
            "candidates": int(result.is_candidate[ge].sum()),
            "extracted": ext,
            "rate": ext / int(ge.sum()) if ge.any() else None,
            "images_extracted": images,
            "recall": images / sizes[g] if sizes.get(g) else None,
            "mean_similarity": _mean(result.similarity[ge]),
            "copies_other": int(result.copies_other[ge].sum()),
        }
    return out


def _left_out(result: AttackResult) -> int | None:
    """Held-out controls that would count as extracted had they been left out of the calibration.

    With separate calibration images the held-out controls are already out of sample: None.
    """
    if (result.calibration is None or result.decision.margin_calibration is None
            or result.is_calibration is not None):
        return None
    own, held = result.similarity, ~result.is_candidate
    gap = own - result.measures["other_similarity"]
    return int(left_out_passes(METRICS[result.metric], own, gap, held, result.calibration.fpr).sum())


def strong_summary(iar: IAR, plan: Plan | None, result: AttackResult, strong: StrongResult) -> dict[str, Any]:
    """What the strong attack adds: images per group, those the default missed, per-try counts."""
    taken = strong.extracted_ids
    default = np.setdiff1d(result.extracted_ids(), calibration_ids(result))  # the strong attack never sees those
    heldout_ids = plan.heldout_ids if plan is not None else np.empty(0, dtype=np.int64)
    groups = group_of(plan, taken)
    kinds = [strong.tries[strong.weakest[int(i)]].kind for i in taken]
    return {
        "tries": len(strong.tries),
        "extracted": int(len(np.setdiff1d(taken, heldout_ids))),
        "extracted_ids": [int(i) for i in np.setdiff1d(taken, heldout_ids)],
        "by_group": {g: int(np.sum(groups == g)) for g in GROUPS if np.any(groups == g)},
        "heldout_false_positives": int(np.isin(taken, heldout_ids).sum()),
        "heldout_left_out_false_positives": int(strong.left_out.sum()) if strong.left_out is not None else None,
        "calibration": strong.rules.as_dict() if strong.rules is not None else None,
        "calibration_false_positives": strong.calibration_passes if strong.rules is not None else None,
        "beyond_default": [int(i) for i in np.setdiff1d(taken, default)],
        "default_not_found": [int(i) for i in np.setdiff1d(default, taken)],
        "weakest_kind": {k: kinds.count(k) for k in dict.fromkeys(kinds)},
        "per_try": strong.per_try,
        "timing": {k: round(v, 3) for k, v in strong.timing.items()},
    }


def strong_table(ds: ImageDataset, plan: Plan | None, iar: IAR, result: AttackResult,
                 strong: StrongResult) -> list[dict[str, str]]:
    """strong.csv: every target, held-out control and image some try extracted, with its weakest try."""
    default = set(result.extracted_ids().tolist())
    ids = np.union1d(strong.ids, strong.extracted_ids)
    rows = []
    for i, g in zip(ids.tolist(), group_of(plan, ids)):
        k = strong.weakest.get(i)
        t = strong.tries[k] if k is not None else None
        rows.append({key: _fmt(v) for key, v in {
            "id": i, "class": ds.classes[int(ds.labels[i])], "group": g,
            "target": bool(np.isin(i, strong.ids[~strong.is_heldout])), "default_extracted": i in default,
            "strong_extracted": k is not None, "weakest_try": t.describe(iar) if t else None,
            "kind": t.kind if t else None, "prefix": t.prefix if t else None,
            "via_prompt": strong.via.get(i), "similarity": strong.similarity.get(i)}.items()})
    return rows


def summarize(iar: IAR, ds: ImageDataset, plan: Plan | None, s: AttackSettings, sel: Selection,
              scores: dict[str, np.ndarray], result: AttackResult, source: dict[str, Any] | None,
              world_size: int, strong: StrongResult | None = None) -> dict[str, Any]:
    """summary.json: the headline, the decision rule, rates per group and class, and how it was run."""
    cand = result.is_candidate
    groups = by_group(plan, scores, result)
    taken = result.extracted_ids()
    heldout_ids = plan.heldout_ids if plan is not None else np.empty(0, dtype=np.int64)
    calib = calibration_ids(result)
    leaked = np.setdiff1d(taken, np.union1d(heldout_ids, calib))  # training images; the others are false positives
    n, k = int(cand.sum()), len(leaked)
    planted = int(np.isin(taken, plan.planted_ids).sum()) if plan is not None else None
    by_class = {}
    for c in np.unique(result.labels[cand]):
        m = cand & (result.labels == c)
        by_class[ds.classes[int(c)]] = {"candidates": int(m.sum()), "extracted": int((result.extracted & m).sum())}
    notes = []
    if result.calibration is not None and len(calib):
        notes.append(f"threshold and margin were calibrated on {len(calib)} never-trained images outside the plan "
                     "(their rate is at most the chosen false-positive rate by construction); the held-out images "
                     "are judged out of sample")
    elif result.calibration is not None:
        notes.append("threshold and margin were calibrated on the held-out images, so their rate is at most the "
                     "chosen false-positive rate by construction")
    if plan is None:
        notes.append("no planting manifest: no ground truth, every image is in group 'other'")
    return {
        "model": source,
        "data": ds.describe(),
        "candidates": n,
        "extracted": k,
        "extracted_rate": k / n if n else None,
        "extracted_ids": [int(i) for i in leaked],
        "heldout_false_positives": int(np.isin(taken, heldout_ids).sum()),
        "heldout_left_out_false_positives": _left_out(result),
        "calibration_images": len(calib),
        "calibration_false_positives": int(np.isin(taken, calib).sum()),
        "precision": planted / len(taken) if planted is not None and len(taken) else None,
        "metric": result.metric,
        "metric_description": METRICS[result.metric].what,
        "threshold": result.threshold,
        "threshold_rule": result.decision.threshold_rule,
        "margin": result.decision.margin if np.isfinite(result.decision.margin) else None,
        "margin_rule": result.decision.margin_rule,
        "other_threshold": result.decision.other_bar,
        "calibration": result.calibration.as_dict() if result.calibration is not None else None,
        "margin_calibration": (result.decision.margin_calibration.as_dict()
                               if result.decision.margin_calibration is not None else None),
        "decision": result.decision.text(result.metric),
        "pool": int(result.timing.get("pool", 0)),
        "rates": {g: groups[g]["rate"] for g in ("planted", "ordinary", "heldout", "calibration") if g in groups},
        "by_group": groups,
        "by_class": by_class,
        "copies_other": {"candidates": int((result.copies_other & cand).sum()),
                         "heldout": int((result.copies_other & ~cand).sum())},
        "membership": evaluate_membership(scores, plan),
        "strong": strong_summary(iar, plan, result, strong) if strong is not None else None,
        "scoring": {"subset": sel.subset, "scored": len(scores["id"]), "heldout_controls": len(sel.heldout),
                    "calibration_images": len(sel.calibration),
                    "positions": describe_positions(iar, s.last), "score_by": s.score_by,
                    "selection": "explicit --ids" if s.ids is not None else
                    f"top {s.top} {'per class' if s.per_class else 'overall'}"},
        "prefix": {"steps": result.prefix, "tokens": result.prefix_tokens, "rule": result.prefix_rule,
                   "mean_prefix_background": _mean(result.measures["prefix_background"])},
        "generation": {"greedy": True, "cfg": None, "logit_noise": s.logit_noise, "seed": s.seed},
        "notes": notes,
        "settings": s.as_dict(),
        "world_size": world_size,
        "timing": {k: round(v, 3) for k, v in result.timing.items()},
    }


# ---- figure ------------------------------------------------------------------------------------------
def write_figure(path: Path, iar: IAR, s: AttackSettings, result: AttackResult) -> None:
    """The extracted candidates, most similar first; when none is, the closest candidates, titled so."""
    cand = np.nonzero(result.is_candidate)[0]
    sims = np.nan_to_num(result.similarity[cand], nan=-np.inf)
    order = cand[np.lexsort((result.ids[cand], -sims))]
    ext = order[result.extracted[order]]
    m = result.decision.margin
    rule = f"{result.metric} > {result.threshold:.3g}" + (f", margin {m:.3g} over the nearest other"
                                                          if m > -np.inf else "")
    k, n = len(ext), len(cand)
    if k:
        show = ext[: s.figure_pairs]
        title = f"extracted {k} of {n} candidates ({rule}); each pair: reconstruction | generation"
    else:
        show = order[: s.figure_pairs]
        title = f"no candidate extracted ({rule}); the {len(show)} closest pairs: reconstruction | generation"
    decode01 = decoder(iar)
    rec, gen = decode01(result.gt[show]), decode01(result.gen[show])
    captions = [f"{int(result.ids[i])}  {result.similarity[i]:.3f}" for i in show]
    save_pairs(path, rec, gen, captions, title)


def write_all(out: Path, iar: IAR, ds: ImageDataset, plan: Plan | None, s: AttackSettings,
              scores: dict[str, np.ndarray], result: AttackResult, summary: dict[str, Any],
              strong: StrongResult | None = None) -> None:
    write_csv(out / CANDIDATES_FILE, table(ds, plan, s, scores, result))
    if strong is not None:
        write_csv(out / STRONG_FILE, strong_table(ds, plan, iar, result, strong))
    write_figure(out / FIGURE_FILE, iar, s, result)
    write_json(out / SUMMARY_FILE, summary)
