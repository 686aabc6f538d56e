"""The whole audit on the bundled MNIST, end to end, on a laptop CPU.

  iarmem demo --out runs/demo

For each family (VAR and RAR by default; add llamagen with --families) it trains a tiny tokenizer
and IAR with 20 planted images x 30 copies, localizes memorization (UnitMem), runs the extraction
attack, mitigates with the paper's setting (top 10 % of units, fc1 rows x 0.5) and with the random
control, attacks and evaluates all three models, sweeps exact edits against the logit-noise defense
(first family), and writes OUT/report.html. Every stage is an ordinary `iarmem` command writing its own
run folder under OUT/<family>/; a second run reuses every stage that already finished.
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


@dataclass(frozen=True)
class Stage:
    name: str
    argv: list[str]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="root folder of every run (default runs/demo)")
    p.add_argument("--families", default="var,rar", help="comma list of var, rar, llamagen (default var,rar)")
    p.add_argument("--sweep", default="first", choices=("first", "all", "none"),
                   help="which families get the edit/defense sweep (default: the first, to fit the budget)")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--overwrite", action="store_true", help="redo every stage instead of reusing finished ones")


def family_stages(family: str, root: Path, seed: int, device: str, sweep: bool) -> list[Stage]:
    """The commands of one family's audit, in order; each writes root/family/<stage>."""
    d = root / family
    preset = f"tiny-{family}"
    common = ["--seed", str(seed), "--device", device]
    feats = ["--features-cache", str(root / "features")]
    model, data = str(d / "train"), "mnist"
    stages = [
        Stage("tokenizer", ["train", "tokenizer", "--preset", preset,
                            "--out", str(d / "tokenizer"), *common]),
        Stage("train", ["train", family, "--preset", preset, "--tokenizer", str(d / "tokenizer"), "--plant", "20",
                        "--copies", "30", "--num-train", "1000", "--out", model, *common]),
        Stage("localize", ["localize", model, data, "--out", str(d / "localize"), *common]),
        Stage("mitigate", ["mitigate", model, str(d / "localize"), "--top", "10", "--factor", "0.5",
                           "--edit", "paper", "--out", str(d / "mitigate"), "--seed", str(seed)]),
        Stage("mitigate-random", ["mitigate", model, str(d / "localize"), "--top", "10", "--factor", "0.5",
                                  "--edit", "paper", "--control", "random", "--out", str(d / "mitigate-random"),
                                  "--seed", str(seed)]),
    ]
    for tag, m in (("", model), ("-mitigate", str(d / "mitigate")), ("-random", str(d / "mitigate-random"))):
        stages.append(Stage(f"extract{tag}", ["extract", m, data, "--out", str(d / f"extract{tag}"), *common]))
        stages.append(Stage(f"evaluate{tag}", ["evaluate", m, data, "--n-per-class", "20",
                                               "--out", str(d / f"evaluate{tag}"), *feats, *common]))
    if sweep:
        stages.append(Stage("sweep", ["sweep", model, data, str(d / "localize"), "--tops", "10,25",
                                      "--factors", "0.5,0", "--controls", "random", "--scope", "layer",
                                      "--noise", "1,2", "--n-per-class", "20", "--out", str(d / "sweep"),
                                      *feats, *common]))
    return stages


def run_stage(stage: Stage, overwrite: bool) -> tuple[int, float]:
    """Run one stage in-process; its own error line (if any) is the one the user sees."""
    from iarmem.cli import main

    argv = [*stage.argv, "--overwrite" if overwrite else "--resume"]
    log(f"$ iarmem {shlex.join(argv)}")
    t0 = time.monotonic()
    rc = main(argv)
    if rc != 0:
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
    plan = [(f, s) for i, f in enumerate(families) for s in family_stages(
        f, root, args.seed, args.device, args.sweep == "all" or (args.sweep == "first" and i == 0))]
    timings: list[tuple[str, float]] = []
    for k, (family, stage) in enumerate(plan, 1):
        log(f"[demo {k}/{len(plan)}] {family}: {stage.name}  ({time.monotonic() - t0:.0f}s so far)")
        rc, seconds = run_stage(stage, args.overwrite)
        if rc != 0:
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
