"""Edits change exactly the chosen slices by exactly the factor, on all three families, and nothing else."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_mitigate_support import random_localization

from iarmem.errors import UserError
from iarmem.mitigate import (
    apply_edit,
    check_architecture,
    edited_copy,
    load_localization,
    select_units,
    temporary_edit,
)
from iarmem.models import IAR, Tokens, build, tap

FAMILIES = {"tiny-var": "var", "tiny-rar": "rar", "tiny-llamagen": "llamagen"}
# the parameters each (family, mode) may touch, as key suffixes
TOUCHED = {
    ("var", "in"): ("ffn.fc1.weight",), ("var", "out"): ("ffn.fc2.weight",),
    ("var", "both"): ("ffn.fc1.weight", "ffn.fc2.weight"),
    ("rar", "in"): ("mlp.fc1.weight",), ("rar", "out"): ("mlp.fc2.weight",),
    ("rar", "both"): ("mlp.fc1.weight", "mlp.fc2.weight"),
    ("llamagen", "in"): ("feed_forward.w3.weight",), ("llamagen", "out"): ("feed_forward.w2.weight",),
    ("llamagen", "both"): ("feed_forward.w3.weight", "feed_forward.w2.weight"),
}




def bits(t: torch.Tensor) -> torch.Tensor:
    """An integer view, so equality is bit equality (-0.0 != 0.0, NaN == NaN)."""
    return t.view({4: torch.int32, 2: torch.int16, 8: torch.int64}[t.element_size()]) if t.is_floating_point() else t


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


@pytest.fixture(scope="module")
def models() -> dict[str, IAR]:
    torch.manual_seed(0)
    return {name: build(name) for name in FAMILIES}


@pytest.fixture(scope="module")
def selections(models, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("locs")
    return {name: select_units(load_localization(random_localization(root / name, iar, name)), 5)
            for name, iar in models.items()}


@contextlib.contextmanager
def restored(iar: IAR) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a snapshot of the model's weights and put them back afterwards (cheaper than a deep copy)."""
    before = {k: v.clone() for k, v in iar.model.state_dict().items()}
    try:
        yield before
    finally:
        iar.model.load_state_dict(before)


def check_edit(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], iar: IAR, units, mode: str,
               factor: float) -> set[str]:
    """Assert the edit's exact effect; return the keys that changed."""
    expected: dict[str, list[tuple[int, list[int]]]] = {}
    for name, idx in units.items():
        layer = iar.unit_layer(name)
        params = (layer.in_params if mode != "out" else ()) + (layer.out_params if mode != "in" else ())
        for key, axis in params:
            expected.setdefault(key, []).append((axis, list(idx)))
    assert before.keys() == after.keys()
    for key in before:
        if key not in expected:
            assert same_bits(before[key], after[key]), key
            continue
        b, a = before[key], after[key]
        untouched = torch.ones_like(b, dtype=torch.bool)
        for axis, idx in expected[key]:
            index = torch.tensor(idx, dtype=torch.long)
            want = b.index_select(axis, index) * factor if factor else torch.zeros(())  # 0 writes +0.0
            want = want.expand_as(a.index_select(axis, index))
            assert same_bits(a.index_select(axis, index), want), key
            untouched.index_fill_(axis, index, False)
        assert same_bits(a[untouched], b[untouched]), key
    return {k for k in before if not same_bits(before[k], after[k])}


@pytest.mark.parametrize("mode", ["in", "out", "both"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_edit_changes_exactly_the_chosen_slices(models, selections, name: str, mode: str) -> None:
    iar, sel = models[name], selections[name]
    assert sel.count > 0 and sum(1 for u in sel.units.values() if u) > 1
    tok_before = {k: v.clone() for k, v in iar.tokenizer.state_dict().items()}
    with restored(iar) as before:
        record = apply_edit(iar, sel, mode, 0.5)
        changed = check_edit(before, iar.model.state_dict(), iar, sel.units, mode, 0.5)
    suffixes = TOUCHED[(FAMILIES[name], mode)]
    assert changed and all(k.endswith(suffixes) for k in changed)
    assert {s for k in changed for s in suffixes if k.endswith(s)} == set(suffixes)
    assert set(record.params) == changed
    assert record.count == sel.count and record.mode == mode
    assert all(same_bits(v, tok_before[k]) for k, v in iar.tokenizer.state_dict().items())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_factor_zero_zeroes_and_one_changes_nothing(models, selections, name: str) -> None:
    iar, sel = models[name], selections[name]
    with restored(iar) as before:
        apply_edit(iar, sel, "both", 1.0)
        assert all(same_bits(v, before[k]) for k, v in iar.model.state_dict().items())
        apply_edit(iar, sel, "in", 0.0)
        after = iar.model.state_dict()
        check_edit(before, after, iar, sel.units, "in", 0.0)
        for layer_name, idx in sel.units.items():
            for key, axis in iar.unit_layer(layer_name).in_params:
                sl = after[key].index_select(axis, torch.tensor(idx, dtype=torch.long))
                assert same_bits(sl, torch.zeros_like(sl))  # +0.0, not -0.0


def test_temporary_edit_restores_and_edited_copy_leaves_the_original(models, selections) -> None:
    iar = models["tiny-var"]
    sel = selections["tiny-var"]
    before = {k: v.clone() for k, v in iar.model.state_dict().items()}
    with temporary_edit(iar, sel, "both", 0.3) as record:
        check_edit(before, iar.model.state_dict(), iar, sel.units, "both", 0.3)
        assert record.factor == 0.3
    assert all(same_bits(v, before[k]) for k, v in iar.model.state_dict().items())
    with pytest.raises(RuntimeError), temporary_edit(iar, sel, "in", 0.0):
        raise RuntimeError("a failing evaluation")
    assert all(same_bits(v, before[k]) for k, v in iar.model.state_dict().items())
    twin, _ = edited_copy(iar, sel, "in", 0.5)
    assert all(same_bits(v, before[k]) for k, v in iar.model.state_dict().items())
    check_edit(before, twin.model.state_dict(), twin, sel.units, "in", 0.5)
    assert twin.tokenizer is iar.tokenizer and twin.model is not iar.model


def test_bad_edits_are_user_errors(models, selections) -> None:
    iar, sel = models["tiny-var"], selections["tiny-var"]
    before = {k: v.clone() for k, v in iar.model.state_dict().items()}
    for factor in (-0.5, float("nan"), float("inf")):
        with pytest.raises(UserError, match="factor"):
            apply_edit(iar, sel, "in", factor)
    with pytest.raises(UserError, match="mode"):
        apply_edit(iar, sel, "sideways", 0.5)
    with pytest.raises(UserError, match="no unit layer"):
        apply_edit(iar, {"layers.0.feed_forward.hidden": [1]}, "in", 0.5)
    with pytest.raises(UserError, match="out of range"):
        apply_edit(iar, {"blocks.0.ffn.fc1": [512]}, "in", 0.5)
    assert all(same_bits(v, before[k]) for k, v in iar.model.state_dict().items())


def test_localization_of_another_architecture_is_refused(models, tmp_path: Path) -> None:
    rar_loc = load_localization(random_localization(tmp_path / "rar", models["tiny-rar"], "tiny-rar"))
    with pytest.raises(UserError, match=r"tiny-rar.*tiny-var") as e:
        check_architecture(rar_loc, models["tiny-var"], "tiny-var")
    assert "\n" not in str(e.value)
    check_architecture(rar_loc, models["tiny-rar"], "tiny-rar")


def test_llamagen_in_edit_halves_exactly_the_chosen_hidden_units(models) -> None:
    iar = models["tiny-llamagen"]
    edited, other = "layers.1.feed_forward.hidden", "layers.0.feed_forward.hidden"
    chosen = [3, 10, 100, 383]
    g = torch.Generator().manual_seed(0)
    tokens = Tokens(torch.randint(0, iar.vocab_size, (2, iar.seq_len), generator=g), iar.grids)
    labels = torch.tensor([1, 7])

    def values() -> dict[str, torch.Tensor]:
        seen: dict[str, torch.Tensor] = {}
        with torch.no_grad(), tap(iar, [other, edited], lambda layer, act: seen.__setitem__(layer.name, act.clone())):
            iar.logits(tokens, labels)
        return seen

    before = values()
    with restored(iar):
        apply_edit(iar, {edited: chosen}, "in", 0.5)
        after = values()
    assert same_bits(after[other], before[other])  # an earlier block sees the same input
    keep = [u for u in range(before[edited].shape[-1]) if u not in chosen]
    assert same_bits(after[edited][..., keep], before[edited][..., keep])
    assert torch.equal(after[edited][..., chosen], before[edited][..., chosen] * 0.5)
    assert before[edited][..., chosen].abs().min() > 0
