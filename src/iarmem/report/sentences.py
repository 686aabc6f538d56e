"""The one generated sentence per UnitMem map: where the most memorizing units sit.

Computed from a localize run's summary.json, never written by hand: ``top_shares`` says in which
blocks the top p % units sit and at which bins their top (unit, bin) pairs lie, ``groups`` which
kind of image drives them (the planting ground truth) against chance, and ``top_images`` which
single image drives most of them when there is no ground truth (official checkpoints).
"""

from __future__ import annotations

import math
import re
from typing import Any

BLOCK_COVER = 0.6  # blocks are named until they hold this share of the top units (at most 3, half the blocks)
BIN_COVER = 0.5  # the narrowest run of bins holding this share of the top pairs is named


def pct(x: float) -> str:
    """A share as a rounded percentage; tiny non-zero shares stay visible as <1%."""
    if 0 < x < 0.005:
        return "<1%"
    return f"{100 * x:.0f}%"


def _top_entry(summary: dict[str, Any], percent: float) -> dict[str, Any] | None:
    tops = summary.get("top_shares") or []
    return next((t for t in tops if t.get("percent") == percent), tops[0] if tops else None)


def _layer_blocks(summary: dict[str, Any], n: int) -> list[int]:
    layers = summary.get("layers") or []
    if len(layers) == n and all(isinstance(lay.get("block"), int) for lay in layers):
        return [lay["block"] for lay in layers]
    return list(range(n))


def _is_scales(summary: dict[str, Any], labels: list[str]) -> bool:
    return summary.get("family") == "var" or all(re.fullmatch(r"\d+x\d+", str(s)) for s in labels)


def _block_phrase(shares: dict[int, float], all_blocks: list[int]) -> tuple[str, list[int]]:
    ranked = sorted(shares, key=lambda b: (-shares[b], b))
    chosen: list[int] = []
    for b in ranked[:min(3, max(1, len(all_blocks) // 2))]:  # naming most of the blocks says nothing
        chosen.append(b)
        if sum(shares[c] for c in chosen) >= BLOCK_COVER:
            break
    last = max(all_blocks) if all_blocks else 0

    def name(b: int) -> str:
        where = "the first, " if b == 0 and last > 0 else "the last, " if b == last and last > 0 else ""
        return f"block {b} ({where}{pct(shares[b])})"

    if sum(shares[c] for c in chosen) < BLOCK_COVER:
        return f"spread over the blocks, most in {name(ranked[0])}", ranked  # bins: over all blocks
    if len(chosen) == 1:
        return f"mostly in {name(chosen[0])}", chosen
    return "mostly in " + ", ".join(name(b) for b in chosen[:-1]) + f" and {name(chosen[-1])}", chosen


def _window(shares: list[float]) -> tuple[int, int, float]:
    """The narrowest run of bins holding BIN_COVER of the mass (ties: more mass, then earlier)."""
    total = sum(shares)
    n = len(shares)
    for width in range(1, n + 1):
        best = max((sum(shares[i:i + width]), -i) for i in range(n - width + 1))
        if best[0] >= BIN_COVER * total - 1e-12:
            i = -best[1]
            return i, i + width - 1, best[0] / total if total else 0.0
    return 0, n - 1, 1.0


def bin_range(labels: list[str], i: int, j: int, scales: bool) -> str:
    """'scale 4x4', 'scales 4x4-6x6', 'tokens 32-63' or 'bins A to B'."""
    a, b = str(labels[i]), str(labels[j])
    if scales:
        return f"scale {a}" if i == j else f"scales {a}-{b}"
    m1, m2 = re.fullmatch(r"(.*?)(\d+)-(\d+)", a), re.fullmatch(r"(.*?)(\d+)-(\d+)", b)
    if i == j:
        return a
    if m1 and m2 and m1.group(1) == m2.group(1):
        return f"{m1.group(1)}{m1.group(2)}-{m2.group(3)}"
    return f"{a} to {b}"


def _bin_phrase(summary: dict[str, Any], top: dict[str, Any], blocks: list[int], chosen: list[int]) -> str:
    labels = list((summary.get("bins") or {}).get("labels") or [])
    grid = top.get("per_layer_bin") or []
    if not labels or not grid:
        return ""
    rows = [row for row, b in zip(grid, blocks) if b in chosen] or grid
    shares = [sum(float(r[k]) for r in rows) for k in range(len(labels))]
    if sum(shares) <= 0:
        return ""
    scales = _is_scales(summary, labels)
    i, j, mass = _window(shares)
    if j - i + 1 <= max(2, math.ceil(len(labels) / 3)):
        text = f", at {bin_range(labels, i, j, scales)} ({pct(mass)})"
        if i == 0 and shares[0] / sum(shares) >= 0.2:
            what = "scale" if scales else "bin"
            text += f" (the first {what} sees only the class label, so there UnitMem measures class selectivity)"
        return text
    k = max(range(len(shares)), key=lambda q: shares[q])
    where = "scales" if scales else "token positions"
    return f", spread over the {where} (most at {bin_range(labels, k, k, scales)}, {pct(shares[k] / sum(shares))})"


def _driver_clause(summary: dict[str, Any], percent: float) -> str:
    groups = summary.get("groups") or []
    g = next((x for x in groups if x.get("percent") == percent), None)
    if g is not None:
        share = (g.get("shares") or {}).get("planted")
        chance = (g.get("expected_shares") or {}).get("planted")
        if share is not None and chance:
            if share == 0:
                return f"; none of them is driven by a planted image (chance {pct(chance)})"
            return f"; {pct(share)} of them are driven by planted images (chance {pct(chance)})"
    tops = summary.get("top_images") or []
    if tops and isinstance(tops[0], dict) and tops[0].get("share") is not None:
        t = tops[0]
        cls = f", class {t['class']}" if t.get("class") not in (None, "") else ""
        if t["share"] >= 0.2:
            return f"; one image (id {t.get('id')}{cls}) drives {pct(t['share'])} of them"
        return f"; no single image drives more than {pct(t['share'])} of them"
    return ""


def _fallback(summary: dict[str, Any], name: str) -> str | None:
    """Without top_shares: the cell of highest mean UnitMem."""
    grid = summary.get("per_layer_bin") or []
    cells = [(float(v), li, k) for li, row in enumerate(grid) for k, v in enumerate(row) if v is not None]
    if not cells:
        return None
    v, li, k = max(cells)
    blocks = _layer_blocks(summary, len(grid))
    labels = list((summary.get("bins") or {}).get("labels") or [])
    at = f" at {bin_range(labels, k, k, _is_scales(summary, labels))}" if k < len(labels) else ""
    return f"In {name} the highest mean UnitMem ({v:.2f}) is in block {blocks[li]}{at}."


def where_sentence(summary: dict[str, Any], name: str, percent: float = 1) -> str | None:
    """One sentence on where the top ``percent`` % units of a UnitMem map sit and what drives them."""
    top = _top_entry(summary, percent)
    per_layer = (top or {}).get("per_layer") or []
    if not per_layer or sum(per_layer) <= 0:
        return _fallback(summary, name)
    blocks = _layer_blocks(summary, len(per_layer))
    shares: dict[int, float] = {}
    for b, s in zip(blocks, per_layer):
        shares[b] = shares.get(b, 0.0) + float(s)
    p = top.get("percent", percent)
    total_units = sum(int(lay.get("width") or 0) for lay in summary.get("layers") or [])
    count = f" ({top['units']:,} of {total_units:,})" if top.get("units") and total_units else ""
    where, chosen = _block_phrase(shares, sorted(set(blocks)))
    return (f"In {name} the top {p:g}% units{count} sit {where}"
            f"{_bin_phrase(summary, top, blocks, chosen)}{_driver_clause(summary, p)}.")
