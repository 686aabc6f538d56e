"""Ground truth for localizers: inject held-out images into known units and score who finds them.

  iarmem bench runs/var mnist --out runs/var-bench                 # INJ (r = 0.5, 1, 2 %, 3 images) and DEL
  iarmem bench runs/var mnist --stages inj --rates 1 --images 1 --stats mean --out RUN    # one injection

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
against as many random units of the same layers (--controls draws).

Writes inj/*.json (one per injection; --resume continues), del.json, summary.json and table.md.
MODEL must be a folder of `iarmem train` (its manifest names the planted and held-out images).
See docs/BENCH.md.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from iarmem.bench.deletion import BUDGETS, DelSettings, summarize_deletion
from iarmem.bench.inject import InjectConfig
from iarmem.bench.run import STATS, InjSettings, Source, del_table, inj_table, run_del, run_inj, summarize_inj
from iarmem.data import open_dataset
from iarmem.errors import UserError
from iarmem.fileio import write_json, write_text
from iarmem.models.loading import is_model_folder, open_model
from iarmem.plans import model_plan
from iarmem.progress import log
from iarmem.runs import start_run

SUMMARY, TABLE = "summary.json", "table.md"


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model folder written by `iarmem train` (with its manifest)")
    p.add_argument("data", help="the dataset it was trained on ('mnist', an image folder or a list file)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--stages", default="inj,del", help="comma list of stages: inj, del (default both)")
    p.add_argument("--rates", type=_floats, default=(0.5, 1.0, 2.0),
                   help="percent of the fc1 units of every block to inject through (default 0.5,1,2)")
    p.add_argument("--images", type=int, default=3, help="held-out images injected per rate (default 3)")
    p.add_argument("--stats", default="mean,median", help="UnitMem statistics to score (default mean,median)")
    p.add_argument("--steps", type=int, default=InjectConfig.steps,
                   help=f"most fine-tuning steps per injection (default {InjectConfig.steps})")
    p.add_argument("--lr", type=float, default=InjectConfig.lr, help=f"injection learning rate (default "
                   f"{InjectConfig.lr:g})")
    p.add_argument("--budgets", type=_floats, default=BUDGETS,
                   help="DEL: percent of all fc1 units removed per image (default 0.1,0.5,1,2,5)")
    p.add_argument("--controls", type=int, default=5, help="DEL: random same-layer draws per budget (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the targets, units and batches (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="localization batch size (default 8)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted bench in --out")
    p.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")


def _settings(args: argparse.Namespace) -> InjSettings:
    stats = tuple(x.strip() for x in args.stats.split(",") if x.strip())
    bad = [x for x in stats if x not in STATS]
    if bad or not stats:
        raise UserError(f"--stats {args.stats!r}: choose from {', '.join(STATS)}")
    if not args.rates or any(not 0 < r <= 50 for r in args.rates):
        raise UserError(f"--rates must be percentages in (0, 50], got {','.join(f'{r:g}' for r in args.rates)}")
    if args.images < 1:
        raise UserError(f"--images must be >= 1, got {args.images}")
    if args.steps < 1 or not args.lr > 0:
        raise UserError("--steps must be >= 1 and --lr > 0")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    return InjSettings(tuple(args.rates), args.images, stats,
                       replace(InjectConfig(), steps=args.steps, lr=args.lr, seed=args.seed), args.batch_size)


def _stages(args: argparse.Namespace) -> tuple[str, ...]:
    stages = tuple(x.strip() for x in args.stages.split(",") if x.strip())
    if not stages or any(x not in ("inj", "del") for x in stages):
        raise UserError(f"--stages {args.stages!r}: choose from inj, del (comma list)")
    if "del" in stages and (not args.budgets or any(not 0 < b <= 100 for b in args.budgets) or args.controls < 1):
        raise UserError("--budgets must be percentages in (0, 100] and --controls >= 1")
    return stages


def run(args: argparse.Namespace) -> int:
    s = _settings(args)
    stages = _stages(args)
    d = DelSettings(tuple(args.budgets), args.controls)
    if not is_model_folder(args.model):
        raise UserError(f"{args.model} is not a model folder; the bench needs one written by `iarmem train` "
                        f"(its manifest names the held-out images to inject)")
    iar, source = open_model(args.model)
    ds = open_dataset(args.data)
    plan = model_plan(args.model, ds)
    if plan is None or len(plan.heldout_ids) == 0:
        raise UserError(f"{args.model} records no held-out images to inject; train it with `iarmem train` "
                        f"(it holds some out by default)")
    settings = {"model": str(args.model), "data": ds.describe(), "stages": list(stages), "rates": list(s.rates),
                "images": s.images, "stats": list(s.stats), "inject": s.inject.__dict__, "batch_size": s.batch_size,
                "del": d.__dict__}
    run_ = start_run(args.out, "bench", settings, {"model_file": source.model_file, "data": args.data},
                     seed=args.seed, overwrite=args.overwrite, resume=args.resume)
    if run_.done:
        log(f"{args.out}: bench already finished")
        return 0
    src = Source(Path(args.model), Path(source.tokenizer_file), args.data, ds, plan)
    summary: dict = {"model": source.as_dict()}
    table = []
    if "inj" in stages:
        summary |= summarize_inj(run_inj(iar, src, s, run_.path, args.seed), s, args.seed)
        table += ["## INJ: recall of the injected units\n", inj_table(summary)]
    if "del" in stages:
        result = run_del(iar, src, d, run_.path, args.seed, args.batch_size)
        summary["del"] = {"memorized": len(result["reference"]["memorized"]),
                          "candidates": result["reference"]["candidates"],
                          "rows": summarize_deletion(result, d.budgets, args.seed)}
        table += [f"\n## DEL: {summary['del']['memorized']} memorized of {summary['del']['candidates']} planted\n",
                  del_table(summary["del"]["rows"])]
    write_json(run_.file(SUMMARY), summary)
    write_text(run_.file(TABLE), "\n".join(table))
    run_.finish([SUMMARY, TABLE] + (["del.json"] if "del" in stages else []), summary)
    print(run_.file(TABLE).read_text(), end="")
    return 0
