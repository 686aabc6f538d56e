"""Tensor <-> PIL helpers and PNG grids for reports (written atomically)."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image

from iarmem.fileio import atomic_path


def to_pil(image01: torch.Tensor) -> Image.Image:
    """A [3, H, W] (or [1, H, W] / [H, W]) tensor in [0, 1] -> RGB PIL image; values are clamped."""
    x = image01.detach().to("cpu", torch.float32)
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected [3, H, W], [1, H, W] or [H, W], got {list(image01.shape)}")
    x = x.expand(3, -1, -1)
    arr = (x.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


def make_grid(
    images01: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0
) -> torch.Tensor:
    """Tile [B, 3, H, W] images into one [3, H', W'] image, ``nrow`` images per row."""
    if images01.ndim != 4 or images01.shape[1] not in (1, 3):
        raise ValueError(f"expected [B, 3, H, W], got {list(images01.shape)}")
    x = images01.detach().to("cpu", torch.float32).expand(-1, 3, -1, -1)
    b, _, h, w = x.shape
    ncol = max(1, min(nrow, b))
    nrows = max(1, math.ceil(b / ncol))
    grid = torch.full((3, nrows * (h + padding) + padding, ncol * (w + padding) + padding), float(pad_value))
    for k in range(b):
        r, c = divmod(k, ncol)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[:, top : top + h, left : left + w] = x[k]
    return grid


def save_grid(
    images01: torch.Tensor, path: str | os.PathLike, nrow: int = 8, padding: int = 2, pad_value: float = 1.0
) -> None:
    """Write [B, 3, H, W] images in [0, 1] as one PNG grid; the file appears whole or not at all."""
    img = to_pil(make_grid(images01, nrow, padding, pad_value))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
