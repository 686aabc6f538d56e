"""Reading a UnitMem map: where the top units sit, and which images drive them.

Units are ranked by their largest UnitMem over bins (the mitigation default); (unit, bin) pairs
are ranked by their own UnitMem. The top p % is the round(p/100 * count) best (at least one), ties
broken towards the earlier layer and unit (a stable sort): with fc1 alone tapped these are exactly
the units `iarmem mitigate --top p` edits by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from iarmem.data import ImageDataset, Plan
from iarmem.localize.results import UnitMemMap
from iarmem.models.base import grid_begin_ends
from iarmem.plans import group_of

PERCENTS = (1, 5, 10)
GROUPS = ("planted", "ordinary", "heldout", "other")
NO_OWNER = "none"  # the group of a unit whose maximum is tied: no image owns it


def bin_labels(grids: tuple[tuple[int, int], ...], bins_L: Tensor) -> list[str]:
    """Names of the bins: "HxW" for a bin that is one whole scale of a multi-scale model, else token
    ranges (positions of bin -1 are left out and get no name)."""
    bins = np.asarray(bins_L, dtype=np.int64)
    scales = {(b, e): f"{h}x{w}" for (h, w), (b, e) in zip(grids, grid_begin_ends(grids))} if len(grids) > 1 else {}
    out = []
    for k in range(int(bins.max()) + 1):
        pos = np.nonzero(bins == k)[0]
        contiguous = pos[-1] - pos[0] + 1 == len(pos)
        scale = scales.get((int(pos[0]), int(pos[-1]) + 1)) if contiguous else None
        out.append(scale or (f"tokens {pos[0]}-{pos[-1]}" if contiguous else f"bin {k} ({len(pos)} tokens)"))
    return out


@dataclass(frozen=True)
class UnitRanking:
    """Every unit of every tapped layer, flat: its layer, best bin, score and driving image."""

    layer_U: np.ndarray  # index into layout.layers
    unit_U: np.ndarray
    best_bin_U: np.ndarray
    score_U: np.ndarray  # max UnitMem over bins
    image_U: np.ndarray  # argmax image at the best bin (-1: tied, owned by no image)
    order_U: np.ndarray  # indices of the above, best first

    def top(self, percent: float) -> np.ndarray:
        return self.order_U[:percent_count(len(self.order_U), percent)]


def percent_count(total: int, percent: float) -> int:
    """p % of n rounded to nearest, at least 1 (any p > 0 takes something): the count that
    `iarmem mitigate --top p` edits and the summaries report."""
    return min(total, max(1, math.floor(total * percent / 100 + 0.5)))


def rank_units(result: UnitMemMap) -> UnitRanking:
    layer, unit, best, score, image = [], [], [], [], []
    for i, slot in enumerate(result.layout.layers):
        um_KU = result.layer(slot.name, "unitmem")
        arg_KU = result.layer(slot.name, "argmax")
        k_U = um_KU.argmax(axis=0)
        layer.append(np.full(slot.width, i))
        unit.append(np.arange(slot.width))
        best.append(k_U)
        score.append(um_KU.max(axis=0))
        image.append(arg_KU[k_U, np.arange(slot.width)])
    score_U = np.concatenate(score).astype(np.float64)
    return UnitRanking(np.concatenate(layer), np.concatenate(unit), np.concatenate(best), score_U,
                       np.concatenate(image), np.argsort(-score_U, kind="stable"))


def per_layer_bin(result: UnitMemMap) -> list[list[float]]:
    """Mean UnitMem over the units of each (layer, bin)."""
    return [result.layer(s.name, "unitmem").astype(np.float64).mean(axis=1).tolist() for s in result.layout.layers]


def top_shares(result: UnitMemMap, ranking: UnitRanking, percents: tuple[float, ...] = PERCENTS) -> list[dict]:
    """Share of the global top-p % units in each layer, and of the top-p % (unit, bin) pairs in each
    (layer, bin)."""
    n_layers, K = len(result.layout.layers), result.layout.num_bins
    pair_um = np.concatenate([result.layer(s.name, "unitmem").astype(np.float64).T.reshape(-1)
                              for s in result.layout.layers])  # layer-major, unit, then bin
    pair_layer = np.concatenate([np.full(s.width * K, i) for i, s in enumerate(result.layout.layers)])
    pair_bin = np.concatenate([np.tile(np.arange(K), s.width) for s in result.layout.layers])
    pair_order = np.argsort(-pair_um, kind="stable")
    out = []
    for p in percents:
        top = ranking.top(p)
        per_layer = np.bincount(ranking.layer_U[top], minlength=n_layers) / len(top)
        ptop = pair_order[:percent_count(len(pair_order), p)]
        cells = np.zeros((n_layers, K))
        np.add.at(cells, (pair_layer[ptop], pair_bin[ptop]), 1.0)
        out.append({"percent": p, "units": int(len(top)), "per_layer": _round(per_layer.tolist()),
                    "pairs": int(len(ptop)), "per_layer_bin": _round((cells / len(ptop)).tolist()),
                    "min_unitmem": float(ranking.score_U[top[-1]])})
    return out


def top_images(result: UnitMemMap, ranking: UnitRanking, ds: ImageDataset, plan: Plan | None,
               percent: float = 1, limit: int = 16) -> list[dict[str, Any]]:
    """The images that are the argmax of the most top-p % units, most first (ties: smaller id); units
    whose maximum is tied belong to no image and count for none."""
    top = ranking.top(percent)
    owners = ranking.image_U[top]
    ids, counts = np.unique(owners[owners >= 0], return_counts=True)
    order = np.lexsort((ids, -counts))[:limit]
    groups = group_of(plan, ids[order])
    out = []
    for j, g in zip(order, groups):
        i = int(ids[j])
        label = int(ds.labels[i])
        out.append({"id": i, "units": int(counts[j]), "share": round(float(counts[j]) / len(top), 6),
                    "label": label, "class": ds.classes[label] if label < len(ds.classes) else str(label),
                    "group": str(g), "source": ds.source_id(i)})
    return out


def group_evidence(result: UnitMemMap, ranking: UnitRanking, plan: Plan | None,
                   percents: tuple[float, ...] = PERCENTS) -> list[dict[str, Any]] | None:
    """How many top-p % units have a planted / ordinary / held-out argmax image, against chance.

    Chance is the share of each group among the N localized images: what a unit whose argmax
    were a uniformly random image would give. Units whose maximum is tied are counted as "none"
    (chance 0). None without a planting manifest.
    """
    if plan is None:
        return None
    image_groups = group_of(plan, result.image_ids)
    names = (*GROUPS, NO_OWNER)
    expected = {g: float(np.mean(image_groups == g)) for g in names}
    out = []
    for p in percents:
        top = ranking.top(p)
        owners = ranking.image_U[top]
        unit_groups = np.where(owners < 0, NO_OWNER, group_of(plan, owners))
        counts = {g: int(np.sum(unit_groups == g)) for g in names}
        shares = {g: counts[g] / len(top) for g in names}
        out.append({"percent": p, "units": int(len(top)), "counts": counts, "shares": _round(shares),
                    "expected_shares": _round(expected),
                    "lift": {g: (round(shares[g] / expected[g], 3) if expected[g] > 0 else None) for g in names},
                    "distinct_images": {g: int(len(np.unique(ranking.image_U[top][unit_groups == g])))
                                        for g in GROUPS}})
    return out


def _round(x: Any, nd: int = 6) -> Any:
    if isinstance(x, dict):
        return {k: _round(v, nd) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v, nd) for v in x]
    return round(float(x), nd)


def views_text(summary: dict[str, Any]) -> str:
    """Which views were averaged per image, in words."""
    views = summary.get("views") or []
    span = f"views {views[0]}-{views[-1]}" if len(views) > 1 else f"view {views[0]}" if views else "views"
    if summary.get("view_source") == "trained":
        return f"{len(views)} trained {span} (seed {summary.get('view_seed')}, as in training)"
    return f"{len(views)} augmentation {span} (seed {summary.get('view_seed', '?')})"


def describe(summary: dict[str, Any]) -> list[str]:
    """A few lines for the terminal: where the top units sit and which images drive them."""
    names = [layer["name"] for layer in summary["layers"]]
    labels = summary["bins"]["labels"]
    lines = [f"UnitMem ({summary['stat']} of the others) over {summary['num_images']} images x "
             f"{views_text(summary)}, {len(names)} layers x {len(labels)} bins"
             + (f" ({summary['excluded_positions']} class-only position(s) left out)"
                if summary.get("excluded_positions") else "")]
    if summary.get("tied_units"):
        lines.append(f"{summary['tied_units']} (unit, bin) columns have a tied maximum: owned by no image")
    plb = np.asarray(summary["per_layer_bin"])
    i, k = np.unravel_index(int(np.argmax(plb)), plb.shape)
    lines.append(f"highest mean UnitMem: {plb[i, k]:.3f} in {names[i]} at {labels[k]}")
    for entry in summary["top_shares"]:
        share = np.asarray(entry["per_layer"])
        best = np.argsort(-share, kind="stable")[:3]
        where = ", ".join(f"{names[j]} {share[j]:.0%}" for j in best if share[j] > 0)
        cells = np.asarray(entry["per_layer_bin"])
        ci, ck = np.unravel_index(int(np.argmax(cells)), cells.shape)
        lines.append(f"top {entry['percent']}% units ({entry['units']}): {where}; most (unit, bin) pairs in "
                     f"{names[ci]} at {labels[ck]} ({cells[ci, ck]:.0%})")
    if summary["top_images"]:
        imgs = ", ".join(f"{t['id']} ({t['group']}, class {t['class']}: {t['units']} unit{'s' * (t['units'] != 1)})"
                         for t in summary["top_images"][:5])
        lines.append(f"images driving the most top-1% units: {imgs}")
    for g in summary.get("groups") or []:
        if g["percent"] == 1:
            parts = ", ".join(f"{name} {g['shares'][name]:.1%} (chance {g['expected_shares'][name]:.1%})"
                              for name in ("planted", "ordinary", "heldout"))
            lines.append(f"argmax images of the top-1% units: {parts}")
    return lines


def evidence_table(summary: dict[str, Any], name: str = "") -> str:
    """Markdown rows of ``summary["groups"]``: per top p %, the share of units whose argmax image is
    planted / ordinary / held out, against chance (empty without a planting manifest)."""
    rows = []
    for g in summary.get("groups") or []:
        cells = " | ".join(f"{g['shares'][k]:.1%} ({g['counts'][k]}; chance {g['expected_shares'][k]:.1%})"
                           for k in ("planted", "ordinary", "heldout"))
        rows.append(f"| {name} | {summary['subset']} ({summary['num_images']}) | {summary['stat']} | "
                    f"{g['percent']}% ({g['units']}) | {cells} | {g['distinct_images']['planted']} |")
    return "\n".join(rows)
