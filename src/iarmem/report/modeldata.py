"""The models-and-data part of the report: what each model is, what it was trained on, what was
planted, and the training evidence that the planted images were memorized."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from iarmem.report.discover import ModelGroup
from iarmem.report.fmt import DASH, GROUPS, as_dict, num
from iarmem.report.html import badge, esc, note, table


def _safetensors_params(path: Path) -> int | None:
    """Number of parameters in a safetensors file, from its header alone (no tensor is read)."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100_000_000:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return None
    total = 0
    for key, meta in header.items():
        if key != "__metadata__" and isinstance(meta, dict):
            n = 1
            for d in meta.get("shape", []):
                n *= int(d)
            total += n
    return total


def _params(n: int | None) -> str:
    if n is None:
        return DASH
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def _model_files(g: ModelGroup) -> tuple[Path | None, Path | None]:
    """The transformer and tokenizer files of a group's unedited model, when they are on this machine."""
    train = next(iter(g.of("train")), None)
    src: dict[str, Any] = {}
    if train is not None:
        cfg = as_dict(train.json("model.json"))
        src = {"model_file": str(train.path / cfg.get("model_file", "model.safetensors")),
               "tokenizer_file": str(train.path / cfg.get("tokenizer_file", "tokenizer.safetensors"))}
    else:
        for r in g.runs:
            if r.variant is not None and r.variant.role == "unedited" and r.source.get("model_file"):
                src = r.source
                break
    out = []
    for key in ("model_file", "tokenizer_file"):
        p = Path(src[key]) if src.get(key) else None
        out.append(p if p is not None and p.is_file() and p.suffix == ".safetensors" else None)
    return out[0], out[1]


def _manifest(g: ModelGroup) -> dict[str, Any]:
    for r in g.of("train", "mitigate"):
        m = r.json("manifest.json")
        if isinstance(m, dict):
            return m
    return {}


def _dataset(g: ModelGroup) -> str:
    for r in g.of("train", "localize", "extract", "evaluate", "sweep"):
        data = (r.record.get("settings") or {}).get("data")
        if data:
            return str(data)
    return ""


def _planting(g: ModelGroup) -> str:
    m = _manifest(g)
    if m:
        count = {k: len(as_dict(m.get(k)).get("ids") or []) for k in GROUPS}
        return (f"{count['planted']} planted &times; {m.get('copies', '?')} copies, {count['ordinary']:,} ordinary, "
                f"{count['heldout']} held out")
    for r in g.of("extract"):
        by = as_dict(as_dict(r.json("summary.json")).get("by_group"))
        known = [k for k in GROUPS if isinstance(as_dict(by.get(k)).get("in_plan"), int)]
        if known:
            return ", ".join(f"{by[k]['in_plan']} {k.replace('heldout', 'held out')}" for k in known)
    return "no planting manifest (ground truth unknown)"


def _tokenizer_psnr(g: ModelGroup) -> str:
    for r in g.of("tokenizer"):
        s = as_dict(r.record.get("summary")) or as_dict(as_dict(r.json("tokenizer.json")).get("summary"))
        if isinstance(s.get("psnr_db"), (int, float)):
            return f"{s['psnr_db']:.2f} dB"
    return DASH


def _training(g: ModelGroup) -> str:
    train = next(iter(g.of("train")), None)
    if train is None:
        return "not trained here"
    tr = as_dict(as_dict(train.record.get("settings")).get("train"))
    ev = as_dict(as_dict(train.record.get("summary")).get("evidence")) or as_dict(train.json("evidence.json"))
    parts = [f"{tr['steps']} steps x batch {tr.get('batch_size', '?')}"] if tr.get("steps") else []
    if isinstance(ev.get("train_loss_last"), (int, float)):
        parts.append(f"loss {ev.get('train_loss_first', float('nan')):.2f} &rarr; {ev['train_loss_last']:.2f}")
    return ", ".join(parts) + ("" if train.finished else " " + badge("unfinished"))


def models_section(groups: list[ModelGroup]) -> str:
    rows = []
    for g in groups:
        model_file, tok_file = _model_files(g)
        params = _params(_safetensors_params(model_file) if model_file else None)
        tok_params = _params(_safetensors_params(tok_file) if tok_file else None)
        rows.append([f"<b>{esc(g.label)}</b>", esc(g.family or DASH), esc(g.preset or DASH),
                     f"{params} / {tok_params}", esc(_dataset(g) or DASH), _planting(g), _tokenizer_psnr(g),
                     _training(g), str(len(g.runs))])
    body = table(["model", "family", "preset", "parameters: model / tokenizer", "dataset", "planting",
                  "tokenizer PSNR", "training", "runs"], rows, id_="models", wide=(4, 5, 7), stack=True)
    body += note("Parameters are counted from the safetensors files when they are on this machine. Planted images "
                 "are duplicated in training (copies per epoch); held-out images are never trained on and serve as "
                 "the control of every measurement.")
    body += "<h3>Memorization evidence of training</h3>" + evidence_table(groups)
    return body


def evidence_table(groups: list[ModelGroup]) -> str:
    rows, scored = [], set()
    for g in groups:
        for train in g.of("train"):
            ev = as_dict(train.json("evidence.json")) or as_dict(as_dict(train.record.get("summary")).get("evidence"))
            if not ev:
                continue
            scored.add(str(ev.get("scored", "")))
            for k in GROUPS:
                e = as_dict(ev.get(k))
                if e:
                    rows.append([f"<b>{esc(g.label)}</b>", esc(k.replace("heldout", "held-out")), num(e.get("n")),
                                 num(e.get("top1"), 3), num(e.get("top1_min"), 3), num(e.get("psnr_db"), 4)])
            if isinstance(ev.get("gap_top1"), (int, float)):
                rows.append([f"<b>{esc(g.label)}</b>", "gap planted &minus; held-out", "", num(ev["gap_top1"], 3),
                             "", ""])
    if not rows:
        return note("No training evidence (evidence.json): the models were not trained by `iarmem train` here.")
    what = ", ".join(sorted(s for s in scored if s)) or "the scored positions"
    return (table(["model", "images", "n", "teacher-forced top-1 (mean)", "top-1 (min)", "tokenizer PSNR (dB)"],
                  rows, id_="evidence", numeric=[False, False, True, True, True, True])
            + note(f"Teacher-forced top-1 accuracy on the ground-truth tokens ({esc(what)}): planted images near 1 "
                   "and held-out images well below show the planted images were memorized."))
