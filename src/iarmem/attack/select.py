"""Which images the attack generates: the top-scoring per class, the global top, or a given list.

Scores tie often (top-1 accuracy over 64 tokens takes 65 values), so the ranking is by the score,
then by the mean ground-truth probability, then by the smaller id: one order on every machine
and for any number of processes.
"""

from __future__ import annotations

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
