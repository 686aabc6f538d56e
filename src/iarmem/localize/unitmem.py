"""Per-image mu from a model: B images x A augmentations in one teacher-forced, tapped pass.

mu_u(x) = mean over the A augmentations of x of |activation_u|, averaged over the token positions
of each bin (PAPER.md section 2). The augmentations are the family's training augmentation,
drawn reproducibly from (seed, image id, view), so a batch, a shard or a resume sees the same
pixels for the same image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from iarmem.data import ImageDataset
from iarmem.localize.stats import BinReducer, UnitLayout, augmentation_mean
from iarmem.models.base import IAR, Tokens, UnitLayer
from iarmem.models.taps import tap
from iarmem.tokens import load_views

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def view_indices(augs: int, include_eval_view: bool) -> tuple[int, ...]:
    """The views averaged per image: training draws 1..A, or the eval crop 0 plus draws 1..A-1."""
    if augs < 1:
        raise ValueError("augs must be >= 1")
    return tuple(range(augs)) if include_eval_view else tuple(range(1, augs + 1))


def localization_bins(iar: IAR, num_bins: int | None = None, keep_class_positions: bool = False) -> Tensor:
    """[L] bin of every token position, -1 for positions left out.

    By default the class-only positions (``IAR.class_only_positions``) are left out: every image of
    a class gives them the same activation, so the largest one would be a tie that the smallest id
    wins. Bins are renumbered 0..K-1 over what remains (VAR: the 1x1 scale goes, 2x2 is bin 0).
    """
    bins = iar.bins(num_bins).to(torch.int64).clone()
    if keep_class_positions:
        return bins
    bins[:iar.class_only_positions] = -1
    kept = torch.unique(bins[bins >= 0])
    if kept.numel() == 0:
        raise ValueError("every bin holds only class-only positions; use more bins or keep the class positions")
    remap = torch.full((int(bins.max()) + 1,), -1, dtype=torch.int64)
    remap[kept] = torch.arange(kept.numel())
    return torch.where(bins >= 0, remap[bins.clamp_min(0)], bins)


class MuCollector:
    """Computes per-image mu [B, F] (float32, on the model's device) for batches of dataset ids."""

    def __init__(self, iar: IAR, layers: Sequence[UnitLayer], bins_L: Tensor, views: Sequence[int], seed: int,
                 dtype: str = "float32") -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
        self.iar, self.layers, self.views, self.seed = iar, list(layers), tuple(views), seed
        self.dtype = DTYPES[dtype]
        self.reducer = BinReducer(bins_L)
        self.layout = UnitLayout.from_layers(self.layers, self.reducer.num_bins)

    @property
    def augs(self) -> int:
        return len(self.views)

    def load(self, ds: ImageDataset, ids_B: np.ndarray) -> tuple[Tensor, Tensor]:
        """Images [B*A, 3, H, W] image-major (id0 view0..viewA-1, id1 ...) and their labels."""
        ids = np.repeat(np.asarray(ids_B, dtype=np.int64), self.augs)
        views = np.tile(np.asarray(self.views, dtype=np.int64), len(ids_B))
        return load_views(self.iar, ds, ids, views, self.seed)

    @torch.no_grad()
    def __call__(self, ds: ImageDataset, ids_B: np.ndarray, pad_to: int = 0) -> Tensor:
        """mu [B, F]. With ``pad_to`` a short batch is padded (repeating its last image, rows dropped)
        so every forward has the same shape: float32 kernels may round differently for another
        batch size, and an image's mu must not depend on where its batch ends."""
        ids = np.asarray(ids_B, dtype=np.int64)
        n = len(ids)
        if 0 < n < pad_to:
            ids = np.concatenate([ids, np.full(pad_to - n, ids[-1])])
        images, labels = self.load(ds, ids)
        tokens = self.iar.tokenize(images)  # full precision: the ground-truth tokens must not change
        return self.from_tokens(tokens, labels.to(self.iar.device))[:n]

    @torch.no_grad()
    def from_tokens(self, tokens: Tokens, labels_S: Tensor) -> Tensor:
        """mu [B, F] from the tokens and labels of B*A image-major sequences."""
        S = tokens.batch_size
        # NaN until a tap fills it: a layer the forward never reached fails the finiteness check
        out_BF = torch.full((S // self.augs, self.layout.size), torch.nan, device=self.iar.device)
        slots = {s.name: s for s in self.layout.layers}

        def collect(layer: UnitLayer, act_SLU: Tensor) -> None:
            out_BF[:, self.layout.span(slots[layer.name])] = augmentation_mean(self.reducer(act_SLU), self.augs)

        dev = self.iar.device
        cast = (torch.autocast(device_type=dev.type, dtype=self.dtype) if self.dtype != torch.float32
                else contextlib.nullcontext())
        with tap(self.iar, self.layers, collect), cast:
            self.iar.logits(tokens, labels_S)
        return out_BF
