"""Train a small tokenizer or IAR on the CPU, with planted images as known memorization.

  iarmem train tokenizer --preset tiny-var --data mnist --out runs/tok-var
  iarmem train var --preset tiny-var --tokenizer runs/tok-var --data mnist --plant 20 --copies 30 --out runs/var

The IAR run folder is a model folder (model.json, model.safetensors in the official key layout,
tokenizer.safetensors) plus manifest.json (planted / ordinary / held-out ids) and evidence.json
(teacher-forced accuracy and reconstruction PSNR per set). Kill it and rerun with --resume: it
continues from its last checkpoint and ends with the same weights.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, fields

import numpy as np
import torch

from iarmem.data import balanced_subset, make_plan, open_dataset
from iarmem.errors import UserError
from iarmem.models.registry import get_preset
from iarmem.progress import log
from iarmem.runs import start_run
from iarmem.train.iar import initial_model, train_iar
from iarmem.train.loop import TrainConfig
from iarmem.train.recipes import recipe
from iarmem.train.tokenizer import load_tokenizer_folder, train_tokenizer

TARGETS = ("tokenizer", "var", "rar", "llamagen")
_OVERRIDES = {"steps": int, "batch_size": int, "lr": float, "weight_decay": float, "warmup_steps": int,
              "grad_clip": float, "ema": float, "ckpt_every": int}


def _levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a count or a comma list of counts, got {text!r}") from e


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", choices=TARGETS, help="what to train: a tokenizer, or the IAR of a family")
    p.add_argument("--preset", required=True, help="architecture preset, e.g. tiny-var (`iarmem models`)")
    p.add_argument("--data", default="mnist", help="'mnist' (bundled 5k subset), an image folder or a list file")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--tokenizer", help="IAR training: the folder written by `iarmem train tokenizer`")
    p.add_argument("--num-images", type=int, help="tokenizer training: use a class-balanced subset of this size")
    p.add_argument("--num-train", type=int, default=1000, help="IAR: ordinary training images (default 1000)")
    p.add_argument("--plant", type=int, default=20, help="IAR: number of planted images (default 20)")
    p.add_argument("--copies", type=_levels, default=(30,),
                   help="IAR: copies of each planted image per epoch (default 30); a comma list (e.g. 1,2,4,8,16,32) "
                        "plants at graded duplication, the planted images dealt to the levels in equal shares")
    p.add_argument("--views", type=int, default=4,
                   help="IAR: token views per image: the eval crop plus views-1 training augmentations (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the plan, batch order and augmentations")
    for name, typ in _OVERRIDES.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, help=f"override the preset recipe's {name}")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")


def _config(args: argparse.Namespace, part: str) -> TrainConfig:
    cfg = recipe(args.preset, part)
    for f in fields(cfg):
        v = getattr(args, f.name, None)
        if v is not None and f.name in _OVERRIDES:
            setattr(cfg, f.name, v)
    cfg.seed = args.seed
    cfg.validate()
    return cfg


def run(args: argparse.Namespace) -> int:
    preset = get_preset(args.preset)
    if args.target != "tokenizer" and preset.family != args.target:
        raise UserError(f"preset {args.preset} is a {preset.family} model; use `iarmem train {preset.family}` or a "
                        f"{args.target} preset")
    if args.views < 1:
        raise UserError("--views must be >= 1")
    if args.num_images is not None and args.num_images < 1:
        raise UserError(f"--num-images must be >= 1, got {args.num_images}")
    _config(args, "tokenizer" if args.target == "tokenizer" else "iar")  # options out of range fail first
    torch.set_grad_enabled(True)
    ds = open_dataset(args.data, num_classes=None)
    iar = initial_model(args.preset, args.seed, args.device)  # initial weights a function of --seed, like the rest
    if ds.labels.max() >= iar.num_classes:
        raise UserError(f"the dataset has {int(ds.labels.max()) + 1} classes but preset {args.preset} has "
                        f"{iar.num_classes}; use a preset with enough classes")
    if args.target == "tokenizer":
        cfg = _config(args, "tokenizer")
        ids = (np.arange(len(ds)) if args.num_images is None
               else balanced_subset(ds.labels, per_class=max(1, args.num_images // len(ds.classes)), seed=args.seed))
        settings = {"target": "tokenizer", "preset": args.preset, "data": ds.describe(), "images": int(len(ids)),
                    "train": asdict(cfg)}
        run_ = start_run(args.out, "train", settings, {"data": args.data}, seed=args.seed, overwrite=args.overwrite,
                         resume=args.resume)
        if run_.done:
            log(f"{args.out}: already trained")
            return 0
        summary = train_tokenizer(iar, ds, ids, cfg, run_.path, args.preset)
        log(f"tokenizer: reconstruction PSNR {summary['psnr_db']:.2f} dB on the eval crop")
        run_.finish(["tokenizer.safetensors", "tokenizer.json", "train_log.csv"], summary)
        return 0

    if not args.tokenizer:
        raise UserError("IAR training needs --tokenizer FOLDER (train one with `iarmem train tokenizer`)")
    cfg = _config(args, "iar")
    tok_file = load_tokenizer_folder(args.tokenizer, iar)  # a bad tokenizer fails before the run folder is made
    copies = args.copies[0] if len(args.copies) == 1 else list(args.copies)
    plan = make_plan(ds.labels, num_train=args.num_train, plant=args.plant, copies=copies, seed=args.seed,
                     dataset=ds.describe())
    settings = {"target": args.target, "preset": args.preset, "data": ds.describe(), "num_train": args.num_train,
                "plant": args.plant, "copies": copies, "views": args.views, "train": asdict(cfg)}
    run_ = start_run(args.out, "train", settings, inputs={"tokenizer": args.tokenizer, "tokenizer_file": tok_file,
                                                        "data": args.data}, seed=args.seed,
                     overwrite=args.overwrite, resume=args.resume)
    if run_.done:
        log(f"{args.out}: already trained")
        return 0
    result = train_iar(iar, ds, plan, cfg, run_.path, views=args.views, preset=args.preset)
    ev = result["evidence"]
    log(f"teacher-forced top-1 ({ev['scored']}): planted {ev['planted']['top1']:.3f}, "
        f"ordinary {ev['ordinary']['top1']:.3f}, held-out {ev['heldout']['top1']:.3f}")
    run_.finish(["model.safetensors", "tokenizer.safetensors", "model.json", "manifest.json", "evidence.json",
                 "train_log.csv"], {"evidence": ev})
    return 0
