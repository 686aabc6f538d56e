"""Leak against quality over a grid: top-p % edits x factors, their random and lowest-UnitMem
controls, and the logit-noise defense, each measured with the full extraction attack and FID.

  iarmem sweep runs/var mnist runs/var-localize --out runs/var-sweep
  iarmem sweep runs/var mnist runs/var-localize --tops 1,5,10 --factors 0.5,0 --noise 0.5,1,2 --out RUN

Writes points.json (one record per point, saved as it goes: --resume continues), table.csv,
table.md and pareto.png (extracted images against FID, the unedited model as the reference point).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from iarmem.attack import AttackSettings
from iarmem.data import open_dataset
from iarmem.errors import UserError
from iarmem.features import CNN_STEPS, parse_feature_spec, resolve_features
from iarmem.fileio import write_json
from iarmem.mitigate.localization import check_architecture, load_localization
from iarmem.mitigate.sweep import (
    PARETO_PNG,
    POINTS_FILE,
    TABLE_CSV,
    TABLE_MD,
    SweepContext,
    SweepGrid,
    grid_settings,
    run_sweep,
    summarize,
)
from iarmem.models import hub
from iarmem.models.loading import is_model_folder, open_model
from iarmem.plans import model_plan
from iarmem.progress import log
from iarmem.runs import start_run


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e


def _words(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="preset name (with --tokenizer/--weights) or a model folder")
    p.add_argument("data", help="'mnist', an image folder or a list file")
    p.add_argument("localization", help="run folder of `iarmem localize` for this model")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--tokenizer", help="official tokenizer file (with a preset)")
    p.add_argument("--weights", help="official model file (with a preset)")
    hub.add_arguments(p)
    p.add_argument("--tops", type=_floats, default=(1.0, 5.0, 10.0), help="top p %% of units (default 1,5,10)")
    p.add_argument("--factors", type=_floats, default=(0.5, 0.0), help="scale factors (default 0.5,0)")
    p.add_argument("--controls", type=_words, default=("random", "lowest"),
                   help="controls per edit: random,lowest (default both; '' for none)")
    p.add_argument("--noise", type=_floats, default=(0.5, 1.0, 2.0),
                   help="logit-noise std levels of the defense baseline (default 0.5,1,2; '' for none)")
    p.add_argument("--edits", type=_words, default=("exact",),
                   help="comma list of edits: exact (scale each unit's output; x0 removes it; default) and/or "
                        "paper (scale the weight row that writes it, bias kept)")
    p.add_argument("--scope", choices=("global", "layer"), default="global", help="top p %% over all or per layer")
    p.add_argument("--reduce", choices=("max", "mean"), help="per-bin UnitMem -> one score (default max)")
    p.add_argument("--n-per-class", type=int, default=20, help="samples per class for FID (default 20)")
    p.add_argument("--features", default="trained", help="feature extractor for FID (see `iarmem evaluate`)")
    p.add_argument("--features-cache", help="folder of the trained feature CNN (default OUT/features)")
    p.add_argument("--top", type=int, default=5, help="attack: candidates per class (default 5)")
    p.add_argument("--metric", help="attack decision metric (default as `iarmem extract`)")
    p.add_argument("--threshold", type=float, help="attack decision threshold")
    p.add_argument("--calibration-images", dest="calibration", type=int, default=200,
                   help="attack: never-trained images that calibrate the decision (as `iarmem extract`; default 200)")
    p.add_argument("--sscd", help="SSCD TorchScript file for the attack decision")
    p.add_argument("--seed", type=int, default=0, help="seed of controls, attack and samples")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out")
    p.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")


def run(args: argparse.Namespace) -> int:
    if args.n_per_class < 2:
        raise UserError(f"--n-per-class must be >= 2 (FID needs a covariance), got {args.n_per_class}")
    grid = SweepGrid(tuple(args.tops), tuple(args.factors), tuple(args.controls), tuple(args.noise), tuple(args.edits),
                     args.scope, args.reduce, args.seed).validate()
    attack = AttackSettings(top=args.top, metric=args.metric, threshold=args.threshold, sscd=args.sscd,
                            batch_size=args.batch_size, seed=args.seed, calibration=args.calibration).validate()
    parse_feature_spec(args.features)
    loc = load_localization(args.localization) if grid.tops else None
    iar, source = open_model(args.model, args.tokenizer, args.weights, args.device)
    if loc is not None:
        check_architecture(loc, iar, args.model)
    ds = open_dataset(args.data)
    if len(ds.labels) and int(ds.labels.max()) >= iar.num_classes:
        raise UserError(f"{ds.describe()} has labels up to {int(ds.labels.max())} but the model knows "
                        f"{iar.num_classes} classes; pass the dataset the model was trained on")
    plan = model_plan(args.model, ds) if is_model_folder(args.model) else None
    settings = {"model": str(args.model), "data": ds.describe(), "localization": str(Path(args.localization)),
                "grid": grid_settings(grid), "attack": attack.as_dict(), "n_per_class": args.n_per_class,
                "features": args.features}
    run_ = start_run(args.out, "sweep", settings,
                     {"model": args.model if Path(args.model).is_dir() else args.weights,
                      "localization": Path(args.localization) / "unitmem.safetensors",
                      "model_file": source.model_file, "tokenizer_file": source.tokenizer_file, "data": args.data},
                     seed=args.seed, overwrite=args.overwrite, resume=args.resume)
    if run_.done:
        log(f"{args.out}: sweep already finished")
        return 0
    cache = Path(args.features_cache) if args.features_cache else run_.file("features")
    features = resolve_features(args.features, ds, cache, min(iar.image_size, 64), args.seed, device=args.device,
                                steps=CNN_STEPS)
    ctx = SweepContext(iar, ds, plan, loc, features, attack, args.n_per_class, args.seed, args.batch_size)
    with torch.no_grad():
        rows = run_sweep(ctx, grid, run_.path, resume=args.resume)
    summary = summarize(rows) | {"model": source.as_dict(), "features": features.name}
    write_json(run_.file("summary.json"), summary)
    run_.finish([POINTS_FILE, TABLE_CSV, TABLE_MD, PARETO_PNG, "summary.json"], summary)
    print(run_.file(TABLE_MD).read_text(), end="")
    return 0
