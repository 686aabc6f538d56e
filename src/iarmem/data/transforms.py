"""Preprocessing and training augmentation of each model family, as its official code does it.

UnitMem averages activations over the model's own training augmentations, so these follow the
official pipelines (torchvision semantics, re-implemented on PIL + torch):

- VAR (``utils/data.py: build_dataset``): resize the shorter side to round(1.125 * side) with
  LANCZOS, then RandomCrop(side) for training (``hflip=False`` by default) or CenterCrop for
  evaluation; values in [-1, 1].
- RAR (1d-tokenizer ``configs/training/generator/rar.yaml`` + ``data/webdataset_reader.py``):
  resize the shorter side to side (BICUBIC), then ``random_crop: False`` -> CenterCrop, and
  RandomHorizontalFlip for training; evaluation resizes and center-crops; values in [0, 1]
  (MaskGIT-VQ takes [0, 1]). After a resize to the crop side a random crop moves only along the
  longer side; ``crop="random"`` is available as an option.
- LlamaGen (``autoregressive/train/extract_codes_c2i.py``): ADM's ``center_crop_arr`` (BOX
  halvings while the image is at least twice the side, then BICUBIC so the shorter side is the
  side, then a center crop), and for training a horizontal flip (the official code stores the
  codes of both the image and its flip); values in [-1, 1]. Its optional ten-crop is omitted.

Randomness comes only from the ``torch.Generator`` passed in, so augmentation ``a`` of image
``i`` can be reproduced regardless of batching, sharding or resume (see
:func:`augmentation_generator`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image

from iarmem.data.base import ImageDataset
from iarmem.errors import UserError

FAMILIES = ("var", "rar", "llamagen")
Resize = Literal["shorter", "adm"]
Crop = Literal["random", "center"]

_RESAMPLE = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}


@dataclasses.dataclass(frozen=True)
class AugParams:
    """The random choices of one augmentation, so tests and reports can inspect them."""

    top: int
    left: int
    flip: bool


@dataclasses.dataclass(frozen=True)
class ImageTransform:
    """PIL image -> float tensor [3, side, side] in ``value_range``; one family's pipeline."""

    side: int
    resize: Resize = "shorter"  # "shorter": torchvision Resize(int); "adm": ADM's center_crop_arr
    resize_ratio: float = 1.0  # the shorter side becomes round(resize_ratio * side)
    resample: str = "bicubic"
    crop: Crop = "center"
    flip: bool = False
    value_range: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self) -> None:
        if self.side < 1 or self.resize_ratio < 1.0:
            raise UserError(
                f"image side must be >= 1 and resize_ratio >= 1, got {self.side}, {self.resize_ratio}"
            )
        if (
            self.resample not in _RESAMPLE
            or self.resize not in ("shorter", "adm")
            or self.crop not in ("random", "center")
        ):
            raise UserError(
                f"bad transform options resize={self.resize!r} resample={self.resample!r} "
                f"crop={self.crop!r}; use resize in (shorter, adm), resample in "
                f"({', '.join(_RESAMPLE)}), crop in (random, center)"
            )
        if self.value_range[1] <= self.value_range[0]:
            raise UserError(f"value_range must be increasing, got {self.value_range}")

    @property
    def random(self) -> bool:
        """Whether the transform draws from the generator at all."""
        return self.crop == "random" or self.flip

    def resized(self, img: Image.Image) -> Image.Image:
        """The deterministic first stage: RGB, resized so that the shorter side is the target."""
        img = img.convert("RGB")
        target = round(self.resize_ratio * self.side)
        if self.resize == "adm":
            return _adm_resize(img, target)
        return _resize_shorter(img, target, _RESAMPLE[self.resample])

    def sample_params(self, width: int, height: int, generator: torch.Generator | None) -> AugParams:
        """Draw crop offsets (top, then left, as torchvision does) and the flip from ``generator``."""
        if self.random and generator is None:
            raise ValueError("a random transform needs a torch.Generator (see augmentation_generator)")
        if self.crop == "random":
            top = int(torch.randint(0, height - self.side + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - self.side + 1, (1,), generator=generator))
        elif self.resize == "adm":
            top, left = (height - self.side) // 2, (width - self.side) // 2
        else:
            top, left = int(round((height - self.side) / 2.0)), int(round((width - self.side) / 2.0))
        flip = bool(self.flip and float(torch.rand(1, generator=generator)) < 0.5)
        return AugParams(top, left, flip)

    def apply(self, resized: Image.Image, params: AugParams) -> torch.Tensor:
        """Crop, flip and scale an image that :meth:`resized` produced."""
        img = resized.crop((params.left, params.top, params.left + self.side, params.top + self.side))
        if params.flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = pil_to_tensor01(img)
        lo, hi = self.value_range
        return x if (lo, hi) == (0.0, 1.0) else x * (hi - lo) + lo

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        r = self.resized(img)
        return self.apply(r, self.sample_params(r.width, r.height, generator))

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Map tensors from ``value_range`` back to [0, 1] (for grids and similarity metrics)."""
        lo, hi = self.value_range
        return ((x - lo) / (hi - lo)).clamp(0, 1)


def _resize_shorter(img: Image.Image, short: int, resample: Image.Resampling) -> Image.Image:
    """torchvision ``Resize(short)`` on PIL: shorter side -> short, longer side truncated."""
    w, h = img.size
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    return img if size == (w, h) else img.resize(size, resample=resample)


def _adm_resize(img: Image.Image, short: int) -> Image.Image:
    """The resize half of ADM's ``center_crop_arr``: BOX halvings, then BICUBIC to ``short``."""
    while min(img.size) >= 2 * short:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.Resampling.BOX)
    scale = short / min(img.size)
    return img.resize(tuple(round(x * scale) for x in img.size), resample=Image.Resampling.BICUBIC)


def transform_for(family: str, image_size: int, train: bool) -> ImageTransform:
    """The official preprocessing of ``family`` (var, rar, llamagen) at ``image_size``."""
    fam = family.lower()
    if fam not in FAMILIES:
        raise UserError(f"unknown model family {family!r}; use one of {', '.join(FAMILIES)}")
    if image_size < 1:
        raise UserError(f"image size must be >= 1, got {image_size}")
    crop: Crop = "random" if train else "center"
    if fam == "var":
        return ImageTransform(image_size, "shorter", 1.125, "lanczos", crop, False, (-1.0, 1.0))
    if fam == "rar":
        return ImageTransform(image_size, "shorter", 1.0, "bicubic", "center", train, (0.0, 1.0))
    return ImageTransform(image_size, "adm", 1.0, "bicubic", "center", train, (-1.0, 1.0))


def augmentation_seed(seed: int, image_id: int, aug_index: int) -> int:
    """A 63-bit seed from (seed, image id, augmentation index), independent of everything else."""
    packed = struct.pack("<3Q", *(int(v) % 2**64 for v in (seed, image_id, aug_index)))
    return int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "little") & (2**63 - 1)


def augmentation_generator(seed: int, image_id: int, aug_index: int) -> torch.Generator:
    """A CPU generator for augmentation ``aug_index`` of image ``image_id`` under ``seed``."""
    return torch.Generator().manual_seed(augmentation_seed(seed, image_id, aug_index))


def load_batch(
    ds: ImageDataset,
    ids: Sequence[int] | np.ndarray | torch.Tensor,
    transform: Callable[[Image.Image, torch.Generator | None], torch.Tensor],
    seed: int,
    aug_index: int | Sequence[int] | np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [B, 3, H, W] (float32) and labels [B] (int64) of ``ids``, each augmented reproducibly.

    ``aug_index`` is one index for the whole batch or one per id (e.g. the epoch, or the copy
    number of a planted image); None means 0. ``transform`` is any ``(image, generator) -> tensor``.
    """
    id_list = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    if aug_index is None or np.ndim(aug_index) == 0:
        augs = [0 if aug_index is None else int(aug_index)] * len(id_list)  # type: ignore[arg-type]
    else:
        augs = [int(a) for a in aug_index]  # type: ignore[union-attr]
        if len(augs) != len(id_list):
            raise ValueError(f"{len(augs)} augmentation indices for {len(id_list)} ids")
    images, labels = [], []
    for i, a in zip(id_list, augs, strict=True):
        img, label = ds[i]
        images.append(transform(img, augmentation_generator(seed, i, a)))
        labels.append(label)
    if not images:
        side = getattr(transform, "side", 0)
        return torch.empty(0, 3, side, side), torch.empty(0, dtype=torch.int64)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def pil_to_tensor01(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor [3, H, W] in [0, 1] (torchvision ``ToTensor``)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
