"""Membership inference: AUC and TPR at a fixed FPR against definitions computed pair by pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iarmem.attack.membership import evaluate_membership, membership_scores, roc_auc, tpr_at_fpr
from iarmem.data import make_plan


def _auc_by_pairs(pos: np.ndarray, neg: np.ndarray) -> float:
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_is_the_pairwise_win_rate(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pos, neg = rng.integers(0, 6, 40).astype(float), rng.integers(0, 5, 25).astype(float)  # many ties
    assert roc_auc(pos, neg) == pytest.approx(_auc_by_pairs(pos, neg), abs=1e-12)
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0]), np.array([1.0])) == 0.5


def test_tpr_at_fpr_takes_the_members_above_every_allowed_nonmember() -> None:
    neg = np.arange(200, dtype=float)  # 1 % of 200: two non-members may pass
    pos = np.array([196.5, 197.5, 198.5, 250.0])
    r = tpr_at_fpr(pos, neg, 0.01)
    assert r["threshold"] == 197.0 and r["tpr"] == 0.75 and r["fpr"] == 0.01 and r["resolution"] == 1 / 200
    small = tpr_at_fpr(pos, np.array([1.0, 198.0]), 0.01)  # 2 non-members: none may pass
    assert small["threshold"] == 198.0 and small["tpr"] == 0.5 and small["fpr"] == 0.0


def test_scores_from_logits() -> None:
    V = 4
    ids = torch.tensor([[0, 1]])
    cond = torch.log(torch.tensor([[[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]]))
    uncond = torch.log(torch.full((1, 2, V), 0.25))
    s = membership_scores(cond, uncond, ids)
    assert s["mia_loss"].item() == pytest.approx((np.log(0.7) + np.log(0.25)) / 2, rel=1e-6)
    assert s["mia_cfg"].item() == pytest.approx((np.log(0.7) - np.log(0.25)) / 2, rel=1e-6)


def test_evaluation_per_group_against_held_out() -> None:
    labels = np.repeat(np.arange(10), 30)
    plan = make_plan(labels, num_train=40, plant=10, copies=2, seed=0)
    ids = np.sort(np.concatenate([plan.planted_ids, plan.ordinary_ids, plan.heldout_ids]))
    score = np.where(np.isin(ids, plan.planted_ids), 5.0, np.where(np.isin(ids, plan.ordinary_ids), 1.0, 0.0))
    score = score + np.random.default_rng(0).normal(0, 0.1, len(ids))
    out = evaluate_membership({"id": ids, "mia_loss": score}, plan)
    assert out["heldout"] == len(plan.heldout_ids) and "mia_cfg" not in out
    assert out["mia_loss"]["planted"]["auc"] == 1.0 and out["mia_loss"]["planted"]["tpr"] == 1.0
    assert out["mia_loss"]["ordinary"]["n"] == len(plan.ordinary_ids)
    assert 0.9 < out["mia_loss"]["ordinary"]["auc"] <= 1.0
    assert evaluate_membership({"id": ids, "mia_loss": score}, None) is None


def test_scores_skipped_by_the_sweep_are_not_evaluated() -> None:
    labels = np.repeat(np.arange(10), 30)
    plan = make_plan(labels, num_train=40, plant=10, copies=2, seed=0)
    ids = np.sort(np.concatenate([plan.planted_ids, plan.heldout_ids]))
    out = evaluate_membership({"id": ids, "mia_loss": np.full(len(ids), np.nan)}, plan)
    assert out is not None and "mia_loss" not in out
