"""Training and generation speed of the tiny presets on this machine.

  .venv/bin/python benchmarks/train_bench.py --repeats 7

For each tiny preset: seconds per optimizer step of the tokenizer (batch 32) and of the IAR
(batch 64), the parameter counts, and greedy generation of 64 images with and without the KV
cache (the ratio comes from the same run). Medians of --repeats timed repetitions after one
warm-up. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from iarmem.data import bundled_mnist
from iarmem.models import build
from iarmem.tokens import load_views


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def bench(preset: str, repeats: int) -> dict:
    torch.manual_seed(0)
    iar = build(preset)
    ds = bundled_mnist()
    x, y = load_views(iar, ds, np.arange(64), 1, seed=0)
    tokens = iar.tokenize(x)
    opt_t = torch.optim.AdamW(iar.tokenizer.parameters(), 1e-4)
    opt_m = torch.optim.AdamW(iar.model.parameters(), 1e-4)

    def tok_step() -> None:
        loss, _ = iar.tokenizer_loss(x[:32])
        opt_t.zero_grad()
        loss.backward()
        opt_t.step()

    def iar_step() -> None:
        loss = iar.training_loss(tokens, y, generator=torch.Generator().manual_seed(0))
        opt_m.zero_grad()
        loss.backward()
        opt_m.step()

    iar.train()
    t_tok, t_iar = timed(tok_step, repeats), timed(iar_step, repeats)
    iar.eval()
    t_gen = timed(lambda: iar.generate(y, use_cache=True), repeats)
    t_nocache = timed(lambda: iar.generate(y, use_cache=False), max(1, repeats // 2))
    return {"preset": preset, "tok_params": sum(p.numel() for p in iar.tokenizer.parameters()),
            "iar_params": sum(p.numel() for p in iar.model.parameters()), "tokens": iar.seq_len,
            "tok_step": t_tok, "iar_step": t_iar, "gen": t_gen, "gen_nocache": t_nocache}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny-var,tiny-rar,tiny-llamagen")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, medians of {args.repeats}\n")
    print("| preset | tokens | tokenizer params | IAR params | tokenizer step (b32) | IAR step (b64) | "
          "generate 64, KV cache | without cache | cache speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        r = bench(preset, args.repeats)
        print(f"| {r['preset']} | {r['tokens']} | {r['tok_params'] / 1e6:.2f}M | {r['iar_params'] / 1e6:.2f}M | "
              f"{r['tok_step']:.3f} s | {r['iar_step']:.3f} s | {r['gen']:.3f} s | {r['gen_nocache']:.3f} s | "
              f"{r['gen_nocache'] / r['gen']:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
