"""How close a generation is to the image it was prompted with: built-in measures needing no download.

Images are compared as the paper compares them: the generation's decoding against the tokenizer's
reconstruction of the ground-truth tokens (not the original pixels), so the tokenizer's own loss
never counts against extraction. Token-level measures see only the positions after the prefix.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
PSNR_CAP_DB = 100.0  # identical images: PSNR is infinite; a finite cap keeps CSV and JSON numeric


class Embedder(Protocol):
    """What the attack needs of a feature extractor (iarmem.features.FeatureExtractor fits)."""

    name: str
    dim: int

    def __call__(self, images01: Tensor) -> Tensor: ...


# ---- pixels --------------------------------------------------------------------------------------
def _gaussian_window(size: int, sigma: float, channels: int, like: Tensor) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    w = torch.outer(g, g).to(like)
    return w.expand(channels, 1, size, size).contiguous()


def to_grey(images01: Tensor) -> Tensor:
    """[B, 3, H, W] RGB -> [B, 1, H, W] luma (ITU-R BT.601 weights)."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=images01.dtype, device=images01.device)
    return (images01 * w.view(1, 3, 1, 1)).sum(1, keepdim=True)


def ssim(x01: Tensor, y01: Tensor, *, grey: bool = False, window: int = SSIM_WINDOW,
         sigma: float = SSIM_SIGMA) -> Tensor:
    """Per-image SSIM (Wang et al. 2004) of [B, C, H, W] images in [0, 1]: 1 for identical images.

    Gaussian window (11, sigma 1.5), constants K1 = 0.01, K2 = 0.03 for data range 1, 'valid'
    filtering as in the reference implementation, the map averaged over pixels and channels.
    Images smaller than the window use a window of their own (odd) size.
    """
    if x01.shape != y01.shape or x01.dim() != 4:
        raise ValueError(f"ssim needs two [B, C, H, W] tensors of one shape, got {tuple(x01.shape)} and "
                         f"{tuple(y01.shape)}")
    x, y = x01.double(), y01.double()
    if grey and x.shape[1] == 3:
        x, y = to_grey(x), to_grey(y)
    size = min(window, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2
    C = x.shape[1]
    w = _gaussian_window(size, sigma, C, x)

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t, w, groups=C)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return (num / den).flatten(1).mean(1).float()


def psnr(x01: Tensor, y01: Tensor) -> Tensor:
    """Per-image PSNR in dB for images in [0, 1]; identical images give PSNR_CAP_DB."""
    mse = (x01.double() - y01.double()).pow(2).flatten(1).mean(1)
    out = 10 * torch.log10(1.0 / mse.clamp_min(10 ** (-PSNR_CAP_DB / 10)))
    return out.clamp(max=PSNR_CAP_DB).float()


# ---- features -------------------------------------------------------------------------------------
def embed(extractor: Embedder, images01: Tensor) -> Tensor:
    """L2-normalised features [B, dim] (float32, CPU), so a dot product is the cosine."""
    with torch.no_grad():
        f = extractor(images01).float()
    return F.normalize(f.flatten(1), dim=1).cpu()


def cosine(a_BD: Tensor, b_BD: Tensor) -> Tensor:
    """Row-wise cosine of two sets of normalised features."""
    return (a_BD * b_BD).sum(1)


# ---- tokens ---------------------------------------------------------------------------------------
def background_ids(gt_NL: Tensor, begin_ends: list[tuple[int, int]]) -> Tensor:
    """[L]: the most common ground-truth token id of each position's grid (one per VAR scale).

    On MNIST-like data this is the background code; ties go to the smallest id.
    """
    out = torch.empty(gt_NL.shape[1], dtype=torch.int64)
    for b, e in begin_ends:
        vals = gt_NL[:, b:e].reshape(-1).long()
        out[b:e] = int(torch.bincount(vals).argmax()) if vals.numel() else 0
    return out


def token_measures(gen_NL: Tensor, gt_NL: Tensor, start: int, background_L: Tensor) -> dict[str, Tensor]:
    """Per image, over positions ``start:`` (after the prefix):

    - ``tokens``: fraction of generated tokens equal to the ground truth;
    - ``tokens_fg``: the same over positions whose ground truth is not background (NaN if none);
    - ``background_share``: fraction of generated tokens equal to the background id.
    """
    g, t = gen_NL[:, start:].long(), gt_NL[:, start:].long()
    bg = background_L[start:].unsqueeze(0)
    same = (g == t).float()
    fg = (t != bg).float()
    n_fg = fg.sum(1)
    fg_agree = torch.where(n_fg > 0, (same * fg).sum(1) / n_fg.clamp_min(1), torch.full_like(n_fg, math.nan))
    return {
        "tokens": same.mean(1),
        "tokens_fg": fg_agree,
        "background_share": (g == bg).float().mean(1),
    }


def prefix_background(gt_NL: Tensor, stop: int, background_L: Tensor) -> Tensor:
    """Fraction of prefix tokens that are background: near 1 means the prefix says little but the class."""
    if stop == 0:
        return torch.ones(gt_NL.shape[0])
    return (gt_NL[:, :stop].long() == background_L[:stop].unsqueeze(0)).float().mean(1)
