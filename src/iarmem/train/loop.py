"""One small training loop for tokenizers and IARs: AdamW, warmup + cosine, clipping, EMA, resume.

Every random choice is a function of (seed, step): the batch order comes from a per-epoch
permutation, and the step's torch generator (label dropout, random order) and the global RNG
(dropout layers) are reseeded from it. So a run killed at any point and resumed from its last
checkpoint ends with the same weights as a run that was never stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from iarmem.errors import UserError
from iarmem.fileio import atomic_path, write_text
from iarmem.progress import log, progress

STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.csv"


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema: float = 0.0
    ckpt_every: int = 100
    log_every: int = 10
    seed: int = 0

    def validate(self) -> None:
        checks = [
            (self.steps >= 1, "--steps must be >= 1"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.lr > 0 and math.isfinite(self.lr), "--lr must be a finite number > 0"),
            (self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (0 <= self.ema < 1, "--ema must lie in [0, 1)"),
            (self.warmup_steps >= 0, "--warmup-steps must be >= 0"),
            (self.grad_clip >= 0, "--grad-clip must be >= 0 (0: no clipping)"),
            (self.ckpt_every >= 1, "--ckpt-every must be >= 1"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must lie in [0, 1]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)

    def lr_at(self, step: int) -> float:
        """Linear warmup, then cosine decay to lr * min_lr_ratio at the last step."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def batch_ids(index: np.ndarray, step: int, batch_size: int, seed: int) -> np.ndarray:
    """The rows of ``index`` used at ``step``: epochs are seeded permutations, last partial batch dropped."""
    n = len(index)
    if n < batch_size:
        batch_size = n
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch, 0xBA7C4]).permutation(n)
    return index[order[k * batch_size:(k + 1) * batch_size]]


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.default_rng([seed, step, 0x5EED]).integers(2**62)))


LossFn = Callable[[np.ndarray, torch.Generator, int], Tensor]


class Trainer:
    """Optimizes ``module`` on ``loss_fn(batch_ids, generator, step)``; checkpoints in ``folder``."""

    def __init__(self, module: nn.Module, loss_fn: LossFn, index: np.ndarray, cfg: TrainConfig, folder: Path,
                 desc: str = "train", on_step: Callable[[int], None] | None = None):
        cfg.validate()
        self.module, self.loss_fn, self.index, self.cfg = module, loss_fn, np.asarray(index), cfg
        self.folder, self.desc, self.on_step = Path(folder), desc, on_step
        params = [p for p in module.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
        )
        self.ema: dict[str, Tensor] | None = (
            {k: v.detach().clone() for k, v in module.state_dict().items()} if cfg.ema > 0 else None
        )
        self.step = 0
        self.history: list[tuple[int, float, float, float]] = []

    # ---- checkpoints ------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"step": torch.tensor(self.step), "model": self.module.state_dict(), "opt": self.opt.state_dict(),
                "ema": self.ema or {}, "history": torch.tensor(self.history, dtype=torch.float64).reshape(-1, 4),
                "config": {k: torch.tensor(float(v), dtype=torch.float64) for k, v in asdict(self.cfg).items()}}

    def save(self) -> None:
        with atomic_path(self.folder / STATE_FILE) as tmp:
            torch.save(self._state(), tmp)

    def try_resume(self) -> bool:
        path = self.folder / STATE_FILE
        if not path.exists():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"cannot resume from {path}: damaged ({str(e).splitlines()[0][:120]}); pass --overwrite "
                            f"to start again") from e
        saved = {k: v.item() for k, v in state["config"].items()}
        mine = asdict(self.cfg)
        diff = [k for k in mine if k in saved and not math.isclose(float(saved[k]), float(mine[k]))]
        if diff:
            raise UserError(f"cannot resume from {path}: it was trained with other settings ({', '.join(diff)}); "
                            f"use the same options or pass --overwrite")
        self.module.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        if self.ema is not None:
            self.ema = {k: v.clone() for k, v in state["ema"].items()}
        self.step = int(state["step"])
        self.history = [tuple(r) for r in state["history"].tolist()]  # type: ignore[misc]
        log(f"{self.desc}: resuming at step {self.step}/{self.cfg.steps}")
        return True

    # ---- the loop ---------------------------------------------------------------------------
    def _update_ema(self) -> None:
        assert self.ema is not None
        d = self.cfg.ema
        with torch.no_grad():
            for k, v in self.module.state_dict().items():
                if v.is_floating_point():
                    self.ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
                else:
                    self.ema[k].copy_(v)

    def run(self, stop_after: int | None = None) -> None:
        """Train up to cfg.steps (or ``stop_after`` steps more, for tests of resume)."""
        cfg = self.cfg
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        self.module.train()
        t0 = time.monotonic()
        for step in progress(range(self.step, end), total=end - self.step, desc=self.desc):
            torch.manual_seed(int(np.random.default_rng([cfg.seed, step, 0xD80F]).integers(2**62)))
            lr = cfg.lr_at(step)
            for group in self.opt.param_groups:
                group["lr"] = lr
            if self.on_step is not None:
                self.on_step(step)
            ids = batch_ids(self.index, step, cfg.batch_size, cfg.seed)
            loss = self.loss_fn(ids, step_generator(cfg.seed, step), step)
            if not torch.isfinite(loss):
                raise UserError(f"{self.desc}: the loss became {loss.item()} at step {step}; lower --lr")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = (nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip)
                    if cfg.grad_clip > 0 else torch.tensor(0.0))
            self.opt.step()
            if self.ema is not None:
                self._update_ema()
            self.step = step + 1
            if step % cfg.log_every == 0 or self.step == cfg.steps:
                self.history.append((step, float(loss.detach()), lr, float(norm)))
            if self.step % cfg.ckpt_every == 0 or self.step == end:
                self.save()
        self.module.eval()
        self.write_log(time.monotonic() - t0)

    def write_log(self, seconds: float) -> None:
        rows = ["step,loss,lr,grad_norm"] + [f"{int(s)},{lo:.6f},{lr:.3e},{g:.4f}" for s, lo, lr, g in self.history]
        write_text(self.folder / LOG_FILE, "\n".join(rows) + "\n")
        if seconds > 0 and self.history:
            log(f"{self.desc}: step {self.step}/{self.cfg.steps}, loss {self.history[-1][1]:.4f} ({seconds:.0f}s)")

    def final_state_dict(self) -> dict[str, Tensor]:
        """EMA weights when EMA is on (as the official recipes release), else the live weights."""
        return dict(self.ema) if self.ema is not None else self.module.state_dict()
