"""Class-conditional sample sets of a model, with each family's published sampling settings.

Quality numbers only mean something with the sampler the authors evaluated with, so each family
gets its own defaults (docs/QUALITY.md lists the sources):

- VAR: cfg 1.5, top-k 900, top-p 0.96, temperature 1 (the README's FID settings, ``more_smooth=False``).
- RAR: the README's per-size guidance scale, cosine-power exponent and temperature for the official
  sizes; models of other shapes (tiny ones) get cfg 2.0 with their config's power and temperature,
  because the ImageNet scale of 16 saturates a small model; no top-k / top-p (the official sampler
  has none).
- LlamaGen: cfg 2.0, top-k 0 (off), top-p 1.0 (off), temperature 1 (the c2i sampling command of
  its GETTING_STARTED).

Samples are drawn class-major (n of class 0, then n of class 1, ...) in batches; batch b draws from
a generator seeded by (seed, b), so a seed and a batch size fix every image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from iarmem.errors import UserError
from iarmem.fileio import atomic_path
from iarmem.models.base import IAR

NPZ_KEY = "arr_0"  # what ADM's evaluator (and the VAR/RAR/LlamaGen READMEs) read
NPZ_LABELS = "labels"

# RAR README ("Testing on ImageNet-1K Benchmark"): (hidden, layers) -> (guidance_scale, power, temperature)
RAR_OFFICIAL = {
    (768, 24): ("rar-b", 16.0, 2.75, 1.0),
    (1024, 24): ("rar-l", 15.5, 2.5, 1.02),
    (1280, 32): ("rar-xl", 6.9, 1.5, 1.02),
    (1408, 40): ("rar-xxl", 8.0, 1.2, 1.02),
}
SMALL_MODEL_CFG = 2.0


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How tokens are drawn. ``cfg=None`` means conditional logits only; ``cfg_power`` is RAR's."""

    cfg: float | None
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    cfg_power: float | None = None
    logit_noise: float = 0.0  # the logit-noise defense, when its quality cost is measured
    source: str = ""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0 or not 0.0 <= self.top_p <= 1.0:
            raise UserError(f"top-k must be >= 0 and top-p in [0, 1], got {self.top_k}, {self.top_p}")
        if self.cfg is not None and self.cfg < 0:
            raise UserError(f"cfg must be >= 0 (or none), got {self.cfg}")

    def generate_kwargs(self, family: str) -> dict[str, Any]:
        kw: dict[str, Any] = {"greedy": False, "cfg": self.cfg, "temperature": self.temperature,
                              "top_k": self.top_k, "top_p": self.top_p, "logit_noise": self.logit_noise}
        if family == "rar" and self.cfg_power is not None:
            kw["cfg_power"] = self.cfg_power
        return kw

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def override(self, **changes: Any) -> SamplingSettings:
        """A copy with the given fields replaced (``None`` values leave a field alone; use
        ``no_cfg=True`` to switch guidance off)."""
        no_cfg = changes.pop("no_cfg", False)
        new = {k: v for k, v in changes.items() if v is not None}
        if no_cfg:
            new["cfg"] = None
        if not new:
            return self
        return dataclasses.replace(self, **new, source=f"{self.source}; overridden: {', '.join(sorted(new))}")


def default_sampling(iar: IAR) -> SamplingSettings:
    """The published sampling settings of ``iar``'s family (and, for RAR, its size)."""
    if iar.family == "var":
        return SamplingSettings(1.5, 1.0, 900, 0.96, None,
                                source="VAR README FID settings (cfg 1.5, top-k 900, top-p 0.96)")
    if iar.family == "llamagen":
        return SamplingSettings(2.0, 1.0, 0, 1.0, None, source="LlamaGen c2i sampling (cfg 2.0, top-k 0, top-p 1.0)")
    if iar.family == "rar":
        cfg = iar.cfg  # type: ignore[attr-defined]
        official = RAR_OFFICIAL.get((cfg.hidden_size, cfg.num_hidden_layers))
        if official and cfg.image_seq_len == 256 and cfg.condition_num_classes == 1000:
            name, scale, power, temp = official
            return SamplingSettings(scale, temp, 0, 0.0, power, source=f"RAR README settings of {name}")
        return SamplingSettings(SMALL_MODEL_CFG, float(cfg.randomize_temperature), 0, 0.0,
                                float(cfg.guidance_scale_pow),
                                source=f"small RAR: cfg {SMALL_MODEL_CFG} with the config's power and temperature")
    raise UserError(f"no default sampling settings for family {iar.family!r}")


def balanced_labels(classes: Sequence[int], n_per_class: int) -> Tensor:
    """[len(classes) * n] labels, class-major."""
    if n_per_class < 1:
        raise UserError(f"samples per class must be >= 1, got {n_per_class}")
    return torch.as_tensor(list(classes), dtype=torch.int64).repeat_interleave(n_per_class)


def batch_generator(seed: int, batch: int, device: torch.device) -> torch.Generator:
    """The generator of batch ``batch``: a function of (seed, batch) only."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.default_rng([int(seed) % 2**63, int(batch), 0x5A3F]).integers(2**62)))
    return g


def to_uint8(images01: Tensor) -> Tensor:
    """[B, 3, H, W] in [0, 1] -> uint8, rounded as PIL and the official samplers do."""
    return (images01.clamp(0, 1) * 255.0 + 0.5).floor().to(torch.uint8)


@torch.no_grad()
def iter_samples(iar: IAR, labels: Tensor, settings: SamplingSettings, seed: int,
                 batch_size: int = 64) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (uint8 images [b, 3, H, W] on the model's device, labels [b]) batch by batch."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    iar.check_labels(labels)
    kwargs = settings.generate_kwargs(iar.family)
    for b, s in enumerate(range(0, len(labels), batch_size)):
        lab = labels[s:s + batch_size].to(iar.device)
        tokens = iar.generate(lab, generator=batch_generator(seed, b, iar.device), **kwargs)
        yield to_uint8(iar.to_unit_range(iar.decode(tokens).float())), lab


def sample_images(iar: IAR, n_per_class: int, seed: int = 0, settings: SamplingSettings | None = None,
                  batch_size: int = 64, classes: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """``n_per_class`` samples of each class (all of the model's by default) as float images in [0, 1]
    (quantised to 8 bits, like the saved files) [N, 3, H, W] and labels [N], on the CPU."""
    classes = range(iar.num_classes) if classes is None else classes
    labels = balanced_labels(classes, n_per_class)
    settings = settings or default_sampling(iar)
    images, labs = [], []
    for x, y in iter_samples(iar, labels, settings, seed, batch_size):
        images.append(x.cpu())
        labs.append(y.cpu())
    return torch.cat(images).float() / 255.0, torch.cat(labs)


# ---- .npz files as the standard evaluators read them -----------------------------------------------
@contextlib.contextmanager
def npz_writer(path: str | os.PathLike, count: int, height: int, width: int,
               labels: Tensor | np.ndarray | None = None) -> Iterator[Callable[[Tensor], None]]:
    """Stream uint8 images into ``path`` as ``arr_0`` [count, H, W, 3] (plus ``labels``) without holding
    them in memory; the file appears whole, and only if exactly ``count`` images were written.

    Yields ``write(images)`` taking uint8 (or [0, 1] float) [b, 3, H, W] tensors.
    """
    shape = (int(count), int(height), int(width), 3)
    written = 0
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open(f"{NPZ_KEY}.npy", "w", force_zip64=True) as member:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": shape}
            np.lib.format.write_array_header_1_0(member, header)

            def write(images: Tensor) -> None:
                nonlocal written
                x = images if images.dtype == torch.uint8 else to_uint8(images)
                if x.ndim != 4 or tuple(x.shape[1:]) != (3, height, width):
                    raise ValueError(f"expected [b, 3, {height}, {width}] images, got {list(x.shape)}")
                if written + len(x) > count:
                    raise ValueError(f"more than the {count} images announced for {path}")
                member.write(np.ascontiguousarray(x.permute(0, 2, 3, 1).cpu().numpy()).tobytes())
                written += len(x)

            yield write
        if written != count:
            raise ValueError(f"{path}: {written} images written but {count} announced")
        if labels is not None:
            with zf.open(f"{NPZ_LABELS}.npy", "w") as member:
                lab = labels.cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
                np.lib.format.write_array(member, lab.astype(np.int64))


def save_npz(path: str | os.PathLike, images: Tensor, labels: Tensor | None = None) -> None:
    """Write [N, 3, H, W] images (uint8, or float in [0, 1]) as an .npz with ``arr_0`` [N, H, W, 3] uint8."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected [N, 3, H, W] images, got {list(images.shape)}")
    with npz_writer(path, images.shape[0], images.shape[2], images.shape[3], labels) as write:
        write(images)


def load_npz(path: str | os.PathLike) -> np.ndarray:
    """``arr_0`` of an .npz sample file: uint8 [N, H, W, 3]."""
    try:
        with np.load(path) as z:
            return np.asarray(z[NPZ_KEY])
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"{path} is not a sample file with an {NPZ_KEY} array ({e})") from e
