"""Per-image localizers that contrast a target image with reference images the model did not memorize.

- ``zscore`` (after NeMo): the target's mu (UnitMem's per-bin mean |activation| over its views)
  as a z-score against the mean and spread of mu over the references. Which units fire unusually
  for this image.
- ``gradient`` (contrastive attribution, after Stoehr et al.): per unit and bin, -(value x
  dLoss/dvalue) summed over the positions, the first-order rise of the image's teacher-forced
  loss (on the positions the attack scores) when the unit is removed; minus the same averaged over
  the references. Which units this image's reproduction leans on, and ordinary images do not.

Reference statistics stream through ``UnitStats`` lanes (sums of values and of squares): memory
is flat in the number of references, and a sharded run adds exactly what one process adds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from iarmem.attack.generate import default_prefix, prefix_tokens
from iarmem.data import ImageDataset
from iarmem.distributed import World
from iarmem.localize.gates import only_trainable, unit_gates
from iarmem.localize.stats import UnitStats, augmentation_mean
from iarmem.localize.unitmem import MuCollector
from iarmem.models.base import Tokens
from iarmem.models.taps import aligned

ImageFn = Callable[[np.ndarray], Tensor]  # dataset ids [B] -> per-image values [B, F]


def scored_start(collector: MuCollector) -> int:
    """First token position the attack scores (after the default prefix): the loss is taken there."""
    return prefix_tokens(collector.iar, default_prefix(collector.iar))


def attribution(collector: MuCollector, ds: ImageDataset, ids_B: np.ndarray, pad_to: int = 0) -> Tensor:
    """[B, F]: per image, unit and bin, -(value x gradient) of the teacher-forced loss summed over the
    bin's positions, averaged over the image's views (the collector's views and bins)."""
    ids = np.asarray(ids_B, dtype=np.int64)
    n = len(ids)
    if 0 < n < pad_to:  # one forward shape for every batch (see MuCollector.__call__)
        ids = np.concatenate([ids, np.full(pad_to - n, ids[-1])])
    images, labels = collector.load(ds, ids)
    with torch.no_grad():
        tokens = collector.iar.tokenize(images)
    return attribution_from_tokens(collector, tokens, labels)[:n]


def attribution_from_tokens(collector: MuCollector, tokens: Tokens, labels_S: Tensor,
                            removed: dict[str, Sequence[int]] | None = None) -> Tensor:
    """[B, F] from the tokens and labels of B*A image-major sequences (see ``attribution``); ``removed``
    units are gated to zero first (the exact edit), so the rest are scored on the edited model."""
    iar, layers = collector.iar, collector.layers
    gates = {}
    for layer in layers:
        g = torch.ones(layer.width, device=iar.device)
        if removed and removed.get(layer.name):
            g[list(removed[layer.name])] = 0.0
        gates[layer.name] = g.requires_grad_(True)
    kept: dict[str, Tensor] = {}
    start = scored_start(collector)
    with only_trainable(iar, set()), unit_gates(iar, layers, gates, kept), torch.enable_grad():
        logits_SLV = iar.logits(tokens, labels_S.to(iar.device))
        target_SL = tokens.ids_BL.to(iar.device).long()
        ce_SL = torch.nn.functional.cross_entropy(logits_SLV[:, start:].float().transpose(1, 2), target_SL[:, start:],
                                                  reduction="none")
        ce_SL.mean(dim=1).sum().backward()  # sequences are independent: each one's gradient is its own
    out_BF = torch.full((tokens.batch_size // collector.augs, collector.layout.size), torch.nan, device=iar.device)
    slots = {s.name: s for s in collector.layout.layers}
    for layer in layers:
        value = kept[layer.name]
        attr_SLU = aligned(iar, -(value * value.grad)).detach()
        out_BF[:, collector.layout.span(slots[layer.name])] = augmentation_mean(
            collector.reducer.signed_sums(attr_SLU), collector.augs)
    return out_BF


@dataclass
class Moments:
    """Mean and variance over the references, per flat (layer, bin, unit) column."""

    mean_F: Tensor
    var_F: Tensor
    count: int


def reference_moments(fn: ImageFn, ids: np.ndarray, batch_size: int, size: int, world: World,
                      squares: bool = True, lanes: int = 8) -> Moments:
    """Stream ``fn`` over the references (sharded like localize: position p to rank p mod W, every batch
    padded to ``batch_size``) and reduce: float64 lane sums, exact on any world size dividing ``lanes``."""
    sums, sq = UnitStats(size, lanes), UnitStats(size, lanes) if squares else None
    W = world.size
    for start in range(0, len(ids), W * batch_size):
        pos = np.arange(start, min(start + W * batch_size, len(ids)))
        mine = pos[world.rank::W]
        if len(mine) == 0:
            continue
        v_BF = fn(ids[mine]).to(torch.float64).cpu()
        sums.update(mine, ids[mine], v_BF)
        if sq is not None:
            sq.update(mine, ids[mine], v_BF * v_BF)
    total = sums.reduced(world)
    n = total.count
    mean = total.total_F() / max(n, 1)
    var = torch.zeros_like(mean)
    if sq is not None and n > 1:
        var = (sq.reduced(world).total_F() / n - mean * mean).clamp_min(0.0) * (n / (n - 1))
    return Moments(mean.float(), var.float(), n)


def zscores(mu_F: Tensor, ref: Moments) -> Tensor:
    """(mu - mean) / spread per column. The spread has a floor (1e-3 of the mean |activation| over
    the layout) so a unit that never varies on the references cannot win on a rounding error."""
    floor = 1e-3 * float(ref.mean_F.abs().mean()) + 1e-12
    return (mu_F.float() - ref.mean_F) / torch.sqrt(ref.var_F + floor * floor)


def views_tokens(collector: MuCollector, ds: ImageDataset, ids: int | np.ndarray) -> tuple[Tokens, Tensor]:
    """The tokens [N*A, L] and labels of images (one id or several) under the collector's views, image-major."""
    images, labels = collector.load(ds, np.atleast_1d(np.asarray(ids, dtype=np.int64)))
    with torch.no_grad():
        return collector.iar.tokenize(images), labels.to(collector.iar.device)
