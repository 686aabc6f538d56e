"""Unit-level injection (INJ, after Chang et al. 2024): units known to hold a copy.

A trained model learns one image it never saw, through a random r % of the fc1 units of every
block and nothing else: only those units' own parameters (``UnitLayer.own_params``: what writes
the unit and what reads it) move, and every batch mixes ordinary training images with the target
so the rest of the model's behaviour is kept. When the greedy attack from the default prefix
reproduces the image, the chosen units hold that copy by construction: they are ground truth
for a localizer. ``check_ablation`` verifies it (removing the units must remove the copy; removing
as many random units of the same layers must not), because a ground truth that fails this is not one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from iarmem.attack.generate import agreement
from iarmem.localize.gates import only_trainable
from iarmem.mitigate.edit import temporary_edit, unit_masks
from iarmem.models.base import IAR, Tokens

Units = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class InjectConfig:
    """How hard the injection tries. ``bar``: the token agreement (positions after the prefix) that
    counts as extracted, the attack's absolute default, so the planted copy is unambiguous."""

    steps: int = 400
    lr: float = 1e-2
    target_copies: int = 4  # rows of the target in every batch
    keep_rows: int = 12  # ordinary training rows in every batch
    check_every: int = 25
    bar: float = 0.9
    seed: int = 0


@dataclass(frozen=True)
class Injection:
    """One injected image: its units, whether the attack now extracts it, and what it cost."""

    units: Units
    steps: int
    extracted: bool
    agreement_before: float
    agreement: float
    keep_loss_before: float
    keep_loss_after: float

    def as_dict(self) -> dict:
        d = asdict(self)
        d["units"] = {k: list(v) for k, v in self.units.items()}
        return d


def pick_units(iar: IAR, rate: float, rng: np.random.Generator) -> Units:
    """``rate`` (a fraction) of the fc1 units of every block, at random; at least one per block."""
    out = {}
    for layer in iar.unit_layers(("fc1",)):
        k = max(1, round(rate * layer.width))
        out[layer.name] = tuple(sorted(int(u) for u in rng.choice(layer.width, size=k, replace=False)))
    return out


def random_like(iar: IAR, units: Units, rng: np.random.Generator) -> Units:
    """As many units per layer as ``units``, drawn at random among the others of the same layer."""
    out = {}
    for name, idx in units.items():
        rest = np.setdiff1d(np.arange(iar.unit_layer(name).width), np.asarray(idx))
        out[name] = tuple(sorted(int(u) for u in rng.choice(rest, size=len(idx), replace=False)))
    return out


@torch.no_grad()
def teacher_forced_loss(iar: IAR, tokens: Tokens, labels: Tensor) -> float:
    """Mean cross-entropy of the tokens under a teacher-forced conditional pass (no label dropout)."""
    logits = iar.logits(tokens, labels)
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens.ids_BL.flatten().long()))


def inject(iar: IAR, target: Tokens, label: Tensor, keep: Tokens, keep_labels: Tensor, units: Units,
           cfg: InjectConfig = InjectConfig(), views: Tokens | None = None,
           always: tuple[Tokens, Tensor] | None = None) -> Injection:
    """Fine-tune only ``units``' own parameters of ``iar`` (in place) until the attack extracts ``target``.

    ``target``: one image's tokens [1, L] (its eval view, what the attack judges); ``views``: the
    image's tokens under the views the model is trained (and localized) on, [V, L], trained on in
    turn (default: the eval view alone); ``keep``: ordinary training images' tokens, sampled into
    every batch; ``always``: tokens and labels put in every batch whole (images injected before, which
    this injection must not undo). Stops at the first check that extracts the target, or after
    ``cfg.steps``. Every element outside the units' slices stays bit-identical.
    """
    masks = unit_masks(iar, units)
    gen = torch.Generator().manual_seed(cfg.seed)
    before = agreement(iar, target, label)
    keep_before = teacher_forced_loss(iar, keep, keep_labels)
    originals = {k: p.detach().clone() for k, p in iar.model.named_parameters() if k in masks}
    rows = (target if views is None else views).ids_BL
    tgt = Tokens(rows[torch.arange(cfg.target_copies) % rows.shape[0]], iar.grids)
    tgt_labels = label.reshape(1).repeat(cfg.target_copies)
    steps, extracted, now = 0, before > cfg.bar, before
    with only_trainable(iar, set(masks)) as params:
        opt = torch.optim.Adam(params, lr=cfg.lr)
        keyed = dict(iar.model.named_parameters())
        while not extracted and steps < cfg.steps:
            rows = torch.randint(0, keep.ids_BL.shape[0], (cfg.keep_rows,), generator=gen)
            ids = torch.cat([tgt.ids_BL, keep.ids_BL[rows], *([always[0].ids_BL] if always else [])])
            labels = torch.cat([tgt_labels, keep_labels[rows], *([always[1]] if always else [])])
            with torch.enable_grad():
                loss = iar.training_loss(Tokens(ids, iar.grids), labels, generator=gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            for k, m in masks.items():
                keyed[k].grad.mul_(m)
            opt.step()
            with torch.no_grad():  # Adam never moves a zero-gradient element, but say so exactly
                for k, m in masks.items():
                    keyed[k].copy_(torch.where(m, keyed[k], originals[k]))
            steps += 1
            if steps % cfg.check_every == 0 or steps == cfg.steps:
                now = agreement(iar, target, label)
                extracted = now > cfg.bar
    if not math.isfinite(now):
        raise FloatingPointError("the injection diverged (NaN agreement); lower the learning rate")
    return Injection(units, steps, extracted, before, now, keep_before, teacher_forced_loss(iar, keep, keep_labels))


def check_ablation(iar: IAR, target: Tokens, label: Tensor, units: Units, rng: np.random.Generator,
                   repeats: int = 3) -> dict[str, float | list[float]]:
    """Token agreement with the units removed (exact zero), against as many random units of the same layers."""
    with temporary_edit(iar, units, "exact", 0.0):
        ablated = agreement(iar, target, label)
    controls = []
    for _ in range(repeats):
        with temporary_edit(iar, random_like(iar, units, rng), "exact", 0.0):
            controls.append(agreement(iar, target, label))
    return {"ablated": ablated, "random": controls}
