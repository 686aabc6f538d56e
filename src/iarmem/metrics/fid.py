"""FID and KID from feature arrays: pure functions, float64 throughout.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussian fits of two feature sets. It
follows the reference implementations (pytorch-fid, ADM's evaluator): ``scipy.linalg.sqrtm`` of
``sigma1 @ sigma2``, an ``eps`` offset on both diagonals when the product is singular, and the
real part kept when the imaginary residue is numerical noise.

KID (Bińkowski et al. 2018) is the unbiased MMD^2 with the cubic polynomial kernel
``k(x, y) = (x . y / d + 1) ** 3``, averaged over random subsets as in the standard
implementations (100 subsets of at most 1,000 features each); it is unbiased, so small sets
are comparable across sizes, and it reports a spread.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
from scipy import linalg
from torch import Tensor

ArrayLike = np.ndarray | Tensor


def as_features(x: ArrayLike, name: str = "features") -> np.ndarray:
    """[N, D] float64 numpy copy of a feature array or tensor; rejects other shapes and NaNs."""
    if isinstance(x, Tensor):
        x = x.detach().to("cpu").double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} hold NaN or inf values")
    return arr


def gaussian_stats(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (unbiased, float64) of [N, D] features; N >= 2."""
    f = as_features(features)
    if len(f) < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(f)}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) of two Gaussians."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"mismatched statistics: means {mu1.shape} / {mu2.shape}, covariances {s1.shape} / "
                         f"{s2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all() or _imaginary(covmean) > 1e-3:
        # singular product (fewer samples than dimensions, constant features): regularise both
        warnings.warn(f"FID: singular covariance product; adding {eps} to the diagonals", RuntimeWarning,
                      stacklevel=2)
        offset = np.eye(len(mu1)) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = _imaginary(covmean)
        if imag > 1e-3:
            raise ValueError(f"FID: the matrix square root has an imaginary component of {imag:.3g}; the "
                             f"covariances are ill-conditioned (use more samples than feature dimensions)")
        covmean = covmean.real
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on singular input; the caller handles it
        return linalg.sqrtm(a)


def _imaginary(a: np.ndarray) -> float:
    return float(np.abs(np.diagonal(a).imag).max()) if np.iscomplexobj(a) else 0.0


def fid(features_a: ArrayLike, features_b: ArrayLike, eps: float = 1e-6) -> float:
    """FID between two [N, D] feature sets (the sets may differ in size)."""
    mu1, s1 = gaussian_stats(features_a)
    mu2, s2 = gaussian_stats(features_b)
    return frechet_distance(mu1, s1, mu2, s2, eps)


class KID(NamedTuple):
    """Mean and standard deviation of the per-subset unbiased MMD^2 estimates."""

    mean: float
    std: float


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size sets with k(a, b) = (a . b / d + 1)^3."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid(features_a: ArrayLike, features_b: ArrayLike, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> KID:
    """KID: MMD^2 over ``num_subsets`` random subsets of min(subset_size, N_a, N_b) features of each set."""
    a, b = as_features(features_a, "features_a"), as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    m = min(subset_size, len(a), len(b))
    if m < 2 or num_subsets < 1:
        raise ValueError(f"KID needs subsets of at least 2 features and >= 1 subset, got {m} and {num_subsets}")
    rng = np.random.default_rng([int(seed), 0x4B1D])
    values = np.array([polynomial_mmd2(a[rng.choice(len(a), m, replace=False)],
                                       b[rng.choice(len(b), m, replace=False)]) for _ in range(num_subsets)])
    return KID(float(values.mean()), float(values.std()))
