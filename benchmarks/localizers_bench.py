"""The cost of the per-image localizers against UnitMem, on the same images of a trained model folder.

  .venv/bin/python benchmarks/localizers_bench.py runs/m12/s0/var/train --repeats 3 --threads 1

1. Time: UnitMem over the targets + references (the same images the per-image methods read), and
   each per-image method (zscore, gradient, mask, gradient --refine) on the targets against the
   references, interleaved, median of --repeats fresh runs in this process; the ratio to UnitMem is
   taken within each repeat, then the median; seconds per target from the same runs.
2. Memory against the number of references: a fresh process runs zscore and gradient with R
   references (ordinary training images) for R in --ref-sizes; its peak resident set (VmHWM) after
   a warm-up run with 4 references must not grow with R (the references stream through lane sums).
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from iarmem.data import bundled_mnist
from iarmem.localize import LocalizeConfig, localize
from iarmem.plans import model_plan

METHODS = (("zscore", {}), ("gradient", {}), ("mask", {}), ("gradient+refine", {"refine": True}))


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _time(cfg: LocalizeConfig) -> float:
    t0 = time.perf_counter()
    localize(cfg)
    return time.perf_counter() - t0


def timing(folder: str, targets: np.ndarray, refs: np.ndarray, repeats: int, tmp: Path) -> list[list[str]]:
    ids = tuple(int(i) for i in np.union1d(targets, refs))
    t = tuple(int(i) for i in targets)
    r = tuple(int(i) for i in refs)
    runs: dict[str, list[float]] = {"unitmem": []} | {name: [] for name, _ in METHODS}
    for k in range(repeats):
        runs["unitmem"].append(_time(LocalizeConfig(model=folder, data="mnist", out=str(tmp / f"u{k}"), ids=ids,
                                                    save_every=0)))
        for name, extra in METHODS:
            runs[name].append(_time(LocalizeConfig(model=folder, data="mnist", out=str(tmp / f"{name}{k}"),
                                                   method=name.removesuffix("+refine"), targets=t, references=r,
                                                   **extra)))
    rows = [["UnitMem (mean)", f"{statistics.median(runs['unitmem']):.1f}", "1.00x", "-"]]
    for name, _ in METHODS:
        ratio = statistics.median(a / b for a, b in zip(runs[name], runs["unitmem"]))
        rows.append([name, f"{statistics.median(runs[name]):.1f}", f"{ratio:.2f}x",
                     f"{statistics.median(runs[name]) / len(targets):.2f}"])
    return rows


def _child(args: argparse.Namespace) -> None:
    plan = model_plan(args.folder, bundled_mnist())
    targets = tuple(int(i) for i in plan.planted_ids[:2])
    pool = np.asarray(plan.ordinary_ids)

    def run(n: int, out: str) -> None:
        localize(LocalizeConfig(model=args.folder, data="mnist", out=out, method=args.method, targets=targets,
                                references=tuple(int(i) for i in pool[:n]), reference_count=n))

    run(4, args.out + "-warm")
    warm = _peak_mb()
    t0 = time.perf_counter()
    run(args.n, args.out)
    print(json.dumps({"warm_mb": warm, "peak_mb": _peak_mb(), "seconds": time.perf_counter() - t0}))


def memory(folder: str, sizes: list[int], threads: int, tmp: Path) -> list[list[str]]:
    rows = []
    for method in ("zscore", "gradient"):
        for n in sizes:
            out = subprocess.run([sys.executable, __file__, folder, "--child", "--method", method, "--n", str(n),
                                  "--threads", str(threads), "--out", str(tmp / f"mem-{method}-{n}")],
                                 capture_output=True, text=True, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append([method, str(n), f"{got['warm_mb']:.0f}", f"{got['peak_mb']:.0f}", f"{got['seconds']:.1f}"])
    return rows


def table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |"
                                                                                   for r in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="a model folder of `iarmem train` with its manifest")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--targets", type=int, default=4, help="planted images scored per run (default 4)")
    p.add_argument("--ref-sizes", default="16,64,256")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        _child(args)
        return
    plan = model_plan(args.folder, bundled_mnist())
    targets, refs = np.asarray(plan.planted_ids[:args.targets]), np.asarray(plan.heldout_ids)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"{args.folder}: {len(targets)} targets, {len(refs)} references; {platform.processor() or 'cpu'}, "
              f"torch {torch.__version__}, {args.threads} thread(s), medians of {args.repeats}\n")
        print(table(["localizer", "seconds", "time / UnitMem (same images)", "seconds per target"],
                    timing(args.folder, targets, refs, args.repeats, tmp)))
        print()
        print(table(["method", "references", "peak MB after 4 references", "peak MB", "seconds"],
                    memory(args.folder, [int(x) for x in args.ref_sizes.split(",")], args.threads, tmp)))


if __name__ == "__main__":
    main()
