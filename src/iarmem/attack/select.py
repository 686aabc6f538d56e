"""Which images the attack generates: the top-scoring per class, the global top, or a given list.

Scores tie often (top-1 accuracy over 64 tokens takes 65 values), so the ranking is by the score,
then by the mean ground-truth probability, then by the smaller id: one order on every machine
and for any number of processes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from iarmem.errors import UserError

SCORES = ("top1", "gt_prob", "loss")


def rank_order(ids: np.ndarray, score: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """Positions into ``ids`` from most to least suspicious (higher score first)."""
    return np.lexsort((np.asarray(ids), -np.asarray(tiebreak, dtype=np.float64),
                       -np.asarray(score, dtype=np.float64)))


def ranking_key(table: dict[str, np.ndarray], by: str = "top1") -> tuple[np.ndarray, np.ndarray]:
    """(score, tiebreak) arrays with 'higher = more likely memorized' (loss is negated)."""
    if by not in SCORES:
        raise UserError(f"unknown candidate score {by!r}; choose one of {', '.join(SCORES)}")
    score = -table["loss"] if by == "loss" else table[by]
    tiebreak = table["gt_prob"] if by != "gt_prob" else -table["loss"]
    return score, tiebreak


def select_top(ids: np.ndarray, labels: np.ndarray, score: np.ndarray, tiebreak: np.ndarray, top: int,
               per_class: bool = True) -> np.ndarray:
    """The ``top`` best ids per class (or overall), sorted by id."""
    if top < 1:
        raise UserError(f"--top must be >= 1, got {top}")
    ids, labels = np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    order = rank_order(ids, score, tiebreak)
    if not per_class:
        return np.sort(ids[order[:top]])
    chosen = []
    for c in np.unique(labels):
        pos = order[labels[order] == c]
        chosen.append(ids[pos[:top]])
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def parse_ids(spec: str, num_images: int) -> np.ndarray:
    """``--ids``: a comma list ("3,17,42") or a file of ids (whitespace / comma separated, # comments)."""
    p = Path(spec)
    if p.is_file():
        lines = [ln.split("#", 1)[0] for ln in p.read_text(encoding="utf-8").splitlines()]
        text, where = " ".join(lines), str(p)
    elif "," in spec or spec.strip().lstrip("-").isdigit():
        text, where = spec, "--ids"
    else:
        raise UserError(f"--ids {spec!r}: no such file, and not a comma list of image ids; pass ids like 3,17,42 "
                        f"or the path of a file of ids")
    parts = [t for t in text.replace(",", " ").split() if t]
    try:
        ids = np.array([int(t) for t in parts], dtype=np.int64)
    except ValueError as e:
        raise UserError(f"{where}: image ids must be integers ({e})") from None
    if len(ids) == 0:
        raise UserError(f"{where} lists no image ids")
    bad = ids[(ids < 0) | (ids >= num_images)]
    if len(bad):
        raise UserError(f"{where}: image id {int(bad[0])} is not in the dataset (ids 0..{num_images - 1})")
    return np.unique(ids)
