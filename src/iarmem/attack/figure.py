"""extracted.png: pairs of (reconstruction | generation) with the image id and similarity under each."""

from __future__ import annotations

import math
import os

import torch
from PIL import Image, ImageDraw, ImageFont

from iarmem.data import to_pil
from iarmem.fileio import atomic_path

MIN_SIDE = 64  # small images (MNIST 32 px) are enlarged so a person can see them
PAIRS_PER_ROW = 4
PAD = 6
CAPTION = 14
TITLE = 22


def save_pairs(path: str | os.PathLike, recon01: torch.Tensor, gen01: torch.Tensor, captions: list[str],
               title: str) -> None:
    """Write the pairs ([B, 3, H, W] each, in [0, 1]) as one titled PNG grid, atomically."""
    n = recon01.shape[0]
    h, w = recon01.shape[-2:]
    zoom = max(1, math.ceil(MIN_SIDE / max(1, min(h, w))))
    ph, pw = h * zoom, w * zoom
    cols = max(1, min(PAIRS_PER_ROW, n))
    rows = max(1, math.ceil(n / cols))
    cell_w, cell_h = 2 * pw + 2 + PAD, ph + CAPTION + PAD
    font = ImageFont.load_default()
    width = max(PAD + cols * cell_w, int(font.getlength(title)) + 2 * PAD)
    canvas = Image.new("RGB", (width, TITLE + PAD + rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, PAD // 2), title, fill="black", font=font)
    for k in range(n):
        r, c = divmod(k, cols)
        left, top = PAD + c * cell_w, TITLE + PAD + r * cell_h
        for j, img in enumerate((recon01[k], gen01[k])):
            tile = to_pil(img).resize((pw, ph), Image.Resampling.NEAREST)
            canvas.paste(tile, (left + j * (pw + 2), top))
        draw.text((left, top + ph + 1), captions[k] if k < len(captions) else "", fill="black", font=font)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
