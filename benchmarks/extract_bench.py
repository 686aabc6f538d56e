"""Extraction-attack cost on this machine: scoring and generation speed, and generation against a pass.

  .venv/bin/python benchmarks/extract_bench.py --repeats 5
  .venv/bin/python benchmarks/extract_bench.py --presets var-d16 --images 4 --batch-size 2 --repeats 3

For each preset (random weights, bundled MNIST at the preset's resolution):
- candidates scored per second: `score_images` end to end (load the eval view, tokenize, one
  teacher-forced conditional pass, top-1 / probability / loss of the scored positions);
- images generated per second: the attack's greedy, conditional, KV-cached generation from the
  default ground-truth prefix (VAR: 4 scales; per-token families: the scaled-down token prefix);
- generation time / one teacher-forced pass over the same tokens and labels (same batches);
- per-token families: the same generation without the KV cache, and the cache's speed-up;
- the strong attack's sampled try (temperature 1, no prefix): draws seeded per image id (one generator per
  row, what the attack does since 2026-12-03) against one generator per batch, and their ratio.
Medians of --repeats timed runs after one warm-up; ratios come from the same run. Markdown out.
"""

from __future__ import annotations

import argparse
import os
import platform

import numpy as np
import torch
from train_bench import timed  # the same median-after-warm-up timer (benchmarks/ is the script folder)

from iarmem.attack import score_images
from iarmem.attack.generate import Decoding, default_prefix, generate_batch, is_multiscale, prefix_tokens
from iarmem.data import bundled_mnist
from iarmem.models import build
from iarmem.tokens import load_views


@torch.no_grad()
def bench(preset: str, images: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    iar = build(preset).eval()
    ds = bundled_mnist()
    ids = np.arange(images)
    batches = [ids[s:s + batch] for s in range(0, images, batch)]
    pre = []
    for b in batches:
        x, y = load_views(iar, ds, b, 0, seed=0)
        pre.append((iar.tokenize(x), y))
    prefix = default_prefix(iar)

    def score() -> None:
        score_images(iar, ds, ids, batch_size=batch)

    def teacher_forced() -> None:
        for tok, y in pre:
            iar.logits(tok, y)

    def gen(use_cache: bool) -> None:
        for tok, y in pre:
            if use_cache:
                generate_batch(iar, tok, y, prefix)
            else:
                iar.generate(y, prefix=tok, prefix_len=prefix, greedy=True, cfg=None, use_cache=False)

    sampled = Decoding(greedy=False, seed=1)

    def gen_sampled(per_image: bool) -> None:
        for b, (tok, y) in zip(batches, pre):
            generate_batch(iar, tok, y, 0, decoding=sampled, row_seeds=b.tolist() if per_image else None)

    t_score = timed(score, repeats)
    t_pass = timed(teacher_forced, repeats)
    t_gen = timed(lambda: gen(True), repeats)
    multiscale = is_multiscale(iar)
    t_nocache = None if multiscale else timed(lambda: gen(False), max(1, repeats // 2))
    t_batch_seed = timed(lambda: gen_sampled(False), repeats)
    t_row_seed = timed(lambda: gen_sampled(True), repeats)
    return {"preset": preset, "tokens": iar.seq_len, "params": sum(p.numel() for p in iar.model.parameters()),
            "prefix": f"{prefix} scales" if multiscale else f"{prefix_tokens(iar, prefix)} tokens",
            "images": images, "batch": batch, "score_s": images / t_score, "gen_s": images / t_gen,
            "gen_over_pass": t_gen / t_pass, "nocache_over_cache": None if t_nocache is None else t_nocache / t_gen,
            "sampled_s": images / t_row_seed, "row_over_batch": t_row_seed / t_batch_seed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="tiny-var,tiny-rar,tiny-llamagen")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, medians of {args.repeats}\n")
    print("| model | tokens | IAR params | images (batch) | prefix | scored/s | generated/s | "
          "generation / teacher-forced pass | uncached / cached | sampled/s (per-image draws) | "
          "per-image / per-batch draws |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        r = bench(preset, args.images, args.batch_size, args.repeats)
        nc = "-" if r["nocache_over_cache"] is None else f"{r['nocache_over_cache']:.1f}x"
        print(f"| {r['preset']} | {r['tokens']} | {r['params'] / 1e6:.1f}M | {r['images']} ({r['batch']}) | "
              f"{r['prefix']} | {r['score_s']:.1f} | {r['gen_s']:.1f} | {r['gen_over_pass']:.2f}x | {nc} | "
              f"{r['sampled_s']:.1f} | {r['row_over_batch']:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
