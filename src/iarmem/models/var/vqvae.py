"""VAR's multi-scale residual VQ-VAE, with the official module names (vae_ch160v4096z32.pth loads).

The encoder/decoder are the Taming-style convolutional autoencoder VAR uses; the quantizer
(`quantize`) turns the latent into K token maps of growing side by quantizing the residual at each
scale and adding back Phi(upsampled code map).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class VQVAEConfig:
    """Official ``VQVAE(...)`` kwargs, plus the architecture numbers the official class hard-codes
    (``ch_mult``, ``num_res_blocks``, ``norm_groups``) so small tokenizers come from the same code."""

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 128
    dropout: float = 0.0
    beta: float = 0.25
    using_znorm: bool = False
    quant_conv_ks: int = 3
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    default_qresi_counts: int = 0
    v_patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    test_mode: bool = True
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    norm_groups: int = 32
    using_sa: bool = True
    using_mid_sa: bool = True

    OFFICIAL = ("vocab_size", "z_channels", "ch", "dropout", "beta", "using_znorm", "quant_conv_ks",
                "quant_resi", "share_quant_resi", "default_qresi_counts", "v_patch_nums", "test_mode")
    DEFAULTS_OF_OFFICIAL_CLASS = {"ch_mult": (1, 1, 2, 2, 4), "num_res_blocks": 2, "norm_groups": 32,
                                  "using_sa": True, "using_mid_sa": True}

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> VQVAEConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown VQVAE kwargs {unknown}")
        kw = dict(kwargs)
        for k in ("v_patch_nums", "ch_mult"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def to_kwargs(self) -> dict:
        """Official kwargs, plus the hard-coded numbers only where they differ from the official class."""
        d = asdict(self)
        out = {k: d[k] for k in self.OFFICIAL}
        out.update({k: d[k] for k, v in self.DEFAULTS_OF_OFFICIAL_CLASS.items() if d[k] != v})
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


# ---------------------------------------------------------------------------------------------
# convolutional autoencoder
# ---------------------------------------------------------------------------------------------
class Upsample2x(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample2x(nn.Module):
    """Pads right/bottom by one before a stride-2 conv, as the official code does."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, pad=(0, 1, 0, 1), mode="constant", value=0))


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-6, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-6, affine=True)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nin_shortcut = (nn.Conv2d(in_channels, out_channels, kernel_size=1)
                             if in_channels != out_channels else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with one fused 1x1 qkv conv."""

    def __init__(self, in_channels: int, groups: int):
        super().__init__()
        self.C = in_channels
        self.norm = nn.GroupNorm(groups, in_channels, eps=1e-6, affine=True)
        self.qkv = nn.Conv2d(in_channels, 3 * in_channels, kernel_size=1)
        self.w_ratio = int(in_channels) ** (-0.5)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        C = self.C
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H, W).unbind(1)
        q_BNC = q.reshape(B, C, H * W).permute(0, 2, 1)
        w_BNN = torch.bmm(q_BNC, k.reshape(B, C, H * W)).mul(self.w_ratio).softmax(dim=2)
        h = torch.bmm(v.reshape(B, C, H * W), w_BNN.permute(0, 2, 1)).reshape(B, C, H, W)
        return x + self.proj_out(h)


def _attn_or_identity(channels: int, on: bool, groups: int) -> nn.Module:
    return AttnBlock(channels, groups) if on else nn.Identity()


class Encoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch, mult, g = cfg.ch, tuple(cfg.ch_mult), cfg.norm_groups
        self.num_resolutions, self.num_res_blocks = len(mult), cfg.num_res_blocks
        self.conv_in = nn.Conv2d(3, ch, kernel_size=3, stride=1, padding=1)
        in_mult = (1,) + mult
        self.down = nn.ModuleList()
        block_in = ch
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_mult[i_level], ch * mult[i_level]
            for _ in range(self.num_res_blocks):
                block.append(ResnetBlock(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if i_level == self.num_resolutions - 1 and cfg.using_sa:
                    attn.append(AttnBlock(block_in, g))
            down = nn.Module()
            down.block, down.attn = block, attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample2x(block_in)
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout, g)
        self.mid.attn_1 = _attn_or_identity(block_in, cfg.using_mid_sa, g)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout, g)
        self.norm_out = nn.GroupNorm(g, block_in, eps=1e-6, affine=True)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for i_level, down in enumerate(self.down):
            for i_block in range(self.num_res_blocks):
                h = down.block[i_block](h)
                if len(down.attn) > 0:
                    h = down.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """``up[0]`` is the highest resolution; the loop runs from the last level down to 0."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch, mult, g = cfg.ch, tuple(cfg.ch_mult), cfg.norm_groups
        self.num_resolutions, self.num_res_blocks = len(mult), cfg.num_res_blocks
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout, g)
        self.mid.attn_1 = _attn_or_identity(block_in, cfg.using_mid_sa, g)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout, g)
        ups: list[nn.Module] = []
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * mult[i_level]
            for _ in range(self.num_res_blocks + 1):
                block.append(ResnetBlock(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if i_level == self.num_resolutions - 1 and cfg.using_sa:
                    attn.append(AttnBlock(block_in, g))
            up = nn.Module()
            up.block, up.attn = block, attn
            if i_level != 0:
                up.upsample = Upsample2x(block_in)
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = nn.GroupNorm(g, block_in, eps=1e-6, affine=True)
        self.conv_out = nn.Conv2d(block_in, 3, kernel_size=3, stride=1, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block in range(self.num_res_blocks + 1):
                h = up.block[i_block](h)
                if len(up.attn) > 0:
                    h = up.attn[i_block](h)
            if i_level != 0:
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------------------------------------
# multi-scale residual quantizer
# ---------------------------------------------------------------------------------------------
class Phi(nn.Conv2d):
    """h -> (1 - r) h + r conv3x3(h): the per-scale refinement of an upsampled code map."""

    def __init__(self, embed_dim: int, quant_resi: float):
        super().__init__(embed_dim, embed_dim, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h_BChw: Tensor) -> Tensor:  # type: ignore[override]
        return h_BChw.mul(1 - self.resi_ratio) + super().forward(h_BChw).mul_(self.resi_ratio)


def phi_ticks(K: int) -> np.ndarray:
    """Float64 ticks of the official selection rule; ties resolve by float64 rounding as there."""
    if K == 4:
        return np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K)
    return np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)


def phi_index(K: int, si: int, SN: int) -> int:
    return int(np.argmin(np.abs(phi_ticks(K) - si / (SN - 1))))


class PhiShared(nn.Module):
    def __init__(self, qresi: nn.Module):
        super().__init__()
        self.qresi = qresi

    def pick(self, si: int, SN: int) -> nn.Module:
        return self.qresi


class PhiPartiallyShared(nn.Module):
    def __init__(self, qresi_ls: nn.ModuleList):
        super().__init__()
        self.qresi_ls = qresi_ls

    def pick(self, si: int, SN: int) -> nn.Module:
        return self.qresi_ls[phi_index(len(self.qresi_ls), si, SN)]


class PhiNonShared(nn.ModuleList):
    def pick(self, si: int, SN: int) -> nn.Module:
        return self[phi_index(len(self), si, SN)]


class VectorQuantizer2(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.vocab_size, self.Cvae = cfg.vocab_size, cfg.z_channels
        self.using_znorm, self.beta = cfg.using_znorm, cfg.beta
        self.v_patch_nums = tuple(cfg.v_patch_nums)
        C, r = cfg.z_channels, cfg.quant_resi

        def make() -> nn.Module:
            return Phi(C, r) if abs(r) > 1e-6 else nn.Identity()

        n = cfg.share_quant_resi
        if n == 0:
            self.quant_resi: nn.Module = PhiNonShared([make() for _ in range(cfg.default_qresi_counts
                                                                            or len(self.v_patch_nums))])
        elif n == 1:
            self.quant_resi = PhiShared(make())
        else:
            self.quant_resi = PhiPartiallyShared(nn.ModuleList([make() for _ in range(n)]))
        self.register_buffer("ema_vocab_hit_SV", torch.full((len(self.v_patch_nums), self.vocab_size), 0.0))
        self.embedding = nn.Embedding(self.vocab_size, self.Cvae)

    def phi(self, si: int, SN: int | None = None) -> nn.Module:
        return self.quant_resi.pick(si, SN or len(self.v_patch_nums))

    def nearest(self, z_NC: Tensor) -> Tensor:
        """Nearest code ids, computed as the official code does so ties break identically."""
        E_VC = self.embedding.weight.data
        if self.using_znorm:
            return torch.argmax(F.normalize(z_NC, dim=-1) @ F.normalize(E_VC.T, dim=0), dim=1)
        d_NV = torch.sum(z_NC.square(), dim=1, keepdim=True) + torch.sum(E_VC.square(), dim=1, keepdim=False)
        d_NV.addmm_(z_NC, E_VC.T, alpha=-2, beta=1)
        return torch.argmin(d_NV, dim=1)

    def _scale_step(self, f_rest: Tensor, si: int, pn: int) -> tuple[Tensor, Tensor]:
        """Quantize the residual at scale si: ids [B, pn*pn] and its contribution h [B, C, H, W]."""
        B, C, H, W = f_rest.shape
        SN = len(self.v_patch_nums)
        last = si == SN - 1
        src = f_rest if last else F.interpolate(f_rest, size=(pn, pn), mode="area")
        idx_N = self.nearest(src.permute(0, 2, 3, 1).reshape(-1, C))
        h_BChw = self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2)
        if not last:
            h_BChw = F.interpolate(h_BChw, size=(H, W), mode="bicubic")
        return idx_N.view(B, pn * pn), self.phi(si)(h_BChw.contiguous())

    @torch.no_grad()
    def f_to_idxBl(self, f_BChw: Tensor) -> list[Tensor]:
        f_rest = f_BChw.detach().clone()
        ids = []
        for si, pn in enumerate(self.v_patch_nums):
            idx_Bl, h_BChw = self._scale_step(f_rest, si, pn)
            f_rest.sub_(h_BChw)
            ids.append(idx_Bl)
        return ids

    def forward(self, f_BChw: Tensor) -> tuple[Tensor, Tensor]:
        """Training pass: straight-through f_hat and the VQ loss (commitment * beta + codebook)."""
        f_BChw = f_BChw.float()
        f_no_grad = f_BChw.detach()
        f_rest = f_no_grad.clone()
        f_hat = torch.zeros_like(f_rest)
        loss = f_BChw.new_zeros(())
        for si, pn in enumerate(self.v_patch_nums):
            _, h_BChw = self._scale_step(f_rest, si, pn)
            f_hat = f_hat + h_BChw
            f_rest = f_rest - h_BChw.detach()
            loss = loss + F.mse_loss(f_hat.data, f_BChw).mul(self.beta) + F.mse_loss(f_hat, f_no_grad)
        loss = loss / len(self.v_patch_nums)
        f_hat = (f_hat.data - f_no_grad) + f_BChw
        return f_hat, loss

    def embed_to_fhat(self, ms_h_BChw: Sequence[Tensor]) -> Tensor:
        """Sum of Phi(upsampled code maps) over all given scales: the latent the decoder sees."""
        B = ms_h_BChw[0].shape[0]
        H = W = self.v_patch_nums[-1]
        SN = len(self.v_patch_nums)
        f_hat = ms_h_BChw[0].new_zeros(B, self.Cvae, H, W, dtype=torch.float32)
        for si, h_BChw in enumerate(ms_h_BChw):
            if si < SN - 1:
                h_BChw = F.interpolate(h_BChw, size=(H, W), mode="bicubic")
            f_hat.add_(self.phi(si)(h_BChw))
        return f_hat

    def ids_to_maps(self, ms_idx_Bl: Sequence[Tensor]) -> list[Tensor]:
        B = ms_idx_Bl[0].shape[0]
        out = []
        for idx_Bl, pn in zip(ms_idx_Bl, self.v_patch_nums):
            out.append(self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.Cvae, pn, pn))
        return out

    def idxBl_to_var_input(self, gt_ms_idx_Bl: Sequence[Tensor]) -> Tensor | None:
        """Teacher-forcing input [B, L - first_l, Cvae]: the running f_hat, area-resized to each next scale."""
        SN = len(self.v_patch_nums)
        H = W = self.v_patch_nums[-1]
        B = gt_ms_idx_Bl[0].shape[0]
        maps = self.ids_to_maps(gt_ms_idx_Bl[: SN - 1])
        f_hat = maps[0].new_zeros(B, self.Cvae, H, W, dtype=torch.float32) if maps else None
        next_scales = []
        for si, h_BChw in enumerate(maps):
            f_hat.add_(self.phi(si)(F.interpolate(h_BChw, size=(H, W), mode="bicubic")))
            pn_next = self.v_patch_nums[si + 1]
            next_scales.append(F.interpolate(f_hat, size=(pn_next, pn_next), mode="area")
                               .reshape(B, self.Cvae, -1).transpose(1, 2))
        return torch.cat(next_scales, dim=1) if next_scales else None

    def next_input(self, si: int, f_hat: Tensor, h_BChw: Tensor) -> tuple[Tensor, Tensor]:
        """Add scale si's code map to f_hat; return it and its area-resize to scale si+1 (generation)."""
        SN = len(self.v_patch_nums)
        HW = self.v_patch_nums[-1]
        if si != SN - 1:
            f_hat.add_(self.phi(si)(F.interpolate(h_BChw, size=(HW, HW), mode="bicubic")))
            pn = self.v_patch_nums[si + 1]
            return f_hat, F.interpolate(f_hat, size=(pn, pn), mode="area")
        f_hat.add_(self.phi(si)(h_BChw))
        return f_hat, f_hat


class VQVAE(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.V, self.Cvae = cfg.vocab_size, cfg.z_channels
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer2(cfg)
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(self.Cvae, self.Cvae, ks, stride=1, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(self.Cvae, self.Cvae, ks, stride=1, padding=ks // 2)

    @property
    def downsample(self) -> int:
        return self.cfg.downsample

    def img_to_idxBl(self, img_B3HW: Tensor) -> list[Tensor]:
        return self.quantize.f_to_idxBl(self.quant_conv(self.encoder(img_B3HW)))

    def fhat_to_img(self, f_hat: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)

    def idxBl_to_img(self, ms_idx_Bl: Sequence[Tensor]) -> Tensor:
        return self.fhat_to_img(self.quantize.embed_to_fhat(self.quantize.ids_to_maps(ms_idx_Bl)))

    def forward(self, img_B3HW: Tensor) -> tuple[Tensor, Tensor]:
        """Training pass: reconstruction (unclamped) and the VQ loss."""
        f_hat, vq_loss = self.quantize(self.quant_conv(self.encoder(img_B3HW)))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss
