"""``--refine``: after any localizer's run, each target's ranking refined into units the attack checked.

Reads the finished run back (so UnitMem and the per-image methods are refined the same way), ranks
each target's units with the per-image reading, and runs ``refine.refine`` on the target's
evaluation view, the prompt the attack uses. Targets are sharded over the ranks; rank 0 writes
refined.json and adds a short account to summary.json. An existing refined.json is kept (resume).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from iarmem.distributed import World, all_gather_object, barrier
from iarmem.fileio import write_json
from iarmem.localize.contrast import attribution_from_tokens, views_tokens
from iarmem.localize.refine import RefineConfig, Rerank, refine
from iarmem.mitigate.forget import image_ranking
from iarmem.mitigate.localization import REFINED_FILE, Localization, load_localization
from iarmem.mitigate.select import Scores
from iarmem.progress import log
from iarmem.tokens import load_views

if TYPE_CHECKING:
    from iarmem.localize.run import LocalizeConfig, Setup


def gradient_rerank(setup: Setup, loc: Localization, image: int, scores: Scores) -> Rerank:
    """The gradient method's ranking recomputed on the edited model: the image's attribution with the
    removed units gated to zero, minus the references' mean attribution on the unedited model (recovered
    exactly from the stored score: stored = own - references)."""
    col = setup.collector
    tokens, labels = views_tokens(col, setup.ds, image)
    reference_F = attribution_from_tokens(col, tokens, labels)[0].cpu().numpy() - loc.per_image[image]

    def rerank(removed: np.ndarray) -> np.ndarray:
        own = attribution_from_tokens(col, tokens, labels, scores.to_units(removed))[0].cpu().numpy()
        edited = replace(loc, per_image={image: (own - reference_F).astype(np.float32)})
        unit = edited.image_unit_scores(image, scores.names)
        unit[removed] = -np.inf  # already gone
        return np.lexsort((np.arange(len(unit)), -unit))

    return rerank


def refine_targets(cfg: LocalizeConfig, setup: Setup, summary: dict[str, Any] | None,
                   world: World) -> dict[str, Any] | None:
    out = Path(cfg.out)
    path = out / REFINED_FILE
    if path.is_file():
        return summary
    assert setup.targets is not None
    loc = load_localization(out)
    rcfg = RefineConfig(max_units=cfg.refine_max_units)
    iar = setup.iar
    rows = []
    for t in setup.targets[world.rank::world.size]:
        with torch.no_grad():
            x, y = load_views(iar, setup.ds, np.array([t]), 0, cfg.seed)
            target = iar.tokenize(x)
        scores, order = image_ranking(loc, int(t), "per_image")
        rerank = gradient_rerank(setup, loc, int(t), scores) if loc.method == "gradient" else None
        r = refine(iar, int(t), target, y.to(iar.device), order, scores, rcfg, rerank)
        rows.append(r.as_dict() | {"units": scores.to_units(np.asarray(r.units, dtype=np.int64)),
                                   "count": len(r.units)})
    gathered = sorted((row for part in all_gather_object(rows, world) for row in part),  # type: ignore[union-attr]
                      key=lambda row: row["image"])
    if world.is_main:
        write_json(path, {"config": rcfg.__dict__, "kinds": ["fc1"], "images": gathered})
        done = [r for r in gathered if r["status"] == "refined"]
        account = {"targets": len(gathered), "refined": len(done),
                   "not_extracted": sum(r["status"] == "not extracted" for r in gathered),
                   "not_stopped": sum(r["status"] == "not stopped" for r in gathered),
                   "units_median": float(np.median([r["count"] for r in done])) if done else None}
        log(f"refined {account['refined']} of {account['targets']} targets (median "
            f"{account['units_median']} units; {account['not_extracted']} not extracted, "
            f"{account['not_stopped']} not stopped within {rcfg.max_units} units)")
        summary = (summary or json.loads((out / "summary.json").read_text())) | {"refined": account}
        write_json(out / "summary.json", summary)
    barrier(world)
    return summary
