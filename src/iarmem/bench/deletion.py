"""Causal deletion (DEL, after Chang et al. 2024) on data-level memorization.

For every memorized image (planted, reproduced by the greedy attack from the default prefix), a
localizer names its units; the first b % of the model's fc1 units in that list are removed
(exact zero) and the attack is run again on every memorized image: is this image still
reproduced (self), are the others (neg), and how far does the held-out loss move (cost). The
control removes as many units from the same layers at random, over several seeds. A localizer
that finds where an image is stored removes self at a small budget and leaves neg alone; random
units of the same count should not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from iarmem.attack.generate import agreements
from iarmem.bench.inject import random_like, teacher_forced_loss
from iarmem.bench.score import bootstrap_interval
from iarmem.localize.summary import percent_count
from iarmem.mitigate.edit import temporary_edit
from iarmem.mitigate.forget import image_ranking
from iarmem.mitigate.localization import Localization
from iarmem.models.base import IAR, Tokens

BUDGETS = (0.1, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class DelSettings:
    budgets: tuple[float, ...] = BUDGETS  # percent of all fc1 units
    controls: int = 5  # random same-count, same-layer draws per (image, budget)
    bar: float = 0.9  # token agreement that counts as reproduced (the attack's absolute bar)
    reading: str = "per_image"
    quality_images: int = 2  # FID / class accuracy for the first few images' edits (localizer and one random draw)


def _measure(iar: IAR, mem: Tokens, mem_labels: Tensor, i: int, held: Tokens, held_labels: Tensor,
             bar: float) -> dict[str, float]:
    agree = agreements(iar, mem, mem_labels)
    others = torch.cat([agree[:i], agree[i + 1:]])
    return {"self_agreement": float(agree[i]), "self_kept": float(agree[i] > bar),
            "neg_kept": float((others > bar).float().mean()) if len(others) else float("nan"),
            "heldout_loss": teacher_forced_loss(iar, held, held_labels)}


def run_deletion(iar: IAR, loc: Localization, ids: np.ndarray, tokens: Tokens, labels: Tensor, held: Tokens,
                 held_labels: Tensor, s: DelSettings, seed: int,
                 quality: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Records per (memorized image, budget, variant) and the unedited reference.

    ``ids`` / ``tokens`` / ``labels``: the candidate images (planted); those the unedited model
    reproduces are the memorized set every edit is judged on. ``quality`` (FID, class accuracy of
    the model as it is) runs on the unedited model and, for the first ``s.quality_images`` images,
    on the localizer's edit and the first random draw at every budget.
    """
    base = agreements(iar, tokens, labels)
    keep = base > s.bar
    mem_ids, mem = ids[keep.numpy()], Tokens(tokens.ids_BL[keep], iar.grids)
    mem_labels = labels[keep]
    reference = {"memorized": [int(x) for x in mem_ids], "candidates": len(ids),
                 "heldout_loss": teacher_forced_loss(iar, held, held_labels),
                 **(_quality(quality) if quality is not None else {})}
    records = []
    for i, image in enumerate(mem_ids.tolist()):
        scores, order = image_ranking(loc, image, s.reading)
        total = len(scores.flat)
        for b in s.budgets:
            named = order[:percent_count(total, b)]
            if len(named) == 0:
                continue
            units = scores.to_units(named)
            variants = [("localizer", units)] + [
                (f"random{c}", random_like(iar, units, np.random.default_rng([seed, image, round(b * 1000), c])))
                for c in range(s.controls)]
            for name, chosen in variants:
                with temporary_edit(iar, chosen, "exact", 0.0):
                    m = _measure(iar, mem, mem_labels, i, held, held_labels, s.bar)
                    if quality is not None and i < s.quality_images and name in ("localizer", "random0"):
                        m |= _quality(quality)
                records.append({"image": image, "budget": b, "variant": name, "units": int(len(named)), **m})
    return {"reference": reference, "records": records}


def _quality(quality: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    q = quality()
    return {"fid": q["fid"], "class_accuracy": q["class_accuracy"]}


def summarize_deletion(result: dict[str, Any], budgets: Sequence[float], seed: int) -> list[dict[str, Any]]:
    """Per budget: the localizer's and the random controls' self / neg removal and held-out loss change."""
    from_ref = result["reference"]["heldout_loss"]
    rows = []
    for b in budgets:
        row: dict[str, Any] = {"budget": b}
        for kind in ("localizer", "random"):
            rs = [r for r in result["records"] if r["budget"] == b and r["variant"].startswith(kind)]
            if not rs:
                continue
            per_image: dict[int, list[dict]] = {}
            for r in rs:
                per_image.setdefault(r["image"], []).append(r)
            self_removed = [1 - np.mean([r["self_kept"] for r in v]) for v in per_image.values()]
            neg_removed = [1 - np.mean([r["neg_kept"] for r in v]) for v in per_image.values()
                           if np.isfinite(np.mean([r["neg_kept"] for r in v]))]
            dloss = [np.mean([r["heldout_loss"] for r in v]) - from_ref for v in per_image.values()]
            row[kind] = {
                "images": len(per_image), "units_mean": float(np.mean([r["units"] for r in rs])),
                "self_removed": float(np.mean(self_removed)),
                "self_removed_ci95": list(bootstrap_interval(self_removed, seed)),
                "neg_removed": float(np.mean(neg_removed)) if neg_removed else None,
                "neg_removed_ci95": list(bootstrap_interval(neg_removed, seed)) if neg_removed else None,
                "heldout_loss_change": float(np.mean(dloss)),
                "self_agreement": float(np.mean([r["self_agreement"] for r in rs])),
                **_quality_change(rs, result["reference"], seed),
            }
        rows.append(row)
    return rows


def _quality_change(rs: list[dict[str, Any]], reference: dict[str, Any], seed: int) -> dict[str, Any]:
    """FID and class-accuracy change against the unedited model, over the records that measured them."""
    q = [r for r in rs if "fid" in r]
    if not q or "fid" not in reference:
        return {}
    dfid = [r["fid"] - reference["fid"] for r in q]
    out: dict[str, Any] = {"quality_edits": len(q), "fid_change": float(np.mean(dfid)),
                           "fid_change_ci95": list(bootstrap_interval(dfid, seed))}
    if reference.get("class_accuracy") is not None:
        out["class_accuracy_change"] = float(np.mean([r["class_accuracy"] - reference["class_accuracy"] for r in q]))
    return out
