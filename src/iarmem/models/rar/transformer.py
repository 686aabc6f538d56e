"""The RAR transformer (randomized autoregressive generator), keyed like the official ``RAR``.

Sequence layout for ``n`` image tokens (``0 <= n <= L``), ``T = n + 2`` positions::

    position   0      1        2      ...   n+1
    input      cls    cond     t_0    ...   t_{n-1}
    predicts   -      t_o0     t_o1   ...   t_o{n}      (o = the token order; raster: o_k = k)

The class id is both a sequence token and, through the shared embedding table, the adaLN
condition; the condition at position ``p`` is ``embed(cond) + timesteps_embeddings[p]``. Beside
the usual ``pos_embed`` (permuted with the order), the position that predicts token ``o_k`` gets
``target_aware_pos_embed[2 + o_k]``, so the model knows which token it must produce next; the cls
position and the position after the last token get none.

The MLP runs through a real ``act`` module on every path, so taps on ``blocks.{i}.mlp.act`` see
every forward pass; attention is ``F.scaled_dot_product_attention`` with the causal float mask.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

# Extra rows the official tables carry beyond image_seq_len (unused, but part of the checkpoint).
POS_EXTRA_ROWS = 1024
TIMESTEP_EXTRA_ROWS = 100
PREFIX = 2  # cls + condition positions before the first image token


@dataclass(frozen=True)
class RARConfig:
    """``config.model.generator`` of the official RAR plus ``config.model.vq_model.codebook_size``."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    image_seq_len: int
    condition_num_classes: int
    codebook_size: int
    dropout: float = 0.1
    attn_drop: float = 0.1
    class_label_dropout: float = 0.1
    use_checkpoint: bool = False
    randomize_temperature: float = 1.0
    guidance_scale: float = 16.0
    guidance_scale_pow: float = 2.75
    randomness_anneal_start: int | None = None
    randomness_anneal_end: int | None = None

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def none_condition_id(self) -> int:
        """The "no class" id of the shared embedding table (used for CFG and label dropout)."""
        return self.codebook_size + 1 + self.condition_num_classes

    def generator_dict(self) -> dict[str, Any]:
        """The ``config.model.generator`` entries (unset optional ones left out)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "codebook_size"}
        return {k: v for k, v in out.items() if v is not None}


def causal_mask(n: int) -> Tensor:
    """[n, n] additive mask: 0 on and below the diagonal, -inf above (as the official buffer)."""
    return torch.full((n, n), float("-inf")).triu(1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class KVCache:
    """Keys and values of one attention layer for the positions processed so far."""

    def __init__(self) -> None:
        self.k_BHTd: Tensor | None = None
        self.v_BHTd: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k_BHTd is None else self.k_BHTd.shape[2]

    def append(self, k_BHtd: Tensor, v_BHtd: Tensor) -> tuple[Tensor, Tensor]:
        if self.k_BHTd is None or self.v_BHTd is None:
            self.k_BHTd, self.v_BHTd = k_BHtd, v_BHtd
        else:
            self.k_BHTd = torch.cat([self.k_BHTd, k_BHtd], dim=2)
            self.v_BHTd = torch.cat([self.v_BHTd, v_BHtd], dim=2)
        return self.k_BHTd, self.v_BHTd


class Attention(nn.Module):
    """Multi-head self-attention with qkv bias and affine LayerNorm on q and k over head_dim."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x_BTC: Tensor, mask_TS: Tensor, cache: KVCache | None = None) -> Tensor:
        B, T, C = x_BTC.shape
        qkv = self.qkv(x_BTC).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q_BHTd, k_BHTd, v_BHTd = qkv.unbind(0)
        q_BHTd, k_BHTd = self.q_norm(q_BHTd), self.k_norm(k_BHTd)
        if cache is not None:
            k_BHTd, v_BHTd = cache.append(k_BHTd, v_BHTd)
        out_BHTd = F.scaled_dot_product_attention(
            q_BHTd, k_BHTd, v_BHTd, attn_mask=mask_TS, dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.proj_drop(self.proj(out_BHTd.transpose(1, 2).reshape(B, T, C)))


class Mlp(nn.Module):
    """timm's Mlp: fc1 -> exact (erf) GELU as the module ``act`` -> fc2, with dropouts."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x_BTC: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x_BTC)))))


class Block(nn.Module):
    """DiT-style adaLN block with per-position conditioning and affine pre-norms (official RAR)."""

    def __init__(self, cfg: RARConfig) -> None:
        super().__init__()
        dim = cfg.hidden_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, cfg.num_attention_heads, attn_drop=cfg.attn_drop, proj_drop=cfg.dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, cfg.intermediate_size, drop=cfg.dropout)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x_BTC: Tensor, c_BTC: Tensor, mask_TS: Tensor, cache: KVCache | None = None) -> Tensor:
        mod = self.adaLN_modulation(c_BTC).chunk(6, dim=-1)
        shift_sa, scale_sa, gate_sa, shift_mlp, scale_mlp, gate_mlp = mod
        x_BTC = x_BTC + gate_sa * self.attn(modulate(self.norm1(x_BTC), shift_sa, scale_sa), mask_TS, cache)
        return x_BTC + gate_mlp * self.mlp(modulate(self.norm2(x_BTC), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """Non-affine LayerNorm modulated by the condition; the official chunk order is (scale, shift)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x_BTC: Tensor, c_BTC: Tensor) -> Tensor:
        scale, shift = self.adaLN_modulation(c_BTC).chunk(2, dim=-1)
        return modulate(self.norm_final(x_BTC), shift, scale)


class RARTransformer(nn.Module):
    """The RAR generator. ``forward`` covers teacher forcing (any order) and cached raster decoding."""

    def __init__(self, cfg: RARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C, L = cfg.hidden_size, cfg.image_seq_len
        # Parameter registration order follows the official module so written files list keys alike.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_embed = nn.Parameter(torch.zeros(1, L + POS_EXTRA_ROWS, C))
        self.target_aware_pos_embed = nn.Parameter(torch.zeros(1, L + POS_EXTRA_ROWS, C))
        self.timesteps_embeddings = nn.Parameter(torch.zeros(1, L + TIMESTEP_EXTRA_ROWS, C))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        # ids 0..K-1 image tokens, K mask token, K+1+c class c, K+1+num_classes "no class"
        self.embeddings = nn.Embedding(cfg.codebook_size + 1 + cfg.condition_num_classes + 1, C)
        self.adaln_before_head = FinalLayer(C)
        self.lm_head = nn.Linear(C, cfg.codebook_size)
        self.register_buffer("attn_mask", causal_mask(L + POS_EXTRA_ROWS), persistent=False)
        self.random_ratio = 0.0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: truncated normal(0.02) weights, zero biases, adaLN-zero modulations."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for p in (self.pos_embed, self.target_aware_pos_embed, self.timesteps_embeddings):
            nn.init.trunc_normal_(p, mean=0.0, std=0.02)
        for blk in [*self.blocks, self.adaln_before_head]:
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)

    # ---- helpers -------------------------------------------------------------------------
    def set_random_ratio(self, ratio: float) -> None:
        """Probability that ``training_loss`` trains a sample in a random (not raster) order."""
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"random ratio must lie in [0, 1], got {ratio}")
        self.random_ratio = float(ratio)

    def condition_ids(self, labels_B: Tensor) -> Tensor:
        """Class ids -> ids of the shared embedding table."""
        return labels_B + self.cfg.codebook_size + 1

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]

    def _inputs(self, ids_BN: Tensor, cond_B: Tensor, orders_BL: Tensor | None) -> tuple[Tensor, Tensor]:
        """Token/position sums ``x`` and adaLN conditions ``c``, both [B, N+2, C], in the official layout."""
        B, N = ids_BN.shape
        L, T = self.cfg.image_seq_len, N + PREFIX
        tok_BNC = self.embeddings(ids_BN)
        cond_BC = self.embeddings(cond_B)
        pos_LC = self.pos_embed[0, PREFIX:PREFIX + L]
        tgt_LC = self.target_aware_pos_embed[0, PREFIX:PREFIX + L]
        if orders_BL is None:
            pos_BLC, tgt_BLC = pos_LC.expand(B, -1, -1), tgt_LC.expand(B, -1, -1)
        else:  # the token at slot k is ids[o_k]: it carries pos_embed[2 + o_k], and so does its target
            if N != L:
                raise ValueError(f"a token order needs all {L} tokens, got {N}")
            index_BLC = orders_BL[:, :, None].expand(-1, -1, tok_BNC.shape[-1])
            tok_BNC = tok_BNC.gather(1, index_BLC[:, :N])
            # gather, not pos_LC[orders]: the backward of advanced indexing accumulates with atomic adds on
            # CPU threads, so the same training run gave different weights; gather's backward is deterministic
            pos_BLC = pos_LC.expand(B, -1, -1).gather(1, index_BLC)
            tgt_BLC = tgt_LC.expand(B, -1, -1).gather(1, index_BLC)
        x_BTC = torch.cat([self.cls_token.expand(B, -1, -1), cond_BC[:, None], tok_BNC], dim=1)
        x_BTC = x_BTC + torch.cat([self.pos_embed[:, :PREFIX].expand(B, -1, -1), pos_BLC[:, :N]], dim=1)
        # target-aware: position 0 gets nothing, position 1+k gets tgt[k], position L+1 gets nothing
        zero_B1C = x_BTC.new_zeros(B, 1, x_BTC.shape[-1])
        x_BTC = x_BTC + torch.cat([zero_B1C, tgt_BLC, zero_B1C], dim=1)[:, :T]
        c_BTC = cond_BC[:, None] + self.timesteps_embeddings[:, :T]
        return x_BTC, c_BTC

    # ---- forward -------------------------------------------------------------------------
    def forward(
        self,
        ids_BN: Tensor,
        cond_B: Tensor,
        orders_BL: Tensor | None = None,
        caches: list[KVCache] | None = None,
    ) -> Tensor:
        """Logits of the positions not yet processed, excluding the cls position.

        ``ids_BN``: the first ``N <= L`` image tokens (raster indexing); ``cond_B``: embedding-table
        condition ids (see :meth:`condition_ids`); ``orders_BL``: a permutation of ``0..L-1`` per
        sample (None = raster). Without caches this returns [B, N+1, V], where row ``k`` predicts
        ``ids[o_k]`` and the last row (k = N) has no target when N = L. With ``caches`` holding
        ``m`` positions, only positions ``m..N+1`` are computed (and appended to the caches).
        """
        x_BTC, c_BTC = self._inputs(ids_BN, cond_B, orders_BL)
        T = x_BTC.shape[1]
        start = 0 if caches is None else len(caches[0])
        if start >= T:
            raise ValueError(f"the caches already hold {start} positions; nothing new among {T}")
        x_BTC, c_BTC = x_BTC[:, start:], c_BTC[:, start:]
        mask_TS = self.attn_mask[start:T, :T].to(x_BTC.dtype)
        for i, blk in enumerate(self.blocks):
            cache = None if caches is None else caches[i]
            if self.cfg.use_checkpoint and self.training and cache is None:
                x_BTC = torch.utils.checkpoint.checkpoint(blk, x_BTC, c_BTC, mask_TS, use_reentrant=False)
            else:
                x_BTC = blk(x_BTC, c_BTC, mask_TS, cache)
        if start == 0:  # drop the cls position
            x_BTC, c_BTC = x_BTC[:, 1:], c_BTC[:, 1:]
        return self.lm_head(self.adaln_before_head(x_BTC, c_BTC))
