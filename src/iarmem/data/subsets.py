"""Seeded, class-balanced choices of image ids.

Every function takes the full label array of a dataset (ids are positions in it), an optional
``pool`` of ids to choose from, and a seed. Each class draws from its own random stream derived
from (seed, purpose, class), so adding a class or changing another class's count never changes
which images a class contributes, and asking for more images per class gives a superset.
Results are sorted id arrays (int64).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from iarmem.errors import UserError


def class_rng(seed: int, purpose: str, cls: int) -> np.random.Generator:
    """The random stream of one class for one purpose; stable across runs and platforms."""
    return np.random.default_rng([int(seed) % 2**64, zlib.crc32(purpose.encode()), int(cls) % 2**64])


def as_pool(labels: np.ndarray, pool: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """The candidate ids: all of them, or ``pool`` checked to lie in range (sorted, unique)."""
    n = len(labels)
    if pool is None:
        return np.arange(n, dtype=np.int64)
    ids = np.unique(np.asarray(pool, dtype=np.int64))
    if len(ids) and (ids[0] < 0 or ids[-1] >= n):
        raise UserError(f"image ids must lie in [0, {n}); got {int(ids[0])}..{int(ids[-1])}")
    return ids


def _by_class(labels: np.ndarray, ids: np.ndarray) -> dict[int, np.ndarray]:
    sub = np.asarray(labels, dtype=np.int64)[ids]
    return {int(c): ids[sub == c] for c in np.unique(sub)}


def take_per_class(
    labels: np.ndarray, counts: dict[int, int], *, seed: int, purpose: str, pool: np.ndarray | None = None
) -> np.ndarray:
    """Draw ``counts[c]`` ids of each class ``c`` from ``pool`` without replacement."""
    groups = _by_class(labels, as_pool(labels, pool))
    chosen: list[np.ndarray] = []
    for c, k in sorted(counts.items()):
        if k <= 0:
            continue
        cands = groups.get(c, np.empty(0, dtype=np.int64))
        if k > len(cands):
            raise UserError(f"class {c} has {len(cands)} images available but {k} were asked for")
        chosen.append(class_rng(seed, purpose, c).permutation(cands)[:k])
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def spread(total: int, capacity: dict[int, int], *, seed: int, purpose: str) -> dict[int, int]:
    """Split ``total`` over classes as evenly as their ``capacity`` allows (water-filling).

    When ``total`` does not divide evenly, the seed picks which classes get one more.
    """
    avail = sum(capacity.values())
    if total > avail:
        raise UserError(f"asked for {total} images but only {avail} are available; ask for fewer")
    counts = dict.fromkeys(capacity, 0)
    left = total
    rng = class_rng(seed, purpose + "/spread", 0)
    while left > 0:
        open_ = sorted(c for c in capacity if counts[c] < capacity[c])
        each = left // len(open_)
        if each == 0:
            for c in rng.choice(open_, size=left, replace=False):
                counts[int(c)] += 1
            break
        for c in open_:
            add = min(each, capacity[c] - counts[c])
            counts[c] += add
            left -= add
    return counts


def balanced_sample(
    labels: np.ndarray, total: int, *, seed: int, purpose: str = "sample", pool: Sequence[int] | None = None
) -> np.ndarray:
    """Exactly ``total`` ids from ``pool``, spread as evenly over the classes as possible."""
    if total < 0:
        raise UserError(f"cannot sample {total} images; ask for 0 or more")
    ids = as_pool(labels, pool)
    caps = {c: len(g) for c, g in _by_class(labels, ids).items()}
    counts = spread(total, caps, seed=seed, purpose=purpose)
    return take_per_class(labels, counts, seed=seed, purpose=purpose, pool=ids)


def matched_sample(
    labels: np.ndarray,
    like: Sequence[int] | np.ndarray,
    *,
    seed: int,
    purpose: str = "matched",
    pool: Sequence[int] | None = None,
) -> np.ndarray:
    """As many ids as ``like`` with the same classes where ``pool`` has them; the rest spread evenly."""
    ids = as_pool(labels, pool)
    caps = {c: len(g) for c, g in _by_class(labels, ids).items()}
    want = np.bincount(np.asarray(labels)[np.asarray(like, dtype=np.int64)]) if len(like) else np.zeros(0)
    counts = {c: min(int(want[c]) if c < len(want) else 0, cap) for c, cap in caps.items()}
    short = len(like) - sum(counts.values())
    if short:
        extra = spread(short, {c: caps[c] - counts[c] for c in caps}, seed=seed, purpose=purpose)
        counts = {c: counts[c] + extra[c] for c in caps}
    return take_per_class(labels, counts, seed=seed, purpose=purpose, pool=ids)


def balanced_subset(
    labels: np.ndarray,
    *,
    fraction: float | None = None,
    per_class: int | None = None,
    seed: int,
    pool: Sequence[int] | None = None,
) -> np.ndarray:
    """A class-balanced subset: ``fraction`` of each class (at least 1) or ``per_class`` images each.

    A class with fewer than ``per_class`` images contributes all it has. This is how D' (the
    images UnitMem is computed on, 1% per class in the paper) is drawn.
    """
    if (fraction is None) == (per_class is None):
        raise UserError("give exactly one of fraction (e.g. 0.01) or per_class (e.g. 5)")
    if fraction is not None and not 0 < fraction <= 1:
        raise UserError(f"fraction must be in (0, 1], got {fraction}; e.g. 0.01 for 1% of each class")
    if per_class is not None and per_class < 1:
        raise UserError(f"per_class must be >= 1, got {per_class}")
    groups = _by_class(labels, as_pool(labels, pool))
    if fraction is not None:
        counts = {c: max(1, int(np.floor(fraction * len(g) + 0.5))) for c, g in groups.items()}
    else:
        counts = {c: min(int(per_class), len(g)) for c, g in groups.items()}  # type: ignore[arg-type]
    return take_per_class(labels, counts, seed=seed, purpose="subset", pool=pool)


def split_holdout(
    labels: np.ndarray,
    holdout: int,
    *,
    seed: int,
    pool: Sequence[int] | None = None,
    like: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``pool`` into (rest, held out): ``holdout`` class-balanced ids, or class-matched to ``like``."""
    ids = as_pool(labels, pool)
    if like is not None and len(like) != holdout:
        raise UserError(f"holdout={holdout} but like has {len(like)} ids; they must be equal")
    if like is not None:
        held = matched_sample(labels, like, seed=seed, purpose="holdout", pool=ids)
    else:
        held = balanced_sample(labels, holdout, seed=seed, purpose="holdout", pool=ids)
    return np.setdiff1d(ids, held, assume_unique=True), held
