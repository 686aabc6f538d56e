"""The repair's quality guard reads the mean FID over the same sampling seeds, seed for seed."""

from __future__ import annotations

import pytest

from iarmem.quality_guard import mean_fid, mean_of, paired_change, relative_fid


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
