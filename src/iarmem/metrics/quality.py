"""Image quality of a model: samples -> features -> FID, KID, precision/recall against real images.

The sweep edits a model in memory many times; it computes the real images' features once with
:func:`reference_features` and passes them to :func:`evaluate_model` for every edit.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import Tensor

from iarmem.data import ImageDataset, balanced_subset, load_batch, save_grid, transform_for
from iarmem.errors import UserError
from iarmem.features import FeatureExtractor
from iarmem.metrics.fid import frechet_distance, gaussian_stats, kid
from iarmem.metrics.prdc import prdc
from iarmem.metrics.sampling import SamplingSettings, balanced_labels, default_sampling, iter_samples, npz_writer
from iarmem.models.base import IAR
from iarmem.progress import progress

GRID_MAX_CLASSES = 32


@dataclasses.dataclass
class Reference:
    """Features of the real images the samples are compared with, and their Gaussian fit for FID."""

    ids: np.ndarray
    labels: np.ndarray
    features: Tensor  # [N, D] float32, CPU
    feature_name: str
    mu: np.ndarray = dataclasses.field(init=False, repr=False)
    sigma: np.ndarray = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.mu, self.sigma = gaussian_stats(self.features)

    @property
    def classes(self) -> list[int]:
        return sorted(int(c) for c in np.unique(self.labels))


def reference_ids(ds: ImageDataset, n_per_class: int | None, seed: int,
                  pool: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """A seeded class-balanced choice of ``n_per_class`` ids per class of ``pool`` (None: all of it)."""
    if n_per_class is None:
        return np.sort(np.arange(len(ds)) if pool is None else np.unique(np.asarray(pool, dtype=np.int64)))
    return balanced_subset(ds.labels, per_class=n_per_class, seed=seed, pool=pool)


@torch.no_grad()
def reference_features(ds: ImageDataset, features: FeatureExtractor, *, family: str, image_size: int,
                       n_per_class: int | None = 50, seed: int = 0, ids: Sequence[int] | np.ndarray | None = None,
                       batch_size: int = 64, show_progress: bool = True) -> Reference:
    """Features of real images as the model family sees them at evaluation (its eval crop at its size).

    ``ids`` fixes the images; otherwise ``n_per_class`` per class are drawn with ``seed`` (None: all).
    """
    ids = np.asarray(ids, dtype=np.int64) if ids is not None else reference_ids(ds, n_per_class, seed)
    if len(ids) < 2:
        raise UserError(f"the reference set holds {len(ids)} images; it needs at least 2")
    tf = transform_for(family, image_size, train=False)
    feats, labels = [], []
    chunks = list(range(0, len(ids), batch_size))
    for s in progress(chunks, total=len(chunks), desc="reference features", enabled=show_progress):
        x, y = load_batch(ds, ids[s:s + batch_size], tf, seed)
        feats.append(features(tf.to_unit(x)).cpu())
        labels.append(y.numpy())
    return Reference(ids, np.concatenate(labels), torch.cat(feats), features.name)


def _grid_picks(classes: list[int], n_per_class: int, per_class: int) -> np.ndarray:
    """Sample indices shown in the grid: the first ``per_class`` of up to 32 evenly spread classes."""
    rows = np.unique(np.linspace(0, len(classes) - 1, min(len(classes), GRID_MAX_CLASSES)).round().astype(int))
    return np.array([r * n_per_class + j for r in rows for j in range(min(per_class, n_per_class))], dtype=np.int64)


@torch.no_grad()
def evaluate_model(iar: IAR, ds: ImageDataset | None, features: FeatureExtractor, n_per_class: int = 50,
                   seed: int = 0, *, reference: Reference | None = None, settings: SamplingSettings | None = None,
                   batch_size: int = 64, classes: Sequence[int] | None = None,
                   npz_path: str | os.PathLike | None = None, grid_path: str | os.PathLike | None = None,
                   grid_per_class: int = 10, kid_subsets: int = 100, kid_subset_size: int = 1000, k: int = 3,
                   show_progress: bool = True) -> dict[str, Any]:
    """Sample ``n_per_class`` images of each class and score them against real images.

    Returns FID, KID (mean, std), precision, recall, density, coverage and, when the feature network
    has a classifier, ``class_accuracy`` (share of samples classified as the class they were asked
    for). ``reference`` (from :func:`reference_features`) is computed from ``ds`` with the same
    ``n_per_class`` and seed when not given. Samples go to ``npz_path`` / ``grid_path`` if set.
    """
    if n_per_class < 2:
        raise UserError(f"samples per class (--n-per-class) must be >= 2: FID needs a covariance; got {n_per_class}")
    t0 = time.monotonic()
    if reference is None:
        if ds is None:
            raise UserError("evaluate_model needs a dataset or a precomputed reference")
        reference = reference_features(ds, features, family=iar.family, image_size=iar.image_size,
                                       n_per_class=n_per_class, seed=seed, batch_size=batch_size,
                                       show_progress=show_progress)
    classes = [int(c) for c in (reference.classes if classes is None else classes)]
    if not classes or min(classes) < 0 or max(classes) >= iar.num_classes:
        raise UserError(f"classes {classes[:3]}...{classes[-3:]} do not fit a model of {iar.num_classes} classes")
    settings = settings or default_sampling(iar)
    labels = balanced_labels(classes, n_per_class)
    t_ref = time.monotonic()

    was_training = iar.training
    iar.eval()  # an edited model handed over in train mode must not sample with dropout
    try:
        fake, hits = _sample_features(iar, features, labels, settings, seed, batch_size, npz_path, grid_path,
                                      _grid_picks(classes, n_per_class, grid_per_class),
                                      max(1, min(grid_per_class, n_per_class)), show_progress)
    finally:
        iar.train(was_training)
    t_sample = time.monotonic()
    scores = quality_scores(reference, fake, seed=seed, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                            k=k, device=features.device)
    scores["class_accuracy"] = None if hits is None else float(hits.double().mean())
    return {
        **scores,
        "n_samples": int(len(labels)), "n_per_class": int(n_per_class), "n_classes": len(classes),
        "n_reference": int(len(reference.ids)),
        "features": {"name": features.name, "dim": features.dim},
        "sampling": settings.as_dict(), "seed": seed, "batch_size": batch_size,
        "timing_s": {"reference": round(t_ref - t0, 3), "sampling": round(t_sample - t_ref, 3),
                     "metrics": round(time.monotonic() - t_sample, 3)},
    }


def _sample_features(iar: IAR, features: FeatureExtractor, labels: Tensor, settings: SamplingSettings, seed: int,
                     batch_size: int, npz_path: str | os.PathLike | None, grid_path: str | os.PathLike | None,
                     grid_picks: np.ndarray, grid_row: int, show_progress: bool) -> tuple[Tensor, Tensor | None]:
    """Generate in batches; keep only features, classifier hits and the grid's images in memory."""
    side = iar.image_size
    feats: list[Tensor] = []
    hits: list[Tensor] = []
    grid: list[Tensor] = []
    n_batches = -(-len(labels) // batch_size)
    npz = npz_writer(npz_path, len(labels), side, side, labels) if npz_path is not None else nullcontext(None)
    with npz as write:
        batches = iter_samples(iar, labels, settings, seed, batch_size)
        for b, (x_u8, y) in enumerate(progress(batches, total=n_batches, desc="samples", enabled=show_progress)):
            x01 = x_u8.float() / 255.0
            feats.append(features(x01).cpu())
            if features.has_classifier:
                hits.append((features.logits(x01).argmax(1) == y.to(x01.device)).cpu())
            start = b * batch_size
            keep = grid_picks[(grid_picks >= start) & (grid_picks < start + len(y))] - start
            grid.append(x01[torch.as_tensor(keep, dtype=torch.long, device=x01.device)].cpu())
            if write is not None:
                write(x_u8)
    if grid_path is not None:
        save_grid(torch.cat(grid), grid_path, nrow=grid_row)
    return torch.cat(feats), (torch.cat(hits) if hits else None)


def quality_scores(reference: Reference, fake: Tensor | np.ndarray, *, seed: int = 0, kid_subsets: int = 100,
                   kid_subset_size: int = 1000, k: int = 3, device: str | torch.device = "cpu") -> dict[str, Any]:
    """FID, KID and precision/recall/density/coverage of generated features against a reference
    (the k-NN distances on ``device``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        mu, sigma = gaussian_stats(fake)
        fid_value = frechet_distance(reference.mu, reference.sigma, mu, sigma)
    kid_value = kid(reference.features, fake, num_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    pr = prdc(reference.features, fake, k=k, device=device)
    notes = [str(w.message) for w in caught]
    n, dim = min(len(fake), len(reference.features)), reference.features.shape[1]
    if n <= dim:
        notes.append(f"{n} images in the smaller set for {dim}-dim features: the covariances are rank-deficient "
                     f"and FID is biased upwards; compare only runs of the same size")
    return {"fid": fid_value, "kid_mean": kid_value.mean, "kid_std": kid_value.std, **pr._asdict(), "k": k,
            "notes": notes}
