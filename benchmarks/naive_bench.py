"""The streaming localizer against a straightforward implementation that keeps every activation.

  .venv/bin/python benchmarks/naive_bench.py --images 16,64 --augs 10 --repeats 3

The straightforward way to compute UnitMem: run the tapped teacher-forced passes, keep a copy of
every post-GELU fc1 activation [A sequences x L tokens x U units] of every image, and aggregate
afterwards (|x| -> mean over the tokens of each bin -> mean over augmentations -> max, argmax and
mean of the others per unit). iarmem instead reduces each batch to per-image mu as it goes and
keeps only float64 sums, maxima and argmaxes. Each variant runs in a fresh process (so peak
resident memory, VmHWM, is its own) on the same images and views; the script checks that both give
the same UnitMem and prints time and peak memory per N, with the ratios. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from iarmem.data import bundled_mnist
from iarmem.localize.stats import UnitStats, mean_others, unitmem
from iarmem.localize.unitmem import MuCollector, view_indices
from iarmem.models import build, tap


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not available (Linux only)")


@torch.no_grad()
def naive(iar, ds, ids: np.ndarray, augs: int, batch: int) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Keep every activation, then aggregate: the baseline the issue asks for."""
    col = MuCollector(iar, iar.unit_layers(), iar.bins(), view_indices(augs, False), seed=0)  # loading only
    kept: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in iar.unit_layers()}

    def keep(layer, act_SLU: torch.Tensor) -> None:  # noqa: ANN001
        kept[layer.name].append(act_SLU.detach().float().cpu().clone())

    for s in range(0, len(ids), batch):
        images, labels = col.load(ds, ids[s:s + batch])
        with tap(iar, iar.unit_layers(), keep):
            iar.logits(iar.tokenize(images), labels)
    bins_L = torch.as_tensor(iar.bins(), dtype=torch.int64)
    onehot_KL = torch.nn.functional.one_hot(bins_L).T.double()
    onehot_KL /= onehot_KL.sum(dim=1, keepdim=True)
    out = {}
    for name, parts in kept.items():
        act_SLU = torch.cat(parts)  # every activation of every image and augmentation
        mu_SKU = torch.einsum("kl,slu->sku", onehot_KL, act_SLU.abs().double())
        mu_NKU = mu_SKU.view(len(ids), augs, *mu_SKU.shape[1:]).mean(dim=1)
        max_KU, arg_KU = mu_NKU.max(dim=0)
        others = mean_others(mu_NKU.sum(dim=0).flatten(), max_KU.flatten(), len(ids))
        out[name] = unitmem(max_KU.flatten(), others).numpy()
        out[name + "/argmax"] = ids[arg_KU.flatten().numpy()]
    return out


@torch.no_grad()
def streaming(iar, ds, ids: np.ndarray, augs: int, batch: int) -> dict[str, np.ndarray]:  # noqa: ANN001
    """What `iarmem localize` does per batch (mean statistic), without the run folder and figures."""
    col = MuCollector(iar, iar.unit_layers(), iar.bins(), view_indices(augs, False), seed=0)
    stats = UnitStats(col.layout.size)
    for s in range(0, len(ids), batch):
        b = ids[s:s + batch]
        stats.update(np.arange(s, s + len(b)), b, col(ds, b, pad_to=batch))
    um = unitmem(stats.max_F, mean_others(stats.total_F(), stats.max_F, stats.count)).numpy()
    out = {}
    for name, part in col.layout.split(um).items():
        out[name] = np.asarray(part).reshape(-1)
    for name, part in col.layout.split(stats.argmax_F.numpy()).items():
        out[name + "/argmax"] = np.asarray(part).reshape(-1)
    return out


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    iar = build(args.preset).eval()
    ds = bundled_mnist()
    ids = np.arange(args.n)
    fn = naive if args.variant == "naive" else streaming
    fn(iar, ds, ids[: args.batch_size], args.augs, args.batch_size)  # warm-up (fixed cost out of the figure)
    t0 = time.perf_counter()
    res = fn(iar, ds, ids, args.augs, args.batch_size)
    secs = time.perf_counter() - t0
    np.savez(args.out, **{k.replace("/", "|"): v for k, v in res.items()})
    print(json.dumps({"seconds": secs, "peak_mb": _peak_mb()}))


def run(variant: str, preset: str, n: int, args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--preset", preset, "--n", str(n), "--augs",
           str(args.augs), "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="tiny-var,tiny-rar")
    p.add_argument("--images", default="16,64", help="N, comma-separated")
    p.add_argument("--augs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", choices=["naive", "streaming"], help=argparse.SUPPRESS)
    p.add_argument("--preset", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.variant = args.child
        child(args)
        return
    import tempfile

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {args.threads} threads, A = {args.augs}, batch {args.batch_size}, "
          f"medians of {args.repeats}\n")
    print("| model | N | streaming s | naive s | time naive/streaming | streaming peak MB | naive peak MB | "
          "memory naive/streaming | max abs UnitMem diff | argmax agree |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            for n in (int(x) for x in args.images.split(",")):
                rows: dict[str, list[dict]] = {"streaming": [], "naive": []}
                for _ in range(args.repeats):
                    for v in rows:  # interleaved, so load drifts hit both
                        rows[v].append(run(v, preset, n, args, Path(tmp) / f"{v}.npz"))
                a, b = np.load(Path(tmp) / "streaming.npz"), np.load(Path(tmp) / "naive.npz")
                diff = max(float(np.abs(a[k] - b[k]).max()) for k in a.files if "|" not in k)
                agree = np.mean(np.concatenate([a[k] == b[k] for k in a.files if "|" in k]))
                med = {v: {k: statistics.median(x[k] for x in rs) for k in ("seconds", "peak_mb")}
                       for v, rs in rows.items()}
                s, nv = med["streaming"], med["naive"]
                print(f"| {preset} | {n} | {s['seconds']:.2f} | {nv['seconds']:.2f} | "
                      f"{nv['seconds'] / s['seconds']:.2f}x | {s['peak_mb']:.0f} | {nv['peak_mb']:.0f} | "
                      f"{nv['peak_mb'] / s['peak_mb']:.2f}x | {diff:.1e} | {agree:.4f} |", flush=True)


if __name__ == "__main__":
    main()
