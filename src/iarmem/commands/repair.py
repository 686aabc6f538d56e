"""Repair: stop given leaked images from coming out, at the least quality cost, checked by the strong attack.

  iarmem repair runs/var mnist --leaked runs/extract-var --out runs/var-repaired
  iarmem repair runs/var mnist --leaked runs/extract-var --images planted --max-quality-loss 0.05 --out RUN

Takes the images an extraction run found (--leaked; its strong-attack list when it ran one) or
--images, attacks them with the strong attack, localizes each extracted one with the gradient
localizer and its attack-checked refinement, removes the union of their units exactly, attacks
again, grows the sets of the images that still come out, and prunes units that are not needed;
every kept edit is verified with the strong attack and the quality of held-out generations (FID,
KID, precision / recall, class accuracy). An edit whose relative FID increase passes
--max-quality-loss, or whose class accuracy falls by more than --max-accuracy-drop points, is
refused. When no exact removal within the budgets is clean, the last round's units are fine-tuned
instead (--fallback unlearn) and that is kept if it passes the same checks. Beside it, at the
same leak: as many random units, the paper's top p % x 0.5, the logit-noise defense and
fine-tuning the same units. --out becomes a model folder
(the edited model in the official layout, edit.json) with repair.json (every round, leak and
quality before and after, the alternatives) and summary.json. Exit 0 when every target is stopped,
1 for a partial repair (written, with the images it could not clean), 2 for bad input (nothing
written). See docs/MITIGATE.md, "Repair".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from iarmem.errors import UserError
from iarmem.models import hub

PAPER_TOPS = "1,2,5,10,20,50"
NOISE_LEVELS = "0.5,1,2,4,8"


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _points(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of points or 'none', got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model folder, or a preset name with --tokenizer/--weights")
    p.add_argument("data", help="'mnist', an image folder or a path list: the images the model trained on")
    p.add_argument("--leaked", required=True, metavar="EXTRACT_RUN",
                   help="run folder of `iarmem extract` on MODEL: its extracted images are the targets")
    p.add_argument("--out", required=True, help="run folder to write (becomes a model folder)")
    p.add_argument("--images", metavar="IDS",
                   help="repair these ids instead (a comma list or a file), or only the leaked images of a plan "
                        "group: planted or ordinary, or the images `iarmem inject` put in: injected")
    p.add_argument("--max-targets", type=int, metavar="N",
                   help="repair at most N of them, a class-balanced seeded sample (a first look at a large leak)")
    p.add_argument("--tokenizer", help="official tokenizer file (presets)")
    p.add_argument("--weights", help="official transformer file (presets)")
    hub.add_arguments(p)
    g = p.add_argument_group("budgets")
    g.add_argument("--max-quality-loss", type=float, default=0.10,
                   help="largest relative FID increase an edit may cost (default 0.10: 10 %%)")
    g.add_argument("--max-accuracy-drop", type=_points, default=2.0, metavar="POINTS",
                   help="largest fall in class accuracy of the generations an edit may cost, in points, the mean "
                        "over the paired draws ('none': not guarded; default 2)")
    g.add_argument("--max-units", type=float, default=5.0,
                   help="largest share of the fc1 units the edit may remove, in %% (default 5)")
    g.add_argument("--max-rounds", type=int, default=4, help="attack-and-grow rounds (default 4)")
    g.add_argument("--grow-past-guard", type=float, default=2.0, metavar="K",
                   help="a round the quality guard refuses that leaves targets extracted grows on while its FID and "
                        "accuracy costs are within K x their bars: a later round's prune may fit the guard (default "
                        "2; 0: stop at the first refused round)")
    g.add_argument("--screen-tries", type=int, default=8, metavar="N",
                   help="when the rounds end refused by the quality guard: go back to the last round within it that "
                        "left targets (none: the unedited model) and grow again, each unit added only if the state "
                        "with it and the units already chosen removed passes the guard (over the first "
                        "measurement's sampling seeds), "
                        "else skipped for the next in the ranking, at most N per target and grow (default 8; 0: "
                        "no second grow). Each screened unit costs one quality measurement")
    g.add_argument("--prune-tries", type=int, default=48, help="single units tried back when pruning (default 48)")
    g.add_argument("--prune-rounds", type=int, default=3,
                   help="prune attempts: when the strong attack sees through a pruned edit, the tries it used join "
                        "the probes and the grown edit is pruned again (default 3)")
    g.add_argument("--every-try-after", type=int, default=2, metavar="R",
                   help="a target extracted in R rounds (it came back by a try its probes had not seen) is probed "
                        "with every try of the strong attack, at its class's bars (default 2; 0: never)")
    g.add_argument("--probe-rule", default="joint",
                   help="how the grow and prune steps' probes read a try: joint (as the strong attack does: the "
                        "agreement above the try's bar and above the nearest other image's by its margin; default) "
                        "or agreement (the agreement alone: a stricter screen)")
    g.add_argument("--fallback", default="unlearn",
                   help="when no exact removal within the budgets stops every target within the guard: fine-tune "
                        "the last round's units instead (unit-local unlearning, --unlearn-steps Adam steps), kept "
                        "only if the strong attack stops every target and the guard passes it (default unlearn; "
                        "none: the partial exact edit is the result)")
    g = p.add_argument_group("alternatives (same leak)")
    g.add_argument("--alternatives", default="random,paper,noise,unlearn",
                   help="comma list of random, paper, noise, unlearn ('' for none; default all)")
    g.add_argument("--unitmem", metavar="RUN", help="a UnitMem localization of MODEL for the paper's edit "
                   "(default: computed into OUT/unitmem)")
    g.add_argument("--paper-tops", type=_floats, default=_floats(PAPER_TOPS),
                   help=f"top p %% grid of the paper's x0.5 edit (default {PAPER_TOPS})")
    g.add_argument("--noise-levels", type=_floats, default=_floats(NOISE_LEVELS),
                   help=f"logit-noise std grid (default {NOISE_LEVELS})")
    g.add_argument("--unlearn-steps", type=int, default=20, help="fine-tuning steps of the unlearn baseline")
    g = p.add_argument_group("measurement")
    g.add_argument("--n-per-class", type=int, default=20, help="samples per class for FID (default 20)")
    g.add_argument("--quality-draws", type=int, default=3,
                   help="sampling seeds every FID is drawn under, the same for every edit; the guard reads the "
                        "mean, seed for seed, and their spread on the unedited model is recorded as the noise "
                        "(default 3; 1: one draw)")
    g.add_argument("--max-quality-draws", type=int, metavar="N",
                   help="an edit whose guard verdict the seeds could flip (its FID or accuracy change within two "
                        "standard errors of the bar, over none by more) draws --quality-draws more paired seeds, "
                        "it and the unedited model alike, up to N (default 3 x --quality-draws; the same: never)")
    g.add_argument("--features", default="trained", help="feature extractor for FID (see `iarmem evaluate`)")
    g.add_argument("--features-cache", help="folder of the trained feature CNN (default OUT/features)")
    g.add_argument("--trigger-steps", type=int, default=30, help="strong attack: Adam steps of the trigger search")
    g.add_argument("--calibration-images", dest="calibration", type=int,
                   help="never-trained images outside the plan on which the strong attack's tries are calibrated "
                        "together, once, on the unedited model (default: the --leaked run's --calibration-images; "
                        "0: each try on the held-out images, every measurement)")
    g.add_argument("--class-calibration-images", dest="class_calibration", type=int,
                   help="this many more never-trained images of each target's class join that calibration, so the "
                        "bars also hold class by class (default: the --leaked run's, usually 0: one bar for all)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--device", default="cpu")
    g.add_argument("--resume", action="store_true", help="continue a stopped repair in --out")
    g.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")


def run(args: argparse.Namespace) -> int:
    from iarmem.mitigate.repair import ALTERNATIVES, FALLBACKS, PROBE_RULES

    alts = tuple(a.strip() for a in args.alternatives.split(",") if a.strip())
    bad = [a for a in alts if a not in ALTERNATIVES]
    checks = [
        (not bad, f"unknown --alternatives {bad}; choose from {', '.join(ALTERNATIVES)}"),
        (args.fallback in FALLBACKS, f"unknown --fallback {args.fallback!r}; choose unlearn (fine-tune the last "
                                     f"round's units when no exact removal is clean) or none"),
        (args.probe_rule in PROBE_RULES, f"unknown --probe-rule {args.probe_rule!r}; choose joint (as the strong "
                                         f"attack decides) or agreement (token agreement alone)"),
        (args.max_quality_loss >= 0, f"--max-quality-loss must be >= 0, got {args.max_quality_loss}"),
        (args.max_accuracy_drop is None or args.max_accuracy_drop >= 0,
         f"--max-accuracy-drop must be >= 0 points (or 'none'), got {args.max_accuracy_drop}"),
        (0 < args.max_units <= 100, f"--max-units is a percent in (0, 100], got {args.max_units}"),
        (args.max_rounds >= 1, f"--max-rounds must be >= 1, got {args.max_rounds}"),
        (args.screen_tries >= 0, f"--screen-tries must be >= 0, got {args.screen_tries}"),
        (args.grow_past_guard == 0 or args.grow_past_guard >= 1,
         f"--grow-past-guard is a multiple of the guard's bars, >= 1 (or 0: never), got {args.grow_past_guard}"),
        (args.max_targets is None or args.max_targets >= 1, f"--max-targets must be >= 1, got {args.max_targets}"),
        (args.every_try_after >= 0, f"--every-try-after must be >= 0 (0: never), got {args.every_try_after}"),
        (args.prune_rounds >= 1, f"--prune-rounds must be >= 1, got {args.prune_rounds}"),
        (args.prune_tries >= 0, f"--prune-tries must be >= 0, got {args.prune_tries}"),
        (args.n_per_class >= 2, f"--n-per-class must be >= 2 (FID needs a covariance), got {args.n_per_class}"),
        (args.unlearn_steps >= 1, f"--unlearn-steps must be >= 1, got {args.unlearn_steps}"),
        (args.calibration is None or args.calibration >= 0,
         f"--calibration-images must be >= 0 (0: calibrate each try on the held-out images), got {args.calibration}"),
        (args.class_calibration is None or args.class_calibration >= 0,
         f"--class-calibration-images must be >= 0 (0: one bar for every class), got {args.class_calibration}"),
        (args.quality_draws >= 1, f"--quality-draws must be >= 1 (1: no noise estimate), got {args.quality_draws}"),
        (args.max_quality_draws is None or args.max_quality_draws >= args.quality_draws,
         f"--max-quality-draws must be >= --quality-draws ({args.quality_draws}), got {args.max_quality_draws}"),
        (bool(args.paper_tops) and all(0 < p <= 100 for p in args.paper_tops),
         "--paper-tops takes percents in (0, 100]"),
        (bool(args.noise_levels) and all(s > 0 for s in args.noise_levels), "--noise-levels must be > 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    from iarmem.mitigate.repair_run import repair

    return repair(args, alts)


def leaked_ids(run: Path) -> tuple[list[int], dict[str, Any]]:
    """The extracted training images of an extraction run (its strong attack's list when it ran one)."""
    summary = json.loads((run / "summary.json").read_text())
    strong = summary.get("strong")
    ids = strong["extracted_ids"] if strong else summary["extracted_ids"]
    return [int(i) for i in ids], summary
