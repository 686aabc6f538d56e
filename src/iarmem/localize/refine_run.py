"""``--refine``: after any localizer's run, each target's ranking refined into units the attack checked.

Reads the finished run back (so UnitMem and the per-image methods are refined the same way), ranks
each target's units with the per-image reading, and runs ``refine.refine`` on the target's
evaluation view, the prompt the attack uses. Targets are sharded over the ranks; rank 0 writes
refined.json and adds a short account to summary.json. An existing refined.json is kept (resume).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from iarmem.distributed import World, all_gather_object, barrier
from iarmem.fileio import write_json
from iarmem.localize.refine import RefineConfig, refine
from iarmem.mitigate.forget import image_ranking
from iarmem.mitigate.localization import REFINED_FILE, load_localization
from iarmem.progress import log
from iarmem.tokens import load_views

if TYPE_CHECKING:
    from iarmem.localize.run import LocalizeConfig, Setup


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
        r = refine(iar, int(t), target, y.to(iar.device), order, scores, rcfg)
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
