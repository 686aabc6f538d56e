"""The class-only control: how closely each generation matches *another* candidate of its class.

If the prefix says little (a background-only prefix on MNIST), a model that memorized some images
of a class emits one of them for any prompt of that class. Then a generation matches a training
image, but not the one it was prompted with; this control finds those cases.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from iarmem.attack.similarity import psnr, ssim

PIXEL_BUDGET = 1 << 30  # bytes of decoded images the control may hold at once


def best_other(sim_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], ids: np.ndarray, labels: np.ndarray,
               reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row i: max over reference rows j of its class, j != i, of ``sim_fn([i], js)``.

    ``sim_fn(i_rows, j_rows)`` returns the [len(i), len(j)] similarity of generation i to
    reconstruction j. Returns (best similarity, its image id); NaN / -1 where no other exists.
    """
    n = len(ids)
    best = np.full(n, np.nan)
    best_id = np.full(n, -1, dtype=np.int64)
    for c in np.unique(labels):
        rows = np.nonzero(labels == c)[0]
        refs = np.nonzero((labels == c) & reference)[0]
        if len(refs) == 0:
            continue
        sims = np.asarray(sim_fn(rows, refs), dtype=np.float64)
        sims[rows[:, None] == refs[None, :]] = -np.inf
        k = sims.argmax(1)
        val = sims[np.arange(len(rows)), k]
        ok = np.isfinite(val)
        best[rows[ok]] = val[ok]
        best_id[rows[ok]] = ids[refs[k[ok]]]
    return best, best_id


def token_sim_fn(gen_NL: Tensor, gt_NL: Tensor, start: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    g, t = gen_NL[:, start:].long(), gt_NL[:, start:].long()

    def fn(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        tj = t[j][None, :, :]
        return np.concatenate([(g[i[s:s + 64]][:, None, :] == tj).float().mean(-1).numpy()
                               for s in range(0, len(i), 64)])

    return fn


def feature_sim_fn(emb_gen: Tensor, emb_rec: Tensor) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def fn(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return (emb_gen[i] @ emb_rec[j].T).numpy()

    return fn


def pixel_sim_fn(metric: str, decode01: Callable[[Tensor], Tensor], gen_NL: Tensor, gt_NL: Tensor,
                 batch_size: int, image_shape: tuple[int, ...],
                 budget_bytes: int = PIXEL_BUDGET) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """SSIM / PSNR of decoded images (computed on whatever device ``decode01`` returns them).

    When all generations and reconstructions fit ``budget_bytes`` they are decoded once, in full
    batches; otherwise each class's rows are decoded when the class is compared.
    """
    measure = ssim if metric == "ssim" else psnr
    n = len(gen_NL)

    def images(tok: Tensor, rows: np.ndarray) -> Tensor:
        return torch.cat([decode01(tok[rows[s:s + batch_size]]) for s in range(0, len(rows), batch_size)])

    cache: tuple[Tensor, Tensor] | None = None
    if 2 * n * int(np.prod(image_shape)) * 4 <= budget_bytes and n:
        everything = np.arange(n)
        cache = images(gen_NL, everything), images(gt_NL, everything)

    def fn(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        gen, rec = (cache[0][i], cache[1][j]) if cache is not None else (images(gen_NL, i), images(gt_NL, j))
        out = np.empty((len(i), len(j)))
        for a in range(len(i)):
            out[a] = measure(gen[a:a + 1].expand_as(rec), rec).cpu().numpy()
        return out

    return fn
