"""The repair's probes: what judging them by the strong attack's joint rule costs against agreement alone.

  .venv/bin/python benchmarks/probe_bench.py --repeats 5
  .venv/bin/python benchmarks/probe_bench.py --presets tiny-rar --pools 1000,4000 --targets 8

For each preset (random weights, random eval tokens): ``--targets`` images, each probed by the default greedy try
and one sampled try from its own prompt, answered with ``probe.stopped`` under the agreement rule (generation and
a token comparison) and under the joint rule (the same, plus the nearest other image of a pool of P token rows,
searched in chunks as the strong attack does). Medians of --repeats timed runs after one warm-up, the two rules
interleaved; the ratio is the median of the paired ratios. The pool's tokens are given (in a repair they are
cached by the first strong attack). Markdown out.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from iarmem.attack.generate import GREEDY, Decoding, default_prefix
from iarmem.attack.strong import Try
from iarmem.mitigate import probe
from iarmem.models import build


@torch.no_grad()
def bench(preset: str, targets: int, pool_size: int, repeats: int) -> dict:
    torch.manual_seed(0)
    iar = build(preset).eval()
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, iar.vocab_size, (pool_size, iar.seq_len), generator=g, dtype=torch.int32)
    tokens = {i: rows[i] for i in range(targets)}
    labels = {i: i % iar.num_classes for i in range(targets)}
    tries = (Try(default_prefix(iar), GREEDY), Try(0, Decoding(greedy=False, seed=1)))
    # bars no generation of random weights clears: every probe is judged in full, none stops early
    agreement = [probe.Probe(i, i, t, -1.0) for i in range(targets) for t in tries]
    joint = [probe.Probe(i, i, t, -1.0, -1.0) for i in range(targets) for t in tries]
    pool = (np.arange(pool_size), lambda ids: rows[torch.as_tensor(ids)])

    def run(probes: list[probe.Probe]) -> None:
        probe.stopped(iar, probes, tokens, labels, 0.05, pool=pool)

    run(agreement), run(joint)  # warm-up
    times: dict[str, list[float]] = {"agreement": [], "joint": []}
    for _ in range(repeats):  # interleaved, so a busy machine slows both alike
        for name, probes in (("agreement", agreement), ("joint", joint)):
            t0 = time.perf_counter()
            run(probes)
            times[name].append(time.perf_counter() - t0)
    a, j = (statistics.median(times[k]) for k in ("agreement", "joint"))
    pairs = statistics.median(x / y for x, y in zip(times["joint"], times["agreement"]))
    return {"preset": preset, "probes": len(joint), "pool": pool_size, "agreement_s": a, "joint_s": j,
            "ratio": pairs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="tiny-var,tiny-rar")
    p.add_argument("--targets", type=int, default=8)
    p.add_argument("--pools", default="1000,4000", help="pool sizes (the repair's: training + held-out images)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} thread(s)\n")
    print("| model | probes | pool | agreement rule (s) | joint rule (s) | joint / agreement |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        for n in (int(x) for x in args.pools.split(",")):
            r = bench(preset, args.targets, n, args.repeats)
            print(f"| {preset} | {r['probes']} | {n} | {r['agreement_s']:.3f} | {r['joint_s']:.3f} | "
                  f"{r['ratio']:.2f}x |")


if __name__ == "__main__":
    main()
