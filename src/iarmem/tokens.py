"""Images of a dataset -> tokens of a model, in views: view 0 is the evaluation crop, views 1.. are
reproducible draws of the family's training augmentation (view v of image i is the same whatever
the batch, shard or resume)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from iarmem.data import ImageDataset, load_batch, transform_for
from iarmem.models.base import IAR
from iarmem.progress import progress


def load_views(iar: IAR, ds: ImageDataset, ids: Sequence[int] | np.ndarray, view: int | np.ndarray,
               seed: int) -> tuple[Tensor, Tensor]:
    """Images (native range, on the model's device) and labels of ``ids`` at ``view`` (0 = eval crop)."""
    ids = np.asarray(ids, dtype=np.int64)
    views = np.broadcast_to(np.asarray(view, dtype=np.int64), ids.shape)
    images = torch.empty(len(ids), 3, iar.image_size, iar.image_size)
    labels = torch.empty(len(ids), dtype=torch.int64)
    for train in (False, True):
        sel = np.nonzero((views > 0) == train)[0]
        if len(sel):
            tf = transform_for(iar.family, iar.image_size, train=train)
            x, y = load_batch(ds, ids[sel], tf, seed, views[sel])
            images[sel], labels[sel] = x, y
    return images.to(iar.device), labels


@torch.no_grad()
def tokenize_views(iar: IAR, ds: ImageDataset, ids: Sequence[int] | np.ndarray, views: int, seed: int,
                   batch_size: int = 64, desc: str = "tokenize") -> tuple[Tensor, Tensor]:
    """Token ids [N, views, L] (int32, CPU) and labels [N] for ``ids``."""
    ids = np.asarray(ids, dtype=np.int64)
    out = torch.empty(len(ids), views, iar.seq_len, dtype=torch.int32)
    labels = torch.empty(len(ids), dtype=torch.int64)
    chunks = [(v, s) for v in range(views) for s in range(0, len(ids), batch_size)]
    for v, s in progress(chunks, total=len(chunks), desc=desc):
        x, y = load_views(iar, ds, ids[s:s + batch_size], v, seed)
        out[s:s + batch_size, v] = iar.tokenize(x).ids_BL.to("cpu", torch.int32)
        labels[s:s + batch_size] = y
    return out, labels
