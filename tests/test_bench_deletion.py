"""Causal deletion on a model whose memorized image sits in known units.

An unseen sequence is injected into a briefly trained tiny-var through units A; a localization that
names A for it is the perfect localizer. DEL must then report: removing its units removes the copy
(self), as many random units of the same layers do not, and a candidate the model never memorized
is left out of the judged set. (Two injected images are not independent enough for a neg test: the
second injection, keeping the first copy in its batches, makes its units carry part of the first.)
"""

from __future__ import annotations

import numpy as np
import pytest
from trained import injected_var

from iarmem.bench.deletion import DelSettings, run_deletion, summarize_deletion
from iarmem.bench.inject import random_like, teacher_forced_loss
from iarmem.mitigate.localization import LayerInfo, Localization
from iarmem.models import Tokens

pytestmark = pytest.mark.all_threads


def _perfect(iar, owners: dict[int, dict[str, tuple[int, ...]]]) -> Localization:
    layers = tuple(LayerInfo(la.name, "fc1", la.block, la.width) for la in iar.unit_layers(("fc1",)))
    um = {la.name: np.zeros((1, la.width), np.float32) for la in layers}
    am = {la.name: np.full((1, la.width), 999, np.int64) for la in layers}
    for rank, (image, units) in enumerate(owners.items()):
        for name, idx in units.items():
            um[name][0, list(idx)] = 1.0 - 0.1 * rank
            am[name][0, list(idx)] = image
    return Localization(None, {}, {}, layers, um, am, np.array(sorted(owners) + [999]), ("all",))


def test_deleting_an_images_units_removes_it_and_random_units_do_not() -> None:
    iar, seqs, labels, keep, keep_labels, a, _, _ = injected_var()
    rng = np.random.default_rng(1)
    held = Tokens(keep.ids_BL[:4], iar.grids)

    loc = _perfect(iar, {10: a, 20: random_like(iar, a, rng)})
    calls = []

    def quality() -> dict:  # stands in for FID: a number that moves with the model as edited now
        calls.append(1)
        return {"fid": teacher_forced_loss(iar, seqs, labels), "class_accuracy": 0.5}

    result = run_deletion(iar, loc, np.array([10, 20]), seqs, labels, held, keep_labels[:4],
                          DelSettings(budgets=(2.0,), controls=3), seed=0, quality=quality)
    assert len(calls) == 3  # the unedited model, then the localizer's edit and the first random draw
    ref = result["reference"]
    assert ref["fid"] == pytest.approx(teacher_forced_loss(iar, seqs, labels)) and ref["class_accuracy"] == 0.5
    assert result["reference"]["memorized"] == [10]  # the second sequence was never learned
    by = {(r["image"], r["variant"]): r for r in result["records"]}
    assert {image for image, _ in by} == {10}
    mine = by[(10, "localizer")]
    assert mine["units"] == 40 and mine["self_kept"] == 0.0 and np.isnan(mine["neg_kept"]), mine
    assert mine["self_agreement"] < 0.5
    assert all(by[(10, f"random{c}")]["self_kept"] == 1.0 for c in range(3))
    (row,) = summarize_deletion(result, (2.0,), seed=0)
    assert row["localizer"]["self_removed"] == 1.0 and row["localizer"]["neg_removed"] is None
    assert row["random"]["self_removed"] == 0.0 and row["random"]["images"] == 1
    assert by[(10, "localizer")]["fid"] != ref["fid"]  # measured under the edit, not after it
    assert "fid" in by[(10, "random0")] and "fid" not in by[(10, "random1")]
    assert row["localizer"]["fid_change"] == pytest.approx(by[(10, "localizer")]["fid"] - ref["fid"])
    assert row["localizer"]["quality_edits"] == 1 and row["localizer"]["class_accuracy_change"] == 0.0
