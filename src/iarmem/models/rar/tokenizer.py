"""The MaskGIT-VQGAN image tokenizer used by RAR, with the official state-dict layout.

A convolutional VQGAN without attention: GroupNorm(32)/SiLU residual blocks, 2x2 average-pool
downsampling, nearest-neighbour upsampling followed by a 3x3 conv, and a plain L2 codebook.
Key names, shapes and the arithmetic follow ``maskgit-vqgan-imagenet-f16-256.bin`` so that the
official file loads strictly and the same token ids come out. Two quirks of the official code
are kept on purpose: residual-block convs have no bias, and when a block changes the channel
count its 1x1 ``nin_shortcut`` is applied to the block's *output* (the input is dropped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GROUPS = 32  # the official GroupNorm group count; every channel width must be a multiple of it


@dataclass(frozen=True)
class VQGANConfig:
    """The official ``config`` of ``Encoder``/``Decoder`` plus the ``VectorQuantizer`` arguments."""

    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_resolutions: int = 5
    dropout: float = 0.0
    hidden_channels: int = 128
    num_channels: int = 3
    num_res_blocks: int = 2
    resolution: int = 256
    z_channels: int = 256
    num_embeddings: int = 1024
    embedding_dim: int = 256
    commitment_cost: float = 0.25

    def __post_init__(self) -> None:
        if self.num_resolutions != len(self.channel_mult):
            raise ValueError(f"num_resolutions ({self.num_resolutions}) must equal "
                             f"len(channel_mult) ({len(self.channel_mult)})")
        if self.embedding_dim != self.z_channels:
            raise ValueError(f"codebook embedding_dim ({self.embedding_dim}) must equal "
                             f"z_channels ({self.z_channels})")
        bad = [self.hidden_channels * m for m in self.channel_mult if (self.hidden_channels * m) % GROUPS]
        if bad:
            raise ValueError(f"channel widths {bad} are not multiples of {GROUPS} (GroupNorm groups)")

    @property
    def downsample(self) -> int:
        """Pixels per token side: one 2x2 pooling per resolution level except the last."""
        return 2 ** (self.num_resolutions - 1)

    def official_kwargs(self) -> dict[str, Any]:
        """``{"config": <Encoder/Decoder config>, "quantizer": <VectorQuantizer kwargs>}``."""
        quantizer_keys = ("num_embeddings", "embedding_dim", "commitment_cost")
        config = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in quantizer_keys}
        config["channel_mult"] = list(self.channel_mult)
        return {"config": config, "quantizer": {k: getattr(self, k) for k in quantizer_keys}}


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=GROUPS, num_channels=channels, eps=1e-6, affine=True)


def _conv(c_in: int, c_out: int, kernel: int, bias: bool = True) -> nn.Conv2d:
    """Stride-1 conv with TF 'same' padding (for odd kernels that is symmetric k//2 padding)."""
    return nn.Conv2d(c_in, c_out, kernel_size=kernel, padding=kernel // 2, bias=bias)


class ResnetBlock(nn.Module):
    """norm-SiLU-conv twice; a channel change adds ``nin_shortcut(h)`` instead of the input (official)."""

    def __init__(self, c_in: int, c_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = _conv(c_in, c_out, 3, bias=False)
        self.norm2 = _norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(c_out, c_out, 3, bias=False)
        self.nin_shortcut = _conv(c_out, c_out, 1, bias=False) if c_in != c_out else None

    def forward(self, x_BCHW: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x_BCHW)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        residual = x_BCHW if self.nin_shortcut is None else self.nin_shortcut(h)
        return h + residual


def _res_blocks(c_in: int, c_out: int, n: int, dropout: float) -> nn.ModuleList:
    blocks = []
    for _ in range(n):
        blocks.append(ResnetBlock(c_in, c_out, dropout))
        c_in = c_out
    return nn.ModuleList(blocks)


class DownsamplingBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, num_res_blocks: int, dropout: float, downsample: bool) -> None:
        super().__init__()
        self.block = _res_blocks(c_in, c_out, num_res_blocks, dropout)
        self.downsample = downsample

    def forward(self, x_BCHW: Tensor) -> Tensor:
        for blk in self.block:
            x_BCHW = blk(x_BCHW)
        return F.avg_pool2d(x_BCHW, kernel_size=2, stride=2) if self.downsample else x_BCHW


class UpsamplingBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, num_res_blocks: int, dropout: float, upsample: bool) -> None:
        super().__init__()
        self.block = _res_blocks(c_in, c_out, num_res_blocks, dropout)
        self.upsample_conv = _conv(c_out, c_out, 3) if upsample else None

    def forward(self, x_BCHW: Tensor) -> Tensor:
        for blk in self.block:
            x_BCHW = blk(x_BCHW)
        if self.upsample_conv is not None:
            x_BCHW = self.upsample_conv(F.interpolate(x_BCHW, scale_factor=2.0, mode="nearest"))
        return x_BCHW


class Encoder(nn.Module):
    """Pixels [B, 3, H, W] in [0, 1] -> latents [B, z, H/f, W/f]."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        ch, mult = cfg.hidden_channels, cfg.channel_mult
        self.conv_in = _conv(cfg.num_channels, ch, 3, bias=False)
        in_mult = (1, *mult)
        self.down = nn.ModuleList(
            DownsamplingBlock(ch * in_mult[i], ch * mult[i], cfg.num_res_blocks, cfg.dropout,
                              downsample=i != cfg.num_resolutions - 1)
            for i in range(cfg.num_resolutions)
        )
        mid = ch * mult[-1]
        self.mid = _res_blocks(mid, mid, cfg.num_res_blocks, cfg.dropout)
        self.norm_out = _norm(mid)
        self.conv_out = _conv(mid, cfg.z_channels, 1)

    def forward(self, x_BCHW: Tensor) -> Tensor:
        h = self.conv_in(x_BCHW)
        for blk in self.down:
            h = blk(h)
        for blk in self.mid:
            h = blk(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latents [B, z, h, w] -> pixels [B, 3, h*f, w*f] (unclamped); ``up.0`` is the highest resolution."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        ch, mult, n = cfg.hidden_channels, cfg.channel_mult, cfg.num_resolutions
        top = ch * mult[-1]
        self.conv_in = _conv(cfg.z_channels, top, 3)
        self.mid = _res_blocks(top, top, cfg.num_res_blocks, cfg.dropout)
        self.up = nn.ModuleList(
            UpsamplingBlock(ch * mult[min(i + 1, n - 1)], ch * mult[i], cfg.num_res_blocks, cfg.dropout,
                            upsample=i != 0)
            for i in range(n)
        )
        self.norm_out = _norm(ch * mult[0])
        self.conv_out = _conv(ch * mult[0], cfg.num_channels, 3)

    def forward(self, z_BCHW: Tensor) -> Tensor:
        h = self.conv_in(z_BCHW)
        for blk in self.mid:
            h = blk(h)
        for blk in reversed(self.up):
            h = blk(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Plain nearest-code lookup by squared L2 distance (no normalisation)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, commitment_cost: float = 0.25) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.commitment_cost = commitment_cost
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_embeddings, 1.0 / num_embeddings)

    def code_ids(self, z_BCHW: Tensor) -> Tensor:
        """[B, C, h, w] latents -> [B, h*w] ids (row-major).

        Distances use the official expansion |z|^2 + |e|^2 - 2 z.e via ``addmm`` so that near-ties
        are broken exactly as the official code breaks them.
        """
        B = z_BCHW.shape[0]
        z_NC = z_BCHW.permute(0, 2, 3, 1).reshape(-1, self.embedding_dim)
        e_CK = self.embedding.weight.t()
        sq_NK = z_NC.pow(2.0).sum(dim=1, keepdim=True) + e_CK.pow(2.0).sum(dim=0, keepdim=True)
        d_NK = torch.addmm(sq_NK, z_NC, e_CK, alpha=-2.0)
        return d_NK.argmin(dim=1).reshape(B, -1)

    def forward(self, z_BCHW: Tensor) -> tuple[Tensor, Tensor]:
        """Training pass: straight-through quantized latents and the codebook + commitment loss."""
        B, _, h, w = z_BCHW.shape
        with torch.no_grad():
            ids_BL = self.code_ids(z_BCHW)
        zq_BCHW = self.lookup(ids_BL, (h, w))
        loss = F.mse_loss(zq_BCHW, z_BCHW.detach()) + self.commitment_cost * F.mse_loss(z_BCHW, zq_BCHW.detach())
        return z_BCHW + (zq_BCHW - z_BCHW).detach(), loss

    def lookup(self, ids_BL: Tensor, grid: tuple[int, int]) -> Tensor:
        """[B, h*w] ids -> [B, C, h, w] code vectors."""
        h, w = grid
        return self.embedding(ids_BL).reshape(ids_BL.shape[0], h, w, -1).permute(0, 3, 1, 2)


class MaskGitVQGAN(nn.Module):
    """Encoder + decoder + quantizer, keyed like the official ``PretrainedTokenizer``."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.num_embeddings, cfg.embedding_dim, cfg.commitment_cost)

    @property
    def downsample(self) -> int:
        return self.cfg.downsample

    def encode(self, images_BCHW: Tensor) -> Tensor:
        """Images in [0, 1] -> [B, h*w] token ids."""
        return self.quantize.code_ids(self.encoder(images_BCHW))

    def forward(self, images_BCHW: Tensor) -> tuple[Tensor, Tensor]:
        """Training pass: unclamped reconstruction and the quantizer loss."""
        zq_BCHW, vq_loss = self.quantize(self.encoder(images_BCHW))
        return self.decoder(zq_BCHW), vq_loss

    def decode(self, ids_BL: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """[B, h*w] token ids -> images clamped to [0, 1] (square grid unless given)."""
        if grid is None:
            side = math.isqrt(ids_BL.shape[1])
            grid = (side, side)
        return self.decoder(self.quantize.lookup(ids_BL, grid)).clamp(0.0, 1.0)
