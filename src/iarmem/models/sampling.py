"""Token choice from logits, shared by every family so that all decode the same way."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# one generator for the batch, or one per row: a row's draws then do not depend on the rows beside it
Rng = torch.Generator | Sequence[torch.Generator] | None


def filter_top_k_top_p(logits_BlV: Tensor, top_k: int = 0, top_p: float = 0.0) -> Tensor:
    """Mask (to -inf) every logit outside the top-k and outside the nucleus of mass ``top_p``.

    Same rule as the official VAR/LlamaGen samplers: top-k keeps logits >= the k-th largest; top-p
    keeps the smallest set of largest logits whose probability reaches ``top_p`` (always >= 1 token).
    """
    out = logits_BlV.clone()
    V = out.shape[-1]
    if 0 < top_k < V:
        kth = out.topk(top_k, dim=-1, largest=True, sorted=False).values.amin(dim=-1, keepdim=True)
        out.masked_fill_(out < kth, -torch.inf)
    if 0.0 < top_p < 1.0:
        sorted_logits, sorted_idx = out.sort(dim=-1, descending=False)
        remove_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1.0 - top_p)
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        out.masked_fill_(remove, -torch.inf)
    return out


def pick_tokens(
    logits_BlV: Tensor,
    *,
    greedy: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: Rng = None,
) -> Tensor:
    """[B, l, V] logits -> [B, l] token ids: argmax when greedy, else a filtered, tempered draw (row b from
    ``generator[b]`` when it is one per row)."""
    if greedy:
        return logits_BlV.argmax(dim=-1)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    B, l, V = logits_BlV.shape
    probs = filter_top_k_top_p(logits_BlV.float() / temperature, top_k, top_p).softmax(dim=-1)
    if isinstance(generator, Sequence):  # inverse CDF: one small uniform draw per row, the search batched
        u_Bl = torch.stack([torch.rand(l, generator=g, device=probs.device) for g in generator])
        cdf_BlV = probs.cumsum(dim=-1)
        # right=True: the first token whose cumulative mass exceeds the draw, never a token of mass 0
        idx = torch.searchsorted(cdf_BlV, (u_Bl * cdf_BlV[..., -1]).unsqueeze(-1).contiguous(), right=True)
        return idx.squeeze(-1).clamp_(max=V - 1)
    return torch.multinomial(probs.view(-1, V), 1, generator=generator).view(B, l)


def add_logit_noise(logits_BlV: Tensor, std: float, generator: Rng) -> Tensor:
    """The defense baseline of Kowalczuk et al.: Gaussian noise on the logits before the choice."""
    if std <= 0:
        return logits_BlV
    if isinstance(generator, Sequence):
        noise = torch.stack([torch.randn(logits_BlV.shape[1:], generator=g, device=logits_BlV.device,
                                         dtype=logits_BlV.dtype) for g in generator])
    else:
        noise = torch.randn(logits_BlV.shape, generator=generator, device=logits_BlV.device,
                            dtype=logits_BlV.dtype)
    return logits_BlV + std * noise
