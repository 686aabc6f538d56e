"""Localization cost on this machine: throughput against untapped passes, memory against N, median disk.

  .venv/bin/python benchmarks/localize_bench.py            # full (a few minutes on 2 cores)
  .venv/bin/python benchmarks/localize_bench.py --quick    # smoke run
  .venv/bin/python benchmarks/localize_bench.py --presets var-d16 --images 4 --augs 2 --batch-size 2 --sizes ''

1. Throughput (tiny-var, tiny-rar, random weights, bundled MNIST): the localizer (load A augmentations,
   tokenize, tapped teacher-forced pass, bin means, statistics update) against the same teacher-forced
   passes without taps or statistics, on the same batches, interleaved, median of --repeats runs. Also
   the forward alone (pre-tokenized) with and without taps + reduction, which isolates the tap cost.
2. Peak memory (VmHWM, else ru_maxrss, of a fresh process running the whole stage, first on 10 images, then on N)
   for N = 100 and N = 1000 images with the mean statistic: it must not grow with N.
3. The median variant's per-image memmap: bytes on disk for the same N.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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
from iarmem.localize.run import VALUES_FILE
from iarmem.localize.stats import UnitStats
from iarmem.localize.unitmem import MuCollector, view_indices
from iarmem.models import build
from iarmem.models.loading import save_model_folder


def _time(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def throughput(preset: str, images: int, augs: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    iar = build(preset)
    ds = bundled_mnist()
    ids = np.arange(images)
    col = MuCollector(iar, iar.unit_layers(), iar.bins(), view_indices(augs, False), seed=0)
    batches = [ids[i:i + batch] for i in range(0, images, batch)]
    pre = []
    for b in batches:
        x, y = col.load(ds, b)
        pre.append((iar.tokenize(x), y))

    @torch.no_grad()
    def localizer() -> None:
        stats = UnitStats(col.layout.size)
        for j, b in enumerate(batches):
            stats.update(np.arange(j * batch, j * batch + len(b)), b, col(ds, b, pad_to=batch))

    @torch.no_grad()
    def baseline() -> None:
        for b in batches:
            x, y = col.load(ds, b)
            iar.logits(iar.tokenize(x), y)

    @torch.no_grad()
    def fwd_tapped() -> None:
        stats = UnitStats(col.layout.size)
        for j, (tok, y) in enumerate(pre):
            n = tok.batch_size // augs
            stats.update(np.arange(j * batch, j * batch + n), batches[j], col.from_tokens(tok, y))

    @torch.no_grad()
    def fwd_plain() -> None:
        for tok, y in pre:
            iar.logits(tok, y)

    fns = {"localizer": localizer, "baseline": baseline, "fwd_tapped": fwd_tapped, "fwd_plain": fwd_plain}
    fwd_plain()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(_time(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"preset": preset, "images": images, "augs": augs, "batch": batch, "seq_len": iar.seq_len,
            "units": col.layout.size // col.layout.num_bins, "bins": col.layout.num_bins,
            "loc_img_s": images / med["localizer"], "loc_pass_s": images * augs / med["localizer"],
            "base_img_s": images / med["baseline"], "base_pass_s": images * augs / med["baseline"],
            "overhead": med["localizer"] / med["baseline"], "fwd_overhead": med["fwd_tapped"] / med["fwd_plain"],
            "repeats": repeats}


def _peak_mb() -> float:
    """Peak resident memory of this process. Linux keeps ru_maxrss across fork + exec, so a child
    of a large parent reports at least the parent's peak; VmHWM belongs to the new address space."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args: argparse.Namespace) -> None:
    """In this fresh process: the whole stage on 10 images (the fixed cost: imports, model, dataset,
    figures), then on N images; report both peaks, so growth with N would show as a difference."""
    def cfg(n: int, out: str) -> LocalizeConfig:
        return LocalizeConfig(model=args.folder, data="mnist", out=out, subset="all", per_class=n // 10,
                              augs=args.augs, batch_size=8, stat=args.stat, keep_values=True, save_every=0)

    localize(cfg(10, args.out + "-warm"))
    warm = _peak_mb()
    t0 = time.perf_counter()
    summary = localize(cfg(args.n, args.out))
    secs = time.perf_counter() - t0
    values = Path(args.out) / VALUES_FILE
    print(json.dumps({"n": summary["num_images"], "warm_mb": warm, "maxrss_mb": _peak_mb(), "seconds": secs,
                      "values_bytes": values.stat().st_size if values.exists() else 0}))


def memory(preset: str, sizes: list[int], augs: int, stat: str, work: Path) -> list[dict]:
    folder = work / preset
    if not folder.exists():
        torch.manual_seed(0)
        save_model_folder(build(preset), folder, preset=preset)
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    for n in sizes:
        out = work / f"{preset}-{stat}-{n}"
        cmd = [sys.executable, __file__, "--child", "--folder", str(folder), "--out", str(out), "--n", str(n),
               "--augs", str(augs), "--stat", stat]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        rows.append({"preset": preset, "stat": stat, **json.loads(res.stdout.strip().splitlines()[-1])})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="tiny-var,tiny-rar")
    p.add_argument("--images", type=int, default=64, help="images per throughput run")
    p.add_argument("--augs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", default="100,1000", help="N for the memory runs ('' skips them, e.g. for var-d16)")
    p.add_argument("--memory-augs", type=int, default=2, help="augmentations in the memory runs (time only)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--stat", default="mean", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    torch.set_num_threads(args.threads)
    if args.quick:
        args.images, args.augs, args.repeats, args.sizes = 16, 2, 3, "20,60"
    presets = args.presets.split(",")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {args.threads} threads\n")
    print("| model | images x augs | localizer img/s | localizer passes/s | untapped img/s | untapped passes/s "
          "| overhead (whole) | overhead (forward only) |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in presets:
        r = throughput(preset, args.images, args.augs, args.batch_size, args.repeats)
        print(f"| {preset} ({r['seq_len']} tokens, {r['units']} units x {r['bins']} bins) | {r['images']} x "
              f"{r['augs']} | {r['loc_img_s']:.3g} | {r['loc_pass_s']:.3g} | {r['base_img_s']:.3g} | "
              f"{r['base_pass_s']:.3g} | {r['overhead']:.2f}x | {r['fwd_overhead']:.2f}x |")
    print()
    if not sizes:
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for preset in presets:
            rows += memory(preset, sizes, args.memory_augs, "mean", Path(tmp))
            rows += memory(preset, sizes[:1], args.memory_augs, "median", Path(tmp))
    print("| model | stat | N | peak RSS after 10 images (MB) | peak RSS after N (MB) | seconds for N | "
          "median memmap on disk |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        disk = f"{r['values_bytes'] / 1e6:.1f} MB ({r['values_bytes'] / r['n'] / 1e3:.0f} kB/image)" \
            if r["values_bytes"] else "-"
        print(f"| {r['preset']} | {r['stat']} | {r['n']} | {r['warm_mb']:.0f} | {r['maxrss_mb']:.0f} | "
              f"{r['seconds']:.1f} | {disk} |")


if __name__ == "__main__":
    main()
