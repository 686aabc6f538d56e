"""Unit edits: "scale unit u by f", exact in every family, with the paper's weight-row edit beside it.

Each :class:`~iarmem.models.base.UnitLayer` lists, as (state-dict key, unit axis), the slices of
its two edits; editing unit u multiplies slice u along that axis and touches nothing else (the
slices are gathered, multiplied and written back, so every other element stays bit-identical).

- ``exact`` (the default, and what "zero" / "ablate" means everywhere in iarmem): the unit's
  contribution to the rest of the network becomes exactly f times what it was, for every input.
  fc1 units: column u of the layer that reads them (fc2 / w2); fc2 / attn.proj channels: weight
  row u and bias u. Factor 0 removes the unit.
- ``paper``: the paper's edit (PAPER.md section 4), the weight row that writes the unit with its
  bias kept: fc1.weight row u for VAR / RAR (the unit becomes GELU(f w.x + b), so factor 0 leaves
  GELU(b), and halving the row does not halve the unit), w3.weight row u for LlamaGen (no bias;
  the unit is linear in w3 x, so there it equals the exact edit).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from iarmem.errors import UserError
from iarmem.mitigate.select import Selection
from iarmem.models.base import IAR, UnitLayer

EDITS = ("exact", "paper")
Units = Selection | Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class EditRecord:
    """What an edit did: the units per layer and, per parameter, the axis and the slices scaled."""

    edit: str
    factor: float
    units: dict[str, tuple[int, ...]]
    params: dict[str, dict[str, Any]]
    detail: dict[str, Any] | None = None  # what else an edit that is not a scaling did (``unlearn``: its steps)

    @property
    def count(self) -> int:
        return sum(len(u) for u in self.units.values())

    def as_dict(self) -> dict[str, Any]:
        return {"edit": self.edit, "factor": self.factor, "units_edited": self.count,
                "params": {k: {"axis": v["axis"], "slices": len(v["units"])} for k, v in self.params.items()}} | (
                    {"detail": self.detail} if self.detail else {})


def check_edit(edit: str) -> None:
    if edit not in EDITS:
        raise UserError(f"unknown edit {edit!r}; choose exact (scale the unit's output) or paper (scale the "
                        f"weight row that writes it, bias kept)")


def check_edit_args(edit: str, factor: float) -> float:
    check_edit(edit)
    factor = float(factor)
    if not math.isfinite(factor) or factor < 0:
        raise UserError(f"--factor {factor:g} must be a finite number >= 0 (with --edit exact 0 removes the units, "
                        f"1 changes nothing)")
    return factor


def _units_of(selection: Units) -> dict[str, tuple[int, ...]]:
    units = selection.units if isinstance(selection, Selection) else selection
    return {name: tuple(sorted({int(u) for u in idx})) for name, idx in units.items()}


def plan_edit(iar: IAR, selection: Units, edit: str = "exact") -> list[tuple[str, int, Tensor]]:
    """(state-dict key, axis, unit indices) for every slice set the edit scales, checked against ``iar``."""
    check_edit(edit)
    plan = []
    for name, units in _units_of(selection).items():
        if not units:
            continue
        try:
            layer: UnitLayer = iar.unit_layer(name)
        except KeyError:
            raise UserError(f"the model ({iar.family}) has no unit layer {name}; was the selection made for "
                            f"another architecture?") from None
        if units[0] < 0 or units[-1] >= layer.width:
            raise UserError(f"unit {units[-1] if units[-1] >= layer.width else units[0]} is out of range for "
                            f"{name} ({layer.width} units)")
        params = layer.exact_params if edit == "exact" else layer.paper_params
        index = torch.tensor(units, dtype=torch.long)
        plan.extend((key, axis, index) for key, axis in params)
    return plan


def _tensor(iar: IAR, key: str) -> Tensor:
    try:
        return iar.model.get_parameter(key)
    except AttributeError:
        return iar.model.get_buffer(key)


@torch.no_grad()
def _scale(iar: IAR, plan: list[tuple[str, int, Tensor]], factor: float) -> list[tuple[Tensor, int, Tensor, Tensor]]:
    """Scale the planned slices in place; return (tensor, axis, index, original slices) for restoring."""
    saved = []
    for key, axis, index in plan:
        t = _tensor(iar, key)
        idx = index.to(t.device)
        old = t.index_select(axis, idx)
        new = torch.zeros_like(old) if factor == 0 else old * factor
        t.index_copy_(axis, idx, new)
        saved.append((t, axis, idx, old))
    return saved


def _record(selection: Units, plan: list[tuple[str, int, Tensor]], edit: str, factor: float) -> EditRecord:
    params: dict[str, dict[str, Any]] = {}
    for key, axis, index in plan:
        entry = params.setdefault(key, {"axis": axis, "units": []})
        entry["units"].extend(int(i) for i in index)
    return EditRecord(edit, factor, _units_of(selection), params)


def apply_edit(iar: IAR, selection: Units, edit: str = "exact", factor: float = 0.5) -> EditRecord:
    """Scale the selected units of ``iar.model`` in place by ``factor`` (``exact`` with 0 removes them)."""
    factor = check_edit_args(edit, factor)
    plan = plan_edit(iar, selection, edit)
    _scale(iar, plan, factor)
    return _record(selection, plan, edit, factor)


@contextlib.contextmanager
def temporary_edit(iar: IAR, selection: Units, edit: str = "exact", factor: float = 0.5) -> Iterator[EditRecord]:
    """Edit in place for the ``with`` block, then put the original slices back bit for bit.

    Cheap for sweeps: only the scaled slices are saved, not the model.
    """
    factor = check_edit_args(edit, factor)
    plan = plan_edit(iar, selection, edit)
    saved = _scale(iar, plan, factor)
    try:
        yield _record(selection, plan, edit, factor)
    finally:
        with torch.no_grad():
            for t, axis, idx, old in reversed(saved):  # reverse: a slice touched twice ends at its first value
                t.index_copy_(axis, idx, old)


def edited_copy(iar: IAR, selection: Units, edit: str = "exact", factor: float = 0.5,
                share_tokenizer: bool = True) -> tuple[IAR, EditRecord]:
    """An edited deep copy; ``iar`` is untouched. The tokenizer (never edited) is shared by default."""
    factor = check_edit_args(edit, factor)
    plan_edit(iar, selection, edit)  # validate before paying for the copy
    memo = {id(iar.tokenizer): iar.tokenizer} if share_tokenizer else {}
    twin = copy.deepcopy(iar, memo)
    return twin, apply_edit(twin, selection, edit, factor)


def unit_masks(iar: IAR, units: Mapping[str, Sequence[int]]) -> dict[str, Tensor]:
    """Per parameter key, a boolean mask of the elements that belong to the units (``UnitLayer.own_params``:
    what writes a unit and what reads it): the parameters a unit-local fine-tuning may move."""
    params = dict(iar.model.named_parameters())
    masks: dict[str, Tensor] = {}
    for name, idx in units.items():
        layer = iar.unit_layer(name)
        if not layer.own_params:
            raise ValueError(f"{iar.family} does not name the parameters of {name}'s units")
        index = torch.tensor(list(idx), dtype=torch.long, device=params[layer.own_params[0][0]].device)
        for key, axis in layer.own_params:
            m = masks.setdefault(key, torch.zeros_like(params[key], dtype=torch.bool))
            m.movedim(axis, 0)[index] = True
    return masks
