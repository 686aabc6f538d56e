"""The ``mask`` localizer (after Chang et al. 2024): learn which units to remove so an image stops coming out.

Per target image, a HardConcrete gate (Louizos et al. 2018) over every tapped unit: z in [0, 1]
is the unit's *removal*, the unit's value is multiplied by 1 - z (the exact edit, ``gates.py``).
The parameters stay frozen; only the gates' log-alphas learn, minimising

    mean p(true token) of the target's views on the positions the attack scores
    + ref_weight x teacher-forced loss of a few reference images
    + sparsity x expected fraction of units removed (the L0 term),

so the units the target needs, and the references do not, are the ones whose removal is learned.
The score of a unit is its final log-alpha (higher: removed with higher probability). The L1
"slimming" variant (``relaxation="l1"``) replaces the stochastic gates with a sigmoid of the same
parameters and an L1 penalty: cheaper per step, no sampling noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from iarmem.localize.gates import only_trainable, unit_gates
from iarmem.models.base import IAR, Tokens, UnitLayer

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1  # HardConcrete temperature and stretch (Louizos et al.)
RELAXATIONS = ("hardconcrete", "l1")


@dataclass(frozen=True)
class MaskConfig:
    steps: int = 100
    lr: float = 0.1
    sparsity: float = 1.0  # weight of the expected fraction of units removed
    ref_weight: float = 1.0
    ref_rows: int = 4  # reference sequences per step
    init: float = -3.0  # initial log-alpha: about 5 % removal probability
    relaxation: str = "hardconcrete"


def removal(log_alpha: Tensor, cfg: MaskConfig, gen: torch.Generator | None) -> Tensor:
    """z in [0, 1] per unit: a HardConcrete sample (training), or the deterministic l1 relaxation."""
    if cfg.relaxation == "l1":
        return torch.sigmoid(log_alpha)
    u = torch.rand(log_alpha.shape, generator=gen).clamp(1e-6, 1 - 1e-6).to(log_alpha.device)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def expected_removed(log_alpha: Tensor, cfg: MaskConfig) -> Tensor:
    """The L0 (HardConcrete: P(z > 0)) or L1 penalty, as a mean over units."""
    if cfg.relaxation == "l1":
        return torch.sigmoid(log_alpha).mean()
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA)).mean()


def learn_mask(iar: IAR, layers: list[UnitLayer], target: Tokens, target_labels: Tensor, start: int,
               refs: Tokens, ref_labels: Tensor, cfg: MaskConfig, seed: int) -> dict[str, Tensor]:
    """log-alpha [U] per layer after ``cfg.steps`` steps (seeded: the same target gives the same mask).

    ``target``: the image's views [A, L]; ``start``: the first scored position; ``refs``: a pool of
    reference sequences, ``cfg.ref_rows`` drawn per step.
    """
    if cfg.relaxation not in RELAXATIONS:
        raise ValueError(f"relaxation must be one of {', '.join(RELAXATIONS)}")
    dev = iar.device
    gen = torch.Generator().manual_seed(seed)
    alphas = {layer.name: torch.full((layer.width,), cfg.init, device=dev, requires_grad=True) for layer in layers}
    opt = torch.optim.Adam(list(alphas.values()), lr=cfg.lr)
    t_ids = target.ids_BL.to(dev).long()
    with only_trainable(iar, set()), torch.enable_grad():
        for _ in range(cfg.steps):
            rows = torch.randint(0, refs.batch_size, (min(cfg.ref_rows, refs.batch_size),), generator=gen)
            ids = torch.cat([t_ids, refs.ids_BL[rows].to(dev).long()])
            labels = torch.cat([target_labels.to(dev), ref_labels[rows].to(dev)])
            flat = torch.cat(list(alphas.values()))
            z = removal(flat, cfg, gen)
            keep = 1.0 - z
            gates, o = {}, 0
            for layer in layers:
                gates[layer.name] = keep[o:o + layer.width]
                o += layer.width
            with unit_gates(iar, layers, gates):
                logits = iar.logits(Tokens(ids, iar.grids), labels).float()
            A = t_ids.shape[0]
            p_true = torch.softmax(logits[:A, start:], -1).gather(-1, t_ids[:, start:, None]).mean()
            ref_ce = torch.nn.functional.cross_entropy(logits[A:].flatten(0, 1), ids[A:].flatten())
            loss = p_true + cfg.ref_weight * ref_ce + cfg.sparsity * expected_removed(flat, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return {k: v.detach() for k, v in alphas.items()}
