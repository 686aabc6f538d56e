"""The whole audit on the bundled MNIST, end to end, on a laptop CPU.

  iarmem demo --out runs/demo

For each family (VAR and RAR by default; add llamagen with --families) it trains a tiny tokenizer
and IAR with 20 planted images x 30 copies among 300 ordinary ones (the demo's short recipe),
localizes memorization (UnitMem), runs the extraction attack with membership inference, mitigates
with the paper's setting (top 10 % of units, fc1 rows x 0.5) and with the random control, attacks
and evaluates all three models. The first family (--extras) also gets the strong attack, the
localizer bench's quick panel (ground-truth units, a per-image localizer beside UnitMem), the
repair of a few leaked images against random units and unlearning, and the sweep of exact edits
against the logit-noise defense (--sweep). Then OUT/report.html. Every stage is an ordinary
`iarmem` command writing its own run folder under OUT/<family>/; a second run reuses every stage
that already finished.
"""

from __future__ import annotations

import argparse
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from iarmem.errors import UserError
from iarmem.progress import log

FAMILIES = ("var", "rar", "llamagen")
# The demo's recipe: tokenizer and IAR steps per family on 300 ordinary images (the presets' recipes train on
# 1,000 for the campaign). Planted images are seen as often as under the presets' recipes (about 600 times);
# what it still memorizes is measured in docs/BENCHMARKS.md ("The demo").
DEMO_STEPS = {"var": (200, 300), "rar": (200, 420), "llamagen": (200, 250)}
DEMO_ORDINARY = 300


@dataclass(frozen=True)
class Stage:
    name: str
    argv: list[str]
    results: tuple[int, ...] = (0,)  # exit codes that are a result (repair: 1 = a partial repair, recorded)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="root folder of every run (default runs/demo)")
    p.add_argument("--families", default="var,rar", help="comma list of var, rar, llamagen (default var,rar)")
    p.add_argument("--sweep", default="first", choices=("first", "all", "none"),
                   help="which families get the edit/defense sweep (default: the first, to fit the budget)")
    p.add_argument("--extras", default="first", choices=("first", "all", "none"),
                   help="which families get the strong attack, the bench's quick panel and the repair (default: "
                        "the first, to fit the budget)")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--overwrite", action="store_true", help="redo every stage instead of reusing finished ones")


def family_stages(family: str, root: Path, seed: int, device: str, sweep: bool, extras: bool = False) -> list[Stage]:
    """The commands of one family's audit, in order; each writes root/family/<stage>."""
    d = root / family
    preset = f"tiny-{family}"
    common = ["--seed", str(seed), "--device", device]
    feats = ["--features-cache", str(root / "features")]
    model, data = str(d / "train"), "mnist"
    tok_steps, iar_steps = DEMO_STEPS[family]
    stages = [
        Stage("tokenizer", ["train", "tokenizer", "--preset", preset, "--steps", str(tok_steps),
                            "--out", str(d / "tokenizer"), *common]),
        Stage("train", ["train", family, "--preset", preset, "--tokenizer", str(d / "tokenizer"), "--plant", "20",
                        "--copies", "30", "--num-train", str(DEMO_ORDINARY), "--steps", str(iar_steps),
                        "--out", model, *common]),
        Stage("localize", ["localize", model, data, "--out", str(d / "localize"), *common]),
        Stage("mitigate", ["mitigate", model, str(d / "localize"), "--top", "10", "--factor", "0.5",
                           "--edit", "paper", "--out", str(d / "mitigate"), "--seed", str(seed)]),
        Stage("mitigate-random", ["mitigate", model, str(d / "localize"), "--top", "10", "--factor", "0.5",
                                  "--edit", "paper", "--control", "random", "--out", str(d / "mitigate-random"),
                                  "--seed", str(seed)]),
    ]
    # the strong attack also runs on its calibration images (its tries calibrated together); 100 of them, not the
    # default 200, keep the demo near its budget (the repair reads the same 100)
    strong = ["--strength", "strong", "--trigger-steps", "10", "--calibration-images", "100"] if extras else []
    for tag, m in (("", model), ("-mitigate", str(d / "mitigate")), ("-random", str(d / "mitigate-random"))):
        stages.append(Stage(f"extract{tag}", ["extract", m, data, "--out", str(d / f"extract{tag}"),
                                              *(strong if not tag else []), *common]))
        stages.append(Stage(f"evaluate{tag}", ["evaluate", m, data, "--n-per-class", "20",
                                               "--out", str(d / f"evaluate{tag}"), *feats, *common]))
    if extras:
        stages.append(Stage("bench", ["bench", model, data, "--quick", "--stages", "inj", "--out",
                                      str(d / "bench"), *feats, *common]))
        stages.append(Stage("repair", ["repair", model, data, "--leaked", str(d / "extract"), "--images", "planted",
                                       "--max-targets", "4", "--max-rounds", "2", "--prune-tries", "8",
                                       "--prune-rounds", "1", "--alternatives", "random,unlearn",
                                       # its refused round holds 88 units: a screened regrow is minutes of draws
                                       "--screen-tries", "0",
                                       "--trigger-steps", "10", "--n-per-class", "10", "--out", str(d / "repair"),
                                       *feats, *common],
                            results=(0, 1)))
    if sweep:
        stages.append(Stage("sweep", ["sweep", model, data, str(d / "localize"), "--tops", "10",
                                      "--factors", "0.5,0", "--controls", "random", "--scope", "layer",
                                      "--noise", "2", "--n-per-class", "20", "--out", str(d / "sweep"),
                                      *feats, *common]))
    return stages


def run_stage(stage: Stage, overwrite: bool) -> tuple[int, float]:
    """Run one stage in-process; its own error line (if any) is the one the user sees."""
    from iarmem.cli import main

    argv = [*stage.argv, "--overwrite" if overwrite else "--resume"]
    log(f"$ iarmem {shlex.join(argv)}")
    t0 = time.monotonic()
    rc = main(argv)
    if rc not in stage.results:
        log(f"demo stopped at stage {stage.name}: rerun `iarmem demo` to resume, or the command above with --debug")
    return rc, time.monotonic() - t0


def run(args: argparse.Namespace) -> int:
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise UserError(f"--families takes a comma list of {', '.join(FAMILIES)}; got {args.families!r}")
    root = Path(args.out)
    if root.exists() and not root.is_dir():
        raise UserError(f"--out {root} is a file; pass a folder")
    t0 = time.monotonic()
    def chosen(policy: str, i: int) -> bool:
        return policy == "all" or (policy == "first" and i == 0)

    plan = [(f, s) for i, f in enumerate(families) for s in family_stages(
        f, root, args.seed, args.device, chosen(args.sweep, i), chosen(args.extras, i))]
    timings: list[tuple[str, float]] = []
    for k, (family, stage) in enumerate(plan, 1):
        log(f"[demo {k}/{len(plan)}] {family}: {stage.name}  ({time.monotonic() - t0:.0f}s so far)")
        rc, seconds = run_stage(stage, args.overwrite)
        if rc not in stage.results:
            return rc
        timings.append((f"{family}/{stage.name}", seconds))
    from iarmem.cli import main

    runs = [str(root / f) for f in families]
    rc = main(["report", *runs, "--out", str(root / "report.html"), "--title", "iarmem demo: tiny IARs on MNIST"])
    if rc != 0:
        return rc
    total = time.monotonic() - t0
    log("stage times: " + ", ".join(f"{n} {s:.0f}s" for n, s in timings))
    print(f"demo finished in {total:.0f}s; report: {root / 'report.html'}")
    return 0
