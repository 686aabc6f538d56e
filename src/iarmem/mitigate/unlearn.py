"""Targeted fine-tuning of chosen units: the unlearning baseline a unit edit is compared with.

TinyMem (shared/LOCALIZERS.md) found a few steps of gradient-based unlearning the strongest fix for a
memorized sequence. Here only the chosen units' own parameters move (what writes each unit and what
reads it, ``unit_masks``): the targets' teacher-forced loss is pushed up to the uniform loss log V and
no further, while the reference images' loss is held where it was. Every other element of the
model stays bit-identical, so the comparison with removing the same units is like for like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from iarmem.localize.gates import only_trainable
from iarmem.mitigate.edit import EditRecord, unit_masks
from iarmem.models.base import IAR, Tokens


@dataclass(frozen=True)
class UnlearnConfig:
    steps: int = 20
    lr: float = 1e-3


def _loss(iar: IAR, tokens: Tokens, labels: Tensor) -> Tensor:
    logits = iar.logits(tokens, labels)
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens.ids_BL.flatten().long())


def unlearn(iar: IAR, units: dict[str, tuple[int, ...]], targets: Tokens, target_labels: Tensor, keep: Tokens,
            keep_labels: Tensor, cfg: UnlearnConfig = UnlearnConfig()) -> dict[str, float]:
    """Fine-tune ``units`` of ``iar`` in place; the targets' and references' losses before and after."""
    masks = unit_masks(iar, units)
    ceiling = math.log(iar.vocab_size)
    keyed = dict(iar.model.named_parameters())
    originals = {k: keyed[k].detach().clone() for k in masks}
    with torch.no_grad():
        before = (float(_loss(iar, targets, target_labels)), float(_loss(iar, keep, keep_labels)))
    with only_trainable(iar, set(masks)) as params:
        opt = torch.optim.Adam(params, lr=cfg.lr)
        for _ in range(cfg.steps):
            with torch.enable_grad():
                forget = _loss(iar, targets, target_labels).clamp(max=ceiling)
                loss = _loss(iar, keep, keep_labels) - forget
                opt.zero_grad(set_to_none=True)
                loss.backward()
            for k, m in masks.items():
                keyed[k].grad.mul_(m)
            opt.step()
            with torch.no_grad():  # Adam moves nothing with a zero gradient, but say so exactly
                for k, m in masks.items():
                    keyed[k].copy_(torch.where(m, keyed[k], originals[k]))
    with torch.no_grad():
        after = (float(_loss(iar, targets, target_labels)), float(_loss(iar, keep, keep_labels)))
    return {"target_loss_before": before[0], "target_loss_after": after[0], "keep_loss_before": before[1],
            "keep_loss_after": after[1], "steps": cfg.steps, "lr": cfg.lr}


def restore(iar: IAR, saved: dict[str, Tensor]) -> None:
    """Put back parameters saved with :func:`snapshot`."""
    keyed = dict(iar.model.named_parameters())
    with torch.no_grad():
        for k, v in saved.items():
            keyed[k].copy_(v)


def snapshot(iar: IAR, units: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Copies of the parameters a fine-tuning of ``units`` may change."""
    keyed = dict(iar.model.named_parameters())
    return {k: keyed[k].detach().clone() for k in unit_masks(iar, units)}


def unit_values(iar: IAR, units: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """The values of the units' own parameters, flat per key in mask order: all a fine-tuning of them changed,
    so a tuned model is this much beside its source (the repair keeps it to write the model it measured)."""
    keyed = dict(iar.model.named_parameters())
    return {k: keyed[k].detach()[m].clone() for k, m in unit_masks(iar, units).items()}


def set_unit_values(iar: IAR, units: dict[str, tuple[int, ...]], values: dict[str, Tensor]) -> None:
    """Put values saved by :func:`unit_values` back into the units' own parameters."""
    keyed = dict(iar.model.named_parameters())
    masks = unit_masks(iar, units)
    if set(masks) != set(values) or any(int(m.sum()) != values[k].numel() for k, m in masks.items()):
        raise ValueError("the saved values do not belong to these units of this model")
    with torch.no_grad():
        for k, m in masks.items():
            keyed[k][m] = values[k].to(keyed[k].dtype)


def unlearn_record(iar: IAR, units: dict[str, tuple[int, ...]], cfg: UnlearnConfig) -> EditRecord:
    """edit.json's record of a unit-local fine-tuning: which parameters moved, along which axis, and how."""
    params = {key: {"axis": axis, "units": list(idx)} for name, idx in units.items()
              for key, axis in iar.unit_layer(name).own_params}
    return EditRecord("unlearn", 1.0, {k: tuple(v) for k, v in units.items()}, params,
                      {"steps": cfg.steps, "lr": cfg.lr, "what": "the units' own parameters fine-tuned to raise the "
                       "targets' loss and keep the reference images'"})
