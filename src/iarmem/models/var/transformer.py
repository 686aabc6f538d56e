"""The VAR transformer (next-scale prediction), with the official names (var_d16.pth ... load).

Differences from the official module that do not change any number: no fused/flash kernels (the
MLP always runs fc1 -> act -> fc2 through real submodules, so taps see every unit), and the KV cache
is an explicit object passed in by the caller instead of state stored on the attention modules.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class VARConfig:
    """The official ``VAR(...)`` kwargs (without ``vae_local``), plus the tokenizer's V and Cvae."""

    vocab_size: int = 4096
    Cvae: int = 32
    num_classes: int = 1000
    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    shared_aln: bool = False
    cond_drop_rate: float = 0.1
    attn_l2_norm: bool = False
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    flash_if_available: bool = True
    fused_if_available: bool = True

    OFFICIAL_EXCLUDED = ("vocab_size", "Cvae")

    @classmethod
    def from_kwargs(cls, kwargs: dict, vocab_size: int, Cvae: int) -> VARConfig:
        kw = {k: v for k, v in kwargs.items() if k != "vae_local"}
        unknown = sorted(set(kw) - set(cls.__dataclass_fields__) - {"vocab_size", "Cvae"})
        if unknown:
            raise ValueError(f"unknown VAR kwargs {unknown}")
        if "patch_nums" in kw:
            kw["patch_nums"] = tuple(kw["patch_nums"])
        return cls(vocab_size=vocab_size, Cvae=Cvae, **kw)

    def to_kwargs(self) -> dict:
        d = asdict(self)
        for k in self.OFFICIAL_EXCLUDED:
            d.pop(k)
        d["patch_nums"] = list(d["patch_nums"])
        return d

    @property
    def L(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)


class KVCache:
    """Keys and values of earlier scales for one attention layer, grown by concatenation."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k = k if self.k is None else torch.cat((self.k, k), dim=2)
        self.v = v if self.v is None else torch.cat((self.v, v), dim=2)
        return self.k, self.v


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class FFN(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class SelfAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, attn_drop: float, proj_drop: float, attn_l2_norm: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(embed_dim, embed_dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.attn_drop = attn_drop

    def forward(self, x_BLC: Tensor, attn_bias: Tensor | None, cache: KVCache | None = None) -> Tensor:
        B, L, C = x_BLC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x_BLC, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q_BHLc, k_BHLc, v_BHLc = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q_BHLc = F.normalize(q_BHLc, dim=-1).mul(scale_mul)
            k_BHLc = F.normalize(k_BHLc, dim=-1)
        if cache is not None:
            k_BHLc, v_BHLc = cache.extend(k_BHLc, v_BHLc)
        mask = None if attn_bias is None else attn_bias.to(q_BHLc.dtype)
        out = F.scaled_dot_product_attention(
            q_BHLc, k_BHLc, v_BHLc, attn_mask=mask,
            dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale,
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, L, C)))


class AdaLNSelfAttn(nn.Module):
    """A transformer block whose LayerNorms are modulated by the class condition (adaLN).

    The six modulation vectors come in the official order gamma1, gamma2, scale1, scale2, shift1,
    shift2; residuals add gamma * branch (not (1 + gamma)).
    """

    def __init__(self, cfg: VARConfig, drop_path: float):
        super().__init__()
        C = cfg.embed_dim
        self.C = C
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.attn = SelfAttention(C, cfg.num_heads, cfg.attn_drop_rate, cfg.drop_rate, cfg.attn_l2_norm)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio), cfg.drop_rate)
        self.ln_wo_grad = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.shared_aln = cfg.shared_aln
        if self.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(C, 6 * C))

    def forward(self, x_BLC: Tensor, cond_BD: Tensor, attn_bias: Tensor | None,
                cache: KVCache | None = None) -> Tensor:
        if self.shared_aln:
            mods = (self.ada_gss + cond_BD).unbind(2)
        else:
            mods = self.ada_lin(cond_BD).view(-1, 1, 6, self.C).unbind(2)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mods
        h = self.ln_wo_grad(x_BLC).mul(scale1.add(1)).add(shift1)
        x_BLC = x_BLC + self.drop_path(self.attn(h, attn_bias, cache).mul(gamma1))
        h = self.ln_wo_grad(x_BLC).mul(scale2.add(1)).add(shift2)
        return x_BLC + self.drop_path(self.ffn(h).mul(gamma2))


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, D: int, norm_eps: float):
        super().__init__()
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(D, 2 * C))

    def forward(self, x_BLC: Tensor, cond_BD: Tensor) -> Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x_BLC).mul(scale.add(1)).add(shift)


class SharedAdaLin(nn.Linear):
    def forward(self, cond_BD: Tensor) -> Tensor:  # type: ignore[override]
        C = self.weight.shape[0] // 6
        return super().forward(cond_BD).view(-1, 1, 6, C)


def _trunc_normal(shape: tuple[int, ...], std: float) -> Tensor:
    t = torch.empty(shape)
    nn.init.trunc_normal_(t, mean=0.0, std=std)
    return t


class VAR(nn.Module):
    def __init__(self, cfg: VARConfig):
        super().__init__()
        assert cfg.embed_dim % cfg.num_heads == 0
        self.cfg = cfg
        C = cfg.embed_dim
        self.C, self.D, self.V, self.Cvae = C, C, cfg.vocab_size, cfg.Cvae
        self.num_classes, self.depth = cfg.num_classes, cfg.depth
        self.patch_nums = tuple(cfg.patch_nums)
        self.L = cfg.L
        self.first_l = self.patch_nums[0] ** 2
        self.begin_ends = []
        cur = 0
        for pn in self.patch_nums:
            self.begin_ends.append((cur, cur + pn * pn))
            cur += pn * pn

        init_std = math.sqrt(1 / C / 3)
        self.word_embed = nn.Linear(self.Cvae, C)
        self.class_emb = nn.Embedding(self.num_classes + 1, C)
        self.pos_start = nn.Parameter(_trunc_normal((1, self.first_l, C), init_std))
        self.pos_1LC = nn.Parameter(_trunc_normal((1, self.L, C), init_std))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), C)
        for emb in (self.class_emb, self.lvl_embed):
            nn.init.trunc_normal_(emb.weight.data, mean=0.0, std=init_std)

        self.shared_ada_lin = (nn.Sequential(nn.SiLU(inplace=False), SharedAdaLin(C, 6 * C))
                               if cfg.shared_aln else nn.Identity())
        n = cfg.depth
        dpr = [cfg.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        self.blocks = nn.ModuleList([AdaLNSelfAttn(cfg, dpr[i]) for i in range(n)])

        d_1L1 = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(self.patch_nums)]).view(1, self.L, 1)
        dT_11L = d_1L1.transpose(1, 2)
        self.register_buffer("lvl_1L", dT_11L[:, 0].contiguous())
        bias = torch.where(d_1L1 >= dT_11L, 0.0, -torch.inf).reshape(1, 1, self.L, self.L)
        self.register_buffer("attn_bias_for_masking", bias.contiguous())

        self.head_nm = AdaLNBeforeHead(C, C, cfg.norm_eps)
        self.head = nn.Linear(C, self.V)

    @torch.no_grad()
    def init_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02,
                     init_std: float = -1.0) -> None:
        """The official initialisation (for training from scratch): small head, near-zero adaLN gates."""
        std = (1 / self.C / 3) ** 0.5 if init_std < 0 else init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight.data, std=std)
                if getattr(m, "bias", None) is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                m.weight.data.fill_(1.0)
                m.bias.data.zero_()
        if init_head >= 0:
            self.head.weight.data.mul_(init_head)
            self.head.bias.data.zero_()
        self.head_nm.ada_lin[-1].weight.data.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.data.zero_()
        for b in self.blocks:
            b.attn.proj.weight.data.div_(math.sqrt(2 * self.depth))
            b.ffn.fc2.weight.data.div_(math.sqrt(2 * self.depth))
            if b.shared_aln:
                b.ada_gss.data[:, :, 2:].mul_(init_adaln)
                b.ada_gss.data[:, :, :2].mul_(init_adaln_gamma)
            else:
                b.ada_lin[-1].weight.data[2 * self.C:].mul_(init_adaln)
                b.ada_lin[-1].weight.data[: 2 * self.C].mul_(init_adaln_gamma)
                b.ada_lin[-1].bias.data.zero_()

    # ---- pieces shared by teacher forcing and generation ----------------------------------
    def lvl_pos(self) -> Tensor:
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC

    def sos(self, cond_BD: Tensor) -> Tensor:
        """The first-scale input: class embedding + start position (level/pos added by callers)."""
        B = cond_BD.shape[0]
        return cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)

    def run_blocks(self, x_BLC: Tensor, cond_BD: Tensor, attn_bias: Tensor | None,
                   caches: list[KVCache] | None = None) -> Tensor:
        cond = self.shared_ada_lin(cond_BD)
        for i, b in enumerate(self.blocks):
            x_BLC = b(x_BLC, cond, attn_bias, None if caches is None else caches[i])
        return x_BLC

    def get_logits(self, h_BLC: Tensor, cond_BD: Tensor) -> Tensor:
        return self.head(self.head_nm(h_BLC.float(), cond_BD).float()).float()

    def forward(self, label_B: Tensor, x_BLCv_wo_first_l: Tensor | None) -> Tensor:
        """Teacher-forced logits [B, L', V] for the given labels (no label dropout here).

        ``x_BLCv_wo_first_l`` is ``quantize.idxBl_to_var_input(...)``, possibly cut to fewer scales.
        """
        cond_BD = self.class_emb(label_B)
        x_BLC = self.sos(cond_BD)
        if x_BLCv_wo_first_l is not None and x_BLCv_wo_first_l.shape[1] > 0:
            x_BLC = torch.cat((x_BLC, self.word_embed(x_BLCv_wo_first_l.float())), dim=1)
        ed = x_BLC.shape[1]
        x_BLC = x_BLC + self.lvl_embed(self.lvl_1L[:, :ed].expand(x_BLC.shape[0], -1)) + self.pos_1LC[:, :ed]
        h_BLC = self.run_blocks(x_BLC, cond_BD, self.attn_bias_for_masking[:, :, :ed, :ed])
        return self.get_logits(h_BLC, cond_BD)
