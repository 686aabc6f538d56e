"""Candidate scoring: how well the model predicts an image's own tokens under teacher forcing.

One conditional pass per image (no guidance, no label dropout). The score is the top-1 accuracy
on the *scored positions*, iarmem's one definition of "memorized" per family, used by the attack's
candidate scores and by the training evidence alike: VAR's last scale; for raster families
(RAR, LlamaGen) the last 99/256 of the sequence (the paper's 99 of 256 tokens; 25 of 64 on an
8x8 grid), where the model has the most context and memorized images stand out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from iarmem.models.base import IAR, Tokens

PAPER_LAST_TOKENS = 99  # of 256 raster tokens (Kowalczuk et al.)


def default_last_tokens(seq_len: int) -> int:
    """The paper's 99 of 256, scaled to shorter raster sequences."""
    return max(1, round(PAPER_LAST_TOKENS * seq_len / 256))


def scored_positions(iar: IAR, last: int | None = None) -> slice:
    """VAR: the last scale; raster families: the last ``last`` tokens (default: 99/256 of them)."""
    L = iar.seq_len
    if len(iar.grids) > 1:
        b, e = Tokens(torch.zeros(1, L, dtype=torch.long), iar.grids).begin_ends[-1]
        return slice(b, e)
    k = default_last_tokens(L) if last is None else last
    if not 1 <= k <= L:
        raise ValueError(f"last must lie in 1..{L}, got {k}")
    return slice(L - k, L)


def describe_scored(iar: IAR, positions: slice) -> str:
    """The scored positions in words ("last scale (8x8 = 64 tokens)", "last 25 of 64 tokens")."""
    n = positions.stop - positions.start
    if len(iar.grids) > 1:
        h, w = iar.grids[-1]
        return f"last scale ({h}x{w} = {n} tokens)"
    return f"last {n} of {iar.seq_len} tokens"


@torch.no_grad()
def score_tokens(iar: IAR, tokens: Tokens, labels: Tensor, positions: slice) -> dict[str, Tensor]:
    """Per image: top-1 accuracy, mean ground-truth probability and mean loss over ``positions``."""
    return score_logits(iar.logits(tokens, labels), tokens.ids_BL, positions)


def score_logits(logits_BLV: Tensor, ids_BL: Tensor, positions: slice) -> dict[str, Tensor]:
    """:func:`score_tokens` from teacher-forced logits already computed."""
    logits_BLV = logits_BLV[:, positions].float()
    target_BL = ids_BL[:, positions].to(logits_BLV.device)
    logp_BLV = F.log_softmax(logits_BLV, dim=-1)
    gt_logp_BL = logp_BLV.gather(-1, target_BL.unsqueeze(-1)).squeeze(-1)
    return {
        "top1": (logits_BLV.argmax(-1) == target_BL).float().mean(1).cpu(),
        "gt_prob": gt_logp_BL.exp().mean(1).cpu(),
        "loss": (-gt_logp_BL).mean(1).cpu(),
    }


def gt_logprob(logits_BLV: Tensor, ids_BL: Tensor) -> Tensor:
    """[B, L] log-probability of every ground-truth token (float32)."""
    logp_BLV = F.log_softmax(logits_BLV.float(), dim=-1)
    return logp_BLV.gather(-1, ids_BL.to(logp_BLV.device).unsqueeze(-1)).squeeze(-1)
