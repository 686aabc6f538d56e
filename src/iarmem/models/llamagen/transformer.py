"""LlamaGen's class-conditional GPT (``autoregressive/models/gpt.py``), state-dict compatible.

A Llama decoder over raster image tokens: RMSNorm, one fused ``wqkv`` without bias, 2D RoPE,
SwiGLU MLP, untied ``output`` head. The sequence is ``[cls(label), t0 .. t_{T-1}]`` and position
``p`` predicts token ``p``. Two things differ from the official module on purpose:

* the KV cache is a plain :class:`KVCache` object passed to ``forward`` (never a buffer, so
  ``state_dict()`` stays the official one after generation);
* dropout is switched by an explicit :class:`Regularization` (on/off plus an optional
  ``torch.Generator``), so a teacher-forced pass is deterministic even in train mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class GPTArgs:
    """The official ``ModelArgs`` of ``gpt.py``: same field names, same defaults."""

    dim: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0
    num_classes: int = 1000
    caption_dim: int = 2048
    class_dropout_prob: float = 0.1
    model_type: str = "c2i"
    vocab_size: int = 16384
    cls_token_num: int = 1
    block_size: int = 256
    max_batch_size: int = 32
    max_seq_len: int = 2048

    def __post_init__(self) -> None:
        if self.model_type != "c2i":
            raise ValueError(f"only class-conditional LlamaGen (model_type='c2i') is supported, "
                             f"got {self.model_type!r}")
        if self.cls_token_num != 1:
            raise ValueError(f"c2i LlamaGen uses one class token (cls_token_num=1), got {self.cls_token_num}")
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not a multiple of n_head {self.n_head}")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_kv_head {self.kv_heads}")
        if math.isqrt(self.block_size) ** 2 != self.block_size:
            raise ValueError(f"block_size {self.block_size} must be a square (a grid of raster tokens)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def ffn_hidden_dim(self) -> int:
        """SwiGLU width: 2/3 of 4*dim, times ``ffn_dim_multiplier``, rounded up to ``multiple_of``."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


# ---- regularization ------------------------------------------------------------------------
@dataclass(frozen=True)
class Regularization:
    """Whether dropout / drop-path are on, and which generator draws their masks (None: global RNG)."""

    active: bool = False
    generator: torch.Generator | None = None

    def dropout(self, x: Tensor, p: float) -> Tensor:
        if not self.active or p == 0.0:
            return x
        keep = torch.rand(x.shape, generator=self.generator, device=x.device) >= p
        return x * keep.to(x.dtype) / (1.0 - p)

    def drop_path(self, x_BLC: Tensor, p: float) -> Tensor:
        """Stochastic depth: drop a whole sample's branch (timm's DropPath)."""
        if not self.active or p == 0.0:
            return x_BLC
        keep = torch.rand((x_BLC.shape[0],) + (1,) * (x_BLC.dim() - 1), generator=self.generator,
                          device=x_BLC.device) >= p
        return x_BLC * keep.to(x_BLC.dtype) / (1.0 - p)


OFF = Regularization()


# ---- 2D rotary embedding -------------------------------------------------------------------
def rope_table_2d(grid_size: int, head_dim: int, base: float, cls_token_num: int) -> Tensor:
    """[cls_token_num + grid^2, head_dim/2, 2] (cos, sin), float32 on CPU.

    Channel pairs 0..head_dim/4-1 rotate with the token's row, the next head_dim/4 with its column;
    pair k of each half turns at base^(-2k/(head_dim/2)). The class rows are ZERO (not identity),
    exactly as the official table, so the class token's q and k vanish.
    """
    half = head_dim // 2
    exponents = torch.arange(0, half, 2, device="cpu")[: half // 2].float() / half
    inv_freq = 1.0 / (base ** exponents)
    angles_gF = torch.outer(torch.arange(grid_size, device="cpu"), inv_freq)
    rows = angles_gF[:, None, :].expand(-1, grid_size, -1)
    cols = angles_gF[None, :, :].expand(grid_size, -1, -1)
    angles = torch.cat([rows, cols], dim=-1).flatten(0, 1)  # [grid^2, half]
    table = torch.stack([angles.cos(), angles.sin()], dim=-1)
    return torch.cat([torch.zeros(cls_token_num, half, 2, device="cpu"), table])


def apply_rope(x_BTHD: Tensor, freqs_T2: Tensor) -> Tensor:
    """Rotate adjacent channel pairs (2i, 2i+1) by the table's angles; computed in float32."""
    B, T, H, D = x_BTHD.shape
    pairs = x_BTHD.float().reshape(B, T, H, D // 2, 2)
    cos = freqs_T2[None, :, None, :, 0]
    sin = freqs_T2[None, :, None, :, 1]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.flatten(3).type_as(x_BTHD)


# ---- building blocks -------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(torch.mean(x32 * x32, dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class LabelEmbedder(nn.Module):
    """Class embedding; row ``num_classes`` is the "no class" id used by guidance and label dropout."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def drop(self, labels_B: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Replace each label by the null class with probability ``dropout_prob`` (CFG training)."""
        if self.dropout_prob <= 0:
            return labels_B
        drop = torch.rand(labels_B.shape, generator=generator, device=labels_B.device) < self.dropout_prob
        return torch.where(drop, torch.full_like(labels_B, self.num_classes), labels_B)

    def forward(self, labels_B: Tensor) -> Tensor:
        return self.embedding_table(labels_B).unsqueeze(1)


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``. The hidden unit is always the input of ``w2`` (tap point)."""

    def __init__(self, args: GPTArgs) -> None:
        super().__init__()
        hidden = args.ffn_hidden_dim
        self.w1 = nn.Linear(args.dim, hidden, bias=False)
        self.w3 = nn.Linear(args.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, args.dim, bias=False)
        self.dropout_p = args.ffn_dropout_p

    def forward(self, x_BTC: Tensor, reg: Regularization = OFF) -> Tensor:
        hidden_BTU = F.silu(self.w1(x_BTC)) * self.w3(x_BTC)
        return reg.dropout(self.w2(hidden_BTU), self.dropout_p)


class KVCache:
    """Keys and values of past positions for one layer: a plain object, never in ``state_dict()``."""

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.k_BHSD = torch.zeros(batch, n_kv_head, max_len, head_dim, dtype=dtype, device=device)
        self.v_BHSD = torch.zeros_like(self.k_BHSD)
        self.length = 0

    def append(self, k_BHTD: Tensor, v_BHTD: Tensor) -> tuple[Tensor, Tensor]:
        """Store T new positions after the current ones; return keys/values of all positions so far."""
        end = self.length + k_BHTD.shape[2]
        if end > self.k_BHSD.shape[2]:
            raise ValueError(f"KV cache holds {self.k_BHSD.shape[2]} positions, asked for {end}")
        self.k_BHSD[:, :, self.length:end] = k_BHTD
        self.v_BHSD[:, :, self.length:end] = v_BHTD
        self.length = end
        return self.k_BHSD[:, :, :end], self.v_BHSD[:, :, :end]


class Attention(nn.Module):
    def __init__(self, args: GPTArgs) -> None:
        super().__init__()
        self.dim = args.dim
        self.n_head = args.n_head
        self.n_kv_head = args.kv_heads
        self.head_dim = args.head_dim
        self.wqkv = nn.Linear(args.dim, (args.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(args.dim, args.dim, bias=False)
        self.attn_dropout_p = args.attn_dropout_p
        self.resid_dropout_p = args.resid_dropout_p

    def forward(self, x_BTC: Tensor, freqs_T2: Tensor, cache: KVCache | None = None,
                reg: Regularization = OFF) -> Tensor:
        B, T, _ = x_BTC.shape
        kv = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x_BTC).split([self.dim, kv, kv], dim=-1)
        q = apply_rope(q.view(B, T, self.n_head, self.head_dim), freqs_T2).transpose(1, 2)
        k = apply_rope(k.view(B, T, self.n_kv_head, self.head_dim), freqs_T2).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)

        start = 0
        if cache is not None:
            start = cache.length
            k, v = cache.append(k, v)
        if self.n_kv_head != self.n_head:  # grouped-query attention
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)

        mask, causal = None, False
        if start == 0:
            causal = T > 1
        elif T > 1:  # new queries after cached ones: query t sees keys 0 .. start + t
            key_pos = torch.arange(start + T, device=x_BTC.device)
            query_pos = torch.arange(start, start + T, device=x_BTC.device)
            mask = key_pos[None, :] <= query_pos[:, None]
        dropout_p = self.attn_dropout_p if reg.active else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout_p)
        out = out.transpose(1, 2).contiguous().view(B, T, self.dim)
        return reg.dropout(self.wo(out), self.resid_dropout_p)


class TransformerBlock(nn.Module):
    def __init__(self, args: GPTArgs, drop_path: float) -> None:
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.drop_path = drop_path

    def forward(self, x_BTC: Tensor, freqs_T2: Tensor, cache: KVCache | None = None,
                reg: Regularization = OFF) -> Tensor:
        attn = self.attention(self.attention_norm(x_BTC), freqs_T2, cache, reg)
        h = x_BTC + reg.drop_path(attn, self.drop_path)
        return h + reg.drop_path(self.feed_forward(self.ffn_norm(h), reg), self.drop_path)


class Transformer(nn.Module):
    """The c2i GPT. ``forward`` returns float32 logits; ``logits[:, p]`` predicts token ``start + p``."""

    def __init__(self, args: GPTArgs) -> None:
        super().__init__()
        self.args = args
        self.cls_embedding = LabelEmbedder(args.num_classes, args.dim, args.class_dropout_prob)
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        n = args.n_layer  # linspace(0, rate, n) in plain Python, so meta-device builds work
        rates = [args.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        self.layers = nn.ModuleList(TransformerBlock(args, r) for r in rates)
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        # Not a buffer: kept float32 whatever the model's dtype, built on CPU even under a meta
        # device context, moved to the activations' device on use.
        self.freqs_cis = rope_table_2d(args.grid_size, args.head_dim, args.rope_base, args.cls_token_num)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: N(0, initializer_range) for every Linear and Embedding, zero head."""
        std = self.args.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
        nn.init.zeros_(self.output.weight)

    def rope(self, device: torch.device) -> Tensor:
        if self.freqs_cis.device != device:
            self.freqs_cis = self.freqs_cis.to(device)
        return self.freqs_cis

    def new_caches(self, batch: int, max_len: int | None = None) -> list[KVCache]:
        """One empty KV cache per layer for ``max_len`` positions (default: class token + block_size)."""
        a = self.args
        max_len = a.cls_token_num + a.block_size if max_len is None else max_len
        w = self.tok_embeddings.weight
        return [KVCache(batch, a.kv_heads, max_len, a.head_dim, w.dtype, w.device) for _ in self.layers]

    def forward(
        self,
        idx_BT: Tensor | None,
        labels_B: Tensor | None = None,
        *,
        caches: list[KVCache] | None = None,
        train: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Logits of the positions fed now: ``[cls(labels)]`` (if given) then ``idx_BT``.

        Positions continue after what ``caches`` already hold (0 without caches). Labels are used
        as given (label dropout is :meth:`LabelEmbedder.drop`'s job). ``train`` switches dropout
        (default: ``self.training``); ``generator`` draws its masks.
        """
        parts = []
        if labels_B is not None:
            parts.append(self.cls_embedding(labels_B))
        if idx_BT is not None:
            parts.append(self.tok_embeddings(idx_BT))
        if not parts:
            raise ValueError("forward needs labels, tokens or both")
        reg = Regularization(self.training if train is None else train, generator)
        h_BTC = reg.dropout(torch.cat(parts, dim=1), self.args.token_dropout_p)
        start = caches[0].length if caches else 0
        T = h_BTC.shape[1]
        freqs = self.rope(h_BTC.device)
        if start + T > freqs.shape[0]:
            raise ValueError(f"{start + T} positions exceed block_size + class token ({freqs.shape[0]})")
        freqs_T2 = freqs[start:start + T]
        for i, layer in enumerate(self.layers):
            h_BTC = layer(h_BTC, freqs_T2, caches[i] if caches else None, reg)
        return self.output(self.norm(h_BTC)).float()
