"""Candidate selection and --ids parsing on hand-made score tables."""

from __future__ import annotations

import numpy as np
import pytest

from iarmem.attack.select import ranking_key, select_top
from iarmem.errors import UserError

# ids 10..19; classes 0,0,0,1,1,1,1,2,2,2
IDS = np.arange(10, 20)
LABELS = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
TOP1 = np.array([0.5, 0.9, 0.9, 0.1, 0.8, 0.3, 0.8, 0.2, 0.2, 0.95])
GT_PROB = np.array([0.1, 0.2, 0.6, 0.1, 0.5, 0.2, 0.4, 0.3, 0.3, 0.1])
LOSS = np.array([3.0, 2.0, 0.4, 5.0, 0.5, 2.5, 0.9, 1.5, 1.5, 0.1])
TABLE = {"id": IDS, "label": LABELS, "top1": TOP1, "gt_prob": GT_PROB, "loss": LOSS}


def _pick(by: str, top: int, per_class: bool) -> list[int]:
    score, tiebreak = ranking_key(TABLE, by)
    return select_top(IDS, LABELS, score, tiebreak, top, per_class).tolist()


def test_per_class_top_n_with_tie_breaks() -> None:
    # class 0: 11 and 12 tie on top1 (0.9); 12 has the larger gt_prob -> 12 first
    assert _pick("top1", 1, True) == [12, 14, 19]
    # class 1: 14 and 16 tie on top1, 14 has the larger gt_prob; class 2: 17 and 18 tie on both -> smaller id
    assert _pick("top1", 2, True) == [11, 12, 14, 16, 17, 19]
    # a class with fewer images than top contributes them all
    assert _pick("top1", 4, True) == IDS.tolist()


def test_global_top_n() -> None:
    assert _pick("top1", 3, False) == [11, 12, 19]
    assert _pick("gt_prob", 2, False) == [12, 14]
    assert _pick("loss", 2, False) == [12, 19]  # lowest loss first


def test_top_must_be_positive() -> None:
    score, tiebreak = ranking_key(TABLE, "top1")
    with pytest.raises(UserError, match="--top"):
        select_top(IDS, LABELS, score, tiebreak, 0)
    with pytest.raises(UserError, match="score"):
        ranking_key(TABLE, "accuracy")


