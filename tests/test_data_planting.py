"""Planting plans: disjoint sets, held-out matched to planted, epoch index, manifest round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iarmem.data import make_plan, read_manifest, write_manifest
from iarmem.errors import UserError

LABELS = np.repeat(np.arange(10), 500)


def _disjoint(*sets: np.ndarray) -> bool:
    allids = np.concatenate(sets)
    return len(np.unique(allids)) == len(allids)


def test_plan_sets_and_train_index() -> None:
    plan = make_plan(LABELS, num_train=1000, plant=20, copies=30, seed=0, dataset="MNIST-5k")
    assert _disjoint(plan.planted_ids, plan.ordinary_ids, plan.heldout_ids)
    assert len(plan.planted_ids) == len(plan.heldout_ids) == 20
    assert len(plan.ordinary_ids) == 1000
    assert np.bincount(LABELS[plan.planted_ids]).tolist() == [2] * 10
    assert np.array_equal(np.sort(LABELS[plan.heldout_ids]), np.sort(LABELS[plan.planted_ids]))
    assert np.bincount(LABELS[plan.ordinary_ids]).tolist() == [100] * 10
    idx = plan.train_index()
    assert idx.dtype == np.int64 and len(idx) == 1000 + 20 * 30
    counts = np.bincount(idx, minlength=len(LABELS))
    assert (counts[plan.planted_ids] == 30).all()
    assert (counts[plan.ordinary_ids] == 1).all()
    assert (counts[plan.heldout_ids] == 0).all()
    assert np.array_equal(idx, plan.train_index())
    assert not np.array_equal(idx, np.sort(idx))  # shuffled
    again = make_plan(LABELS, num_train=1000, plant=20, copies=30, seed=0)
    assert np.array_equal(again.planted_ids, plan.planted_ids)
    other = make_plan(LABELS, num_train=1000, plant=20, copies=30, seed=1)
    assert not np.array_equal(other.planted_ids, plan.planted_ids)


def test_plan_uses_all_remaining_when_num_train_is_none() -> None:
    plan = make_plan(LABELS, num_train=None, plant=7, copies=2, seed=3)
    assert len(plan.ordinary_ids) == 5000 - 14
    assert np.array_equal(np.union1d(plan.train_ids, plan.heldout_ids), np.arange(5000))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"plant": -1, "copies": 2, "num_train": 10},
        {"plant": 5, "copies": 0, "num_train": 10},
        {"plant": 5, "copies": 2, "num_train": -1},
        {"plant": 100, "copies": 2, "num_train": 4801},
        {"plant": 2501, "copies": 2, "num_train": None},
    ],
)
def test_plan_validation(kwargs: dict) -> None:
    with pytest.raises(UserError):
        make_plan(LABELS, seed=0, **kwargs)


def test_manifest_round_trip(tmp_path: Path) -> None:
    plan = make_plan(LABELS, num_train=50, plant=10, copies=5, seed=4, dataset="MNIST-5k (bundled)")
    path = tmp_path / "run" / "manifest.json"
    write_manifest(plan, path)
    obj = json.loads(path.read_text())
    assert obj["copies"] == 5 and obj["seed"] == 4 and obj["dataset"] == "MNIST-5k (bundled)"
    assert obj["planted"]["labels"] == LABELS[plan.planted_ids].tolist()
    back = read_manifest(path)
    for name in ("planted_ids", "ordinary_ids", "heldout_ids", "planted_labels", "ordinary_labels"):
        assert np.array_equal(getattr(back, name), getattr(plan, name)), name
    assert (back.copies, back.seed, back.num_images, back.dataset) == (5, 4, 5000, "MNIST-5k (bundled)")
    assert np.array_equal(back.train_index(), plan.train_index())
    back.check_labels(LABELS)
    with pytest.raises(UserError, match="does not match"):
        back.check_labels(LABELS[::-1])


def test_read_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        read_manifest(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        read_manifest(bad)
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(UserError, match="not an iarmem planting manifest"):
        read_manifest(bad)
    plan = make_plan(LABELS, num_train=5, plant=2, copies=2, seed=0)
    write_manifest(plan, bad)
    obj = json.loads(bad.read_text())
    obj["heldout"]["ids"] = obj["planted"]["ids"]
    bad.write_text(json.dumps(obj))
    with pytest.raises(UserError, match="overlapping"):
        read_manifest(bad)


@settings(max_examples=50, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=2, max_size=80).map(np.array),
    data=st.data(),
    seed=st.integers(0, 10_000),
)
def test_plan_property(labels: np.ndarray, data: st.DataObject, seed: int) -> None:
    plant = data.draw(st.integers(0, len(labels) // 2))
    num_train = data.draw(st.one_of(st.none(), st.integers(0, len(labels) - 2 * plant)))
    copies = data.draw(st.integers(1, 4))
    plan = make_plan(labels, num_train=num_train, plant=plant, copies=copies, seed=seed)
    assert _disjoint(plan.planted_ids, plan.ordinary_ids, plan.heldout_ids)
    assert len(plan.heldout_ids) == len(plan.planted_ids) == plant
    assert len(plan.ordinary_ids) == (len(labels) - 2 * plant if num_train is None else num_train)
    counts = np.bincount(plan.train_index(), minlength=len(labels))
    assert (counts[plan.planted_ids] == copies).all() and (counts[plan.heldout_ids] == 0).all()


def test_graded_planting_deals_levels_in_equal_shares_and_survives_the_manifest(tmp_path: Path) -> None:
    levels = [1, 2, 4, 8, 16, 32]
    plan = make_plan(LABELS, num_train=2500, plant=24, copies=levels, seed=3, dataset="MNIST-5k")
    assert plan.levels == levels and plan.copies == 32
    assert np.bincount(plan.planted_copies).tolist()[1:] == [4 if c in levels else 0 for c in range(1, 33)]
    counts = np.bincount(plan.train_index(), minlength=len(LABELS))
    assert np.array_equal(counts[plan.planted_ids], plan.planted_copies)  # each image its own level
    assert (counts[plan.ordinary_ids] == 1).all() and (counts[plan.heldout_ids] == 0).all()
    assert not np.array_equal(plan.planted_copies, np.sort(plan.planted_copies))  # dealt, not by id order
    write_manifest(plan, tmp_path / "m.json")
    back = read_manifest(tmp_path / "m.json")
    assert np.array_equal(back.planted_copies, plan.planted_copies)
    assert np.array_equal(back.train_index(), plan.train_index())
    uniform = make_plan(LABELS, num_train=50, plant=6, copies=5, seed=3)
    assert uniform.copies_each is None and uniform.levels == [5]
    write_manifest(uniform, tmp_path / "u.json")
    assert "copies_each" not in json.loads((tmp_path / "u.json").read_text())


@pytest.mark.parametrize("copies", [[1, 2, 4, 8, 16], [0, 2]])
def test_graded_planting_rejects_uneven_or_zero_levels(copies: list[int]) -> None:
    with pytest.raises(UserError, match="copies|multiple"):
        make_plan(LABELS, num_train=50, plant=6, copies=copies, seed=0)


def test_injected_group_survives_the_manifest_and_is_never_a_non_member(tmp_path: Path) -> None:
    from iarmem.data.planting import outside_sample

    plan = make_plan(LABELS, num_train=100, plant=10, copies=2, seed=0)
    calib = outside_sample(plan, LABELS, 200, seed=0)
    injected = calib[[3, 150]]  # two images the calibration would have drawn
    now = plan.with_injected(injected, LABELS[injected])
    assert np.array_equal(now.injected_ids, np.sort(injected)) and np.array_equal(now.train_ids, plan.train_ids)
    assert not np.isin(outside_sample(now, LABELS, 200, seed=0), injected).any()
    write_manifest(now, tmp_path / "m.json")
    back = read_manifest(tmp_path / "m.json")
    assert np.array_equal(back.injected_ids, now.injected_ids)
    assert np.array_equal(back.injected_labels, LABELS[now.injected_ids])
    back.check_labels(LABELS)
    write_manifest(plan, tmp_path / "old.json")  # a plan without injected images writes no such group
    assert "injected" not in json.loads((tmp_path / "old.json").read_text())
    assert len(read_manifest(tmp_path / "old.json").injected_ids) == 0
    with pytest.raises(UserError, match="overlapping"):  # an injected image may not also be a training image
        write_manifest(plan.with_injected(plan.ordinary_ids[:1], plan.ordinary_labels[:1]), tmp_path / "bad.json")
        read_manifest(tmp_path / "bad.json")
