"""Membership inference from the teacher-forced pass: was an image in the training set?

Kowalczuk et al. (2025) find IARs very vulnerable to membership inference, and sharpen the loss
signal with classifier-free guidance: a model that learned an image predicts its tokens much better
with its class than without. Two per-image scores over all L tokens, higher = more likely a member:

- ``mia_loss``: mean log-likelihood of the ground-truth tokens given the class (minus the loss; the
  loss attack of Yeom et al.);
- ``mia_cfg``: mean of log p(token | class) - log p(token | no class), the guidance difference.

They are judged against the held-out images of a planting manifest (never trained on): ROC AUC (the
probability that a member scores above a held-out image, ties counting half) and the TPR at a
false-positive rate of at most 1 %, whose resolution is 1 / (number of held-out images).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from iarmem.attack.decide import calibrate
from iarmem.attack.scoring import gt_logprob
from iarmem.data import Plan

STATISTICS = ("mia_loss", "mia_cfg")
FPR = 0.01


def membership_scores(logits_cond_BLV: Tensor, logits_uncond_BLV: Tensor, ids_BL: Tensor) -> dict[str, Tensor]:
    """Per image, the two membership scores from the conditional and unconditional teacher-forced logits."""
    cond_BL, uncond_BL = gt_logprob(logits_cond_BLV, ids_BL), gt_logprob(logits_uncond_BLV, ids_BL)
    return {"mia_loss": cond_BL.mean(1).cpu(), "mia_cfg": (cond_BL - uncond_BL).mean(1).cpu()}


def roc_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(member score > non-member score) + P(equal) / 2, from the Mann-Whitney rank sum."""
    m, n = len(members), len(nonmembers)
    if m == 0 or n == 0:
        return float("nan")
    from scipy.stats import rankdata  # on first use: importing scipy.stats takes ~1.5 s

    ranks = rankdata(np.concatenate([members, nonmembers]))  # ties get their average rank
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float = FPR) -> dict[str, float]:
    """The share of members above the smallest threshold that at most ``fpr`` of the non-members pass."""
    cal = calibrate(nonmembers, fpr)
    return {"tpr": float(np.mean(np.asarray(members) > cal.threshold)) if len(members) else float("nan"),
            "threshold": cal.threshold, "fpr": cal.heldout_above / cal.heldout, "resolution": cal.resolution}


def evaluate_membership(scores: dict[str, np.ndarray], plan: Plan | None) -> dict[str, Any] | None:
    """Per statistic and member group (planted, ordinary, all members): AUC and TPR at 1 % FPR against the
    held-out images. None without a plan or without scored held-out images."""
    if plan is None:
        return None
    ids = scores["id"]
    held = np.isin(ids, plan.heldout_ids)
    if not held.any():
        return None
    groups = {"planted": np.isin(ids, plan.planted_ids), "ordinary": np.isin(ids, plan.ordinary_ids)}
    groups["members"] = groups["planted"] | groups["ordinary"]
    out: dict[str, Any] = {"heldout": int(held.sum()), "fpr": FPR, "fpr_resolution": 1 / int(held.sum())}
    for stat in STATISTICS:
        if stat not in scores or np.isnan(np.asarray(scores[stat], dtype=np.float64)).all():
            continue
        s = np.asarray(scores[stat], dtype=np.float64)
        out[stat] = {g: {"n": int(m.sum()), "auc": roc_auc(s[m], s[held]), **tpr_at_fpr(s[m], s[held])}
                     for g, m in groups.items() if m.any()}
    return out
