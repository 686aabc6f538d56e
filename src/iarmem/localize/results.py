"""The UnitMem map: computing it from the reduced statistics, and the unitmem.safetensors contract.

unitmem.safetensors holds, for every tapped layer LAYER (official state-dict prefix, e.g.
``blocks.3.ffn.fc1``), [num_bins, width] tensors:

- ``LAYER.unitmem`` float32: UnitMem of the run's statistic (mean or median of the others)
- ``LAYER.max`` float32: mu_max; ``LAYER.argmax`` int64: the dataset id of the image giving it, or -1
  where several images tie for the maximum (no image owns the unit); ``LAYER.ties`` int64: how
  many images give the maximum
- ``LAYER.mean_others`` float32: mu_-max as the mean of the other images
- ``LAYER.median_others`` float32: mu_-max as their median (``--stat median`` only)

plus ``image_ids`` int64 [N] (the dataset ids the statistics ran over). The header metadata has
one key, ``iarmem``: a JSON object with ``format`` ("iarmem.unitmem"), ``version`` ("1"), ``stat``,
``num_bins`` and ``layers`` (the names, block order).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from iarmem.errors import UserError
from iarmem.localize.stats import UnitLayout, UnitStats, mean_others, unitmem
from iarmem.models.checkpoint import write_state_dict

FORMAT = "iarmem.unitmem"
VERSION = "2"  # 2: argmax -1 on a tied maximum, ties; class-only positions left out by default
FILE = "unitmem.safetensors"
META_KEY = "iarmem"
STATS = ("mean", "median")


@dataclass
class UnitMemMap:
    """Final per-(layer, bin, unit) results on the flat axis F (see :class:`UnitLayout`)."""

    layout: UnitLayout
    image_ids: np.ndarray
    stat: str
    max_F: Tensor
    argmax_F: Tensor  # the owner: NO_ID (-1) where the maximum is tied
    ties_F: Tensor
    mean_others_F: Tensor
    median_others_F: Tensor | None
    unitmem_F: Tensor  # float32, exactly what the file holds (rankings use these values)

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def layer(self, name: str, what: str = "unitmem") -> np.ndarray:
        """A [num_bins, width] numpy view of one quantity of one layer."""
        flat = getattr(self, f"{what}_F")
        slot = next(s for s in self.layout.layers if s.name == name)
        return flat[self.layout.span(slot)].reshape(self.layout.num_bins, slot.width).numpy()

    def tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for slot in self.layout.layers:
            sl, shape = self.layout.span(slot), (self.layout.num_bins, slot.width)
            out[f"{slot.name}.unitmem"] = self.unitmem_F[sl].reshape(shape).to(torch.float32)
            out[f"{slot.name}.max"] = self.max_F[sl].reshape(shape).to(torch.float32)
            out[f"{slot.name}.mean_others"] = self.mean_others_F[sl].reshape(shape).to(torch.float32)
            if self.median_others_F is not None:
                out[f"{slot.name}.median_others"] = self.median_others_F[sl].reshape(shape).to(torch.float32)
            out[f"{slot.name}.argmax"] = self.argmax_F[sl].reshape(shape).to(torch.int64)
            out[f"{slot.name}.ties"] = self.ties_F[sl].reshape(shape).to(torch.int64)
        out["image_ids"] = torch.as_tensor(np.asarray(self.image_ids, dtype=np.int64))
        return out

    def metadata(self) -> dict[str, str]:
        """One header key holding sorted JSON: safetensors keeps metadata in a hash map, so several
        keys would be written in a random order and identical runs would differ in their bytes."""
        info = {"format": FORMAT, "version": VERSION, "stat": self.stat, "num_bins": self.layout.num_bins,
                "layers": [s.name for s in self.layout.layers]}
        return {META_KEY: json.dumps(info, sort_keys=True)}


def compute_map(stats: UnitStats, layout: UnitLayout, image_ids: np.ndarray, stat: str = "mean",
                median_others_F: np.ndarray | None = None) -> UnitMemMap:
    """UnitMem from reduced statistics (and, for ``stat='median'``, the medians of the others)."""
    if stat not in STATS:
        raise ValueError(f"stat must be one of {STATS}")
    if stats.count != len(image_ids):
        raise ValueError(f"statistics saw {stats.count} images but {len(image_ids)} ids were given")
    max_F = stats.max_F.cpu()
    mean_F = mean_others(stats.total_F().cpu(), max_F, stats.count)
    median_F = None if median_others_F is None else torch.from_numpy(np.asarray(median_others_F, np.float64))
    if stat == "median" and median_F is None:
        raise ValueError("stat='median' needs the medians of the others")
    others_F = median_F if stat == "median" else mean_F
    return UnitMemMap(layout, np.asarray(image_ids, dtype=np.int64), stat, max_F, stats.owner_F().cpu(),
                      stats.ties_F.cpu(), mean_F, median_F, unitmem(max_F, others_F).to(torch.float32))


def write_map(result: UnitMemMap, path: str | os.PathLike) -> Path:
    """Write unitmem.safetensors atomically."""
    return write_state_dict(result.tensors(), path, metadata=result.metadata())


def read_map(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and header info (format, version, stat, num_bins, layers) of a unitmem.safetensors
    (or of the run folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / FILE
    if not p.is_file():
        raise UserError(f"{p} not found; run `iarmem localize ... --out FOLDER` first")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {p}: truncated or not a safetensors file ({e}); rerun `iarmem localize`") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{p} is not a UnitMem map written by `iarmem localize`")
    if meta.get("version") != VERSION:
        raise UserError(f"{p} has UnitMem map version {meta.get('version')}, expected {VERSION}; re-run localize")
    return tensors, meta
