"""The duplication curve (DUP): how memorization grows with the copies of an image in training.

Real training sets hold a few images many times and most once; the demo's regime (planted copies
over a third of the samples) is not that. This stage trains a model of MODEL's preset, with
MODEL's tokenizer, on a graded plan (``--dup-levels``, e.g. 1, 2, 4, 8, 16, 32 copies, the same
number of planted images at each level, planted samples a small share of the epoch), caches it,
and measures per level: the share reproduced by the greedy attack from the default prefix (above
the attack's 90 % bar), teacher-forced top-1 on the scored positions, and membership (loss and
guidance-difference AUC against the held-out images).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iarmem.attack.generate import agreements
from iarmem.attack.membership import membership_scores, roc_auc
from iarmem.attack.scoring import score_tokens, scored_positions
from iarmem.bench.score import bootstrap_interval
from iarmem.data import ImageDataset
from iarmem.data.planting import Plan, make_plan, read_manifest
from iarmem.errors import UserError
from iarmem.fileio import write_json
from iarmem.models.base import IAR
from iarmem.models.loading import open_model
from iarmem.progress import log
from iarmem.runs import start_run
from iarmem.tokens import load_views
from iarmem.train.iar import initial_model, train_iar
from iarmem.train.recipes import recipe

LEVELS = (1, 2, 4, 8, 16, 32)
MAX_SHARE = 0.10  # planted samples at most this share of an epoch: duplicates are rare in real data


@dataclass(frozen=True)
class DupSettings:
    levels: tuple[int, ...] = LEVELS
    per_level: int = 4  # planted images at each level
    ordinary: int = 2500
    steps: int | None = None  # None: twice the preset's recipe (more samples per epoch than the demo)
    views: int = 4
    bar: float = 0.9

    def validate(self, num_images: int) -> None:
        if len(self.levels) < 2 or min(self.levels) < 1 or len(set(self.levels)) != len(self.levels):
            raise UserError(f"--dup-levels needs at least 2 distinct copy counts >= 1, got {list(self.levels)}")
        if self.per_level < 1 or self.ordinary < 1 or (self.steps is not None and self.steps < 1):
            raise UserError("--dup-per-level, --dup-ordinary and --dup-steps must be >= 1")
        need = 2 * self.per_level * len(self.levels) + self.ordinary
        if need > num_images:
            raise UserError(f"the duplication plan needs {need} images but the dataset has {num_images}; "
                            f"lower --dup-ordinary or --dup-per-level")

    @property
    def planted_share(self) -> float:
        planted = self.per_level * sum(self.levels)
        return planted / (planted + self.ordinary)


def cache_name(preset: str, s: DupSettings, steps: int, seed: int) -> str:
    """The cached model's folder name: everything that shapes the model."""
    levels = "-".join(str(c) for c in s.levels)
    return f"{preset}-dup{levels}x{s.per_level}-n{s.ordinary}-v{s.views}-steps{steps}-s{seed}"


def train_dup_model(base: IAR, preset: str, ds: ImageDataset, data: str, s: DupSettings, cache: Path,
                    seed: int) -> Path:
    """Train (or reuse, or resume) the graded model in ``cache``; its folder."""
    cfg = recipe(preset, "iar")
    cfg.steps = s.steps if s.steps is not None else 2 * cfg.steps
    cfg.seed = seed
    folder = cache / cache_name(preset, s, cfg.steps, seed)
    plan = make_plan(ds.labels, num_train=s.ordinary, plant=s.per_level * len(s.levels), copies=list(s.levels),
                     seed=seed, dataset=ds.describe())
    settings = {"target": base.family, "preset": preset, "data": ds.describe(), "num_train": s.ordinary,
                "plant": s.per_level * len(s.levels), "copies": list(s.levels), "views": s.views,
                "train": asdict(cfg), "tokenizer_from": "the bench's MODEL"}
    run = start_run(folder, "train", settings, {"data": data}, seed=seed, resume=folder.is_dir())
    if run.done:
        log(f"bench dup: reusing {folder}")
        return folder
    log(f"bench dup: training {preset} on {len(plan.train_index())} samples per epoch "
        f"({100 * s.planted_share:.1f} % planted), {cfg.steps} steps -> {folder}")
    iar = initial_model(preset, seed, base.device)
    iar.tokenizer.load_state_dict(base.tokenizer.state_dict())
    with torch.enable_grad():
        result = train_iar(iar, ds, plan, cfg, folder, views=s.views, preset=preset)
    run.finish(["model.safetensors", "tokenizer.safetensors", "model.json", "manifest.json", "evidence.json",
                "train_log.csv"], {"evidence": result["evidence"]})
    return folder


@torch.no_grad()
def measure(iar: IAR, ds: ImageDataset, plan: Plan, seed: int, bar: float, batch: int = 32) -> list[dict[str, Any]]:
    """One record per planted and held-out image: level (0: held out), greedy agreement, top-1, membership."""
    iar.eval()
    ids = np.concatenate([plan.planted_ids, plan.heldout_ids])
    levels = np.concatenate([plan.planted_copies, np.zeros(len(plan.heldout_ids), dtype=np.int64)])
    pos = scored_positions(iar)
    out = []
    for lo in range(0, len(ids), batch):
        x, y = load_views(iar, ds, ids[lo:lo + batch], 0, seed)
        tokens = iar.tokenize(x)
        agree = agreements(iar, tokens, y)
        top1 = score_tokens(iar, tokens, y, pos)["top1"]
        mia = membership_scores(iar.logits(tokens, y), iar.logits(tokens, y, unconditional=True), tokens.ids_BL)
        for j in range(len(y)):
            out.append({"image": int(ids[lo + j]), "copies": int(levels[lo + j]), "agreement": float(agree[j]),
                        "extracted": bool(agree[j] > bar), "top1": float(top1[j]),
                        "mia_loss": float(mia["mia_loss"][j]), "mia_cfg": float(mia["mia_cfg"][j])})
    return out


def summarize_dup(records: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Per level (0 = held out): extraction share with a bootstrap interval, top-1, membership AUC."""
    held = [r for r in records if r["copies"] == 0]
    rows = []
    for level in sorted({r["copies"] for r in records}):
        rs = [r for r in records if r["copies"] == level]
        ext = [float(r["extracted"]) for r in rs]
        lo, hi = bootstrap_interval(ext, seed)
        row = {"copies": level, "images": len(rs), "extracted": float(np.mean(ext)), "extracted_ci95": [lo, hi],
               "agreement": float(np.mean([r["agreement"] for r in rs])),
               "top1": float(np.mean([r["top1"] for r in rs]))}
        if level:
            for stat in ("mia_loss", "mia_cfg"):
                row[f"auc_{stat}"] = roc_auc(np.array([r[stat] for r in rs]), np.array([r[stat] for r in held]))
        rows.append(row)
    return rows


def run_dup(iar: IAR, preset: str, ds: ImageDataset, data: str, s: DupSettings, out: Path, cache: Path,
            seed: int) -> dict[str, Any]:
    """The DUP stage: train or reuse the graded model, measure it (``out``/dup.json, reused when present)."""
    path = out / "dup.json"
    if path.is_file():
        return json.loads(path.read_text())
    s.validate(len(ds))
    folder = train_dup_model(iar, preset, ds, data, s, cache, seed)
    model, _ = open_model(str(folder), device=iar.device)
    plan = read_manifest(folder / "manifest.json")
    log(f"bench dup: measuring {len(plan.planted_ids)} planted and {len(plan.heldout_ids)} held-out images")
    records = measure(model, ds, plan, seed, s.bar)
    evidence = json.loads((folder / "evidence.json").read_text())
    result = {"model": str(folder), "planted_share": s.planted_share, "levels": list(s.levels),
              "records": records, "rows": summarize_dup(records, seed), "evidence": evidence}
    write_json(path, result)
    return result


def dup_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per duplication level."""
    lines = ["| copies | images | reproduced (95 % CI) | agreement | top-1 | membership AUC (loss / cfg) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        auc = "held out" if not r["copies"] else f"{r['auc_mia_loss']:.2f} / {r['auc_mia_cfg']:.2f}"
        ci = r["extracted_ci95"]
        lines.append(f"| {r['copies']} | {r['images']} | {r['extracted']:.2f} ({ci[0]:.2f}-{ci[1]:.2f}) | "
                     f"{r['agreement']:.2f} | {r['top1']:.3f} | {auc} |")
    return "\n".join(lines) + "\n"
