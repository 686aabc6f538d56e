"""The prompt-specific decision and the strong attack: what they cost against generation, and memory.

  .venv/bin/python benchmarks/decision_bench.py --repeats 3
  .venv/bin/python benchmarks/decision_bench.py --quick

For each preset (random weights: cost does not depend on what the weights learned; bundled MNIST):
1. the default attack's decision against its generation: the greedy generation of Q targets from
   the default prefix, and the nearest-other search of those Q generations over a pool of N images,
   for N = 1,000 and 5,000, two ways: tokenizing the pool's eval views in chunks (past the token
   budget, or a run that did not score the pool), and reading the tokens the scoring pass kept (the
   attack's usual case); medians of --repeats runs, ratios from the same run;
2. peak memory of the search in a fresh process (VmHWM) for N = 1,000 and 5,000: it must not grow
   with the pool (chunks of 256 ids);
3. the strong attack per target: every try on T targets and T held-out controls, split into
   generation, trigger search and decision (one run: minutes).
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch
from localize_bench import _peak_mb as peak_mb
from train_bench import timed

from iarmem.attack import AttackSettings
from iarmem.attack.decide import METRICS
from iarmem.attack.generate import default_prefix, generate_batch, prefix_tokens
from iarmem.attack.neighbours import nearest_other, token_similarity
from iarmem.attack.strong import run_strong
from iarmem.data import bundled_mnist
from iarmem.distributed import World
from iarmem.models import IAR, Tokens, build
from iarmem.tokens import load_views


def _setup(preset: str, q: int) -> tuple[IAR, object, np.ndarray, Tokens, torch.Tensor]:
    torch.manual_seed(0)
    iar = build(preset).eval()
    ds = bundled_mnist()
    ids = np.arange(q)
    x, y = load_views(iar, ds, ids, 0, 0)
    return iar, ds, ids, iar.tokenize(x), y


def _pool_tokens(iar: IAR, ds: object, p: np.ndarray) -> torch.Tensor:
    x, _ = load_views(iar, ds, p, 0, 0)
    return iar.tokenize(x).ids_BL.cpu()


def _search(iar: IAR, ds: object, ids: np.ndarray, gen: torch.Tensor, pool: int,
            kept: torch.Tensor | None = None) -> None:
    """The nearest-other search over ``pool`` images: tokenizing them, or reading ``kept`` tokens (the attack keeps
    the scoring pass's tokens within a memory budget)."""
    tokens_of = (lambda p: kept[torch.from_numpy(p)]) if kept is not None else (lambda p: _pool_tokens(iar, ds, p))
    start = prefix_tokens(iar, default_prefix(iar))
    nearest_other(ids, np.arange(pool), tokens_of, token_similarity(gen, start))


@torch.no_grad()
def decision_cost(preset: str, q: int, pools: list[int], repeats: int) -> dict:
    iar, ds, ids, gt, y = _setup(preset, q)
    prefix = default_prefix(iar)
    gen = generate_batch(iar, gt, y, prefix).ids_BL.cpu()
    row = {"preset": preset, "targets": q,
           "generate_s": timed(lambda: generate_batch(iar, gt, y, prefix), repeats)}
    for n in pools:
        kept = torch.cat([_pool_tokens(iar, ds, np.arange(a, min(a + 256, n))) for a in range(0, n, 256)])
        row[f"search_{n}_s"] = timed(lambda n=n: _search(iar, ds, ids, gen, n), repeats)
        row[f"kept_{n}_s"] = timed(lambda n=n, k=kept: _search(iar, ds, ids, gen, n, k), repeats)
    return row


def _child(preset: str, q: int, pool: int) -> None:
    torch.set_num_threads(1)
    iar, ds, ids, gt, y = _setup(preset, q)
    with torch.no_grad():
        gen = generate_batch(iar, gt, y, default_prefix(iar)).ids_BL.cpu()
        _search(iar, ds, ids, gen, 10)  # the fixed cost first
        base = peak_mb()
        _search(iar, ds, ids, gen, pool)
    print(json.dumps({"pool": pool, "peak_mb_fixed": round(base, 1), "peak_mb": round(peak_mb(), 1)}))


def memory(preset: str, q: int, pools: list[int]) -> list[dict]:
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    for n in pools:
        cmd = [sys.executable, __file__, "--child", preset, str(q), str(n)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        rows.append({"preset": preset, **json.loads(out.strip().splitlines()[-1])})
    return rows


def strong_cost(preset: str, t: int, trigger_steps: int) -> dict:
    iar, ds, _, _, _ = _setup(preset, 1)
    ids = np.arange(2 * t)
    x, y = load_views(iar, ds, ids, 0, 0)
    gt = iar.tokenize(x).ids_BL.to("cpu", torch.int32)
    held = np.arange(2 * t) >= t
    s = AttackSettings(calibrate=True, trigger_steps=trigger_steps).validate()
    t0 = time.perf_counter()
    res = run_strong(iar, ds, ids, y.numpy(), held, gt, np.arange(1000), METRICS["tokens"], default_prefix(iar), s,
                     {}, World())
    total = time.perf_counter() - t0
    return {"preset": preset, "targets": 2 * t, "tries": len(res.tries), "total_s": total,
            "generation_and_trigger_s": res.timing["generation_s"],
            "decision_s": total - res.timing["generation_s"], "per_target_s": total / (2 * t)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="tiny-var,tiny-rar,tiny-llamagen")
    p.add_argument("--targets", type=int, default=70, help="generations judged (default 70: 50 candidates + 20)")
    p.add_argument("--pools", default="1000,5000")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--strong-targets", type=int, default=10, help="strong attack: targets (and as many held-out)")
    p.add_argument("--trigger-steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="one preset, small sizes: a smoke run")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    presets = a.presets.split(",")
    pools = [int(x) for x in a.pools.split(",")]
    if a.quick:
        presets, pools, a.repeats, a.strong_targets, a.trigger_steps = presets[:1], [200, 400], 1, 2, 3
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{a.threads} threads\n")
    heads = " | ".join(f"search N={n}, tokenizing (s) | / generate | tokens kept (s) | / generate" for n in pools)
    print(f"| preset | generations | generate (s) | {heads} |")
    print("|---|---|---|" + "---|---|---|---|" * len(pools))
    for pr in presets:
        r = decision_cost(pr, a.targets, pools, a.repeats)
        cells = " | ".join(f"{r[f'search_{n}_s']:.2f} | {r[f'search_{n}_s'] / r['generate_s']:.2f}x | "
                           f"{r[f'kept_{n}_s']:.3f} | {r[f'kept_{n}_s'] / r['generate_s']:.2f}x" for n in pools)
        print(f"| {pr} | {r['targets']} | {r['generate_s']:.2f} | {cells} |")
    print("\n| preset | pool N | peak MB (fixed cost, N = 10) | peak MB (N) |\n|---|---|---|---|")
    for pr in presets:
        for r in memory(pr, a.targets, pools):
            print(f"| {pr} | {r['pool']} | {r['peak_mb_fixed']} | {r['peak_mb']} |")
    print("\n| preset | targets + held-out | tries | total (s) | generation + trigger (s) | decision (s) | s / image |")
    print("|---|---|---|---|---|---|---|")
    for pr in presets:
        r = strong_cost(pr, a.strong_targets, a.trigger_steps)
        print(f"| {pr} | {r['targets']} | {r['tries']} | {r['total_s']:.1f} | {r['generation_and_trigger_s']:.1f} | "
              f"{r['decision_s']:.1f} | {r['per_target_s']:.2f} |")


if __name__ == "__main__":
    main()
