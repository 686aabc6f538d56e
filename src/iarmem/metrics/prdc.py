"""Precision and recall of generated features against real ones (k-NN manifolds), plus density/coverage.

Kynkäänniemi et al. 2019 estimate each set's manifold as the union of balls around its points,
each ball's radius the distance to the point's k-th nearest neighbour in its own set (k = 3).
Precision is the share of generated points inside the real manifold (are samples realistic?);
recall the share of real points inside the generated manifold (is the data's variety covered?).
FID mixes both into one number; a mitigation that makes samples blurry lowers precision, one
that collapses classes lowers recall. Density and coverage (Naeem et al. 2020) reuse the real
balls only and are less sensitive to outliers; they come for free from the same distances.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from iarmem.metrics.fid import ArrayLike, as_features

CHUNK = 1024  # rows of a distance block: memory CHUNK x N float64


class PRDC(NamedTuple):
    precision: float
    recall: float
    density: float
    coverage: float


def _t(x: np.ndarray, device: str | torch.device) -> Tensor:
    return torch.from_numpy(x).to(device)


def _dist(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances [len(a), len(b)], computed from differences so that a point is at exactly 0 from
    itself (the faster matmul form leaves ~1e-5 there, which breaks duplicates whose k-NN radius is 0)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(x: Tensor, k: int) -> Tensor:
    """Distance of each row of ``x`` to its k-th nearest other row."""
    out = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for s in range(0, len(x), CHUNK):
        d = _dist(x[s:s + CHUNK], x)
        # the point itself is at distance 0 and is the 1st "neighbour": take the (k+1)-th smallest
        out[s:s + CHUNK] = d.kthvalue(k + 1, dim=1).values
    return out


def prdc(real: ArrayLike, fake: ArrayLike, k: int = 3, device: str | torch.device = "cpu") -> PRDC:
    """Precision, recall, density and coverage of ``fake`` [M, D] against ``real`` [N, D].

    The cost is O(N M D): 50,000 x 50,000 Inception features want ``device="cuda"``.
    """
    r = _t(as_features(real, "real features"), device)
    f = _t(as_features(fake, "generated features"), device)
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dimensions differ: {r.shape[1]} vs {f.shape[1]}")
    if k < 1 or min(len(r), len(f)) <= k:
        raise ValueError(f"k-NN manifolds need k >= 1 and more than k points per set; got k={k}, "
                         f"{len(r)} real and {len(f)} generated")
    real_r, fake_r = knn_radii(r, k), knn_radii(f, k)
    inside_real = torch.zeros(len(f), dtype=torch.bool, device=r.device)   # fake j in some real ball
    ball_hits = torch.zeros(len(f), dtype=torch.float64, device=r.device)  # number of real balls holding fake j
    covered = torch.zeros(len(r), dtype=torch.bool, device=r.device)       # real ball i holds some fake
    for s in range(0, len(f), CHUNK):
        within = _dist(f[s:s + CHUNK], r) <= real_r[None, :]
        inside_real[s:s + CHUNK] = within.any(dim=1)
        ball_hits[s:s + CHUNK] = within.sum(dim=1).double()
        covered |= within.any(dim=0)
    inside_fake = torch.zeros(len(r), dtype=torch.bool, device=r.device)
    for s in range(0, len(r), CHUNK):
        inside_fake[s:s + CHUNK] = (_dist(r[s:s + CHUNK], f) <= fake_r[None, :]).any(dim=1)
    return PRDC(
        precision=float(inside_real.double().mean()),
        recall=float(inside_fake.double().mean()),
        density=float(ball_hits.sum() / (k * len(f))),
        coverage=float(covered.double().mean()),
    )
