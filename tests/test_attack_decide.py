"""The leak decision: metric choice, threshold checks, calibration on held-out similarities, controls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from iarmem.attack.decide import calibrate, check_threshold, choose_metric, copies_other, decide_rule, extracted
from iarmem.attack.neighbours import TokenCache, nearest_other, token_similarity
from iarmem.attack.settings import AttackSettings
from iarmem.errors import UserError


def test_calibration_with_few_heldout_images_allows_none() -> None:
    sims = np.array([0.2, 0.61, 0.35, 0.5, 0.1])  # 5 images: 1% allows 0 -> threshold = max
    cal = calibrate(sims, 0.01)
    assert cal.threshold == 0.61 and cal.allowed == 0 and cal.heldout_above == 0
    assert cal.resolution == pytest.approx(0.2)
    assert not extracted(sims, cal.threshold).any()
    assert "5 held-out" in cal.rule() and "20.00%" in cal.rule()


def test_calibration_allows_the_fpr_share() -> None:
    sims = np.linspace(0.0, 0.99, 200)  # 200 images at 1%: 2 may pass -> the 3rd largest
    cal = calibrate(sims, 0.01)
    assert cal.allowed == 2 and cal.threshold == pytest.approx(sims[-3])
    assert extracted(sims, cal.threshold).sum() == 2
    # the smallest such threshold: anything lower lets a third one through
    assert extracted(sims, np.nextafter(cal.threshold, -1)).sum() == 3
    cal10 = calibrate(sims, 0.1)
    assert cal10.allowed == 20 and extracted(sims, cal10.threshold).sum() == 20


def test_calibration_with_ties_and_nans() -> None:
    sims = np.array([0.9, 0.9, 0.9, np.nan, 0.3])
    cal = calibrate(sims, 0.3)  # 4 valid values, floor(1.2) = 1 allowed -> 2nd largest = 0.9
    assert cal.heldout == 4 and cal.threshold == 0.9 and cal.heldout_above == 0
    with pytest.raises(UserError, match="held-out"):
        calibrate(np.array([]), 0.01)
    with pytest.raises(UserError, match="rate"):
        calibrate(sims, 1.0)


def test_metric_choice_and_threshold_ranges() -> None:
    assert choose_metric(None, set()).name == "tokens"
    assert choose_metric(None, {"features"}).name == "features"
    assert choose_metric(None, {"features", "sscd"}).name == "sscd"
    assert choose_metric("tokens", {"sscd"}).name == "tokens"
    with pytest.raises(UserError, match="unknown metric"):
        choose_metric("lpips", set())
    with pytest.raises(UserError, match="--sscd"):
        choose_metric("sscd", set())
    with pytest.raises(UserError, match="outside"):
        check_threshold(choose_metric("ssim", set()), 1.5)
    with pytest.raises(UserError, match="outside"):
        check_threshold(choose_metric("tokens", set()), -0.1)
    assert check_threshold(choose_metric("psnr", set()), 35.0) == 35.0
    with pytest.raises(UserError, match="outside"):
        AttackSettings(threshold=2.0).validate()
    with pytest.raises(UserError, match="not both"):
        AttackSettings(threshold=0.5, calibrate=True).validate()
    with pytest.raises(UserError, match="--top"):
        AttackSettings(top=0).validate()
    with pytest.raises(UserError, match="--metric sscd needs"):
        AttackSettings(metric="sscd").validate()
    with pytest.raises(UserError, match="not found"):
        AttackSettings(sscd="/nonexistent/sscd.pt").validate()


def test_extracted_is_strictly_above_and_never_nan() -> None:
    assert extracted(np.array([0.75, 0.7500001, math.nan]), 0.75).tolist() == [False, True, False]


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_nearest_other_is_the_best_other_pool_image_in_any_chunking(chunk: int) -> None:
    rng = np.random.default_rng(chunk)
    pool = np.array([2, 5, 8, 9, 13, 21, 34])
    items = torch.from_numpy(rng.integers(0, 3, (len(pool), 6)))  # few values: many ties
    queries = np.array([5, 9, 40])  # 40 is not in the pool
    gen = torch.from_numpy(rng.integers(0, 3, (3, 6)))
    sim = token_similarity(gen, 1)
    full = (gen[:, None, 1:] == items[None, :, 1:]).float().mean(-1).double().numpy()  # [queries, pool]
    best, best_id = nearest_other(queries, pool, lambda ids: items[np.searchsorted(pool, ids)], sim, chunk=chunk)
    for q, qid in enumerate(queries):
        allowed = pool != qid
        want = full[q][allowed].max()
        assert best[q] == want
        assert best_id[q] == pool[allowed][np.flatnonzero(full[q][allowed] == want)[0]]  # ties: the smaller id
    none, none_id = nearest_other(np.array([2]), np.array([2]), lambda ids: items[:1], token_similarity(gen[:1], 1))
    assert none[0] == -np.inf and none_id[0] == -1


def test_prompt_specific_decision_and_copies_of_another_image() -> None:
    own = np.array([0.95, 0.95, 0.5, 0.6, np.nan])
    other = np.array([0.4, 0.9, 0.96, 0.55, 0.97])
    # a copy of its prompt: above 0.8 and closer to it than to any other by more than 0.1
    assert copies_other(other, own, 0.8, 0.1).tolist() == [True, False, False, False, False]
    # a copy of another image: the other image above 0.8 and closer by more than 0.1 (NaN own: no own match)
    assert copies_other(own, other, 0.8, 0.1).tolist() == [False, False, True, False, True]
    assert copies_other(own, other, 0.8).tolist() == [False, False, True, False, True]  # margin 0 as before


def test_threshold_and_margin_are_calibrated_on_held_out_with_a_floor() -> None:
    tokens = choose_metric("tokens", set())
    own = np.array([1.0, 0.9, 0.5, 0.55, 0.45, 0.6])
    gap = np.array([0.5, 0.3, -0.1, -0.2, 0.05, 0.02])
    held = np.array([False, False, True, True, True, True])
    d = decide_rule(tokens, own, gap, held, calibrate_on=True, fpr=0.01, threshold=None, margin=None)
    assert d.threshold == 0.6 and d.margin == 0.1  # held-out max gap 0.05 is below the floor 0.1
    assert d.other_bar == 0.9  # a copy of the nearest of many images must clear the fixed bar too
    assert d.calibration is not None and d.margin_calibration.threshold == 0.05
    wide = np.array([0.5, 0.3, -0.1, -0.2, 0.25, 0.02])
    assert decide_rule(tokens, own, wide, held, calibrate_on=True, fpr=0.01, threshold=None, margin=None).margin == 0.25
    fixed = decide_rule(tokens, own, gap, held, calibrate_on=False, fpr=0.01, threshold=None, margin=None)
    assert (fixed.threshold, fixed.margin, fixed.calibration, fixed.other_bar) == (0.9, 0.1, None, 0.9)
    absolute = decide_rule(tokens, own, gap, held, calibrate_on=False, fpr=0.01, threshold=0.7, margin=-math.inf)
    assert absolute.margin == -math.inf and "nearest" not in absolute.text("tokens")
    assert AttackSettings().calibrates(20) and not AttackSettings().calibrates(0)
    assert not AttackSettings(threshold=0.8).calibrates(20) and not AttackSettings(calibrate=False).calibrates(20)


def test_token_cache_serves_what_it_holds_and_tokenizes_the_rest() -> None:
    calls: list[list[int]] = []

    def tokenize(ids: np.ndarray) -> torch.Tensor:
        calls.append(ids.tolist())
        return torch.as_tensor(np.stack([np.full(3, i) for i in ids]))

    cache = TokenCache(budget_bytes=4 * 3 * 2)  # room for two rows of 3 int32 tokens
    cache.add(np.array([5]), torch.tensor([[5, 5, 5]]))
    out = cache.load(np.array([7, 5, 9]), tokenize)
    assert out.tolist() == [[7] * 3, [5] * 3, [9] * 3] and calls == [[7, 9]]
    assert set(cache.rows) == {5, 7}  # 9 did not fit the budget
    assert cache.load(np.array([5, 7]), tokenize).tolist() == [[5] * 3, [7] * 3] and calls == [[7, 9]]
    cache.load(np.array([9]), tokenize)
    assert calls == [[7, 9], [9]]
