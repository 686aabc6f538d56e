"""FID and KID on synthetic features: zero on identical sets, monotone in added noise, exact on known Gaussians."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iarmem.metrics import fid, frechet_distance, gaussian_stats, kid

NOISE = (0.05, 0.2, 0.5, 1.0, 2.0)


def _features(n: int = 600, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + rng.normal(size=d)  # correlated, off-centre


def _noisy(x: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    return x + sigma * np.random.default_rng(seed).normal(size=x.shape)


def test_fid_of_a_set_with_itself_is_zero() -> None:
    x = _features()
    _, sigma = gaussian_stats(x)
    assert fid(x, x) <= 1e-6 * np.trace(sigma)
    assert fid(torch.from_numpy(x).float(), torch.from_numpy(x).float()) <= 1e-5 * np.trace(sigma)


def test_fid_grows_with_noise() -> None:
    x = _features()
    values = [fid(x, _noisy(x, s)) for s in NOISE]
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert values[0] > 0


def test_fid_closed_form_for_diagonal_gaussians() -> None:
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([0.3, 0.0, -1.0, 0.5])
    v1, v2 = np.array([1.0, 2.0, 0.5, 3.0]), np.array([2.0, 0.5, 0.5, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)
    # and from samples of those Gaussians: the estimate converges to the closed form
    rng = np.random.default_rng(0)
    a = mu1 + np.sqrt(v1) * rng.normal(size=(40_000, 4))
    b = mu2 + np.sqrt(v2) * rng.normal(size=(40_000, 4))
    assert fid(a, b) == pytest.approx(expected, rel=0.03)


def test_fid_matches_a_direct_numpy_computation() -> None:
    a, b = _features(300, 8, seed=0), _features(400, 8, seed=1)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)))
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    assert fid(a, b) == pytest.approx(direct, rel=1e-8)


def test_fid_survives_singular_covariances() -> None:
    x = _features(10, 32)  # fewer samples than dimensions: rank-deficient covariances
    value = fid(x, _noisy(x, 0.5))
    assert np.isfinite(value) and value > 0
    zero = np.zeros((5, 3))  # constant features: both covariances are exactly 0
    assert fid(zero, zero + 1.0) == pytest.approx(3.0)


def test_kid_zero_on_itself_and_grows_with_noise() -> None:
    x = np.random.default_rng(0).normal(size=(1000, 16))
    values = [kid(x, _noisy(x, s), num_subsets=1, subset_size=1000, seed=0).mean for s in (0.1, 0.25, 0.5, 1, 2)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    # a set against itself: subsets of the full size are permutations, and the unbiased estimate is the
    # closed form 2 [(S - T) / (n (n - 1)) - S / n^2] (S, T: sum and trace of the kernel matrix), O(1/n)
    n, d = x.shape
    k = (x @ x.T / d + 1) ** 3
    expected = 2 * ((k.sum() - np.trace(k)) / (n * (n - 1)) - k.sum() / n**2)
    self_kid = kid(x, x, num_subsets=2, subset_size=n, seed=0)
    assert self_kid.mean == pytest.approx(expected, rel=1e-9)
    assert abs(self_kid.mean) < 0.02 * k.mean() and self_kid.std < 1e-9
    assert abs(self_kid.mean) < 0.1 * values[3]


def _mmd2_by_definition(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 of Binkowski et al. (KID), pair by pair: within-set pairs i != j, all cross pairs."""
    m, d = x.shape

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (float(a @ b) / d + 1.0) ** 3

    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return within - 2 * cross


def test_kid_equals_the_estimator_by_definition() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 5)), rng.normal(0.3, 1.2, size=(30, 5))
    # subsets of the full size are permutations, which the estimator does not see
    assert kid(x, y, num_subsets=3, subset_size=30, seed=1).mean == pytest.approx(_mmd2_by_definition(x, y), rel=1e-10)
    small = [_mmd2_by_definition(x[i], y[j]) for i, j in _subsets(seed=7, n=30, m=12, count=4)]
    got = kid(x, y, num_subsets=4, subset_size=12, seed=7)
    assert got.mean == pytest.approx(np.mean(small), rel=1e-10) and got.std == pytest.approx(np.std(small), rel=1e-8)


def _subsets(seed: int, n: int, m: int, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The subsets kid() draws: documented as seeded numpy draws without replacement, a then b per subset."""
    rng = np.random.default_rng([seed, 0x4B1D])
    return [(rng.choice(n, m, replace=False), rng.choice(n, m, replace=False)) for _ in range(count)]


def test_kid_is_seeded_and_unbiased_for_one_distribution() -> None:
    a, b = _features(800, 8, seed=0), _features(800, 8, seed=1)
    assert kid(a, b, 10, 200, seed=3) == kid(a, b, 10, 200, seed=3)
    assert kid(a, b, 10, 200, seed=3) != kid(a, b, 10, 200, seed=4)
    fresh = np.random.default_rng(5).normal(size=(800, 8))
    same_dist = kid(fresh[:400], fresh[400:], num_subsets=50, subset_size=200, seed=0)
    assert abs(same_dist.mean) < 3 * same_dist.std + 1e-3


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        fid(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        fid(np.full((4, 2), np.nan), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="dimensions"):
        kid(np.zeros((4, 2)), np.zeros((4, 3)))
