"""List the model presets: name, family, size, image and token layout, and the official files it loads."""

from __future__ import annotations

import argparse
import json

import torch

from iarmem.models.registry import from_official, presets


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", choices=["var", "rar", "llamagen"], help="only this family")
    p.add_argument("--json", action="store_true", help="print JSON (name -> preset) instead of a table")


def run(args: argparse.Namespace) -> int:
    rows = []
    for p in sorted(presets().values(), key=lambda p: (p.family, p.name)):
        if args.family and p.family != args.family:
            continue
        with torch.device("meta"):
            iar = from_official(p.family, p.tokenizer_kwargs, p.model_kwargs)
        n = sum(x.numel() for x in iar.model.parameters())
        rows.append({"name": p.name, "family": p.family, "params": p.params or f"{n / 1e6:.1f}M",
                     "image": iar.image_size, "tokens": iar.seq_len, "units_per_block": iar.unit_layers()[0].width,
                     "blocks": len(iar.unit_layers()), "files": list(p.files), "description": p.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = f"{'preset':<18}{'family':<10}{'params':>8}{'image':>7}{'tokens':>8}{'blocks':>8}  files"
    print(head)
    for r in rows:
        files = " + ".join(f for f in r["files"] if f) or "(trained by iarmem train)"
        print(f"{r['name']:<18}{r['family']:<10}{r['params']:>8}{r['image']:>7}{r['tokens']:>8}{r['blocks']:>8}  "
              f"{files}")
    return 0
