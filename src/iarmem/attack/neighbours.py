"""The nearest other image: for each generation, the most similar image of a pool other than its prompt.

This is what makes the decision prompt-specific (the relative distance of Carlini et al. 2023): a
generation counts as a copy of its prompt only when it is closer to the prompt than to every other
training or held-out image, and a generation that is really a copy of another image is reported as
that image's extraction. The pool is streamed in chunks of ids, so memory is O(queries x chunk),
flat in the pool size; under torchrun each rank takes every W-th chunk and the per-rank maxima are
reduced exactly (ties to the smaller id, as in one process).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from iarmem.data import ImageDataset
from iarmem.distributed import World, all_gather_object
from iarmem.models.base import IAR
from iarmem.tokens import load_views

POOL_CHUNK = 256

# a pool item loader (dataset ids -> tokens [n, L], images [n, 3, H, W] or embeddings [n, D]) and a
# similarity of every query to a chunk of items ([Q, n], higher = more alike)
Loader = Callable[[np.ndarray], Tensor]
Similarity = Callable[[Tensor], Tensor]


def nearest_other(query_ids: np.ndarray, pool_ids: np.ndarray, load: Loader, similarity: Similarity,
                  chunk: int = POOL_CHUNK, world: World | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, id) of the most similar pool image that is not the query's own prompt; -inf / -1 if none."""
    world = world or World()
    query_ids = np.asarray(query_ids, dtype=np.int64)
    pool_ids = np.sort(np.asarray(pool_ids, dtype=np.int64))
    best = np.full(len(query_ids), -np.inf)
    best_id = np.full(len(query_ids), -1, dtype=np.int64)
    starts = list(range(0, len(pool_ids), chunk))
    with torch.no_grad():
        for lo in starts[world.rank::world.size]:
            ids = pool_ids[lo:lo + chunk]
            sims = similarity(load(ids)).double().cpu().numpy()
            sims[query_ids[:, None] == ids[None, :]] = -np.inf  # never the prompt itself
            k = sims.argmax(1)
            val = sims[np.arange(len(query_ids)), k]
            take = val > best  # chunks come in id order: an equal value keeps the smaller id
            best[take], best_id[take] = val[take], ids[k[take]]
    return _reduce(best, best_id, world)


def _reduce(best: np.ndarray, best_id: np.ndarray, world: World) -> tuple[np.ndarray, np.ndarray]:
    parts = all_gather_object((best, best_id), world)
    out, out_id = parts[0][0].copy(), parts[0][1].copy()  # type: ignore[index]
    for b, i in parts[1:]:  # type: ignore[misc]
        take = (b > out) | ((b == out) & (i >= 0) & ((out_id < 0) | (i < out_id)))
        out[take], out_id[take] = b[take], i[take]
    return out, out_id


class TokenCache:
    """Eval-view tokens of pool images, kept while they fit ``budget_bytes``.

    The scoring pass tokenizes every pool image already, and a sweep judges many edits of one model
    whose tokenizer never changes: the nearest-other search reads tokens from here instead of
    tokenizing the pool again. Past the budget, images are tokenized on demand, so memory stays
    bounded for any pool.
    """

    def __init__(self, budget_bytes: int = 256 << 20) -> None:
        self.budget, self.used = budget_bytes, 0
        self.rows: dict[int, Tensor] = {}

    def add(self, ids: np.ndarray, tokens_NL: Tensor) -> None:
        for i, row in zip(np.asarray(ids).tolist(), tokens_NL.to("cpu", torch.int32)):
            if i not in self.rows and self.used + row.numel() * 4 <= self.budget:
                self.rows[i] = row.clone()
                self.used += row.numel() * 4

    def load(self, ids: np.ndarray, tokenize: Loader) -> Tensor:
        """[n, L] tokens of ``ids``: cached rows, the others tokenized now (and cached while room is left)."""
        ids = np.asarray(ids, dtype=np.int64)
        missing = np.array([i for i in ids.tolist() if i not in self.rows], dtype=np.int64)
        fresh: dict[int, Tensor] = {}
        if len(missing):
            tokens = tokenize(missing).to("cpu", torch.int32)
            self.add(missing, tokens)
            fresh = dict(zip(missing.tolist(), tokens))
        return torch.stack([self.rows[i] if i in self.rows else fresh[i] for i in ids.tolist()])


def pool_tokens(iar: IAR, ds: ImageDataset, seed: int, cache: TokenCache | None) -> Loader:
    """Eval-view tokens of pool ids ([n, L], CPU): from ``cache`` where it holds them, else tokenized."""
    def tokenize(pool_ids: np.ndarray) -> Tensor:
        x, _ = load_views(iar, ds, pool_ids, 0, seed)
        return iar.tokenize(x).ids_BL.cpu()

    return tokenize if cache is None else (lambda pool_ids: cache.load(pool_ids, tokenize))


# ---- similarities of queries to a chunk, one per decision metric -----------------------------------
def token_similarity(gen_QL: Tensor, start: int) -> Similarity:
    """Fraction of the positions after the prefix where the generated token equals the pool image's."""
    g = gen_QL[:, start:].long()

    def sim(pool_nL: Tensor) -> Tensor:
        return (g[:, None, :] == pool_nL[None, :, start:].long()).float().mean(-1)

    return sim


def embedding_similarity(gen_QD: Tensor) -> Similarity:
    """Cosine of L2-normalised embeddings."""
    return lambda pool_nD: gen_QD.float() @ pool_nD.float().T


def pixel_similarity(gen_QCHW: Tensor, measure: Callable[[Tensor, Tensor], Tensor]) -> Similarity:
    """A paired image measure (SSIM, PSNR) of every query against every pool image."""

    def sim(pool_nCHW: Tensor) -> Tensor:
        n = len(pool_nCHW)
        pool = pool_nCHW.to(gen_QCHW.device)
        return torch.stack([measure(q.expand(n, -1, -1, -1), pool) for q in gen_QCHW]).float()

    return sim
