"""Streaming UnitMem statistics: per-image mu in, per-(layer, bin, unit) sums / max / argmax out.

Every tapped layer, bin and unit is one column of a flat axis F (layer-major, then bin, then unit),
so a layer's block of F reshapes to [num_bins, width]. Memory is O(F), independent of the number
of images N:

- ``sums_SF`` (float64): the sum of mu over images, split into S "lanes" by the image's position
  p in the id list (lane p mod S), each lane added in position order. A run on W processes, with
  W dividing S, keeps every lane on one process (rank p mod W), so summing the lanes in lane
  order at the end reproduces one process's float64 sum bit for bit.
- ``max_F`` / ``argmax_F`` / ``ties_F``: the largest mu, the smallest id of an image giving it
  and how many images give it (more than one: the maximum is tied and no image owns the unit).
  All three are order-free, so shards and resumes reduce exactly.
- ``count``: images seen. Every image contributes one value to every column, so one count serves
  all columns.

Per-image mu arrive as float32 (the precision of the activations themselves); everything across
images is float64.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from iarmem.distributed import World, all_max_argmax, all_sum
from iarmem.models.base import UnitLayer

NO_ID = -1  # argmax before any image is seen


@dataclass(frozen=True)
class LayerSlot:
    """Where one tapped layer's [num_bins, width] block sits on the flat axis F."""

    name: str
    kind: str
    block: int
    width: int
    offset: int

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "block": self.block, "width": self.width}


@dataclass(frozen=True)
class UnitLayout:
    """The flat axis F: every tapped layer's bins x units, in block order."""

    layers: tuple[LayerSlot, ...]
    num_bins: int

    @classmethod
    def from_layers(cls, layers: Sequence[UnitLayer], num_bins: int) -> UnitLayout:
        slots, off = [], 0
        for layer in layers:
            slots.append(LayerSlot(layer.name, layer.kind, layer.block, layer.width, off))
            off += num_bins * layer.width
        return cls(tuple(slots), num_bins)

    @property
    def size(self) -> int:
        """F: the number of (layer, bin, unit) columns."""
        return sum(s.width for s in self.layers) * self.num_bins

    def span(self, slot: LayerSlot) -> slice:
        return slice(slot.offset, slot.offset + self.num_bins * slot.width)

    def split(self, flat_F: Tensor | np.ndarray) -> dict[str, Tensor | np.ndarray]:
        """Layer name -> its [num_bins, width] view of a flat [F] array."""
        return {s.name: flat_F[self.span(s)].reshape(self.num_bins, s.width) for s in self.layers}


class BinReducer:
    """|activation| averaged over the token positions of each bin: [S, L, U] -> [S, K, U] float32.

    A bin of -1 leaves the position out (the class-only positions, by default).

    Bins that are contiguous runs of positions (VAR scales, raster position bins) are read as
    slices, anything else through an index. The token sum accumulates in float32 (also for
    bfloat16 activations): torch's cascaded sums keep it within a few float32 ulps, the precision
    mu is kept in anyway, at a quarter of the cost of a float64 reduction on a CPU.
    """

    def __init__(self, bins_L: Tensor) -> None:
        bins = torch.as_tensor(bins_L, dtype=torch.int64).cpu()
        if bins.dim() != 1 or bins.numel() == 0 or int(bins.min()) < -1 or int(bins.max()) < 0:
            raise ValueError("bins must be a non-empty [L] tensor of bin indices >= 0 (-1: left out)")
        self.num_bins = int(bins.max()) + 1
        self.seq_len = int(bins.numel())
        self.groups: list[slice | Tensor] = []
        for k in range(self.num_bins):
            idx = torch.nonzero(bins == k).flatten()
            if idx.numel() == 0:
                raise ValueError(f"bin {k} holds no token positions")
            lo, hi = int(idx[0]), int(idx[-1]) + 1
            self.groups.append(slice(lo, hi) if hi - lo == idx.numel() else idx)
        self.counts = [int((bins == k).sum()) for k in range(self.num_bins)]

    def __call__(self, act_SLU: Tensor) -> Tensor:
        if act_SLU.dim() != 3 or act_SLU.shape[1] != self.seq_len:
            raise ValueError(f"expected [S, {self.seq_len}, U] activations, got {tuple(act_SLU.shape)}")
        abs_SLU = act_SLU.abs()
        S, _, U = abs_SLU.shape
        out_SKU = torch.empty(S, self.num_bins, U, dtype=torch.float32, device=act_SLU.device)
        for k, g in enumerate(self.groups):
            part = abs_SLU[:, g] if isinstance(g, slice) else abs_SLU.index_select(1, g.to(abs_SLU.device))
            out_SKU[:, k] = part.sum(dim=1, dtype=torch.float32) / self.counts[k]
        return out_SKU

    def signed_sums(self, value_SLU: Tensor) -> Tensor:
        """Signed sums over the positions of each bin: [S, L, U] -> [S, K, U] float32 (attributions add up
        over positions, so the bins of a unit add up to its whole effect)."""
        if value_SLU.dim() != 3 or value_SLU.shape[1] != self.seq_len:
            raise ValueError(f"expected [S, {self.seq_len}, U] values, got {tuple(value_SLU.shape)}")
        parts = [value_SLU[:, g] if isinstance(g, slice) else value_SLU.index_select(1, g.to(value_SLU.device))
                 for g in self.groups]
        return torch.stack([p.sum(dim=1, dtype=torch.float32) for p in parts], dim=1)


def augmentation_mean(mu_SKU: Tensor, augs: int) -> Tensor:
    """[B*A, K, U] per-augmentation bin means (image-major) -> [B, K*U] per-image mu, float32."""
    S, K, U = mu_SKU.shape
    if S % augs:
        raise ValueError(f"{S} sequences are not a whole number of images x {augs} augmentations")
    mean_BKU = mu_SKU.view(S // augs, augs, K, U).to(torch.float64).mean(dim=1)
    return mean_BKU.reshape(S // augs, K * U).to(torch.float32)


class UnitStats:
    """Lane sums, max with argmax, and count of per-image mu over a stream of image batches."""

    def __init__(self, size: int, lanes: int = 8, device: torch.device | str = "cpu") -> None:
        if lanes < 1:
            raise ValueError("lanes must be >= 1")
        self.size, self.lanes, self.device = int(size), int(lanes), torch.device(device)
        self.sums_SF = torch.zeros(self.lanes, self.size, dtype=torch.float64, device=self.device)
        self.max_F = torch.full((self.size,), -torch.inf, dtype=torch.float64, device=self.device)
        self.argmax_F = torch.full((self.size,), NO_ID, dtype=torch.int64, device=self.device)
        self.ties_F = torch.zeros(self.size, dtype=torch.int64, device=self.device)
        self.count = 0

    def update(self, positions_B: Sequence[int] | np.ndarray, ids_B: Sequence[int] | np.ndarray,
               mu_BF: Tensor) -> None:
        """Add one batch: image ``ids_B[j]`` at list position ``positions_B[j]`` has mu ``mu_BF[j]``.

        Rows must come in increasing position order within a lane (batches in order do that).
        """
        positions = np.asarray(positions_B, dtype=np.int64)
        ids = np.asarray(ids_B, dtype=np.int64)
        if mu_BF.shape != (len(ids), self.size) or len(positions) != len(ids):
            raise ValueError(f"mu must be [{len(ids)}, {self.size}] for {len(ids)} ids, got {tuple(mu_BF.shape)}")
        if len(ids) == 0:
            return
        mu64_BF = mu_BF.to(self.device, torch.float64)
        if not bool(torch.isfinite(mu64_BF).all()):
            bad = int(ids[int(torch.nonzero(~torch.isfinite(mu64_BF).all(dim=1))[0])])
            raise FloatingPointError(f"non-finite activations for image {bad}")
        for j, p in enumerate(positions.tolist()):  # in order: each lane's float64 sum is sequential
            self.sums_SF[p % self.lanes] += mu64_BF[j]
        ids_t = torch.as_tensor(ids, device=self.device)
        bmax_F = mu64_BF.amax(dim=0)
        at_max_BF = mu64_BF == bmax_F
        big = torch.iinfo(torch.int64).max
        barg_F = torch.where(at_max_BF, ids_t[:, None], big).amin(dim=0)
        self._merge(bmax_F, barg_F, at_max_BF.sum(dim=0))
        self.count += len(ids)

    def _merge(self, max_F: Tensor, arg_F: Tensor, ties_F: Tensor) -> None:
        greater, equal = max_F > self.max_F, max_F == self.max_F
        take = greater | (equal & (arg_F < self.argmax_F))
        self.ties_F = torch.where(greater, ties_F, torch.where(equal, self.ties_F + ties_F, self.ties_F))
        self.max_F = torch.where(take, max_F, self.max_F)
        self.argmax_F = torch.where(take, arg_F, self.argmax_F)

    def owner_F(self) -> Tensor:
        """The image that drives each column most, or NO_ID where several images tie for the maximum."""
        return torch.where(self.ties_F == 1, self.argmax_F, torch.full_like(self.argmax_F, NO_ID))

    def total_F(self) -> Tensor:
        """The float64 sum over images: lanes added in lane order (the same on every world size)."""
        total = self.sums_SF[0].clone()
        for s in range(1, self.lanes):
            total += self.sums_SF[s]
        return total

    # ---- scale-out and resume -----------------------------------------------------------
    def reduced(self, world: World) -> UnitStats:
        """The statistics of all ranks together (every rank gets them).

        Lanes held by one rank are summed with zeros elsewhere, which is exact; max / argmax, the
        tie counts (summed over the ranks that reach the global max) and the count are exact by
        construction.
        """
        out = UnitStats(self.size, self.lanes, self.device)
        out.sums_SF = all_sum(self.sums_SF.clone(), world).to(self.device)
        mx, arg = all_max_argmax(self.max_F, self.argmax_F, world)
        out.max_F, out.argmax_F = mx.to(self.device), arg.to(self.device)
        mine = torch.where(self.max_F == out.max_F, self.ties_F, torch.zeros_like(self.ties_F))
        out.ties_F = all_sum(mine, world).to(self.device)
        out.count = int(all_sum(torch.tensor([self.count], dtype=torch.int64), world)[0])
        return out

    def state_dict(self) -> dict[str, Tensor]:
        return {"sums": self.sums_SF.cpu(), "max": self.max_F.cpu(), "argmax": self.argmax_F.cpu(),
                "ties": self.ties_F.cpu(), "count": torch.tensor([self.count], dtype=torch.int64)}

    def load_reduced(self, state: dict[str, Tensor], world: World) -> None:
        """Resume from a reduced state: each rank takes back the lanes it adds to (lane mod world
        size == rank), every rank the max / argmax (idempotent under the max), rank 0 the tie counts
        and the count (sums: held once)."""
        sums = state["sums"].to(self.device, torch.float64)
        if tuple(sums.shape) != (self.lanes, self.size):
            raise ValueError(f"saved sums have shape {tuple(sums.shape)}, expected {(self.lanes, self.size)}")
        own = torch.tensor([s % world.size == world.rank for s in range(self.lanes)], device=self.device)
        self.sums_SF = torch.where(own[:, None], sums, torch.zeros_like(sums))
        self.max_F = state["max"].to(self.device, torch.float64).clone()
        self.argmax_F = state["argmax"].to(self.device, torch.int64).clone()
        ties = state["ties"].to(self.device, torch.int64)
        self.ties_F = ties.clone() if world.is_main else torch.zeros_like(ties)
        self.count = int(state["count"][0]) if world.is_main else 0


# ---- UnitMem ----------------------------------------------------------------------------
def mean_others(total_F: Tensor, max_F: Tensor, count: int) -> Tensor:
    """mu_-max: the mean over the images other than the argmax, (sum - max) / (N - 1).

    With one image there are no others; mu_-max is then defined as mu_max, so UnitMem is 0.
    """
    if count < 1:
        raise ValueError("no images were seen")
    if count == 1:
        return max_F.clone()
    return ((total_F - max_F) / (count - 1)).clamp_min(0.0)


def unitmem(max_F: Tensor, others_F: Tensor) -> Tensor:
    """(mu_max - mu_-max) / (mu_max + mu_-max) in [0, 1]; 0 where both are 0 (a silent unit)."""
    den = max_F + others_F
    return torch.where(den > 0, (max_F - others_F) / torch.where(den > 0, den, 1.0), 0.0).clamp(0.0, 1.0)


def median_others(values_NF: np.ndarray, chunk_bytes: int = 256 << 20) -> np.ndarray:
    """The median over the images other than the argmax, per column (UnitMem's reference code).

    Removing the argmax image removes one copy of the column's largest value, so this is the
    median of the N - 1 smallest values; with one image it is that image's value (UnitMem 0).
    Columns are sorted in chunks of about ``chunk_bytes`` (one float32 copy), so a memmap is
    never read whole.
    """
    N, F = values_NF.shape
    if N < 1:
        raise ValueError("no images were seen")
    out = np.empty(F, dtype=np.float64)
    m = max(1, N - 1)  # how many values the median is over (the one image itself when N = 1)
    step = max(1, chunk_bytes // (4 * N))
    for lo in range(0, F, step):
        cols = np.array(values_NF[:, lo:lo + step], dtype=np.float32)  # the one working copy
        cols.sort(axis=0)
        mid = cols[m // 2].astype(np.float64)
        out[lo:lo + step] = mid if m % 2 else (cols[m // 2 - 1].astype(np.float64) + mid) / 2
    return out


class ValueStore:
    """Per-image mu on disk ([N, F] float32 memmap, row = position in the id list) for the median."""

    def __init__(self, path: str | os.PathLike, num_images: int, size: int, resume: bool) -> None:
        """A new (zero) store, or with ``resume`` the one already on disk, which must fit."""
        self.path = Path(path)
        self.shape = (int(num_images), int(size))
        nbytes = self.shape[0] * self.shape[1] * 4
        if resume and not (self.path.is_file() and self.path.stat().st_size == nbytes):
            raise FileNotFoundError(f"{self.path} is missing or not {self.shape[0]} x {self.shape[1]} float32 values")
        self.values = np.memmap(self.path, dtype=np.float32, mode="r+" if resume else "w+", shape=self.shape)

    def write(self, positions_B: np.ndarray, mu_BF: Tensor | np.ndarray) -> None:
        rows = mu_BF.cpu().numpy() if isinstance(mu_BF, Tensor) else np.asarray(mu_BF)
        order = np.asarray(positions_B, dtype=np.int64)
        if len(order):
            self.values[order] = rows.astype(np.float32, copy=False)

    def flush(self) -> None:
        self.values.flush()

    def close(self) -> None:
        self.flush()
        del self.values
