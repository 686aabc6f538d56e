"""The per-image localizers' stage (``iarmem localize --method zscore|gradient|mask --targets IDS``).

Each target image is scored on its own against reference images the model did not memorize (by
default the held-out images of the model's plan), so a run over T targets costs T per-image
computations plus one pass over the references, not a pass over the training set.

The run folder has UnitMem's layout, so mitigate, sweep, forgetting, the bench and the report
read it unchanged:

- ``unitmem.safetensors``: per layer and bin the method's score, maximised over the targets
  (``LAYER.unitmem`` / ``LAYER.max``), and the target that gives it (``LAYER.argmax``);
- ``per_image.safetensors``: ``image_ids`` [T] and ``scores`` [T, F] (F: layer-major, bin, unit),
  each target's own scores, which the per-image readings rank;
- ``refined.json`` (with ``--refine``, any method): per target the small set of units whose
  removal the attack checked (``refine.py``).

Under torchrun, rank r scores the targets at positions r, r + W, ...; the references stream as in
UnitMem (lane sums), so the files equal one process's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from iarmem.distributed import World, all_gather_object, barrier
from iarmem.errors import UserError
from iarmem.fileio import write_json
from iarmem.localize.contrast import attribution, reference_moments, scored_start, views_tokens, zscores
from iarmem.localize.mask import MaskConfig, learn_mask
from iarmem.localize.results import FILE, UnitMemMap, write_map
from iarmem.localize.stats import NO_ID
from iarmem.mitigate.localization import PER_IMAGE_FILE
from iarmem.models.checkpoint import write_state_dict
from iarmem.progress import log

if TYPE_CHECKING:
    from iarmem.localize.run import LocalizeConfig, Setup

METHODS = ("unitmem", "zscore", "gradient", "mask")
PER_IMAGE = ("zscore", "gradient", "mask")
# how a unit's [bins] scores become one per-image score: a z-score peaks in one bin, an attribution adds up
UNIT_REDUCE = {"zscore": "max", "gradient": "sum", "mask": "max"}
REFERENCE_COUNT = 64


def choose_references(method: str, targets: np.ndarray, given: np.ndarray | None, plan: Any, count: int,
                      seed: int) -> np.ndarray:
    """The reference ids: those given, else the plan's held-out images; at most ``count`` (seeded)."""
    if given is not None:
        refs, where = given, "--references"
    elif plan is not None and len(plan.heldout_ids):
        refs, where = np.setdiff1d(np.asarray(plan.heldout_ids, dtype=np.int64), targets), "the held-out images"
    else:
        raise UserError(f"--method {method} compares the targets with images the model did not memorize; "
                        f"give --references IDS (the model records no held-out images)")
    overlap = np.intersect1d(refs, targets)
    if len(overlap):
        raise UserError(f"{where} and --targets share image {int(overlap[0])}: a reference must not be a target; "
                        f"drop it from one of them")
    if len(refs) < 2:
        raise UserError(f"{where} give {len(refs)} reference image(s) besides the targets; --method {method} needs "
                        f"at least 2 to compare with")
    if len(refs) > count:
        refs = np.sort(np.random.default_rng([seed, 15]).choice(refs, size=count, replace=False))
    return refs


def score_targets(cfg: LocalizeConfig, setup: Setup, targets: np.ndarray, refs: np.ndarray,
                  world: World) -> dict[int, np.ndarray]:
    """{target id: float32 [F]} for this rank's share of the targets."""
    col, F = setup.collector, setup.layout.size
    mine = targets[world.rank::world.size]
    out: dict[int, np.ndarray] = {}
    if cfg.method == "zscore":
        ref = reference_moments(lambda b: col(setup.ds, b, pad_to=cfg.batch_size), refs, cfg.batch_size, F, world)
        for t in mine:
            out[int(t)] = zscores(col(setup.ds, np.array([t]))[0].cpu(), ref).numpy()
    elif cfg.method == "gradient":
        ref = reference_moments(lambda b: attribution(col, setup.ds, b, pad_to=cfg.batch_size), refs,
                                cfg.batch_size, F, world, squares=False)
        for t in mine:
            out[int(t)] = (attribution(col, setup.ds, np.array([t]))[0].cpu() - ref.mean_F).numpy()
    elif cfg.method == "mask":
        pool, pool_labels = views_tokens(col, setup.ds, refs)
        mcfg = MaskConfig(steps=cfg.mask_steps, sparsity=cfg.mask_sparsity, relaxation=cfg.mask_relaxation)
        K = setup.layout.num_bins
        for t in mine:
            tokens, labels = views_tokens(col, setup.ds, int(t))
            alphas = learn_mask(setup.iar, setup.layers, tokens, labels, scored_start(col), pool, pool_labels, mcfg,
                                seed=cfg.seed * 1_000_003 + int(t))
            # no bins: the unit's score in every bin, layer-major like the layout
            out[int(t)] = np.concatenate([np.tile(alphas[s.name].cpu().numpy(), K) for s in setup.layout.layers])
    else:
        raise ValueError(f"not a per-image method: {cfg.method}")
    return out


def run_targeted(cfg: LocalizeConfig, setup: Setup, run: Any, targets: np.ndarray, refs: np.ndarray,
                 world: World) -> dict[str, Any] | None:
    """Score every target, write the run's files on rank 0; the summary there, None elsewhere."""
    from iarmem.localize.run import build_summary, write_figures

    t0 = time.monotonic()
    mine = score_targets(cfg, setup, targets, refs, world)
    gathered: dict[int, np.ndarray] = {}
    for part in all_gather_object(mine, world):
        gathered.update(part)  # type: ignore[arg-type]
    summary = None
    if world.is_main:
        scores_TF = np.stack([gathered[int(t)] for t in targets]).astype(np.float32)
        out = Path(cfg.out)
        result = target_map(setup, targets, scores_TF, cfg.method)
        write_map(result, out / FILE)
        # one metadata key of sorted JSON: safetensors keeps several keys in a hash map, in a random order
        info = json.dumps({"method": cfg.method, "unit_reduce": UNIT_REDUCE[cfg.method]}, sort_keys=True)
        write_state_dict({"image_ids": torch.as_tensor(targets), "scores": torch.from_numpy(scores_TF)},
                         out / PER_IMAGE_FILE, metadata={"iarmem": info})
        summary = build_summary(cfg, setup, result, world)
        summary |= {"method": cfg.method, "unit_reduce": UNIT_REDUCE[cfg.method],
                    "targets": [int(t) for t in targets], "references": [int(r) for r in refs],
                    "per_image_file": PER_IMAGE_FILE}
        write_json(out / "summary.json", summary)
        write_figures(summary, setup, out, cfg.seed)
        elapsed = time.monotonic() - t0
        run.finish([FILE, PER_IMAGE_FILE, "summary.json", "heatmap.png", "blocks.png", "top_images.png"],
                   {"method": cfg.method, "num_targets": len(targets), "num_references": len(refs),
                    "seconds": round(elapsed, 3), "seconds_per_target": round(elapsed / max(len(targets), 1), 3),
                    "world_size": world.size})
    barrier(world)
    return summary


def target_map(setup: Setup, targets: np.ndarray, scores_TF: np.ndarray, method: str) -> UnitMemMap:
    """The run-level map: per column the best target's score and that target (UnitMem's file layout)."""
    best = scores_TF.argmax(axis=0)
    max_F = torch.from_numpy(scores_TF.max(axis=0).astype(np.float64))
    owner = torch.as_tensor(np.asarray(targets, dtype=np.int64)[best])
    ties = torch.as_tensor((scores_TF == scores_TF.max(axis=0)).sum(axis=0).astype(np.int64))
    owner = torch.where(ties == 1, owner, torch.full_like(owner, NO_ID))
    return UnitMemMap(setup.layout, np.asarray(targets, dtype=np.int64), method, max_F, owner, ties,
                      torch.zeros_like(max_F), None, max_F.to(torch.float32))


def log_method(cfg: LocalizeConfig, targets: np.ndarray, refs: np.ndarray, world: World) -> None:
    if world.is_main:
        log(f"localize --method {cfg.method}: {len(targets)} target(s) against {len(refs)} reference image(s)")
