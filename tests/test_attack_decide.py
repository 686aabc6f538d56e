"""The leak decision: metric choice, threshold checks, calibration on held-out similarities, controls."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iarmem.attack.control import best_other
from iarmem.attack.decide import calibrate, check_threshold, choose_metric, copies_other, extracted
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


def test_best_other_and_copies_other() -> None:
    ids = np.array([1, 2, 3, 4, 5])
    labels = np.array([0, 0, 0, 1, 1])
    reference = np.array([True, True, False, True, False])  # 3 and 5 are held out
    # sim[i, j]: generation i vs reconstruction j
    sim = np.array([[1.0, 0.2, 0.0, 0.0, 0.0],
                    [0.9, 0.3, 0.0, 0.0, 0.0],
                    [0.95, 0.1, 0.4, 0.0, 0.0],
                    [0.0, 0.0, 0.0, 0.8, 0.0],
                    [0.0, 0.0, 0.0, 0.5, 0.6]])
    other, other_id = best_other(lambda i, j: sim[np.ix_(i, j)], ids, labels, reference)
    # row 0 (id 1): others of class 0 among references: id 2 -> 0.2; row 3 (id 4): no other reference -> NaN
    np.testing.assert_allclose(other, [0.2, 0.9, 0.95, np.nan, 0.5])
    assert other_id.tolist() == [2, 1, 1, -1, 4]
    own = sim.diagonal()
    assert copies_other(own, other, 0.75).tolist() == [False, True, True, False, False]
