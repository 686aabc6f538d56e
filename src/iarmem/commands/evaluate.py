"""Image quality of a model: FID, KID and precision / recall of its samples against real images.

  iarmem evaluate runs/var mnist --out runs/eval-var
  iarmem evaluate runs/var-edited mnist --out runs/eval-edited --features-cache runs/featcnn
  iarmem evaluate var-d16 /data/imagenet/train --tokenizer vae_ch160v4096z32.pth --weights var_d16.pth \\
      --features torchscript:inception-fid.pt --ref-per-class 10 --out runs/eval-d16 --device cuda

Draws --n-per-class samples of every class of DATA with the family's published sampling settings
(override with --cfg, --top-k, --top-p, --temperature), embeds them and a class-balanced set of real
images (the family's eval crop) with the feature network, and writes metrics.json, samples.npz
(arr_0: uint8 [N, H, W, 3], as ADM's evaluator reads it) and samples.png (one row per class).
By default the features come from a small CNN iarmem trains on DATA (cached in --features-cache,
so evaluations of edited models share it); its FID is comparable between runs on the same data,
not with published ImageNet numbers (docs/QUALITY.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iarmem.data import open_dataset
from iarmem.errors import UserError
from iarmem.features import CNN_STEPS, FeatureExtractor, parse_feature_spec, resolve_features, sidecar
from iarmem.fileio import write_json
from iarmem.metrics import default_sampling, evaluate_model, reference_features, reference_ids
from iarmem.models import hub
from iarmem.models.loading import is_model_folder, open_model
from iarmem.plans import SUBSETS, model_plan, select_ids
from iarmem.progress import log
from iarmem.runs import start_run

OUTPUTS = ["metrics.json", "samples.npz", "samples.png"]


def _cfg(text: str) -> float | str:
    if text.lower() in ("none", "off"):
        return "none"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cfg takes a number or 'none', got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model folder (iarmem train / mitigate) or a preset with --tokenizer/--weights")
    p.add_argument("data", help="'mnist' (bundled), an image folder or a list file: the real images to compare with")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--tokenizer", help="official tokenizer checkpoint (presets), or override a folder's")
    p.add_argument("--weights", help="official transformer checkpoint (presets), or override a folder's")
    hub.add_arguments(p)
    p.add_argument("--n-per-class", type=int, default=50,
                   help="samples per class (default 50: ~1 min for a tiny model on MNIST; 50 x 1000 is the "
                        "ImageNet protocol)")
    p.add_argument("--ref-per-class", type=int,
                   help="real images per class (default: as many as --n-per-class; 0 = every image of --subset)")
    p.add_argument("--subset", default="all", choices=SUBSETS,
                   help="which real images form the reference (default all; the others need a trained model folder)")
    p.add_argument("--features", default="trained",
                   help="feature network: trained (default: a CNN trained on DATA), trained:PATH, "
                        "torchscript:PATH[:SIZE] (e.g. an exported Inception), sscd:PATH")
    p.add_argument("--features-cache", help="folder for the trained CNN, shared between runs (default OUT/features)")
    p.add_argument("--features-size", type=int, help="input side of the trained CNN (default: model side, max 64)")
    p.add_argument("--features-steps", type=int, default=CNN_STEPS,
                   help=f"training steps of the CNN (default {CNN_STEPS})")
    p.add_argument("--cfg", type=_cfg, help="guidance scale, or 'none' for conditional logits only "
                   "(default: the family's published value, docs/QUALITY.md)")
    p.add_argument("--cfg-power", type=float, help="RAR: exponent of the cosine guidance schedule")
    p.add_argument("--top-k", type=int, help="keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, help="nucleus mass (0 or 1 = off)")
    p.add_argument("--temperature", type=float, help="sampling temperature")
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    p.add_argument("--kid-subset-size", type=int, default=1000, help="features per KID subset (default 1000)")
    p.add_argument("--k", type=int, default=3, help="neighbours of the precision / recall manifolds (default 3)")
    p.add_argument("--grid-per-class", type=int, default=10, help="samples per class row of samples.png")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples, the reference images and the CNN")
    p.add_argument("--batch-size", type=int, default=64, help="images per generation batch (part of the seed)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")


def _check(args: argparse.Namespace) -> None:
    checks = [
        (args.n_per_class >= 2, f"--n-per-class must be >= 2 (FID needs a covariance), got {args.n_per_class}"),
        (args.ref_per_class is None or args.ref_per_class >= 0, "--ref-per-class must be >= 0"),
        (args.batch_size >= 1, "--batch-size must be >= 1"),
        (args.kid_subsets >= 1 and args.kid_subset_size >= 2, "--kid-subsets must be >= 1, --kid-subset-size >= 2"),
        (args.k >= 1, "--k must be >= 1"),
        (args.grid_per_class >= 1, "--grid-per-class must be >= 1"),
        (args.features_steps >= 1, "--features-steps must be >= 1"),
        (args.features_size is None or args.features_size >= 8, "--features-size must be >= 8"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)


def run(args: argparse.Namespace) -> int:
    _check(args)
    parse_feature_spec(args.features)  # a typo or a missing file fails before anything is loaded or written
    t0 = time.monotonic()
    iar, source = open_model(args.model, args.tokenizer, args.weights, args.device)
    ds = open_dataset(args.data)
    plan = model_plan(args.model, ds) if is_model_folder(args.model) else None
    pool = select_ids(ds, plan, args.subset)
    classes = sorted(int(c) for c in np.unique(ds.labels[pool]))  # sample the classes the reference holds
    if not classes:
        raise UserError(f"no real images in subset {args.subset!r} of {ds.describe()}")
    if classes[-1] >= iar.num_classes:
        raise UserError(f"{ds.describe()} has labels up to {classes[-1]} but the model knows {iar.num_classes} "
                        f"classes; pass data of the model's classes")
    sampling = default_sampling(iar).override(
        cfg=args.cfg if isinstance(args.cfg, float) else None, no_cfg=args.cfg == "none",
        cfg_power=args.cfg_power, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature)
    ref_per_class = args.n_per_class if args.ref_per_class is None else args.ref_per_class
    features_size = args.features_size or min(iar.image_size, 64)
    settings = {
        "model": str(args.model), "data": ds.describe(), "n_per_class": args.n_per_class,
        "ref_per_class": ref_per_class, "subset": args.subset, "features": args.features,
        "features_size": features_size, "features_steps": args.features_steps, "sampling": sampling.as_dict(),
        "seed": args.seed, "batch_size": args.batch_size, "kid_subsets": args.kid_subsets,
        "kid_subset_size": args.kid_subset_size, "k": args.k, "grid_per_class": args.grid_per_class,
    }
    inputs = {"model": args.model if Path(args.model).is_dir() else None, "tokenizer": args.tokenizer,
              "weights": args.weights, "model_file": source.model_file, "tokenizer_file": source.tokenizer_file,
              "data": args.data}
    run_ = start_run(args.out, "evaluate", settings, inputs, seed=args.seed, overwrite=args.overwrite,
                     resume=args.resume)
    if run_.done:
        log(f"{args.out}: already evaluated")
        return 0

    t_features = time.monotonic()
    cache = Path(args.features_cache) if args.features_cache else run_.file("features")
    features = resolve_features(args.features, ds, cache, features_size, args.seed, device=args.device,
                                steps=args.features_steps)
    ref_ids = reference_ids(ds, ref_per_class or None, args.seed, pool)
    log(f"evaluate: {len(classes)} classes x {args.n_per_class} samples against {len(ref_ids)} real images, "
        f"features {features.name} ({features.dim}-d), sampling: {sampling.source}")
    t_ref = time.monotonic()
    with torch.no_grad():
        reference = reference_features(ds, features, family=iar.family, image_size=iar.image_size, ids=ref_ids,
                                       seed=args.seed, batch_size=args.batch_size)
        ref_s = time.monotonic() - t_ref
        result = evaluate_model(iar, ds, features, args.n_per_class, args.seed, reference=reference,
                                settings=sampling, batch_size=args.batch_size, classes=classes,
                                npz_path=run_.file("samples.npz"), grid_path=run_.file("samples.png"),
                                grid_per_class=args.grid_per_class, kid_subsets=args.kid_subsets,
                                kid_subset_size=args.kid_subset_size, k=args.k)
    result["features"] = {**features.describe(), "spec": args.features, **_cnn_record(features)}
    result["model"] = source.as_dict()
    result["data"] = ds.describe()
    result["reference"] = {"subset": args.subset, "per_class": ref_per_class or "all", "images": len(ref_ids),
                           "seed": args.seed, "view": f"{iar.family} eval crop at {iar.image_size} px"}
    result["seeds"] = {"samples": args.seed, "reference": args.seed, "kid": args.seed,
                       "features_cnn": args.seed if args.features == "trained" else None}
    result["timing_s"].update(features=round(t_ref - t_features, 3), reference=round(ref_s, 3),
                              total=round(time.monotonic() - t0, 3))
    write_json(run_.file("metrics.json"), result)
    summary = {k: result[k] for k in ("fid", "kid_mean", "kid_std", "precision", "recall", "class_accuracy")}
    run_.finish(OUTPUTS, summary)
    acc = "" if result["class_accuracy"] is None else f"  class acc {result['class_accuracy']:.3f}"
    print(f"FID {result['fid']:.3f}  KID {result['kid_mean']:.5f} +- {result['kid_std']:.5f}  "
          f"precision {result['precision']:.3f}  recall {result['recall']:.3f}{acc}  "
          f"({result['n_samples']} samples, {features.name})")
    for note in result["notes"]:
        log(f"note: {note}")
    return 0


def _cnn_record(features: FeatureExtractor) -> dict[str, Any]:
    """The trained CNN's JSON record (held-out accuracy, dataset) when the features come from one."""
    path = features.path
    if not features.name.startswith("iarmem-cnn:") or path is None or not sidecar(path).is_file():
        return {}
    try:
        rec = json.loads(sidecar(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {"heldout_accuracy": rec.get("heldout_accuracy"), "trained_on": rec.get("dataset")}
