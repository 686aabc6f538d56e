"""Training: the loss falls, a stopped run resumes at its step and ends with identical weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from iarmem.data import bundled_mnist, make_plan
from iarmem.models.var.family import VARFamily, build_vae_var_kwargs
from iarmem.train.iar import train_iar
from iarmem.train.loop import TrainConfig, Trainer, batch_ids
from iarmem.train.tokenizer import train_tokenizer


def micro_var(seed: int = 0) -> VARFamily:
    torch.manual_seed(seed)
    tok, mdl = build_vae_var_kwargs(depth=2, patch_nums=(1, 2, 4), V=64, Cvae=8, ch=16, num_classes=10)
    tok.update(ch_mult=[1, 2, 2, 2], num_res_blocks=1, using_sa=False, using_mid_sa=False, norm_groups=8)
    mdl.update(embed_dim=64, num_heads=2, drop_path_rate=0.0)
    iar = VARFamily.from_official(tok, mdl)
    iar.model.init_weights(init_adaln_gamma=1e-3)
    return iar


def test_batch_order_is_a_function_of_seed_and_step() -> None:
    index = np.arange(100)
    a = [batch_ids(index, s, 32, seed=1) for s in range(6)]
    b = [batch_ids(index, s, 32, seed=1) for s in range(6)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # one epoch (3 full batches) covers 96 distinct rows
    assert len(np.unique(np.concatenate(a[:3]))) == 96
    assert not np.array_equal(batch_ids(index, 0, 32, seed=2), a[0])


def test_lr_schedule_warms_up_and_decays() -> None:
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [cfg.lr_at(s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=0.02)


def _plan():
    ds = bundled_mnist()
    return ds, make_plan(ds.labels, num_train=60, plant=4, copies=4, seed=0, dataset=ds.describe())


def test_iar_loss_falls(tmp_path: Path) -> None:
    ds, plan = _plan()
    iar = micro_var()
    cfg = TrainConfig(steps=40, batch_size=16, lr=3e-3, warmup_steps=5, ckpt_every=100, log_every=1, seed=0)
    out = train_iar(iar, ds, plan, cfg, tmp_path, views=1, preset=None)
    assert out["finished"]
    ev = out["evidence"]
    assert ev["train_loss_last"] < 0.8 * ev["train_loss_first"]
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "manifest.json").exists()


def test_resumed_iar_run_continues_from_its_step_and_matches(tmp_path: Path) -> None:
    ds, plan = _plan()
    cfg = TrainConfig(steps=12, batch_size=16, lr=3e-3, warmup_steps=2, ckpt_every=5, seed=3)
    straight = micro_var()
    train_iar(straight, ds, plan, cfg, tmp_path / "a", views=2, preset=None)

    first = micro_var()
    out = train_iar(first, ds, plan, cfg, tmp_path / "b", views=2, preset=None, stop_after=7)
    assert out == {"step": 7, "finished": False}
    resumed = micro_var(seed=99)  # a fresh process starts from other random transformer weights ...
    resumed.tokenizer.load_state_dict(micro_var().tokenizer.state_dict())  # ... and loads the same tokenizer
    trainer_state = torch.load(tmp_path / "b" / "train_state.pt", weights_only=True)
    assert int(trainer_state["step"]) == 7
    out = train_iar(resumed, ds, plan, cfg, tmp_path / "b", views=2, preset=None)
    assert out["finished"] and out["step"] == 12
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_tokenizer_loss_falls(tmp_path: Path) -> None:
    ds = bundled_mnist()
    iar = micro_var()
    cfg = TrainConfig(steps=30, batch_size=16, lr=3e-3, weight_decay=0.0, warmup_steps=3, log_every=1, seed=0)
    summary = train_tokenizer(iar, ds, np.arange(200), cfg, tmp_path, preset=None)
    assert summary["finished"]
    trainer_log = (tmp_path / "train_log.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[1]) for r in trainer_log]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_trainer_refuses_resume_with_other_settings(tmp_path: Path) -> None:
    from iarmem.errors import UserError

    lin = torch.nn.Linear(4, 1)
    x = torch.randn(32, 4)

    def loss_fn(ids, gen, step):
        return lin(x[ids]).pow(2).mean()

    Trainer(lin, loss_fn, np.arange(32), TrainConfig(steps=4, batch_size=8, ckpt_every=2), tmp_path).run(stop_after=2)
    t = Trainer(lin, loss_fn, np.arange(32), TrainConfig(steps=4, batch_size=8, lr=0.5, ckpt_every=2), tmp_path)
    with pytest.raises(UserError, match="other settings"):
        t.try_resume()
