"""Extraction attack (Kowalczuk et al. 2025): how many training images the model reproduces.

  iarmem extract runs/var mnist --out runs/extract-var
  iarmem extract var-d16 imagenet/train --tokenizer vae_ch160v4096z32.pth --weights var_d16.pth
      --fraction 0.01 --sscd sscd_disc_mixup.torchscript.pt --device cuda --out runs/extract-d16

Scores every image of --subset with one teacher-forced pass, takes the top --top per class,
prompts the model with each candidate's label and ground-truth prefix, decodes greedily and
compares the generation with the tokenizer's reconstruction of the image and with every other
scored image. A generation extracts its prompt image when it is close to it (above the threshold)
and closer to it than to any other training or held-out image by the margin; a generation closer to
another image by the margin extracts that image. Held-out images of a planted model are generated
too, with --calibration-images never-trained images from outside the plan: those calibrate threshold
and margin (at --fpr), and the held-out images count the false positives out of sample. The same pass
gives membership-inference scores (loss and guidance difference) with AUC against the held-out
images. Writes candidates.csv (one row per scored image), scores.csv, summary.json and
extracted.png. Runs sharded under `torchrun --nproc_per_node N -m iarmem extract ...`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from iarmem.attack import AttackSettings, load_extractors, run_attack
from iarmem.attack.decide import METRICS
from iarmem.attack.outputs import OUTPUTS, STRONG_FILE
from iarmem.attack.pipeline import check_model, from_main, image_pool
from iarmem.attack.select import SCORES
from iarmem.attack.settings import STRENGTHS
from iarmem.data import open_dataset
from iarmem.distributed import barrier, close, init_world
from iarmem.models import hub
from iarmem.models.loading import is_model_folder, open_model
from iarmem.plans import MANIFEST, SUBSETS, model_plan, parse_ids
from iarmem.progress import log
from iarmem.runs import Run, start_run


def _margin(text: str) -> float:
    if text.strip().lower() == "none":
        return float("-inf")
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--margin takes a number or 'none', got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model folder (iarmem train / mitigate) or a preset name with --tokenizer/--weights")
    p.add_argument("data", help="'mnist' (bundled), an image folder or a path list: the images the model trained on")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--tokenizer", help="official tokenizer file (presets), or a replacement for the folder's")
    p.add_argument("--weights", help="official transformer file (presets), or a replacement for the folder's")
    hub.add_arguments(p)
    g = p.add_argument_group("images scored")
    g.add_argument("--subset", choices=SUBSETS,
                   help="images scored: default 'train' when the model folder has a planting manifest, else 'all'")
    g.add_argument("--fraction", type=float, help="thin the subset to this class-balanced fraction (e.g. 0.01)")
    g.add_argument("--per-class-subset", type=int, help="thin the subset to this many images per class")
    g.add_argument("--ids", help="attack exactly these image ids (a comma list or a file); no selection")
    g = p.add_argument_group("candidate selection")
    g.add_argument("--top", type=int, default=5, help="candidates per class (or overall with --global); default 5")
    sc = g.add_mutually_exclusive_group()
    sc.add_argument("--per-class", dest="per_class", action="store_true", default=True,
                    help="take the top N of every class (default, as the paper)")
    sc.add_argument("--global", dest="per_class", action="store_false", help="take the top N overall")
    g.add_argument("--score", choices=SCORES, default="top1",
                   help="candidate score: teacher-forced top-1 accuracy (default, the paper's), mean ground-truth "
                        "probability, or loss (lower = more suspicious)")
    g.add_argument("--last", type=int,
                   help="raster models: score the last K tokens (default 99 of 256, proportional when shorter)")
    g = p.add_argument_group("generation")
    g.add_argument("--prefix", type=int, help="ground-truth prefix in generation steps (VAR: scales; raster: tokens); "
                   "default the paper's: VAR the first 4 scales (30 tokens), raster 30 tokens per 16 grid columns "
                   "(30 of 256)")
    g.add_argument("--logit-noise", type=float, default=0.0,
                   help="std of Gaussian noise added to the logits (the defense baseline); default 0")
    g.add_argument("--strength", choices=STRENGTHS, default="default",
                   help="default: the paper's greedy prefix attack; strong: also every prefix (VAR 0-5 scales, "
                        "raster 0-50%% of tokens), guided and sampled decoding and a trigger search per target, "
                        "reporting the weakest try that extracts each image (to verify a fix)")
    g.add_argument("--trigger-steps", type=int, default=30, help="strong: Adam steps of the trigger search")
    g.add_argument("--no-membership", dest="membership", action="store_false",
                   help="skip the membership-inference scores (saves one unconditional pass per scored image)")
    g = p.add_argument_group("decision")
    g.add_argument("--metric", choices=list(METRICS),
                   help="decision similarity: default sscd with --sscd, else features with --features, else tokens "
                        "(token agreement after the prefix)")
    g.add_argument("--threshold", type=float, help="extracted when the similarity exceeds this (default: calibrated "
                   "on held-out images; without them sscd / features / ssim 0.75, tokens 0.9, psnr 20 dB)")
    g.add_argument("--margin", type=_margin, help="how much closer to its prompt than to the nearest other image a "
                   "generation must be ('none': the absolute rule of the paper; default: calibrated, not below 0.1, "
                   "psnr 2 dB)")
    cal = g.add_mutually_exclusive_group()
    cal.add_argument("--calibrate", dest="calibrate", action="store_true", default=None,
                     help="choose threshold and margin on the held-out images: the smallest at which at most --fpr "
                          "count (the default whenever there are held-out images and no --threshold)")
    cal.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                     help="use the metric's fixed defaults even when there are held-out images")
    g.add_argument("--fpr", type=float, default=0.01, help="calibration false-positive rate (default 0.01)")
    g.add_argument("--calibration-images", dest="calibration", type=int, default=200,
                   help="never-trained images outside the planting plan, class-balanced, that calibrate threshold "
                        "and margin, so the plan's held-out images are judged out of sample and the rate resolves "
                        "--fpr (default 200; 0: calibrate on the plan's held-out images)")
    g.add_argument("--class-calibration-images", dest="class_calibration", type=int, default=0,
                   help="--strength strong: this many more never-trained images of each target's class, so the tries' "
                        "bars also hold class by class (a never-trained '1' is far easier to draw than an '8'); "
                        "costs a strong attack on each (default 0: one bar for every class)")
    g.add_argument("--sscd", help="SSCD copy-detection TorchScript file (the paper's measure)")
    g.add_argument("--features", help="a TorchScript feature extractor FILE (input side --features-size), "
                   "trained:PATH (the CNN iarmem trains, see features.py) or torchscript:PATH[:SIZE]")
    g.add_argument("--features-size", type=int, default=224, help="input side of --features (default 224)")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="cpu", help="cpu or cuda")
    g.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    g.add_argument("--seed", type=int, default=0, help="seed of subset thinning and logit noise (default 0)")
    g.add_argument("--figure-pairs", type=int, default=32, help="pairs shown in extracted.png (default 32)")
    g.add_argument("--resume", action="store_true", help="continue a stopped run in --out, reusing its scores")
    g.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")


def settings_from(args: argparse.Namespace, num_images: int) -> AttackSettings:
    ids = tuple(int(i) for i in parse_ids(args.ids, num_images)) if args.ids else None
    return AttackSettings(
        subset=args.subset, fraction=args.fraction, per_class_subset=args.per_class_subset, ids=ids, top=args.top,
        per_class=args.per_class, score_by=args.score, last=args.last, prefix=args.prefix,
        logit_noise=args.logit_noise, metric=args.metric, threshold=args.threshold, margin=args.margin,
        calibrate=args.calibrate, calibration=args.calibration, class_calibration=args.class_calibration,
        fpr=args.fpr, sscd=args.sscd, features=args.features, features_size=args.features_size,
        batch_size=args.batch_size, seed=args.seed, figure_pairs=args.figure_pairs, strength=args.strength,
        trigger_steps=args.trigger_steps, membership=args.membership,
    ).validate()


def _pct(k: int, n: int) -> str:
    return f"{k} of {n} ({k / n:.0%})" if n else "none"


def end_summary(s: dict[str, Any], model: str, out: str) -> str:
    """The one paragraph a person reads at the end of the run."""
    text = (f"Extraction attack on {model}: {s['extracted']} training images extracted from {s['candidates']} "
            f"candidates ({s['decision']}; threshold {s['threshold_rule']}; margin {s['margin_rule']}).")
    if s.get("precision") is not None:
        text += (f" Precision (planted among everything called extracted) {s['precision']:.0%}; held-out false "
                 f"positives {s['heldout_false_positives']}.")
    groups = s["by_group"]
    parts = [f"{name} {_pct(groups[g]['extracted'], groups[g]['generated'])}"
             for g, name in (("planted", "planted"), ("ordinary", "ordinary"), ("heldout", "held-out"))
             if g in groups and groups[g]["generated"]]
    if parts:
        text += " Extracted by their own prompt: " + ", ".join(parts) + "."
    cop = s["copies_other"]
    if cop["candidates"] or cop["heldout"]:
        text += (f" {cop['candidates']} candidate and {cop['heldout']} held-out generations copy another image "
                 f"of the pool, counted as that image's extraction (extracted_via in candidates.csv).")
    mia = s.get("membership")
    if mia:
        parts = [f"{stat} AUC {mia[stat]['members']['auc']:.3f} (TPR {mia[stat]['members']['tpr']:.0%} at FPR "
                 f"<= {mia['fpr']:.0%})" for stat in ("mia_loss", "mia_cfg") if "members" in mia.get(stat, {})]
        if parts:
            text += f" Membership inference, training images vs {mia['heldout']} held-out: " + "; ".join(parts) + "."
    st = s.get("strong")
    if st:
        text += (f" Strong attack ({st['tries']} tries per target): {st['extracted']} training images extracted, "
                 f"{len(st['beyond_default'])} beyond the default attack, {st['heldout_false_positives']} held-out "
                 f"false positives")
        cal = st.get("calibration")
        text += (f" out of sample; {cal['rule']}" if cal else ", its tries calibrated one by one on them") + \
            " (strong.csv: the weakest try per image)."
    text += f" Prefix: {s['prefix']['rule']}. Results in {out}: candidates.csv, summary.json, extracted.png."
    return text


def run(args: argparse.Namespace) -> int:
    world = init_world(args.device)
    try:
        ds = open_dataset(args.data)
        plan = model_plan(args.model, ds) if is_model_folder(args.model) else None
        settings = settings_from(args, len(ds))
        iar, source = open_model(args.model, args.tokenizer, args.weights, device=world.device)
        extractors = load_extractors(settings, world.device)
        check_model(iar, ds, settings, extractors)
        image_pool(ds, plan, settings)
        inputs = {"model": args.model if Path(args.model).is_dir() else args.weights, "tokenizer": args.tokenizer,
                  "weights": args.weights, "sscd": settings.sscd, "features": settings._features_path(),
                  # a folder's fingerprint is its listing: the weight files themselves tell models apart
                  "model_file": source.model_file, "tokenizer_file": source.tokenizer_file, "data": args.data}
        if plan is not None:
            inputs["manifest"] = str(Path(args.model) / MANIFEST)
        record = {"model": args.model, "data": ds.describe(), "attack": settings.as_dict()}

        def open_run() -> dict[str, Any]:
            r = start_run(args.out, "extract", record, inputs, seed=args.seed, overwrite=args.overwrite,
                          resume=args.resume)
            return r.record

        run_ = Run(Path(args.out), from_main(world, open_run))
        barrier(world)
        if run_.done:
            if world.is_main:
                log(f"{args.out}: this extraction run already finished")
            return 0
        summary = run_attack(iar, ds, plan, settings, run_.path, world=world, source=source.as_dict(),
                             extractors=extractors, resume=run_.resumed)
        if world.is_main:
            files = list(OUTPUTS) + ([STRONG_FILE] if settings.strength == "strong" else [])
            run_.finish(files, {k: summary[k] for k in ("candidates", "extracted", "metric", "threshold", "rates",
                                                        "membership")}
                        | {"strong": {k: summary["strong"][k] for k in ("extracted", "beyond_default",
                                                                         "heldout_false_positives")}
                           if summary.get("strong") else None})
            print(end_summary(summary, args.model, args.out))
        barrier(world)
        return 0
    finally:
        close(world)
