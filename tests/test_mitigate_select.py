"""Unit selection: reduce rules, top p % globally or per layer, controls, forgetting, and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_mitigate_support import (
    HAND_ARGMAX,
    HAND_IDS,
    HAND_LAYERS,
    HAND_UNITMEM,
    A,
    B,
    hand_localization,
    write_localization,
)

from iarmem.errors import UserError
from iarmem.localize.summary import percent_count
from iarmem.mitigate import forget_units, load_localization, reduce_scores, select_units
from iarmem.mitigate.select import ranked
from iarmem.plans import parse_ids

NAMES = {0: "A0", 1: "A1", 2: "A2", 3: "A3", 4: "B0", 5: "B1", 6: "B2"}




def as_names(units: dict[str, tuple[int, ...]]) -> set[str]:
    return {f"A{u}" for u in units[A]} | {f"B{u}" for u in units[B]}


@pytest.fixture(scope="module")
def loc(tmp_path_factory: pytest.TempPathFactory):
    return hand_localization(tmp_path_factory.mktemp("loc") / "loc")


@pytest.mark.parametrize("reduce,bin,expected", [
    ("max", None, "A0 B1 A1 B2 A2 B0 A3"),
    ("mean", None, "A0 A1 A2 B1 B0 B2 A3"),
    ("bin", 1, "A1 B2 A2 B0 A3 A0 B1"),
    (None, 1, "A1 B2 A2 B0 A3 A0 B1"),  # a bin alone means reduce=bin
])
def test_reduce_rules_rank_as_expected(loc, reduce, bin, expected) -> None:
    order = expected.split()
    scores = reduce_scores(loc, reduce, bin)
    assert [NAMES[i] for i in ranked(scores.flat, highest=True)] == order
    for k in range(1, 8):  # the top-k set of select_units is the first k of the ranking
        sel = select_units(loc, p=100 * k / 7, reduce=reduce, bin=bin)
        assert sel.count == k and as_names(sel.units) == set(order[:k])
        assert all(list(u) == sorted(u) for u in sel.units.values())


def test_global_versus_per_layer_counts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    layers = [("blocks.0.ffn.fc1", "fc1", 0, 10), ("blocks.1.ffn.fc1", "fc1", 1, 30)]
    um = {"blocks.0.ffn.fc1": rng.random((2, 10)) * 0.1, "blocks.1.ffn.fc1": 0.5 + rng.random((2, 30))}
    am = {n: np.zeros((2, w), np.int64) for n, _, _, w in layers}
    loc = load_localization(write_localization(tmp_path / "loc", layers, um, am, [0]))
    glob = select_units(loc, 10, scope="global")
    per = select_units(loc, 10, scope="layer")
    assert glob.count == 4 and glob.per_layer() == {"blocks.0.ffn.fc1": 0, "blocks.1.ffn.fc1": 4}
    assert per.count == 4 and per.per_layer() == {"blocks.0.ffn.fc1": 1, "blocks.1.ffn.fc1": 3}
    assert per.per_block() == {0: 1, 1: 3}
    assert select_units(loc, 100).count == 40 and select_units(loc, 0.01).count == 1
    assert percent_count(2048, 10) == 205 and percent_count(7, 100) == 7


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_random_control_is_seeded_and_matched(tmp_path: Path, scope: str) -> None:
    rng = np.random.default_rng(1)
    layers = [(f"blocks.{i}.ffn.fc1", "fc1", i, w) for i, w in enumerate((50, 80, 120))]
    um = {n: rng.random((3, w)) for n, _, _, w in layers}
    am = {n: np.zeros((3, w), np.int64) for n, _, _, w in layers}
    loc = load_localization(write_localization(tmp_path / "loc", layers, um, am, [0]))
    top = select_units(loc, 10, scope=scope)
    r1 = select_units(loc, 10, scope=scope, control="random", seed=1)
    r1b = select_units(loc, 10, scope=scope, control="random", seed=1)
    r2 = select_units(loc, 10, scope=scope, control="random", seed=2)
    assert r1.units == r1b.units and r1.units != r2.units
    assert r1.count == r2.count == top.count and r1.control == "random" and r1.seed == 1
    if scope == "layer":
        assert r1.per_layer() == r2.per_layer() == top.per_layer()
    assert all(len(set(u)) == len(u) for u in r1.units.values())


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_lowest_control_picks_the_minima(loc, scope: str) -> None:
    low = select_units(loc, 100 * 3 / 7, scope=scope, control="lowest")
    top = select_units(loc, 100 * 3 / 7, scope=scope)
    assert low.count == top.count and low.control == "lowest"
    if scope == "global":  # max scores: A3 .125, B0 .375, A2 .5
        assert as_names(low.units) == {"A3", "B0", "A2"}
    else:  # 2 of A (A3, A2) and 1 of B (B0): round(4 * 3/7) = 2, round(3 * 3/7) = 1
        assert low.per_layer() == top.per_layer() and as_names(low.units) == {"A3", "A2", "B0"}
    scores = reduce_scores(loc).flat
    chosen = np.zeros(7, bool)
    chosen[[k for k, v in NAMES.items() if v in as_names(low.units)]] = True
    if scope == "global":
        assert scores[chosen].max() <= scores[~chosen].min()


def test_bad_selection_arguments_are_user_errors(loc) -> None:
    for p in (0, -1, 100.5, float("nan")):
        with pytest.raises(UserError, match="not a percentage"):
            select_units(loc, p)
    for bad in (2, -1):
        with pytest.raises(UserError, match="out of range"):
            select_units(loc, 10, bin=bad)
    with pytest.raises(UserError, match="needs --bin"):
        select_units(loc, 10, reduce="bin")
    with pytest.raises(UserError, match="conflicts"):
        select_units(loc, 10, reduce="mean", bin=0)
    with pytest.raises(UserError, match="no layers of kind"):
        select_units(loc, 10, kinds=("attn.proj",))


def test_forget_picks_exactly_the_units_whose_argmax_is_in_the_ids(loc) -> None:
    for ids in ([5], [6], [7, 9], [5, 6, 7, 8, 9]):
        sel = forget_units(loc, ids)
        expected = {f"{'A' if name == A else 'B'}{u}" for name in (A, B) for u in range(HAND_ARGMAX[name].shape[1])
                    if np.isin(HAND_ARGMAX[name][:, u], ids).any()}
        assert as_names(sel.units) == expected and sel.rule == "forget" and sel.extra["forget_ids"] == sorted(ids)
    # the bin its score comes from: max -> peak bins A:[0,1,0,1] B:[0,0,1]; argmax there A:[5,5,7,6] B:[5,9,6]
    assert as_names(forget_units(loc, [6], match="reduced").units) == {"A3", "B2"}
    assert as_names(forget_units(loc, [6], bin=0).units) == {"A1"}  # a bin implies matching in that bin
    assert as_names(forget_units(loc, [6], bin=0, match="any").units) == {"A1", "A3", "B0", "B1", "B2"}
    # within the top 3 (A0 B1 A1) by max UnitMem
    assert as_names(forget_units(loc, [6], top=100 * 3 / 7).units) == {"A1", "B1"}


def test_forget_refusals(loc) -> None:
    with pytest.raises(UserError, match=r"not among the 6 images.*\b99\b"):
        forget_units(loc, [5, 99])
    with pytest.raises(UserError, match="zero units"):
        forget_units(loc, [10])  # seen by the run, but no unit's argmax
    with pytest.raises(UserError, match="zero units"):
        forget_units(loc, [8], top=100 / 7)  # A3, B2 own 8 in bin 0; the top 1 is A0
    with pytest.raises(UserError, match="needs --reduce max"):
        forget_units(loc, [5], reduce="mean", match="reduced")


def test_forget_run_takes_its_top_units_and_matched_controls(loc) -> None:
    sel = forget_units(loc, None, top=100 * 2 / 7)  # a run over the forget images alone: its top units
    assert as_names(sel.units) == {"A0", "B1"}
    r = forget_units(loc, [6], control="random", seed=3)
    assert r.count == forget_units(loc, [6]).count and r.units == forget_units(loc, [6], control="random", seed=3).units


def test_parse_ids(tmp_path: Path) -> None:
    """One reader of image ids for --ids and --forget: lists, text files with comments, JSON lists."""
    assert parse_ids("3, 17,3,42").tolist() == [3, 17, 42]
    assert parse_ids("5", 100).tolist() == [5]
    f = tmp_path / "ids.txt"
    f.write_text("# forget these\n5\n9 7,  # trailing comment\n")
    assert parse_ids(str(f)).tolist() == [5, 7, 9]
    j = tmp_path / "ids.json"
    j.write_text("[8, 6]")
    assert parse_ids(j).tolist() == [6, 8]
    assert parse_ids([4, 2, 4]).tolist() == [2, 4]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    for bad, flag, n, why in (("a,b", "--forget", None, "no such file"), ("nofile.txt", "--ids", None, "no such file"),
                              ("", "--forget", None, "no image ids"), ("1,-2", "--forget", None, "not an image id"),
                              ("1,x", "--ids", 100, "no such file"), ("3,100", "--ids", 100, "not in the dataset"),
                              (str(tmp_path / "empty.txt"), "--ids", 100, "no image ids")):
        with pytest.raises(UserError, match=why) as e:
            parse_ids(bad, n, flag=flag)
        assert (flag in str(e.value) or "empty.txt" in str(e.value)) and "\n" not in str(e.value)


def test_the_hand_made_map_is_what_the_helper_wrote(loc) -> None:
    assert [(x.name, x.kind, x.block, x.width) for x in loc.layers] == HAND_LAYERS
    assert loc.image_ids.tolist() == HAND_IDS
    for name in (A, B):
        np.testing.assert_array_equal(loc.argmax[name], HAND_ARGMAX[name])
        np.testing.assert_array_equal(loc.unitmem[name], HAND_UNITMEM[name].astype(np.float32))


def test_units_with_a_tied_maximum_belong_to_no_image(tmp_path: Path) -> None:
    """argmax -1 (several images tie for the maximum) is owned by no image: forgetting never picks it."""
    layers = [("blocks.0.ffn.fc1", "fc1", 0, 4)]
    um = {"blocks.0.ffn.fc1": np.array([[0.9, 0.8, 0.7, 0.6]])}
    am = {"blocks.0.ffn.fc1": np.array([[5, -1, 5, -1]])}
    loc = load_localization(write_localization(tmp_path / "loc", layers, um, am, [5, 6]))
    assert forget_units(loc, [5]).units == {"blocks.0.ffn.fc1": (0, 2)}
    with pytest.raises(UserError, match="zero units"):
        forget_units(loc, [6])
