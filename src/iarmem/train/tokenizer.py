"""Train a family's tokenizer on a dataset; write it in the official key layout with a JSON config."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iarmem.data import ImageDataset
from iarmem.errors import UserError
from iarmem.fileio import write_json
from iarmem.models.base import IAR
from iarmem.models.checkpoint import load_into, read_state_dict, write_state_dict
from iarmem.models.registry import from_official
from iarmem.tokens import load_views
from iarmem.train.loop import TrainConfig, Trainer

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_FILE = "tokenizer.safetensors"


def psnr(a01: torch.Tensor, b01: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of two [B, 3, H, W] batches in [0, 1]."""
    mse = (a01.clamp(0, 1) - b01.clamp(0, 1)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def reconstruction_psnr(iar: IAR, ds: ImageDataset, ids: np.ndarray, seed: int, batch_size: int = 64) -> np.ndarray:
    """PSNR of tokenize -> decode on the evaluation view of each image."""
    out = []
    for s in range(0, len(ids), batch_size):
        x, _ = load_views(iar, ds, ids[s:s + batch_size], 0, seed)
        rec = iar.decode(iar.tokenize(x))
        out.append(psnr(iar.to_unit_range(rec), iar.to_unit_range(x)).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def train_tokenizer(iar: IAR, ds: ImageDataset, ids: np.ndarray, cfg: TrainConfig, folder: Path,
                    preset: str | None, stop_after: int | None = None) -> dict[str, Any]:
    """Train ``iar.tokenizer`` on ``ids`` with a fresh training augmentation at every step."""

    def loss_fn(batch: np.ndarray, _gen: torch.Generator, step: int) -> torch.Tensor:
        x, _ = load_views(iar, ds, batch, step + 1, cfg.seed)
        loss, _ = iar.tokenizer_loss(x)
        return loss

    trainer = Trainer(iar.tokenizer, loss_fn, ids, cfg, folder, desc=f"train {iar.family} tokenizer")
    trainer.try_resume()
    trainer.run(stop_after)
    if trainer.step < cfg.steps:
        return {"step": trainer.step, "finished": False}
    iar.tokenizer.load_state_dict(trainer.final_state_dict())
    iar.eval()
    write_state_dict(iar.tokenizer.state_dict(), folder / TOKENIZER_FILE)
    rng = np.random.default_rng([cfg.seed, 7])
    probe = np.sort(rng.choice(ids, size=min(256, len(ids)), replace=False))
    p = reconstruction_psnr(iar, ds, probe, cfg.seed)
    summary = {"step": trainer.step, "finished": True, "psnr_db": float(np.mean(p)),
               "final_loss": trainer.history[-1][1] if trainer.history else math.nan}
    tok_kwargs, mdl_kwargs = iar.official_kwargs()
    write_json(folder / TOKENIZER_JSON, {"family": iar.family, "preset": preset, "tokenizer_kwargs": tok_kwargs,
                                         "model_kwargs": mdl_kwargs, "tokenizer_file": TOKENIZER_FILE,
                                         "image_size": iar.image_size, "summary": summary})
    return summary


def load_tokenizer_folder(folder: str | Path, iar: IAR) -> Path:
    """Load a trained tokenizer folder into ``iar.tokenizer`` (strict); returns the weights file."""
    folder = Path(folder)
    meta_file = folder / TOKENIZER_JSON
    if not folder.exists():
        raise UserError(f"tokenizer folder {folder} not found; check the path or train one with "
                        f"`iarmem train tokenizer`")
    if not folder.is_dir():
        raise UserError(f"--tokenizer {folder} is a file; pass the folder written by `iarmem train tokenizer`")
    if not meta_file.is_file():
        raise UserError(f"{folder} holds no {TOKENIZER_JSON}: pass a folder written by `iarmem train tokenizer`")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{meta_file} is damaged ({e}); retrain with `iarmem train tokenizer`") from e
    missing = [k for k in ("tokenizer_kwargs", "model_kwargs", "tokenizer_file")
               if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise UserError(f"{meta_file} lacks {', '.join(missing)}; retrain with `iarmem train tokenizer`")
    if meta.get("family") != iar.family:
        raise UserError(f"{folder} holds a {meta.get('family')} tokenizer but the model is {iar.family}; train a "
                        f"{iar.family} tokenizer (`iarmem train tokenizer --preset ...`)")
    probe = from_official(iar.family, meta["tokenizer_kwargs"], meta["model_kwargs"])
    if probe.official_kwargs()[0] != iar.official_kwargs()[0]:
        raise UserError(f"the tokenizer in {folder} was trained for another architecture "
                        f"({meta.get('preset')}); train one for this preset")
    path = folder / meta["tokenizer_file"]
    load_into(iar.tokenizer, read_state_dict(path, "tokenizer checkpoint"), path, "tokenizer checkpoint")
    return path
