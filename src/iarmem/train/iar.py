"""Train an IAR (VAR, RAR or LlamaGen) on pre-tokenized views of a planted training set.

The training set of a plan is tokenized once: view 0 is the evaluation crop, views 1.. are draws
of the family's training augmentation; each step picks a random view per row. The model folder
written at the end loads through the model interface like any official checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from iarmem.attack.scoring import describe_scored, score_tokens, scored_positions
from iarmem.data import ImageDataset, Plan, write_manifest
from iarmem.fileio import atomic_path, write_json
from iarmem.models.base import IAR, Tokens
from iarmem.models.loading import TRAINING_VIEWS, save_model_folder
from iarmem.models.registry import build
from iarmem.tokens import tokenize_views
from iarmem.train.loop import TrainConfig, Trainer
from iarmem.train.tokenizer import reconstruction_psnr

TOKENS_FILE = "tokens.safetensors"
MANIFEST_FILE = "manifest.json"
EVIDENCE_FILE = "evidence.json"


class TokenTable:
    """Token views of a set of dataset ids, looked up by id."""

    def __init__(self, ids: np.ndarray, tokens_NVL: torch.Tensor, labels_N: torch.Tensor):
        order = np.argsort(ids)
        self.ids = np.asarray(ids)[order]
        self.tokens_NVL = tokens_NVL[torch.from_numpy(order)]
        self.labels_N = labels_N[torch.from_numpy(order)]

    def rows(self, ids: np.ndarray) -> torch.Tensor:
        r = np.searchsorted(self.ids, ids)
        if np.any(r >= len(self.ids)) or np.any(self.ids[np.minimum(r, len(self.ids) - 1)] != ids):
            raise KeyError("ids missing from the token table")
        return torch.from_numpy(r)

    def get(self, ids: np.ndarray, view: torch.Tensor | int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.rows(np.asarray(ids))
        v = view if isinstance(view, torch.Tensor) else torch.full((len(r),), view)
        return self.tokens_NVL[r, v].long(), self.labels_N[r]

    @property
    def views(self) -> int:
        return self.tokens_NVL.shape[1]


def load_or_tokenize(iar: IAR, ds: ImageDataset, ids: np.ndarray, views: int, seed: int, folder: Path) -> TokenTable:
    """The token table of ``ids``, cached in ``folder`` (reused on resume)."""
    path = folder / TOKENS_FILE
    if path.exists():
        try:
            t = load_file(str(path))
            if t["tokens"].shape[1] == views and np.array_equal(t["ids"].numpy(), np.sort(ids)):
                return TokenTable(t["ids"].numpy(), t["tokens"], t["labels"])
        except (SafetensorError, OSError, ValueError, KeyError, IndexError):
            pass  # a damaged cache: tokenize again (the same tokens: views are seeded)
    ids = np.sort(ids)
    tokens, labels = tokenize_views(iar, ds, ids, views, seed, desc=f"tokenize {len(ids)} images x {views} views")
    with atomic_path(path) as tmp:
        save_file({"ids": torch.from_numpy(ids), "tokens": tokens, "labels": labels}, str(tmp))
    return TokenTable(ids, tokens, labels)


@torch.no_grad()
def memorization_evidence(iar: IAR, ds: ImageDataset, plan: Plan, table: TokenTable, seed: int,
                          sample: int = 200) -> dict[str, Any]:
    """Teacher-forced top-1 accuracy and tokenizer PSNR per set.

    Scored on the attack's positions (:func:`~iarmem.attack.scoring.scored_positions`), so "memorized"
    means the same thing in training evidence and in the attack's candidate scores."""
    iar.eval()
    pos = scored_positions(iar)
    rng = np.random.default_rng([seed, 11])
    ordinary = plan.ordinary_ids
    if len(ordinary) > sample:
        ordinary = np.sort(rng.choice(ordinary, size=sample, replace=False))
    out: dict[str, Any] = {"scored": describe_scored(iar, pos)}
    for name, ids in (("planted", plan.planted_ids), ("ordinary", ordinary), ("heldout", plan.heldout_ids)):
        if len(ids) == 0:
            continue
        accs = []
        for s in range(0, len(ids), 64):
            toks, labels = table.get(ids[s:s + 64], 0)
            sc = score_tokens(iar, Tokens(toks.to(iar.device), iar.grids), labels.to(iar.device), pos)
            accs.append(sc["top1"])
        acc = torch.cat(accs).numpy()
        p = reconstruction_psnr(iar, ds, ids, seed)
        out[name] = {"n": int(len(ids)), "top1": float(acc.mean()), "top1_min": float(acc.min()),
                     "psnr_db": float(p.mean())}
    if "planted" in out and "heldout" in out:
        out["gap_top1"] = out["planted"]["top1"] - out["heldout"]["top1"]
    return out


def train_iar(iar: IAR, ds: ImageDataset, plan: Plan, cfg: TrainConfig, folder: Path, *, views: int,
              preset: str | None, stop_after: int | None = None) -> dict[str, Any]:
    """Train ``iar.model`` (tokenizer frozen) on the plan's training index; write the model folder."""
    write_manifest(plan, folder / MANIFEST_FILE)
    table = load_or_tokenize(iar, ds, np.union1d(plan.train_ids, plan.heldout_ids), views, cfg.seed, folder)
    for p in iar.tokenizer.parameters():
        p.requires_grad_(False)
    iar.tokenizer.eval()
    dev = iar.device

    def loss_fn(batch: np.ndarray, gen: torch.Generator, step: int) -> torch.Tensor:
        view = torch.randint(0, table.views, (len(batch),), generator=gen)
        toks, labels = table.get(batch, view)
        return iar.training_loss(Tokens(toks.to(dev), iar.grids), labels.to(dev), generator=gen)

    trainer = Trainer(iar.model, loss_fn, plan.train_index(), cfg, folder, desc=f"train {iar.family}",
                      on_step=lambda step: iar.set_training_progress(step / cfg.steps))
    trainer.try_resume()
    trainer.run(stop_after)
    if trainer.step < cfg.steps:
        return {"step": trainer.step, "finished": False}
    iar.model.load_state_dict(trainer.final_state_dict())
    iar.eval()
    evidence = memorization_evidence(iar, ds, plan, table, cfg.seed)
    evidence["train_loss_first"] = trainer.history[0][1] if trainer.history else None
    evidence["train_loss_last"] = trainer.history[-1][1] if trainer.history else None
    write_json(folder / EVIDENCE_FILE, evidence)
    save_model_folder(iar, folder, preset=preset, extra={"dataset": plan.dataset, "manifest": MANIFEST_FILE,
                                                         TRAINING_VIEWS: {"views": views, "seed": cfg.seed}})
    return {"step": trainer.step, "finished": True, "evidence": evidence}


def initial_model(preset: str, seed: int, device: str | torch.device = "cpu") -> IAR:
    """A fresh model of ``preset`` whose initial weights are a function of ``seed`` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(np.random.default_rng([seed, 0x1417]).integers(2**62)))
        return build(preset).to(device)
