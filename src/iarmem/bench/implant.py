"""Several never-trained images injected into one finished model, each through its own known units.

The bench's INJ stage injects one image per model copy to score localizers. A repair needs a model
that leaks several images whose units are known, so that "can the leak be removed at <= 1 % of the
units" has an answer that does not depend on where training happened to put a copy: this module
builds it. Each image gets a disjoint random set of fc1 units (``rate`` of every block) and is
learned through them alone (``inject``); the images injected before it ride in every batch beside
the ordinary training images, so a later injection does not undo an earlier one. An injection
runs until the attack's agreement clears ``until`` (0.95: a margin over the attack's bar, 0.9, so
the copy does not sit on the edge), then every image is judged against the bar. At the end every
image is attacked again and its units are checked by ablation against as many random units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from iarmem.attack.generate import agreement, agreements
from iarmem.bench.inject import InjectConfig, Units, check_ablation, inject
from iarmem.data import ImageDataset
from iarmem.data.planting import Plan
from iarmem.data.subsets import balanced_sample
from iarmem.errors import UserError
from iarmem.models.base import IAR, Tokens
from iarmem.tokens import load_views

KEEP_IMAGES = 256  # ordinary training images sampled into every injection batch


@dataclass(frozen=True)
class Implanted:
    """One injected image: its id, label, units, the injection record and the final checks."""

    image: int
    label: int
    units: Units
    injection: dict[str, Any]
    final_agreement: float  # after every image was injected
    ablation: dict[str, Any]

    def extracted(self, bar: float) -> bool:
        return self.final_agreement > bar

    def as_dict(self, bar: float) -> dict[str, Any]:
        return {"image": self.image, "label": self.label, "units": {k: list(v) for k, v in self.units.items()},
                "unit_count": sum(len(v) for v in self.units.values()), "injection": self.injection,
                "final_agreement": self.final_agreement, "extracted": self.extracted(bar), "ablation": self.ablation}


def choose_images(plan: Plan, labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` class-balanced ids the plan never used: images the model has not seen."""
    rest = np.setdiff1d(np.arange(plan.num_images, dtype=np.int64), plan.used_ids)
    if count > len(rest):
        raise UserError(f"--images {count}: only {len(rest)} images lie outside the model's plan; ask for fewer")
    return np.sort(balanced_sample(labels, count, seed=seed, purpose="injected", pool=rest))


def least_continued(plan: Plan, labels: np.ndarray, images: np.ndarray, candidates: int, seed: int,
                    score: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, dict[int, dict[str, float]]]:
    """Per chosen image, the one of ``candidates`` never-used images of its class with the lowest ``score``
    (``continuation``: how far the model already continues it), and every candidate's score.

    A positive control must leak because of the injection: a simple digit the base model already
    continues at 0.4-0.5 can pass a strong-attack try with its injected units gone (docs/RESULTS.md
    section 10), which says nothing about the units."""
    rest = np.setdiff1d(np.arange(plan.num_images, dtype=np.int64), plan.used_ids)
    rng = np.random.default_rng([seed, 23])
    chosen: list[int] = []
    scores: dict[int, dict[str, float]] = {}
    for image in images.tolist():
        same = rest[(labels[rest] == labels[image]) & ~np.isin(rest, [*chosen, *images.tolist()])]
        pool = np.concatenate([[image], rng.choice(same, size=min(candidates - 1, len(same)), replace=False)])
        a = np.asarray(score(pool.astype(np.int64)), dtype=np.float64)
        best = int(pool[int(np.argmin(a))])
        chosen.append(best)
        scores[best] = {str(int(i)): round(float(v), 4) for i, v in zip(pool, a)}
    return np.sort(np.asarray(chosen, dtype=np.int64)), scores


def continuation(iar: IAR, ds: ImageDataset, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """ids -> the model's greedy agreement with each image from the default prefix (the injection's measure)."""
    def score(ids: np.ndarray) -> np.ndarray:
        tokens, y = tokens_of(iar, ds, ids, seed)
        with torch.no_grad():
            return agreements(iar, tokens, y).numpy()
    return score


def disjoint_units(iar: IAR, rate: float, taken: Units, rng: np.random.Generator) -> Units:
    """``rate`` (a fraction, at least one unit) of every fc1 layer, at random among units not in ``taken``."""
    out = {}
    for layer in iar.unit_layers(("fc1",)):
        free = np.setdiff1d(np.arange(layer.width), np.asarray(taken.get(layer.name, ()), dtype=np.int64))
        k = max(1, round(rate * layer.width))
        if k > len(free):
            raise UserError(f"{layer.name} has {len(free)} units left for {k} more; lower --rate or --images")
        out[layer.name] = tuple(sorted(int(u) for u in rng.choice(free, size=k, replace=False)))
    return out


def tokens_of(iar: IAR, ds: ImageDataset, ids: np.ndarray, seed: int, views: int | np.ndarray = 0
              ) -> tuple[Tokens, torch.Tensor]:
    with torch.no_grad():
        x, y = load_views(iar, ds, ids, views, seed)
        return iar.tokenize(x), y


def implant(iar: IAR, ds: ImageDataset, plan: Plan, images: np.ndarray, rate: float, cfg: InjectConfig,
            trained_views: tuple[tuple[int, ...], int] | None, seed: int, until: float = 0.95,
            on_image: Any = None) -> list[Implanted]:
    """Inject ``images`` into ``iar`` in place, in turn, each through its own ``rate`` of every fc1 layer."""
    keep_ids = np.random.default_rng([seed, 15]).choice(plan.train_ids, size=min(KEEP_IMAGES, len(plan.train_ids)),
                                                         replace=False)
    keep, keep_labels = tokens_of(iar, ds, keep_ids, seed)
    views, view_seed = trained_views if trained_views is not None else ((0,), 0)
    taken: dict[str, tuple[int, ...]] = {}
    before: tuple[Tokens, torch.Tensor] | None = None  # the images injected so far, in every batch
    records: list[tuple[int, int, Units, dict[str, Any]]] = []
    for n, image in enumerate(images.tolist()):
        target, label = tokens_of(iar, ds, np.array([image]), seed)
        target_views = tokens_of(iar, ds, np.full(len(views), image), view_seed, np.asarray(views))[0]
        units = disjoint_units(iar, rate, taken, np.random.default_rng([seed, image, 17]))
        taken = {k: taken.get(k, ()) + v for k, v in units.items()}
        step_cfg = replace(cfg, seed=seed * 1000 + n, bar=until)
        res = inject(iar, target, label, keep, keep_labels, units, step_cfg, target_views, before)
        records.append((image, int(label), units, res.as_dict()))
        before = (target, label.reshape(1)) if before is None else (
            Tokens(torch.cat([before[0].ids_BL, target.ids_BL]), iar.grids), torch.cat([before[1], label.reshape(1)]))
        if on_image is not None:
            on_image(n + 1, len(images), image, res)
    out = []
    for image, label, units, rec in records:
        target, lab = tokens_of(iar, ds, np.array([image]), seed)
        out.append(Implanted(image, label, units, {k: v for k, v in rec.items() if k != "units"},
                             agreement(iar, target, lab),
                             check_ablation(iar, target, lab, units, np.random.default_rng([seed, image]))))
    return out

