"""The repair's quality guard reads the mean FID and class accuracy over the same sampling seeds, seed for seed."""

from __future__ import annotations

import pytest

from iarmem.quality_guard import (
    mean_fid,
    mean_of,
    noise_floor,
    paired_change,
    refusal,
    relative_fid,
    relative_fid_se,
    unsettled,
)


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
    assert relative_fid({"fid": 1.0}, {"fid": 0.0}) == float("inf")


def test_draws_of_unequal_length_pair_on_the_seeds_both_drew() -> None:
    """Seeds are drawn in the same order everywhere, and a verdict near a bar draws more: the common prefix is
    the set of seeds both records hold."""
    before = {"fid": 2.0, "fid_draws": [2.0, 2.5, 1.5, 3.0, 1.0, 2.0]}  # drew three more for another edit
    edit = {"fid": 2.2, "fid_draws": [2.2, 2.6, 1.8]}
    assert relative_fid(edit, before) == pytest.approx((6.6 - 6.0) / 6.0)  # the first three seeds: +10 %
    acc = paired_change({"class_accuracy_draws": [0.5, 0.6]}, {"class_accuracy_draws": [0.4, 0.4, 0.9]},
                        "class_accuracy")
    assert acc is not None and acc[0] == pytest.approx(0.15)


def test_a_verdict_within_two_standard_errors_of_a_bar_is_unsettled() -> None:
    before = {"fid": 3.0, "fid_draws": [3.0, 3.0, 3.0]}
    near = {"fid_draws": [3.6, 3.0, 3.3]}  # +10 %, per-seed changes 20 / 0 / 10 %: se 5.8 %
    assert relative_fid(near, before) == pytest.approx(0.1)
    assert relative_fid_se(near, before) == pytest.approx(0.0577, abs=1e-4)
    assert unsettled(near, before, 0.10, None)
    assert not unsettled(near, before, 0.30, None)  # 0.1 + 2 x 0.058 < 0.3: clearly within
    far = {"fid_draws": [4.2, 4.5, 4.8]}  # +50 % +- 5.8 %: clearly over
    assert not unsettled(far, before, 0.10, None)
    tight = {"fid_draws": [3.27, 3.33, 3.3]}  # +10 % +- 0.6 %: settled either way at a 15 % or 5 % bar
    assert not unsettled(tight, before, 0.15, None) and not unsettled(tight, before, 0.05, None)
    assert not unsettled({"fid": 3.3}, {"fid": 3.0}, 0.10, None)  # one draw each: nothing to pair
    # accuracy: -2 points +- 1.2 at a 2-point bar, FID far inside its own: unsettled by accuracy alone
    b = before | {"class_accuracy_draws": [0.80, 0.80, 0.80]}
    e = {"fid_draws": [3.0, 3.0, 3.0], "class_accuracy_draws": [0.78, 0.76, 0.80]}
    assert unsettled(e, b, 0.10, 2.0) and not unsettled(e, b, 0.10, None)
    # a change clearly over one bar is settled (refused) though the other is near its own
    assert not unsettled(far | {"class_accuracy_draws": [0.78, 0.76, 0.80]}, b, 0.10, 2.0)


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


def test_draws_without_a_classifier_are_not_paired() -> None:
    no_cls = {"class_accuracy": None, "class_accuracy_draws": [None, None, None], "fid_draws": [3.0, 3.0, 3.0]}
    assert paired_change(no_cls, no_cls, "class_accuracy") is None
    assert refusal(no_cls | {"fid_draws": [3.1, 3.0, 3.0]}, no_cls, 0.10, 2.0) is None


def test_a_standard_error_of_three_draws_is_floored_by_the_unedited_model_s_own_spread() -> None:
    """Three paired changes of -6, -6, -4 points read -5.3 +- 0.7: clearly over a 2-point bar by their own error.
    The unedited model's draws spread 4 points (0.80, 0.76, 0.84), so one paired change spreads about 5.7 and three
    draws about 3.3: the verdict could flip (tiny-rar s2 inj. 0: three seeds -6.0 +- 1.2, nine -2.3)."""
    before = {"fid_draws": [3.0, 3.0, 3.0], "class_accuracy_draws": [0.80, 0.76, 0.84]}
    edit = {"fid_draws": [3.0, 3.0, 3.0], "class_accuracy_draws": [0.74, 0.70, 0.80]}
    floor = noise_floor(before)
    assert floor["class_accuracy"] == pytest.approx(2 ** 0.5 * 0.04) and floor["fid"] == 0.0
    assert not unsettled(edit, before, 0.10, 2.0)  # its own error: clearly over, settled
    assert unsettled(edit, before, 0.10, 2.0, floor=floor)
    # far enough over, the floor settles nothing: -20 points against an error of at most 3.3
    far = {"fid_draws": [3.0, 3.0, 3.0], "class_accuracy_draws": [0.60, 0.56, 0.64]}
    assert not unsettled(far, before, 0.10, 2.0, floor=floor)
    # FID: the floor is relative, from the unedited draws' relative spread
    assert noise_floor({"fid_draws": [2.0, 3.0, 4.0]})["fid"] == pytest.approx(2 ** 0.5 * 1.0 / 3.0)
    assert noise_floor({"fid": 3.0}) == {}  # one draw: no spread to floor by
