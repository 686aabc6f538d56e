"""Small extra figures the report draws itself (PNG bytes in memory, never written to disk)."""

from __future__ import annotations

import io
from collections.abc import Sequence

from iarmem.plotting import pyplot

RATE_COLORS = {"planted": "#c0392b", "ordinary": "#7f8c8d", "heldout": "#2e86c1"}


def extraction_bars(labels: Sequence[str], extracted: Sequence[int], candidates: Sequence[int],
                    rates: Sequence[dict[str, float | None]]) -> bytes:
    """Extracted images per model variant (left) and the per-group extraction rates (right)."""
    plt = pyplot()

    n = len(labels)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7.2, 0.9 + 0.42 * n + 0.6), dpi=110,
                                   gridspec_kw={"width_ratios": [1, 1.2]})
    ys = list(range(n))[::-1]
    ax1.barh(ys, extracted, color="#34495e")
    for y, k, c in zip(ys, extracted, candidates):
        ax1.text(k, y, f" {k}/{c}", va="center", fontsize=8)
    ax1.set_yticks(ys, labels, fontsize=8)
    ax1.set_xlabel("extracted images", fontsize=8)
    ax1.set_xlim(0, max([*candidates, 1]) * 1.25)
    groups = [g for g in RATE_COLORS if any(r.get(g) is not None for r in rates)]
    h = 0.8 / max(len(groups), 1)
    for gi, g in enumerate(groups):
        vals = [100 * (r.get(g) or 0.0) for r in rates]
        ax2.barh([y + 0.4 - h * (gi + 0.5) for y in ys], vals, height=h, color=RATE_COLORS[g],
                 label=g.replace("heldout", "held-out"))
    ax2.set_yticks(ys, [""] * n)
    ax2.set_xlim(0, 105)
    ax2.set_xlabel("extracted / generated (%)", fontsize=8)
    if groups:
        ax2.legend(fontsize=7, loc="lower right")
    for ax in (ax1, ax2):
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
