"""List the model presets: name, family, size, image and token layout, and the official files it loads
(`--hub`: the Hugging Face Hub files `--download` fetches, and their sizes)."""

from __future__ import annotations

import argparse
import json

import torch

from iarmem.errors import UserError
from iarmem.models import hub
from iarmem.models.registry import from_official, presets


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", choices=["var", "rar", "llamagen"], help="only this family")
    p.add_argument("--json", action="store_true", help="print JSON (name -> preset) instead of a table")
    p.add_argument("--hub", action="store_true",
                   help="list the Hugging Face Hub files `--download` fetches per preset, with their size where "
                        "they are cached (no network)")
    p.add_argument("--sizes", action="store_true", help="with --hub: ask the Hub for the sizes (network)")


def _hub_rows(family: str | None, online: bool) -> list[dict]:
    """Per preset with official files: what --download fetches, cached size, and (online) the Hub's size."""
    rows = []
    for p in sorted(presets().values(), key=lambda p: (p.family, p.name)):
        if family and p.family != family:
            continue
        for f in hub.preset_files(p.family, p.files):
            row = {"preset": p.name, "url": f.url, "cached_bytes": hub.cached_size(f)}
            if online:
                row["hub_bytes"] = hub.remote_size(f)
            rows.append(row)
    return rows


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f} MB"


def run(args: argparse.Namespace) -> int:
    if args.sizes and not args.hub:
        raise UserError("--sizes goes with --hub")
    if args.hub:
        rows_h = _hub_rows(args.family, args.sizes)
        if args.json:
            print(json.dumps(rows_h, indent=2))
            return 0
        print(f"{'preset':<16}{'cached':>12}{'on the Hub':>12}  file")
        for r in rows_h:
            print(f"{r['preset']:<16}{_mb(r['cached_bytes']):>12}{_mb(r.get('hub_bytes')):>12}  {r['url']}")
        return 0
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
