"""UnitMem per unit, per block and per scale / token bin: which units single out one training image.

  iarmem localize runs/var mnist --out runs/loc-var
  iarmem localize var-d16 train/ --tokenizer vae_ch160v4096z32.pth --weights var_d16.pth --fraction 0.01 --out d16
  torchrun --nproc_per_node 4 -m iarmem localize ... (each process takes every 4th image)
  iarmem localize runs/var mnist --targets planted --refine --out runs/loc-images   (per image: gradient, checked)

For every image, the fc1 activations (after the GELU) of a teacher-forced pass on the ground-truth
tokens are averaged in absolute value over the token positions of each bin (VAR: its scales; the
class-only first position is left out unless --keep-class-positions) and over the image's views:
for a model folder written by `iarmem train`, the views it was trained on (its seed); otherwise
--augs draws of the family's training augmentation (the paper's 10).
UnitMem = (mu_max - mu_-max) / (mu_max + mu_-max) with mu_-max the mean (or, --stat median, the
median) of the other images; a unit whose maximum several images tie for is owned by none. Writes
unitmem.safetensors, summary.json, heatmap.png, blocks.png and top_images.png; --resume continues a
killed run and ends with the same bytes.

With --targets, the per-image localizers (zscore, gradient: the default there, mask) score each
target against reference images the model did not memorize and add per_image.safetensors; --refine
(any method) keeps, per target, the units whose removal the attack checked (refined.json). See
docs/LOCALIZE.md, "Per-image localizers".
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from iarmem.errors import UserError
from iarmem.models import hub
from iarmem.models.base import UNIT_KINDS
from iarmem.plans import SUBSETS

METHODS = ("unitmem", "zscore", "gradient", "mask")
PER_IMAGE_DEFAULT = "gradient"  # chosen by the ground-truth bench (docs/RESULTS.md section 9)
RELAXATIONS = ("hardconcrete", "l1")

if TYPE_CHECKING:
    from iarmem.localize.run import LocalizeConfig


def parse_blocks(text: str | None) -> tuple[int, ...] | None:
    """'all' / None -> None; '0-3,7' -> (0, 1, 2, 3, 7)."""
    if text is None or text.strip().lower() == "all":
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if b < a:
                    raise ValueError
                out.extend(range(a, b + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise UserError(f"--layers {text!r}: give block numbers and ranges like 0-3,7 (or 'all')") from None
    if not out or min(out) < 0:
        raise UserError(f"--layers {text!r}: give block numbers >= 0 like 0-3,7 (or 'all')")
    return tuple(sorted(set(out)))


def parse_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    bad = [k for k in kinds if k not in UNIT_KINDS]
    if bad or not kinds:
        raise UserError(f"--kinds {text!r}: choose from {', '.join(UNIT_KINDS)} (comma-separated)")
    return kinds


def resolve_method(method: str, targets: str | None) -> str:
    """``auto``: the paper's UnitMem for a whole subset, the best per-image localizer for --targets."""
    if method != "auto":
        return method
    return PER_IMAGE_DEFAULT if targets else "unitmem"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model folder (from `iarmem train` / `iarmem mitigate`) or a preset name "
                   "with --tokenizer and --weights")
    p.add_argument("data", help="'mnist' (bundled), an image folder or a list file of 'path label' lines")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--tokenizer", help="official tokenizer checkpoint (presets), or override a folder's")
    p.add_argument("--weights", help="official transformer checkpoint (presets), or override a folder's")
    hub.add_arguments(p)
    p.add_argument("--kinds", default="fc1", help=f"unit kinds to tap, comma-separated from {', '.join(UNIT_KINDS)} "
                   "(default fc1: the MLP hidden units after the activation)")
    p.add_argument("--layers", default="all", help="blocks to tap, e.g. 0-3,7 (default all)")
    p.add_argument("--views", choices=("auto", "trained", "augment"), default="auto",
                   help="views averaged per image: trained (the views a model folder of `iarmem train` learned, "
                        "with its seed), augment (--augs draws of the training augmentation with --seed), auto "
                        "(default: trained where recorded, else augment)")
    p.add_argument("--augs", type=int,
                   help="augment: draws A per image, views 1..A (default 10, as the paper); implies --views augment")
    p.add_argument("--include-eval-view", action="store_true",
                   help="augment: use the evaluation crop as one of the A views (then draws 1..A-1)")
    p.add_argument("--keep-class-positions", action="store_true",
                   help="keep the class-only first position (VAR's 1x1 scale) in the bins; by default it is left "
                        "out, since every image of a class gives it the same activation")
    p.add_argument("--subset", choices=SUBSETS,
                   help="images to localize on: default 'train' for a model with a planting manifest, else 'all'")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--fraction", type=float,
                      help="class-balanced fraction of the subset (the paper: 0.01 of the training set)")
    size.add_argument("--per-class", type=int, help="class-balanced: this many images per class")
    p.add_argument("--bins", type=int, help="token-position bins of raster families (RAR / LlamaGen; default the "
                   "model's, 16); VAR's bins are always its scales")
    p.add_argument("--batch-size", type=int, default=8,
                   help="images per forward; each brings its A augmentations, so a pass holds B x A sequences "
                        "(default 8)")
    p.add_argument("--stat", choices=["mean", "median"], default="mean",
                   help="mu_-max over the other images: mean (memory independent of N) or median (UnitMem's "
                        "reference code; keeps every image's mu in a float32 memmap in the run folder: N x units x "
                        "bins x 4 bytes of disk)")
    p.add_argument("--keep-values", action="store_true",
                   help="--stat median: keep the per-image memmap (mu_values.f32) after the run")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="forward precision (bfloat16: under torch.autocast; statistics stay float64)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: one GPU per process)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of --views augment draws")
    p.add_argument("--save-every", type=int, default=20, help="checkpoint every N batches (default 20; 0: never)")
    p.add_argument("--lanes", type=int, default=8,
                   help="float64 partial sums by image position mod K; runs on a number of processes dividing K "
                        "reproduce a single process's sums bit for bit (default 8)")
    m = p.add_argument_group("per-image localizers (docs/LOCALIZE.md)")
    m.add_argument("--method", choices=("auto", *METHODS), default="auto",
                   help="auto (default): unitmem without --targets, gradient with them (the best per-image localizer "
                        "on the ground-truth bench, docs/RESULTS.md section 9); unitmem (the paper's, over every image "
                        "of the subset); zscore (each target's "
                        "activations as z-scores against the references, after NeMo); gradient (activation x gradient "
                        "of the target's teacher-forced loss minus the references', after Stoehr et al.); mask "
                        "(a learned HardConcrete removal mask per target, after Chang et al.)")
    m.add_argument("--targets", help="images to localize one at a time: ids (17,42), a file of ids, or a group of the "
                   "model's plan (planted, heldout, ordinary); required by zscore / gradient / mask and --refine")
    m.add_argument("--references", help="images the model did not memorize, to contrast with (ids, a file or a "
                   "group; default the plan's held-out images); must not overlap --targets")
    m.add_argument("--reference-count", type=int, default=64,
                   help="at most this many references, drawn with --seed (default 64)")
    m.add_argument("--refine", action="store_true",
                   help="after any method: per target, the smallest prefix of its ranking whose removal stops the "
                        "greedy attack, pruned by blocks then units (refined.json)")
    m.add_argument("--refine-max-units", type=int, default=256,
                   help="--refine: most units tried per target (default 256)")
    m.add_argument("--mask-steps", type=int, default=100, help="mask: optimisation steps per target (default 100)")
    m.add_argument("--mask-sparsity", type=float, default=1.0,
                   help="mask: weight of the expected share of units removed (default 1)")
    m.add_argument("--mask-relaxation", choices=RELAXATIONS, default="hardconcrete",
                   help="mask: hardconcrete (stochastic L0 gates) or l1 (sigmoid gates with an L1 penalty, 'slimming')")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")


def config_from_args(args: argparse.Namespace) -> LocalizeConfig:
    from iarmem.localize.run import LocalizeConfig  # the stage (and matplotlib) only when it runs

    return LocalizeConfig(
        model=args.model, data=args.data, out=args.out, tokenizer=args.tokenizer, weights=args.weights,
        kinds=parse_kinds(args.kinds), blocks=parse_blocks(args.layers), augs=args.augs,
        views=args.views, include_eval_view=args.include_eval_view, keep_class_positions=args.keep_class_positions,
        subset=args.subset, fraction=args.fraction,
        per_class=args.per_class, bins=args.bins, batch_size=args.batch_size, device=args.device, seed=args.seed,
        dtype=args.dtype, stat=args.stat, save_every=args.save_every, lanes=args.lanes,
        keep_values=args.keep_values, resume=args.resume, overwrite=args.overwrite,
        method=resolve_method(args.method, args.targets),
        targets=args.targets, references=args.references, reference_count=args.reference_count, refine=args.refine,
        refine_max_units=args.refine_max_units, mask_steps=args.mask_steps, mask_sparsity=args.mask_sparsity,
        mask_relaxation=args.mask_relaxation)


def run(args: argparse.Namespace) -> int:
    from iarmem.localize.run import localize
    from iarmem.localize.summary import describe

    summary = localize(config_from_args(args))
    if summary is not None:
        print("\n".join(describe(summary)))
        print(f"wrote {args.out}/unitmem.safetensors, summary.json, heatmap.png, blocks.png, top_images.png")
    return 0
