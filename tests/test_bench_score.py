"""Recall of injected units in a localizer's top k %, on a hand-made localization with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from iarmem.bench.score import recall_at, score_injection
from iarmem.mitigate.forget import image_ranking
from iarmem.mitigate.localization import LayerInfo, Localization


def _loc() -> Localization:
    # two layers of 10 units, two bins; unit scores are the max over bins
    um = {"a": np.zeros((2, 10), np.float32), "b": np.zeros((2, 10), np.float32)}
    am = {"a": np.full((2, 10), 7, np.int64), "b": np.full((2, 10), 7, np.int64)}
    um["a"][1, :] = np.arange(10) / 100  # a.9 scores 0.09 ... a.0 scores 0
    um["b"][0, :] = 0.5 + np.arange(10) / 100  # every b unit beats every a unit; b.9 best
    am["a"][1, [2, 5]] = 3  # image 3 owns a.2 and a.5 in their peak bin
    am["b"][1, 4] = 3  # ...and b.4 only in a bin that is not its peak: not its owner
    am["b"][0, 1] = 3  # and b.1 in its peak bin
    layers = (LayerInfo("a", "fc1", 0, 10), LayerInfo("b", "fc1", 1, 10))
    return Localization(None, {}, {}, layers, um, am, np.array([3, 7]), ("x", "y"))


def test_per_image_names_the_owned_units_by_score_and_global_ranks_all() -> None:
    loc = _loc()
    scores, order = image_ranking(loc, 3, "per_image")
    assert scores.to_units(order) == {"a": (2, 5), "b": (1,)}
    assert list(order) == [11, 5, 2]  # b.1 (0.51), a.5 (0.05), a.2 (0.02)
    _, order = image_ranking(loc, 3, "global")
    assert list(order[:3]) == [19, 18, 17] and len(order) == 20
    with pytest.raises(ValueError):
        image_ranking(loc, 3, "sideways")


def test_recall_counts_the_truth_in_the_first_k_percent() -> None:
    order = np.array([5, 1, 9, 0, 2])
    assert recall_at(order, np.array([5, 1]), 10, 20) == 1.0  # top 2 of 20 units
    assert recall_at(order, np.array([1, 0]), 10, 20) == 0.5
    assert recall_at(order, np.array([1, 0]), 5, 20) == 0.0  # top 1
    assert recall_at(order[:1], np.array([5, 0]), 50, 20) == 0.5  # fewer named than k: what is named


def test_score_injection_reports_both_readings_and_chance() -> None:
    s = score_injection(_loc(), 3, {"a": (5,), "b": (1,)}, (10.0,))
    assert s["per_image_named"] == 3 and s["per_image_recall_at_10"] == 1.0  # both among its top 2
    assert s["global_recall_at_10"] == 0.0  # the global top 2 are b.9 and b.8
    assert s["random_recall_at_10"] == pytest.approx(0.1)


def _scored(width: int, blocks: int, scores: dict[str, np.ndarray], owner: int) -> Localization:
    layers = tuple(LayerInfo(f"blocks.{b}.mlp.fc1", "fc1", b, width) for b in range(blocks))
    um = {la.name: scores[la.name][None].astype(np.float32) for la in layers}
    am = {la.name: np.full((1, width), owner, np.int64) for la in layers}
    return Localization(None, {}, {}, layers, um, am, np.array([owner]), ("all",))


@pytest.mark.parametrize("k", [1.0, 2.0])
def test_a_localizer_naming_the_injected_units_scores_1_and_a_random_one_scores_k_percent(k: float) -> None:
    width, blocks, rate = 512, 4, 2.0
    rng = np.random.default_rng(0)
    recalls = []
    for trial in range(200):
        truth = {f"blocks.{b}.mlp.fc1": tuple(np.sort(rng.choice(width, int(width * rate / 100), replace=False)))
                 for b in range(blocks)}
        perfect = {n: np.isin(np.arange(width), u).astype(float) + rng.random(width) * 0.1 for n, u in truth.items()}
        noise = {n: rng.random(width) for n in truth}
        if trial < 3:
            s = score_injection(_scored(width, blocks, perfect, 9), 9, truth, (k,))
            want = min(1.0, k / rate)  # k < r names fewer units than were injected
            assert s["global_recall_at_" + f"{k:g}"] == want and s["per_image_recall_at_" + f"{k:g}"] == want
        recalls.append(score_injection(_scored(width, blocks, noise, 9), 9, truth, (k,))[f"global_recall_at_{k:g}"])
    assert np.mean(recalls) == pytest.approx(k / 100, abs=0.004)  # chance: k % (200 draws of 40 units)
