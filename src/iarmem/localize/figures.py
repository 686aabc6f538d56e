"""Figures of a UnitMem run (matplotlib, Agg backend, PNG written atomically).

- heatmap.png: mean UnitMem per block x bin, one panel per unit kind (VAR bins are its scales).
- blocks.png: mean UnitMem per block, one line per bin (raster families: per group of bins).
- top_images.png: the images that drive the most top-1% units, labelled id / class / group.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from iarmem.data import to_pil
from iarmem.fileio import atomic_path
from iarmem.plotting import pyplot

MAX_LINES = 8


def _save(fig: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)


def _by_kind(layers: Sequence[dict], per_layer_bin: np.ndarray) -> dict[str, tuple[list[int], np.ndarray]]:
    out: dict[str, tuple[list[int], np.ndarray]] = {}
    for kind in dict.fromkeys(layer["kind"] for layer in layers):
        rows = [i for i, layer in enumerate(layers) if layer["kind"] == kind]
        out[kind] = ([layers[i]["block"] for i in rows], per_layer_bin[rows])
    return out


def heatmap(summary: dict[str, Any], path: str | os.PathLike) -> None:
    """Mean UnitMem of every (block, bin), one panel per unit kind."""
    plb = np.asarray(summary["per_layer_bin"], dtype=np.float64)
    labels = summary["bins"]["labels"]
    panels = _by_kind(summary["layers"], plb)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(1.2 + 0.55 * len(labels) * len(panels) + 1.5,
                                                      1.5 + 0.35 * max(len(b) for b, _ in panels.values())),
                             squeeze=False)
    for ax, (kind, (blocks, grid)) in zip(axes[0], panels.items()):
        im = ax.imshow(grid, aspect="auto", cmap="viridis", origin="upper")
        ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 6 else 0, ha="right", fontsize=8)
        ax.set_yticks(range(len(blocks)), [str(b) for b in blocks], fontsize=8)
        ax.set_xlabel("scale" if summary["family"] == "var" else "token bin")
        ax.set_ylabel("block")
        ax.set_title(f"mean UnitMem ({kind})", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    _save(fig, path)


def _bin_groups(num_bins: int, max_lines: int = MAX_LINES) -> list[list[int]]:
    if num_bins <= max_lines:
        return [[k] for k in range(num_bins)]
    edges = np.linspace(0, num_bins, max_lines + 1).round().astype(int)
    return [list(range(a, b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _group_label(first: str, last: str) -> str:
    """"tokens 0-3" + "tokens 4-7" -> "tokens 0-7"; other labels -> "first .. last"."""
    if first == last:
        return first
    a, b = re.fullmatch(r"tokens (\d+)-(\d+)", first), re.fullmatch(r"tokens (\d+)-(\d+)", last)
    return f"tokens {a.group(1)}-{b.group(2)}" if a and b else f"{first} .. {last}"


def block_curves(summary: dict[str, Any], path: str | os.PathLike) -> None:
    """Mean UnitMem per block: one line per bin (or bin group), and the mean over bins in black."""
    plb = np.asarray(summary["per_layer_bin"], dtype=np.float64)
    labels = summary["bins"]["labels"]
    panels = _by_kind(summary["layers"], plb)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    groups = _bin_groups(len(labels))
    colors = plt.cm.viridis(np.linspace(0, 0.95, len(groups)))
    for ax, (kind, (blocks, grid)) in zip(axes[0], panels.items()):
        for g, c in zip(groups, colors):
            name = _group_label(labels[g[0]], labels[g[-1]])
            ax.plot(blocks, grid[:, g].mean(axis=1), marker="o", ms=3, color=c, label=name)
        ax.plot(blocks, grid.mean(axis=1), color="black", lw=2, label="all bins")
        ax.set_xticks(blocks if len(blocks) <= 16 else blocks[::max(1, len(blocks) // 12)])
        ax.set_xlabel("block")
        ax.set_ylabel("mean UnitMem")
        ax.set_title(kind, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(fig, path)


def image_grid(images01_B3HW: Tensor, captions: Sequence[str], path: str | os.PathLike, ncol: int = 8) -> None:
    """A labelled grid of images in [0, 1]."""
    n = len(captions)
    if n == 0:
        return
    ncol = min(ncol, n)
    nrow = -(-n // ncol)
    plt = pyplot()
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.6 * ncol, 1.9 * nrow), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, cap in zip(axes.flat, images01_B3HW, captions):
        ax.imshow(to_pil(img))
        ax.set_title(cap, fontsize=7)
    _save(fig, path)
