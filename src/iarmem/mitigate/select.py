"""Which units to edit: the top p % by UnitMem, or a matched control (random / lowest-UnitMem units).

A unit's UnitMem is a [num_bins] vector; ``reduce`` turns it into one score: ``max`` over bins
(default: a unit that memorizes at any one scale counts, since memorization in VAR sits at
different scales in different blocks), ``mean`` over bins, or one chosen ``bin``. Units are ranked
over all layers at once (``scope="global"``, the paper's rule) or within each layer
(``scope="layer"``). Ties go to the earlier layer, then the lower unit index, so a ranking is a
pure function of the map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iarmem.errors import UserError
from iarmem.localize.summary import percent_count
from iarmem.mitigate.localization import Localization

REDUCES = ("max", "mean", "bin")
SCOPES = ("global", "layer")
CONTROLS = ("none", "random", "lowest")


@dataclass(frozen=True)
class Selection:
    """Units to edit, by layer name (sorted indices; every candidate layer present, maybe empty).

    ``rule`` is "top" (top p % by UnitMem) or "forget" (targeted forgetting); ``control`` is
    "none" for the rule's own units, else the matched control that replaced them.
    """

    units: dict[str, tuple[int, ...]]
    blocks: dict[str, int]
    rule: str
    control: str
    p: float | None
    scope: str
    reduce: str
    bin: int | None
    seed: int | None
    total_units: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(len(u) for u in self.units.values())

    def per_layer(self) -> dict[str, int]:
        return {name: len(u) for name, u in self.units.items()}

    def per_block(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for name, u in self.units.items():
            out[self.blocks[name]] = out.get(self.blocks[name], 0) + len(u)
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description (edit.json's "selection")."""
        return {
            "rule": self.rule, "control": self.control, "p": self.p, "scope": self.scope, "reduce": self.reduce,
            "bin": self.bin, "seed": self.seed, "count": self.count, "total_units": self.total_units,
            "fraction": self.count / self.total_units if self.total_units else 0.0, **self.extra,
            "per_layer": self.per_layer(), "per_block": {str(b): n for b, n in sorted(self.per_block().items())},
            "units": {name: list(u) for name, u in self.units.items()},
        }


@dataclass(frozen=True)
class Scores:
    """One score per unit, flattened in layer order (the tie-break order)."""

    names: tuple[str, ...]
    widths: tuple[int, ...]
    blocks: tuple[int, ...]
    flat: np.ndarray  # float64 [total]

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.widths)]).astype(np.int64)

    def layer_slice(self, i: int) -> slice:
        o = self.offsets
        return slice(int(o[i]), int(o[i + 1]))

    def to_units(self, flat_idx: np.ndarray) -> dict[str, tuple[int, ...]]:
        """Flat indices -> {layer name: sorted unit indices} (every layer present)."""
        flat_idx = np.sort(np.asarray(flat_idx, dtype=np.int64))
        o = self.offsets
        return {name: tuple(int(x) - int(o[i]) for x in flat_idx[(flat_idx >= o[i]) & (flat_idx < o[i + 1])])
                for i, name in enumerate(self.names)}

    def to_flat(self, units: Mapping[str, Sequence[int]]) -> np.ndarray:
        o = self.offsets
        return np.sort(np.concatenate([np.asarray(units.get(n, ()), dtype=np.int64) + o[i]
                                       for i, n in enumerate(self.names)]))


def resolve_reduce(reduce: str | None, bin: int | None, num_bins: int) -> tuple[str, int | None]:
    """Validate (reduce, bin); a bin alone means reduce="bin", nothing means "max"."""
    reduce = reduce or ("bin" if bin is not None else "max")
    if reduce not in REDUCES:
        raise UserError(f"unknown reduce rule {reduce!r}; choose one of {', '.join(REDUCES)}")
    if reduce == "bin" and bin is None:
        raise UserError(f"--reduce bin needs --bin K (0..{num_bins - 1})")
    if reduce != "bin" and bin is not None:
        raise UserError(f"--bin {bin} conflicts with --reduce {reduce}; use --reduce bin (or drop --bin)")
    if bin is not None and not 0 <= bin < num_bins:
        raise UserError(f"--bin {bin} is out of range: the localization has {num_bins} bins; pass one of "
                        f"0..{num_bins - 1}")
    return reduce, bin


def check_percent(p: float, what: str = "--top") -> float:
    p = float(p)
    if not (0.0 < p <= 100.0):  # also refuses NaN
        raise UserError(f"{what} {p:g} is not a percentage in (0, 100]; give a number like 1, 10 or 100")
    return p


def candidate_layers(loc: Localization, kinds: Sequence[str]) -> list[str]:
    names = [info.name for info in loc.layers if info.kind in kinds]
    if not names:
        held = sorted({info.kind for info in loc.layers})
        raise UserError(f"the localization holds no layers of kind {', '.join(kinds)} (it has {', '.join(held)})")
    return names


def reduce_scores(loc: Localization, reduce: str | None = None, bin: int | None = None,
                  kinds: Sequence[str] = ("fc1",)) -> Scores:
    """One score per unit of the candidate layers. NaN (a unit that never fires) scores 0."""
    reduce, bin = resolve_reduce(reduce, bin, loc.num_bins)
    names = candidate_layers(loc, kinds)
    parts = []
    for name in names:
        table = np.nan_to_num(loc.unitmem[name].astype(np.float64), nan=0.0)
        parts.append(table.max(0) if reduce == "max" else table.mean(0) if reduce == "mean" else table[bin])
    infos = [loc.layer(n) for n in names]
    return Scores(tuple(names), tuple(i.width for i in infos), tuple(i.block for i in infos), np.concatenate(parts))


def ranked(values: np.ndarray, highest: bool) -> np.ndarray:
    """Indices by value (descending if ``highest``), ties by index: deterministic."""
    return np.lexsort((np.arange(len(values)), -values if highest else values))


def pick_extreme(scores: Scores, counts: int | Sequence[int], highest: bool) -> np.ndarray:
    """Flat indices of the highest/lowest units: ``counts`` globally (int) or per layer (sequence)."""
    if isinstance(counts, int):
        return ranked(scores.flat, highest)[:counts]
    picks = []
    for i, k in enumerate(counts):
        sl = scores.layer_slice(i)
        picks.append(ranked(scores.flat[sl], highest)[:k] + sl.start)
    return np.concatenate(picks) if picks else np.zeros(0, np.int64)


def pick_random(scores: Scores, counts: int | Sequence[int], seed: int) -> np.ndarray:
    """Uniformly drawn flat indices, seeded: ``counts`` globally (int) or per layer (sequence)."""
    rng = np.random.default_rng(seed)
    if isinstance(counts, int):
        return rng.choice(len(scores.flat), size=counts, replace=False)
    picks = [rng.choice(w, size=k, replace=False) + scores.layer_slice(i).start
             for i, (w, k) in enumerate(zip(scores.widths, counts))]
    return np.concatenate(picks) if picks else np.zeros(0, np.int64)


def control_like(base: Selection, scores: Scores, control: str, seed: int) -> Selection:
    """The matched control of ``base``: as many units, per layer too when ``base.scope`` is "layer"."""
    if control not in CONTROLS:
        raise UserError(f"unknown control {control!r}; choose one of {', '.join(CONTROLS)}")
    if control == "none":
        return base
    counts: int | list[int] = ([len(base.units.get(n, ())) for n in scores.names] if base.scope == "layer"
                               else base.count)
    flat = pick_random(scores, counts, seed) if control == "random" else pick_extreme(scores, counts, highest=False)
    return Selection(scores.to_units(flat), base.blocks, base.rule, control, base.p, base.scope, base.reduce,
                     base.bin, seed, base.total_units, dict(base.extra))


def top_selection(scores: Scores, p: float, scope: str, reduce: str, bin: int | None,
                  rule: str = "top", extra: dict[str, Any] | None = None) -> Selection:
    """The top p % of ``scores``, globally or per layer."""
    if scope not in SCOPES:
        raise UserError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    p = check_percent(p)
    counts: int | list[int] = (percent_count(len(scores.flat), p) if scope == "global"
                               else [percent_count(w, p) for w in scores.widths])
    flat = pick_extreme(scores, counts, highest=True)
    return Selection(scores.to_units(flat), dict(zip(scores.names, scores.blocks)), rule, "none", p, scope, reduce,
                     bin, None, len(scores.flat), dict(extra or {}))


def select_units(loc: Localization, p: float = 10.0, scope: str = "global", reduce: str | None = None,
                 bin: int | None = None, control: str = "none", seed: int = 0,
                 kinds: Sequence[str] = ("fc1",)) -> Selection:
    """The top p % units of ``loc`` by reduced UnitMem, or their matched control.

    ``control="random"`` draws as many units uniformly (seeded; per layer as many as the top
    selection has there when ``scope="layer"``); ``"lowest"`` takes the lowest-UnitMem units.
    """
    reduce, bin = resolve_reduce(reduce, bin, loc.num_bins)
    scores = reduce_scores(loc, reduce, bin, kinds)
    base = top_selection(scores, p, scope, reduce, bin)
    return control_like(base, scores, control, seed)
