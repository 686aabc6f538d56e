"""The repair's quality guard reads the mean FID and class accuracy over the same sampling seeds, seed for seed."""

from __future__ import annotations

import pytest

from iarmem.quality_guard import mean_fid, mean_of, paired_change, refusal, relative_fid


def test_the_change_is_between_means_over_the_same_seeds() -> None:
    before = {"fid": 3.0, "fid_draws": [3.0, 2.0, 4.0]}  # mean 3.0
    edit = {"fid": 4.2, "fid_draws": [4.2, 2.1, 3.3]}  # one unlucky first draw; mean 3.2
    assert mean_fid(edit) == pytest.approx(3.2)
    assert relative_fid(edit, before) == pytest.approx(0.2 / 3.0)  # the first draws alone would read +40 %
    assert relative_fid(before, before) == 0.0


def test_one_draw_each_when_the_draws_do_not_pair() -> None:
    before = {"fid": 2.0, "fid_draws": [2.0, 2.5, 1.5]}
    old = {"fid": 2.2}  # a measurement journalled before every measurement drew its seeds
    assert mean_fid(old) == 2.2 and relative_fid(old, before) == pytest.approx(0.1)
    assert relative_fid({"fid": 2.2, "fid_draws": [2.2, 9.0]}, before) == pytest.approx(0.1)
    assert relative_fid({"fid": 1.0}, {"fid": 0.0}) == float("inf")


def test_class_accuracy_is_read_as_its_mean_over_the_draws_too() -> None:
    assert mean_of({"class_accuracy": 0.9, "class_accuracy_draws": [0.9, 0.8, 0.7]}, "class_accuracy") == \
        pytest.approx(0.8)
    assert mean_of({"class_accuracy": 0.9}, "class_accuracy") == 0.9
    assert mean_of({"fid": 2.0}, "class_accuracy") is None


def test_a_paired_change_comes_with_its_standard_error() -> None:
    before = {"class_accuracy": 0.45, "class_accuracy_draws": [0.45, 0.40, 0.50]}
    edit = {"class_accuracy": 0.41, "class_accuracy_draws": [0.41, 0.38, 0.42]}  # changes -4, -2, -8 points
    m, se = paired_change(edit, before, "class_accuracy")
    assert m == pytest.approx(-0.0467, abs=1e-4) and se == pytest.approx(0.0176, abs=1e-4)  # sd 3.06 / sqrt(3)
    assert paired_change({"class_accuracy": 0.5}, before, "class_accuracy") == (pytest.approx(0.05), None)
    assert paired_change({"fid": 2.0}, before, "class_accuracy") is None


def test_the_guard_refuses_a_fall_in_class_accuracy_that_fid_lets_through() -> None:
    before = {"fid": 3.0, "fid_draws": [3.0, 3.0, 3.0], "class_accuracy": 0.80,
              "class_accuracy_draws": [0.80, 0.78, 0.82]}
    cheap = {"fid": 3.1, "fid_draws": [3.1, 3.0, 3.2], "class_accuracy": 0.76,
             "class_accuracy_draws": [0.76, 0.73, 0.76]}  # FID +3.3 %; accuracy -5 points
    assert refusal(cheap, before, 0.10, None) is None  # FID alone: within the guard
    why = refusal(cheap, before, 0.10, 2.0)
    assert why is not None and "-5.0 +- 0.6 points of class accuracy" in why and "FID" not in why
    assert refusal(cheap, before, 0.10, 5.5) is None  # a 5-point fall is within a 5.5-point bar
    costly = cheap | {"fid_draws": [3.9, 3.9, 3.9]}
    why = refusal(costly, before, 0.10, 2.0)
    assert why is not None and why.startswith("30.0 % FID, over --max-quality-loss 10 %") and "class accuracy" in why
    no_classifier = {"fid": 3.1, "fid_draws": [3.1, 3.0, 3.2]}  # judged on FID alone
    assert refusal(no_classifier, {"fid": 3.0, "fid_draws": [3.0, 3.0, 3.0]}, 0.10, 2.0) is None
    better = cheap | {"class_accuracy_draws": [0.90, 0.88, 0.90]}  # a rise is never refused
    assert refusal(better, before, 0.10, 0.0) is None
