"""Ground truth for localizers: inject held-out images into known units and score who finds them.

  iarmem bench runs/var mnist --out runs/var-bench                 # INJ, DEL, PAPER and DUP (defaults: docs/BENCH.md)
  iarmem bench runs/var mnist --stages inj --rates 1 --images 1 --stats mean --out RUN    # one injection
  iarmem bench runs/var mnist --quick --out RUN                     # every stage, a few minutes (tests)

Unit-level injection (INJ, after Chang et al. 2024): for each rate r and held-out image (never
trained on), a copy of MODEL learns the image through a random r % of the fc1 units of every
block and nothing else (ordinary training images in every batch keep the rest), until the greedy
attack from the default prefix reproduces it. Those units are the ground truth; the run checks it
(removing them must remove the copy, removing as many random units must not). UnitMem is then
computed on the injected model (training set + the image) and scored by recall of the injected
units in its top k % (k = r, 2r), per-image (units the image owns) and global (the paper's
ranking), against chance (k %).

Causal deletion (DEL): UnitMem of MODEL itself (OUT/localize); for every planted image the greedy
attack reproduces, the units UnitMem names for it (those it owns, by UnitMem) are removed at
budgets of --budgets % of all fc1 units (exact zero), and the attack runs again: is the image
still reproduced (self), are the other memorized ones (neg), how far does the held-out loss move;
against as many random units of the same layers (--controls draws); FID and class accuracy for the
first --quality-images images' edits.

The per-image localizers (--methods, default zscore,gradient,mask,gradient+refine) are scored the
same way beside UnitMem: in INJ each injected image is their only target, in DEL the planted images
are (OUT/localize-METHOD, del-METHOD.json).

The paper's setting (PAPER): UnitMem's global top --tops % units x 0.5 (the paper's edit), against
the lowest-UnitMem units and --controls random draws, each with the whole attack and FID.

The duplication curve (DUP): a model of MODEL's preset and tokenizer trained on a graded plan
(--dup-levels copies, --dup-per-level images each, among --dup-ordinary ordinary images), cached in
--cache, and its memorization per duplication level (reproduced share, top-1, membership AUC).

Writes inj/*.json (one per injection; --resume continues), del.json, paper.json, dup.json,
summary.json, table.md and bench.png.
MODEL must be a folder of `iarmem train` (its manifest names the planted and held-out images).
See docs/BENCH.md.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from iarmem.attack import AttackSettings
from iarmem.bench.deletion import BUDGETS, DelSettings, summarize_deletion
from iarmem.bench.duplication import LEVELS, DupSettings, dup_table, run_dup
from iarmem.bench.figure import bench_figure
from iarmem.bench.inject import InjectConfig
from iarmem.bench.paper import TOPS, paper_table, run_paper, summarize_paper
from iarmem.bench.run import (
    BASES,
    METHODS,
    REFINE,
    STATS,
    InjSettings,
    Source,
    del_table,
    inj_table,
    localize_model,
    run_del,
    run_inj,
    summarize_inj,
)
from iarmem.data import open_dataset
from iarmem.errors import UserError
from iarmem.features import CNN_STEPS, parse_feature_spec, resolve_features
from iarmem.fileio import write_json, write_text
from iarmem.metrics.quality import evaluate_model
from iarmem.mitigate.sweep import SweepContext
from iarmem.models.loading import is_model_folder, open_model
from iarmem.plans import model_plan
from iarmem.progress import log
from iarmem.runs import start_run

SUMMARY, TABLE, FIGURE = "summary.json", "table.md", "bench.png"
STAGES = ("inj", "del", "paper", "dup")
# --quick: every stage at the smallest size that still runs it whole (a test, a first look)
QUICK = {"rates": (5.0,), "steps": 200, "images": 1, "stats": "mean", "methods": "gradient", "budgets": (1.0,),
         "controls": 1, "draws": 1,
         "tops": (5.0,), "quality_images": 1, "n_per_class": 3, "dup_levels": (1, 8), "dup_per_level": 2,
         "dup_ordinary": 40, "dup_steps": 8}


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts, got {text!r}") from e


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model folder written by `iarmem train` (with its manifest)")
    p.add_argument("data", help="the dataset it was trained on ('mnist', an image folder or a list file)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma list of stages: {', '.join(STAGES)} (default all)")
    p.add_argument("--quick", action="store_true",
                   help="every stage at its smallest size (r = 5 %%, 1 image, 1 budget, 1 draw, an 8-step model)")
    p.add_argument("--rates", type=_floats, default=(0.5, 1.0, 2.0),
                   help="INJ: percent of the fc1 units of every block to inject through (default 0.5,1,2)")
    p.add_argument("--images", type=int, default=2, help="INJ: held-out images injected per rate (default 2)")
    p.add_argument("--stats", default="mean,median",
                   help="UnitMem statistics to score in INJ (default mean,median; none: UnitMem left out of INJ "
                        "and DEL)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"per-image localizers scored beside UnitMem in INJ and DEL (default {','.join(METHODS)}; "
                        f"none: UnitMem alone)")
    p.add_argument("--steps", type=int, default=InjectConfig.steps,
                   help=f"INJ: most fine-tuning steps per injection (default {InjectConfig.steps})")
    p.add_argument("--lr", type=float, default=InjectConfig.lr, help=f"INJ: learning rate (default "
                   f"{InjectConfig.lr:g})")
    p.add_argument("--budgets", type=_floats, default=BUDGETS,
                   help="DEL: percent of all fc1 units removed per image (default 0.1,0.5,1,2,5)")
    p.add_argument("--controls", type=int, default=5,
                   help="DEL: random same-count, same-layer draws per (image, budget) (default 5)")
    p.add_argument("--draws", type=int, default=3, help="PAPER: random same-count draws per p (default 3)")
    p.add_argument("--quality-images", type=int, default=DelSettings.quality_images,
                   help=f"DEL: images whose edits get FID and class accuracy (default {DelSettings.quality_images})")
    p.add_argument("--tops", type=_floats, default=TOPS, help="PAPER: global top p %% of units x 0.5 (default 1,10)")
    p.add_argument("--n-per-class", type=int, default=20, help="DEL and PAPER: samples per class for FID (default 20)")
    p.add_argument("--features", default="trained", help="feature extractor for FID (see `iarmem evaluate`)")
    p.add_argument("--features-cache", help="folder of the trained feature CNN (default OUT/features)")
    p.add_argument("--dup-levels", type=_ints, default=LEVELS,
                   help="DUP: copies per epoch of the planted images, one level each (default 1,2,4,8,16,32)")
    p.add_argument("--dup-per-level", type=int, default=DupSettings.per_level,
                   help=f"DUP: planted images per level (default {DupSettings.per_level})")
    p.add_argument("--dup-ordinary", type=int, default=DupSettings.ordinary,
                   help=f"DUP: ordinary training images (default {DupSettings.ordinary})")
    p.add_argument("--dup-steps", type=int, help="DUP: training steps (default twice the preset's recipe)")
    p.add_argument("--cache", help="folder of the models the bench trains, reused across runs (default OUT/models)")
    p.add_argument("--seed", type=int, default=0, help="seed of the targets, units, batches and models (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="localization batch size (default 8)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the same stages on a GPU for larger models)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted bench in --out")
    p.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")


def _apply_quick(args: argparse.Namespace) -> None:
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)


def _settings(args: argparse.Namespace) -> InjSettings:
    stats = tuple(x.strip() for x in args.stats.split(",") if x.strip() and x.strip() != "none")
    bad = [x for x in stats if x not in STATS]
    if bad:
        raise UserError(f"--stats {args.stats!r}: choose from {', '.join(STATS)} (or none)")
    methods = tuple(x.strip() for x in args.methods.split(",") if x.strip() and x.strip() != "none")
    bad = [x for x in methods if x.removesuffix(REFINE) not in BASES]
    if bad:
        raise UserError(f"--methods {args.methods!r}: choose from {', '.join(BASES)}, each optionally with "
                        f"{REFINE} (or none)")
    if not stats and not methods:
        raise UserError("--stats none and --methods none leave no localizer to score; name at least one")
    if not args.rates or any(not 0 < r <= 50 for r in args.rates):
        raise UserError(f"--rates must be percentages in (0, 50], got {','.join(f'{r:g}' for r in args.rates)}")
    if args.images < 1:
        raise UserError(f"--images must be >= 1, got {args.images}")
    if args.steps < 1 or not args.lr > 0:
        raise UserError("--steps must be >= 1 and --lr > 0")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    return InjSettings(tuple(args.rates), args.images, stats,
                       replace(InjectConfig(), steps=args.steps, lr=args.lr, seed=args.seed), args.batch_size, methods)


def _stages(args: argparse.Namespace) -> tuple[str, ...]:
    stages = tuple(x.strip() for x in args.stages.split(",") if x.strip())
    if not stages or any(x not in STAGES for x in stages):
        raise UserError(f"--stages {args.stages!r}: choose from {', '.join(STAGES)} (comma list)")
    if "del" in stages and (not args.budgets or any(not 0 < b <= 100 for b in args.budgets) or args.controls < 1
                            or args.quality_images < 0):
        raise UserError("--budgets must be percentages in (0, 100], --controls >= 1 and --quality-images >= 0")
    if "paper" in stages and (not args.tops or any(not 0 < t <= 100 for t in args.tops) or args.draws < 1):
        raise UserError("--tops must be percentages in (0, 100] and --draws >= 1")
    if ("del" in stages or "paper" in stages) and args.n_per_class < 2:
        raise UserError(f"--n-per-class must be >= 2 (FID needs a covariance), got {args.n_per_class}")
    if "del" in stages or "paper" in stages:
        parse_feature_spec(args.features)
    return stages


def _dup_settings(args: argparse.Namespace, views: int, num_images: int) -> DupSettings:
    s = DupSettings(tuple(args.dup_levels), args.dup_per_level, args.dup_ordinary, args.dup_steps, views)
    s.validate(num_images)
    return s


def run(args: argparse.Namespace) -> int:
    _apply_quick(args)
    s = _settings(args)
    stages = _stages(args)
    d = DelSettings(tuple(args.budgets), args.controls, quality_images=args.quality_images)
    if not is_model_folder(args.model):
        raise UserError(f"{args.model} is not a model folder; the bench needs one written by `iarmem train` "
                        f"(its manifest names the held-out images to inject)")
    iar, source = open_model(args.model, device=args.device)
    ds = open_dataset(args.data)
    plan = model_plan(args.model, ds)
    if plan is None or len(plan.heldout_ids) == 0:
        raise UserError(f"{args.model} records no held-out images to inject; train it with `iarmem train` "
                        f"(it holds some out by default)")
    info = json.loads((Path(args.model) / "model.json").read_text())
    views = int((info.get("training_views") or {}).get("views", 1))
    dup = _dup_settings(args, views, len(ds)) if "dup" in stages else None
    if dup is not None and not info.get("preset"):
        raise UserError(f"{args.model} names no preset in model.json; DUP trains a model of MODEL's preset")
    settings = {"model": str(args.model), "data": ds.describe(), "stages": list(stages), "rates": list(s.rates),
                "images": s.images, "stats": list(s.stats), "methods": list(s.methods), "inject": s.inject.__dict__,
                "batch_size": s.batch_size,
                "del": d.__dict__, "tops": list(args.tops), "draws": args.draws, "n_per_class": args.n_per_class,
                "features": args.features, "dup": None if dup is None else dup.__dict__}
    run_ = start_run(args.out, "bench", settings, {"model_file": source.model_file, "data": args.data},
                     seed=args.seed, overwrite=args.overwrite, resume=args.resume)
    if run_.done:
        log(f"{args.out}: bench already finished")
        return 0
    src = Source(Path(args.model), Path(source.tokenizer_file), args.data, ds, plan, args.device)
    summary: dict = {"model": source.as_dict(), "stages": list(stages)}
    table = []
    clock = StageClock()
    if "inj" in stages:
        summary |= summarize_inj(run_inj(iar, src, s, run_.path, args.seed), s, args.seed)
        table += ["## INJ: recall of the injected units\n", inj_table(summary)]
        clock.done("inj")
    ctx = None
    if "del" in stages or "paper" in stages:
        cache = Path(args.features_cache) if args.features_cache else run_.file("features")
        features = resolve_features(args.features, ds, cache, min(iar.image_size, 64), args.seed,
                                    device=args.device, steps=CNN_STEPS)
        ctx = SweepContext(iar, ds, plan, None, features, AttackSettings(seed=args.seed, membership=False),
                           args.n_per_class, args.seed)
    if "del" in stages:
        assert ctx is not None
        ctx.prepare()
        quality = _quality(ctx)
        for method in (("unitmem",) if s.stats else ()) + s.methods:
            result = run_del(iar, src, d, run_.path, args.seed, args.batch_size, quality, method)
            block = {"method": method, "memorized": len(result["reference"]["memorized"]),
                     "candidates": result["reference"]["candidates"],
                     "unedited": {k: result["reference"].get(k) for k in ("fid", "class_accuracy")},
                     "rows": summarize_deletion(result, d.budgets, args.seed)}
            if method == "unitmem":
                summary["del"] = block
            else:
                summary.setdefault("del_methods", {})[method] = block
            table += [f"\n## DEL ({method}): {block['memorized']} memorized of {block['candidates']} planted\n",
                      del_table(block["rows"], "UnitMem" if method == "unitmem" else method)]
        clock.done("del")
    if "paper" in stages:
        assert ctx is not None
        ctx.loc = localize_model(src, run_.path, args.seed, args.batch_size)
        with torch.no_grad():
            rows = run_paper(ctx, tuple(args.tops), args.draws, run_.path, args.seed)
        summary["paper"] = summarize_paper(rows, args.seed)
        clock.done("paper")
        table += ["\n## PAPER: UnitMem global top p % x 0.5 against its controls\n", paper_table(summary["paper"])]
    if dup is not None:
        cache = Path(args.cache) if args.cache else run_.file("models")
        result = run_dup(iar, info["preset"], ds, args.data, dup, run_.path, cache, args.seed)
        summary["dup"] = {k: v for k, v in result.items() if k != "records"}
        clock.done("dup")
        table += [f"\n## DUP: memorization against duplication ({100 * result['planted_share']:.1f} % of samples "
                  f"planted)\n", dup_table(result["rows"])]
    summary["seconds"] = clock.seconds  # wall time of each stage in this call (a resumed stage: what was left)
    write_json(run_.file(SUMMARY), summary)
    write_text(run_.file(TABLE), "\n".join(table))
    bench_figure(summary, run_.file(FIGURE))
    written = [SUMMARY, TABLE, FIGURE] + [f for st, f in (("del", "del.json"), ("paper", "paper.json"),
                                                           ("dup", "dup.json")) if st in stages]
    written += [f"del-{m}.json" for m in s.methods if "del" in stages]
    run_.finish(written, summary)
    print(run_.file(TABLE).read_text(), end="")
    return 0


class StageClock:
    """Wall seconds per stage, each from the end of the one before (features and localization included)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def done(self, stage: str) -> None:
        now = time.monotonic()
        self.seconds[stage] = round(now - self._last, 1)
        self._last = now


def _quality(ctx: SweepContext) -> Callable[[], dict[str, Any]]:
    """FID and class accuracy of ``ctx.iar`` as it is, on the run's reference features."""
    def measure() -> dict[str, Any]:
        with torch.no_grad():
            return evaluate_model(ctx.iar, None, ctx.features, ctx.n_per_class, ctx.seed, reference=ctx.reference,
                                  batch_size=32, show_progress=False)
    return measure
