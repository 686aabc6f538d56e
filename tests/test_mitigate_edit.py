"""Edits change exactly the chosen slices by exactly the factor, on all three families, and nothing else;
the exact edit scales each unit's contribution by exactly the factor (checked on briefly trained weights,
whose biases are not zero, against an independent hook that scales the unit's value in the forward pass)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_mitigate_support import random_localization
from trained import briefly_trained

from iarmem.errors import UserError
from iarmem.mitigate import (
    EDITS,
    apply_edit,
    check_architecture,
    edited_copy,
    load_localization,
    select_units,
    temporary_edit,
)
from iarmem.models import IAR, Tokens, tap
from iarmem.models.base import UNIT_KINDS, UnitLayer

FAMILIES = {"tiny-var": "var", "tiny-rar": "rar", "tiny-llamagen": "llamagen"}
# the parameters each (family, edit) of fc1 units may touch, as key suffixes
TOUCHED = {
    ("var", "exact"): ("ffn.fc2.weight",), ("var", "paper"): ("ffn.fc1.weight",),
    ("rar", "exact"): ("mlp.fc2.weight",), ("rar", "paper"): ("mlp.fc1.weight",),
    ("llamagen", "exact"): ("feed_forward.w2.weight",), ("llamagen", "paper"): ("feed_forward.w3.weight",),
}


def bits(t: torch.Tensor) -> torch.Tensor:
    """An integer view, so equality is bit equality (-0.0 != 0.0, NaN == NaN)."""
    return t.view({4: torch.int32, 2: torch.int16, 8: torch.int64}[t.element_size()]) if t.is_floating_point() else t


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


@pytest.fixture(scope="module")
def models() -> dict[str, IAR]:
    return {name: briefly_trained(name) for name in FAMILIES}


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


def check_edit(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], iar: IAR, units, edit: str,
               factor: float) -> set[str]:
    """Assert the edit's exact effect on the weights; return the keys that changed."""
    expected: dict[str, list[tuple[int, list[int]]]] = {}
    for name, idx in units.items():
        layer = iar.unit_layer(name)
        for key, axis in layer.exact_params if edit == "exact" else layer.paper_params:
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


@pytest.mark.parametrize("edit", EDITS)
@pytest.mark.parametrize("name", list(FAMILIES))
def test_edit_changes_exactly_the_chosen_slices(models, selections, name: str, edit: str) -> None:
    iar, sel = models[name], selections[name]
    assert sel.count > 0 and sum(1 for u in sel.units.values() if u) > 1
    tok_before = {k: v.clone() for k, v in iar.tokenizer.state_dict().items()}
    with restored(iar) as before:
        record = apply_edit(iar, sel, edit, 0.5)
        changed = check_edit(before, iar.model.state_dict(), iar, sel.units, edit, 0.5)
    suffixes = TOUCHED[(FAMILIES[name], edit)]
    assert changed and all(k.endswith(suffixes) for k in changed)
    assert {s for k in changed for s in suffixes if k.endswith(s)} == set(suffixes)
    assert set(record.params) == changed
    assert record.count == sel.count and record.edit == edit
    assert all(same_bits(v, tok_before[k]) for k, v in iar.tokenizer.state_dict().items())


@contextlib.contextmanager
def scaled_in_forward(iar: IAR, layer: UnitLayer, units: list[int], factor: float) -> Iterator[None]:
    """Scale the units' values where the model computes them (a hook at the tap point), weights untouched."""
    module = iar.model.get_submodule(layer.tap_module)
    idx = torch.tensor(units)

    def scale(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[..., idx] = x[..., idx] * factor
        return x

    handle = (module.register_forward_pre_hook(lambda m, args: (scale(args[0]), *args[1:])) if layer.tap_input
              else module.register_forward_hook(lambda m, args, out: scale(out)))
    try:
        yield
    finally:
        handle.remove()


def _batch(iar: IAR) -> tuple[Tokens, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return Tokens(torch.randint(0, iar.vocab_size, (3, iar.seq_len), generator=g), iar.grids), torch.tensor([1, 4, 7])


def _units_of(iar: IAR, kind: str) -> dict[UnitLayer, list[int]]:
    layers = iar.unit_layers((kind,))
    return {layers[0]: [0, 5], layers[-1]: [3, layers[-1].width - 1]}


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.7])
@pytest.mark.parametrize("kind", UNIT_KINDS)
@pytest.mark.parametrize("name", list(FAMILIES))
@torch.no_grad()
def test_exact_edit_scales_the_units_contribution_by_exactly_the_factor(models, name: str, kind: str,
                                                                          factor: float) -> None:
    iar = models[name]
    tokens, labels = _batch(iar)
    chosen = _units_of(iar, kind)
    with contextlib.ExitStack() as hooks:
        for layer, units in chosen.items():
            hooks.enter_context(scaled_in_forward(iar, layer, units, factor))
        want = iar.logits(tokens, labels)
    with restored(iar):
        apply_edit(iar, {layer.name: units for layer, units in chosen.items()}, "exact", factor)
        got = iar.logits(tokens, labels)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if factor != 1:  # the units matter: the test could fail
        assert (got - iar.logits(tokens, labels)).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(FAMILIES))
@torch.no_grad()
def test_the_papers_edit_keeps_the_bias_so_zero_is_not_removal(models, name: str) -> None:
    """VAR / RAR: fc1 row x 0 leaves the unit at act(bias), not 0; LlamaGen (no bias, linear in w3) removes it."""
    iar = models[name]
    tokens, labels = _batch(iar)
    layer = iar.unit_layers()[1]
    units = [2, 9, 40]
    with scaled_in_forward(iar, layer, units, 0.0):
        removed = iar.logits(tokens, labels)
    seen: dict[str, torch.Tensor] = {}
    with restored(iar):
        apply_edit(iar, {layer.name: units}, "paper", 0.0)
        paper = iar.logits(tokens, labels)
        with tap(iar, [layer], lambda lay, act: seen.__setitem__("act", act.clone())):
            iar.logits(tokens, labels)
    if FAMILIES[name] == "llamagen":
        torch.testing.assert_close(paper, removed, rtol=1e-5, atol=1e-5)
        assert seen["act"][..., units].abs().max() == 0
        return
    assert (paper - removed).abs().max() > 1e-4  # ten times the tolerance that calls logits equal
    prefix = layer.name.rsplit(".", 1)[0]  # blocks.1.ffn / blocks.1.mlp
    bias = iar.model.get_parameter(f"{prefix}.fc1.bias")[units]
    act = iar.model.get_submodule(layer.tap_module)
    torch.testing.assert_close(seen["act"][..., units], act(bias).expand_as(seen["act"][..., units]))
    assert bias.abs().min() > 0


@pytest.mark.parametrize("name", list(FAMILIES))
def test_factor_zero_writes_zeros_and_one_changes_nothing(models, selections, name: str) -> None:
    iar, sel = models[name], selections[name]
    with restored(iar) as before:
        for edit in EDITS:
            apply_edit(iar, sel, edit, 1.0)
        assert all(same_bits(v, before[k]) for k, v in iar.model.state_dict().items())
        apply_edit(iar, sel, "exact", 0.0)
        after = iar.model.state_dict()
        check_edit(before, after, iar, sel.units, "exact", 0.0)
        for layer_name, idx in sel.units.items():
            for key, axis in iar.unit_layer(layer_name).exact_params:
                sl = after[key].index_select(axis, torch.tensor(idx, dtype=torch.long))
                assert same_bits(sl, torch.zeros_like(sl))  # +0.0, not -0.0


def test_temporary_edit_restores_and_edited_copy_leaves_the_original(models, selections) -> None:
    iar = models["tiny-var"]
    sel = selections["tiny-var"]
    before = {k: v.clone() for k, v in iar.model.state_dict().items()}
    with temporary_edit(iar, sel, "paper", 0.3) as record:
        check_edit(before, iar.model.state_dict(), iar, sel.units, "paper", 0.3)
        assert record.factor == 0.3
    assert all(same_bits(v, before[k]) for k, v in iar.model.state_dict().items())
    with pytest.raises(RuntimeError), temporary_edit(iar, sel, "exact", 0.0):
        raise RuntimeError("a failing evaluation")
    assert all(same_bits(v, before[k]) for k, v in iar.model.state_dict().items())
    twin, _ = edited_copy(iar, sel, "exact", 0.5)
    assert all(same_bits(v, before[k]) for k, v in iar.model.state_dict().items())
    check_edit(before, twin.model.state_dict(), twin, sel.units, "exact", 0.5)
    assert twin.tokenizer is iar.tokenizer and twin.model is not iar.model


def test_bad_edits_are_user_errors(models, selections) -> None:
    iar, sel = models["tiny-var"], selections["tiny-var"]
    before = {k: v.clone() for k, v in iar.model.state_dict().items()}
    for factor in (-0.5, float("nan"), float("inf")):
        with pytest.raises(UserError, match="factor"):
            apply_edit(iar, sel, "exact", factor)
    with pytest.raises(UserError, match="unknown edit"):
        apply_edit(iar, sel, "in", 0.5)
    with pytest.raises(UserError, match="no unit layer"):
        apply_edit(iar, {"layers.0.feed_forward.w3": [1]}, "exact", 0.5)
    with pytest.raises(UserError, match="out of range"):
        apply_edit(iar, {"blocks.0.ffn.fc1": [512]}, "exact", 0.5)
    assert all(same_bits(v, before[k]) for k, v in iar.model.state_dict().items())


def test_localization_of_another_architecture_is_refused(models, tmp_path: Path) -> None:
    rar_loc = load_localization(random_localization(tmp_path / "rar", models["tiny-rar"], "tiny-rar"))
    with pytest.raises(UserError, match=r"tiny-rar.*tiny-var") as e:
        check_architecture(rar_loc, models["tiny-var"], "tiny-var")
    assert "\n" not in str(e.value)
    check_architecture(rar_loc, models["tiny-rar"], "tiny-rar")


def test_unit_layer_names_are_state_dict_prefixes(models) -> None:
    for iar in models.values():
        keys = set(iar.model.state_dict())
        for layer in iar.unit_layers(UNIT_KINDS):
            assert f"{layer.name}.weight" in keys, layer.name
