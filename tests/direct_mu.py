"""UnitMem's per-image mu and statistics computed directly, as a second opinion on iarmem's localizer.

Nothing here uses iarmem's taps, bin reducer, layout or accumulators: plain forward hooks on the Linear
layers that compute each fc1 unit, the activation applied by hand (VAR: tanh-GELU, RAR: GELU,
LlamaGen: silu(w1 x) * w3 x), the rows that predict tokens 0..L-1 read off the official sequence
layouts, bins from the grids, and numpy for max / argmax / mean of the others / UnitMem.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from iarmem.models import IAR, Tokens

# the first row of the transformer's sequence that predicts token 0 (official layouts):
# VAR [class/SOS, scale tokens...]: row i predicts token i; RAR [cls, cond, t_0, ...]: row i+1 predicts
# token i; LlamaGen [class, t_0, ...]: row i predicts token i
FIRST_ROW = {"var": 0, "rar": 1, "llamagen": 0}


def fc1_values(iar: IAR, tokens: Tokens, labels: torch.Tensor) -> list[torch.Tensor]:
    """Per block, the fc1 unit values [S, L, U] at the rows predicting tokens 0..L-1."""
    got: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    if iar.family == "llamagen":
        for i, layer in enumerate(iar.model.layers):
            for name in ("w1", "w3"):
                mod = getattr(layer.feed_forward, name)
                hooks.append(mod.register_forward_hook(
                    lambda m, a, out, key=(i, name): got.__setitem__(key, out.detach().clone())))
    else:
        blocks = iar.model.blocks
        for i, blk in enumerate(blocks):
            fc1 = blk.ffn.fc1 if iar.family == "var" else blk.mlp.fc1
            hooks.append(fc1.register_forward_hook(
                lambda m, a, out, key=(i, "fc1"): got.__setitem__(key, out.detach().clone())))
    try:
        with torch.no_grad():
            iar.logits(tokens, labels)
    finally:
        for h in hooks:
            h.remove()
    n_blocks = len(iar.model.layers if iar.family == "llamagen" else iar.model.blocks)
    first, L = FIRST_ROW[iar.family], iar.seq_len
    out = []
    for i in range(n_blocks):
        if iar.family == "llamagen":
            v = F.silu(got[(i, "w1")]) * got[(i, "w3")]
        elif iar.family == "var":
            v = F.gelu(got[(i, "fc1")], approximate="tanh")
        else:
            v = F.gelu(got[(i, "fc1")])
        out.append(v[:, first:first + L])
    return out


def position_bins(iar: IAR, keep_class_positions: bool = False) -> list[np.ndarray]:
    """The token positions of each bin: VAR its scales; raster families 16 equal runs. Without
    ``keep_class_positions`` the first position (class only) is dropped, and a bin left empty goes."""
    if len(iar.grids) > 1:
        sizes = [h * w for h, w in iar.grids]
        starts = np.cumsum([0, *sizes])
        bins = [np.arange(starts[k], starts[k + 1]) for k in range(len(sizes))]
    else:
        L, n = iar.seq_len, min(16, iar.seq_len)
        bins = [np.array([p for p in range(L) if p * n // L == k]) for k in range(n)]
    if not keep_class_positions:
        bins = [b[b != 0] for b in bins]
    return [b for b in bins if len(b)]


def direct_mu(iar: IAR, tokens: Tokens, labels: torch.Tensor, augs: int,
              keep_class_positions: bool = False) -> np.ndarray:
    """mu [B, F] (layer-major, then bin, then unit) for B = S / augs images of image-major sequences."""
    bins = position_bins(iar, keep_class_positions)
    cols = []
    for v in fc1_values(iar, tokens, labels):
        a = v.abs().double().numpy()  # [S, L, U]
        per_bin = np.stack([a[:, b].mean(axis=1) for b in bins], axis=1)  # [S, K, U]
        S, K, U = per_bin.shape
        cols.append(per_bin.reshape(S // augs, augs, K, U).mean(axis=1).reshape(S // augs, K * U))
    return np.concatenate(cols, axis=1)


def direct_unitmem(mu_NF: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    """max, owner (-1 on a tied maximum), ties, mean of the others and UnitMem per column."""
    mx = mu_NF.max(axis=0)
    at_max = mu_NF == mx
    ties = at_max.sum(axis=0)
    owner = np.where(ties == 1, ids[at_max.argmax(axis=0)], -1)
    others = (mu_NF.sum(axis=0) - mx) / (len(mu_NF) - 1)
    den = mx + others
    um = np.where(den > 0, (mx - others) / np.where(den > 0, den, 1), 0.0)
    return {"max": mx, "owner": owner, "ties": ties, "mean_others": others, "unitmem": um}
