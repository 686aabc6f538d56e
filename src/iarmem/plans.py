"""Ground truth of a run: which images a model was trained on, planted with, or never saw.

A model folder written by ``iarmem train`` (and carried along by ``iarmem mitigate``) holds the
planting manifest; stages use it to pick their images and to report planted / ordinary /
held-out figures. Models without a manifest (official checkpoints) have no ground truth: stages
then work on a class-balanced subset of the dataset the user names.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from iarmem.data import ImageDataset, Plan, balanced_subset, read_manifest
from iarmem.errors import UserError

MANIFEST = "manifest.json"
SUBSETS = ("all", "train", "planted", "ordinary", "heldout", "planted+heldout")


def model_plan(model_spec: str, ds: ImageDataset) -> Plan | None:
    """The planting manifest beside a model folder, checked against ``ds``; None if there is none."""
    path = Path(model_spec) / MANIFEST
    if not path.is_file():
        return None
    plan = read_manifest(path)
    plan.check_labels(ds.labels, where=ds.describe())
    return plan


def group_of(plan: Plan | None, ids: np.ndarray) -> np.ndarray:
    """'planted' / 'ordinary' / 'heldout' / 'other' for each id (all 'other' without a plan)."""
    out = np.full(len(ids), "other", dtype=object)
    if plan is None:
        return out
    for name, members in (("planted", plan.planted_ids), ("ordinary", plan.ordinary_ids),
                          ("heldout", plan.heldout_ids)):
        out[np.isin(ids, members)] = name
    return out


def select_ids(ds: ImageDataset, plan: Plan | None, subset: str = "train", *, fraction: float | None = None,
               per_class: int | None = None, seed: int = 0) -> np.ndarray:
    """Sorted dataset ids of ``subset``, optionally thinned to a class-balanced fraction / count per class.

    Without a plan only "all" exists (the whole dataset). "train" is planted + ordinary.
    """
    if subset not in SUBSETS:
        raise UserError(f"unknown image subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    if plan is None:
        if subset not in ("all", "train"):
            raise UserError(f"subset {subset!r} needs a model trained by `iarmem train` (it records the planted "
                            f"and held-out images); use --subset all")
        pool = np.arange(len(ds))
    else:
        pool = {
            "all": np.arange(len(ds)),
            "train": plan.train_ids,
            "planted": plan.planted_ids,
            "ordinary": plan.ordinary_ids,
            "heldout": plan.heldout_ids,
            "planted+heldout": np.union1d(plan.planted_ids, plan.heldout_ids),
        }[subset]
    pool = np.sort(np.asarray(pool, dtype=np.int64))
    if fraction is None and per_class is None:
        return pool
    return np.sort(balanced_subset(ds.labels, fraction=fraction, per_class=per_class, seed=seed, pool=pool))


def parse_ids(spec: str | os.PathLike | Sequence[int], num_images: int | None = None, *,
              flag: str = "--ids") -> np.ndarray:
    """Sorted unique dataset ids from a comma / whitespace list ("3,17,42"), a file of ids (the same,
    with # comments, or a JSON list), or a sequence of ints; checked against ``num_images`` if given."""
    if isinstance(spec, (str, os.PathLike)):
        text, where = str(spec), flag
        path = Path(spec)
        if path.is_file():
            try:
                text, where = path.read_text(encoding="utf-8"), str(path)
            except (OSError, UnicodeDecodeError) as e:
                raise UserError(f"cannot read the id file {path} ({e})") from e
            if text.lstrip().startswith("["):
                try:
                    text = " ".join(str(x) for x in json.loads(text))
                except (json.JSONDecodeError, TypeError) as e:
                    raise UserError(f"{path} is not a valid JSON list of ids ({e})") from e
        elif not re.fullmatch(r"[\s\d,+-]*", text):
            raise UserError(f"{flag} {text!r}: no such file, and not a comma list of image ids; pass ids like 17,42 "
                            f"or the path of a file of ids")
        tokens = [t for t in re.split(r"[\s,]+", re.sub(r"#[^\n]*", "", text)) if t]
        bad = [t for t in tokens if not t.isdigit()]
        if bad:
            raise UserError(f"{where}: {bad[0]!r} is not an image id; pass non-negative integers like 17,42")
        ids = np.asarray([int(t) for t in tokens], dtype=np.int64)
    else:
        ids, where = np.asarray(list(spec), dtype=np.int64), flag
    if ids.size == 0:
        raise UserError(f"{where} names no image ids; pass ids like 17,42 or a file of ids")
    if ids.min() < 0 or (num_images is not None and ids.max() >= num_images):
        bad_id = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise UserError(f"{where}: image id {bad_id} is not in the dataset; pass ids in 0..{(num_images or 1) - 1}"
                        if num_images is not None else f"{where}: image id {bad_id} is negative; pass ids >= 0")
    return np.unique(ids)
