"""Planting: a training set where the memorized images are known in advance.

K "planted" images are repeated ``copies`` times per epoch, so a small model memorizes them; a
held-out set of the same size and the same classes is never trained on, so any measurement
(UnitMem, extraction) can be read as planted versus held-out, with the ordinary training images
in between. The manifest records the split so every later stage uses the same ground truth.

Graded planting (``copies`` a list of levels, e.g. 1, 2, 4, 8, 16, 32): the planted images are dealt
to the levels in equal shares, so memorization can be read against duplication, as in real data
where a few images recur many times and most once.

Injected images (``iarmem inject``): never-trained images a finished model was made to learn
afterwards through a known set of units. They are members but not part of an epoch, so they are
kept apart from the three training groups and excluded from every non-member sample.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iarmem.data.subsets import balanced_sample, class_rng, matched_sample, take_per_class
from iarmem.errors import UserError
from iarmem.fileio import write_json

MANIFEST_FORMAT = "iarmem.plant-manifest"
MANIFEST_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """Which dataset ids are planted, ordinary and held out (sorted int64 arrays, pairwise disjoint)."""

    planted_ids: np.ndarray
    ordinary_ids: np.ndarray
    heldout_ids: np.ndarray
    planted_labels: np.ndarray
    ordinary_labels: np.ndarray
    heldout_labels: np.ndarray
    copies: int
    seed: int
    num_images: int
    dataset: str = ""
    copies_each: np.ndarray | None = None  # graded planting: copies of each planted image (aligned with planted_ids)
    injected_ids: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, dtype=np.int64))
    injected_labels: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, dtype=np.int64))

    @property
    def planted_copies(self) -> np.ndarray:
        """Copies per epoch of each planted image (``copies`` for all unless graded)."""
        if self.copies_each is not None:
            return self.copies_each
        return np.full(len(self.planted_ids), self.copies, dtype=np.int64)

    @property
    def levels(self) -> list[int]:
        """The distinct duplication levels, ascending."""
        return sorted({int(c) for c in self.planted_copies})

    def train_index(self) -> np.ndarray:
        """Dataset ids of one epoch: ordinary ids once, each planted id its copies times, shuffled by the seed."""
        ids = np.concatenate([self.ordinary_ids, np.repeat(self.planted_ids, self.planted_copies)])
        return class_rng(self.seed, "train-order", 0).permutation(ids).astype(np.int64)

    @property
    def train_ids(self) -> np.ndarray:
        """The distinct ids trained on (ordinary and planted), sorted."""
        return np.union1d(self.ordinary_ids, self.planted_ids)

    @property
    def used_ids(self) -> np.ndarray:
        """Every id the plan names (trained, held out or injected): what a non-member sample must avoid."""
        return np.concatenate([self.planted_ids, self.ordinary_ids, self.heldout_ids, self.injected_ids])

    def with_injected(self, ids: np.ndarray, labels: np.ndarray) -> Plan:
        """This plan with ``ids`` added to its injected group."""
        ids = np.concatenate([self.injected_ids, np.asarray(ids, dtype=np.int64)])
        labels = np.concatenate([self.injected_labels, np.asarray(labels, dtype=np.int64)])
        order = np.argsort(ids, kind="stable")
        return dataclasses.replace(self, injected_ids=ids[order], injected_labels=labels[order])

    def check_labels(self, labels: np.ndarray, where: str = "the dataset") -> None:
        """Fail if ``labels`` are not those the plan was made from (another dataset or order)."""
        labels = np.asarray(labels)
        ok = len(labels) == self.num_images and all(
            np.array_equal(labels[ids], lab)
            for ids, lab in (
                (self.planted_ids, self.planted_labels),
                (self.ordinary_ids, self.ordinary_labels),
                (self.heldout_ids, self.heldout_labels),
                (self.injected_ids, self.injected_labels),
            )
        )
        if not ok:
            raise UserError(
                f"the planting manifest ({self.dataset or 'unnamed dataset'}, {self.num_images} images) "
                f"does not match {where} ({len(labels)} images); use the dataset it was made for or re-plan"
            )


def outside_sample(plan: Plan, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` class-balanced ids the plan never touched: images no model of the plan trained on.

    The plan's own held-out set is as large as its planted set (20 on the tiny models), too few to
    resolve a 1 % false-positive rate; the rest of the dataset is a larger pool of non-members.
    """
    rest = np.setdiff1d(np.arange(plan.num_images, dtype=np.int64), plan.used_ids)
    if n <= 0 or len(rest) == 0:
        return np.empty(0, dtype=np.int64)
    return np.sort(balanced_sample(labels, min(n, len(rest)), seed=seed, purpose="calibration", pool=rest))


def outside_by_class(plan: Plan, labels: np.ndarray, classes: Sequence[int] | np.ndarray, n: int, seed: int,
                     exclude: Sequence[int] | np.ndarray = ()) -> np.ndarray:
    """Up to ``n`` ids of each of ``classes`` that the plan never touched, none of ``exclude``.

    The strong attack's per-class bars (``attack.union``) need many never-trained images of the classes
    it judges; drawing them for the targets' classes only keeps that affordable.
    """
    if n <= 0 or len(classes) == 0:
        return np.empty(0, dtype=np.int64)
    rest = np.setdiff1d(np.setdiff1d(np.arange(plan.num_images, dtype=np.int64), plan.used_ids),
                        np.asarray(exclude, dtype=np.int64))
    have = np.bincount(np.asarray(labels)[rest], minlength=int(np.max(labels)) + 1)
    counts = {int(c): min(n, int(have[c])) for c in np.unique(np.asarray(classes)).tolist()}
    return take_per_class(labels, counts, seed=seed, purpose="class calibration", pool=rest)


def make_plan(
    labels: np.ndarray,
    *,
    num_train: int | None,
    plant: int,
    copies: int | Sequence[int],
    seed: int,
    dataset: str = "",
) -> Plan:
    """Choose planted (class-balanced), held-out (class-matched to planted) and ordinary images.

    ``num_train`` ordinary images are drawn class-balanced from what remains, or all of it when None.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = len(labels)
    if plant < 0:
        raise UserError(f"plant must be >= 0, got {plant}")
    levels = [int(copies)] if isinstance(copies, int | np.integer) else [int(c) for c in copies]
    if not levels or min(levels) < 1:
        raise UserError(f"copies must be >= 1, got {copies}; 1 means planted images are not repeated")
    if len(levels) > 1 and plant % len(levels):
        raise UserError(f"graded planting deals {plant} planted images to {len(levels)} duplication levels; "
                        f"make --plant a multiple of {len(levels)}")
    if num_train is not None and num_train < 0:
        raise UserError(f"num_train must be >= 0 or None (all remaining images), got {num_train}")
    need = 2 * plant + (num_train or 0)
    if need > n:
        raise UserError(
            f"the plan needs {need} images ({plant} planted + {plant} held out + {num_train or 0} ordinary) "
            f"but the dataset has {n}; lower plant or num_train"
        )
    planted = balanced_sample(labels, plant, seed=seed, purpose="planted")
    rest = np.setdiff1d(np.arange(n, dtype=np.int64), planted, assume_unique=True)
    heldout = matched_sample(labels, planted, seed=seed, purpose="heldout", pool=rest)
    rest = np.setdiff1d(rest, heldout, assume_unique=True)
    ordinary = (
        rest
        if num_train is None
        else balanced_sample(labels, num_train, seed=seed, purpose="ordinary", pool=rest)
    )
    return Plan(
        planted_ids=planted,
        ordinary_ids=ordinary,
        heldout_ids=heldout,
        planted_labels=labels[planted],
        ordinary_labels=labels[ordinary],
        heldout_labels=labels[heldout],
        copies=max(levels),
        seed=int(seed),
        num_images=n,
        dataset=dataset,
        copies_each=_deal(levels, planted, seed) if len(levels) > 1 else None,
    )


def _deal(levels: list[int], planted: np.ndarray, seed: int) -> np.ndarray:
    """Each planted image's level: a seeded deal of equal shares (aligned with the sorted planted ids)."""
    order = class_rng(seed, "levels", 0).permutation(len(planted))
    each = np.empty(len(planted), dtype=np.int64)
    each[order] = np.resize(np.asarray(levels, dtype=np.int64), len(planted))
    return each


def _group(ids: np.ndarray, labels: np.ndarray) -> dict[str, list[int]]:
    return {"ids": [int(i) for i in ids], "labels": [int(c) for c in labels]}


def write_manifest(plan: Plan, path: str | os.PathLike) -> None:
    """Write the plan as JSON (atomically): the three id sets with their labels, copies, seed, dataset."""
    write_json(
        path,
        {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "dataset": plan.dataset,
            "num_images": plan.num_images,
            "seed": plan.seed,
            "copies": plan.copies,
            **({"copies_each": [int(c) for c in plan.copies_each]} if plan.copies_each is not None else {}),
            "planted": _group(plan.planted_ids, plan.planted_labels),
            "heldout": _group(plan.heldout_ids, plan.heldout_labels),
            "ordinary": _group(plan.ordinary_ids, plan.ordinary_labels),
            **({"injected": _group(plan.injected_ids, plan.injected_labels)} if len(plan.injected_ids) else {}),
        },
    )


def read_manifest(path: str | os.PathLike) -> Plan:
    """Read a manifest written by :func:`write_manifest`; a damaged one is a UserError."""
    path = Path(path)
    try:
        obj: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"planting manifest {path} not found; run the planting step first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"planting manifest {path} is unreadable ({e}); re-create it") from e
    if not isinstance(obj, dict) or obj.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{path} is not an iarmem planting manifest; pass the manifest.json a plan wrote")
    if obj.get("version") != MANIFEST_VERSION:
        raise UserError(
            f"{path} has manifest version {obj.get('version')}, expected {MANIFEST_VERSION}; re-create it"
        )
    try:
        groups = {}
        for key in ("planted", "ordinary", "heldout", "injected"):
            if key == "injected" and key not in obj:
                groups[key] = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
                continue
            ids = np.asarray(obj[key]["ids"], dtype=np.int64).reshape(-1)
            labs = np.asarray(obj[key]["labels"], dtype=np.int64).reshape(-1)
            if len(ids) != len(labs):
                raise ValueError(f"{key}: {len(ids)} ids but {len(labs)} labels")
            groups[key] = (ids, labs)
        plan = Plan(
            planted_ids=groups["planted"][0],
            ordinary_ids=groups["ordinary"][0],
            heldout_ids=groups["heldout"][0],
            planted_labels=groups["planted"][1],
            ordinary_labels=groups["ordinary"][1],
            heldout_labels=groups["heldout"][1],
            copies=int(obj["copies"]),
            seed=int(obj["seed"]),
            num_images=int(obj["num_images"]),
            dataset=str(obj.get("dataset", "")),
            copies_each=(np.asarray(obj["copies_each"], dtype=np.int64).reshape(-1) if "copies_each" in obj
                         else None),
            injected_ids=groups["injected"][0],
            injected_labels=groups["injected"][1],
        )
        if plan.copies_each is not None and (len(plan.copies_each) != len(plan.planted_ids)
                                             or plan.copies_each.min(initial=1) < 1):
            raise ValueError(f"copies_each: {len(plan.copies_each)} levels for {len(plan.planted_ids)} planted ids")
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"planting manifest {path} is malformed ({e}); re-create it") from e
    all_ids = plan.used_ids
    if len(np.unique(all_ids)) != len(all_ids) or (
        len(all_ids) and not 0 <= all_ids.min() <= all_ids.max() < plan.num_images
    ):
        raise UserError(f"planting manifest {path} has overlapping or out-of-range ids; re-create it")
    return plan
