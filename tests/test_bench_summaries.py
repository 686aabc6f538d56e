"""The PAPER and DUP summaries: which rows they make, which interval each gets, per-level membership."""

from __future__ import annotations

import numpy as np
import pytest

from iarmem.bench.duplication import DupSettings, summarize_dup
from iarmem.bench.paper import points, summarize_paper


def _row(name: str, p: float, control: str, draw: int, extracted: int, fid: float) -> dict:
    return {"name": name, "p": p, "control": control, "draw": draw, "units": 0 if p == 0 else 40,
            "planted_extracted": extracted, "planted_generated": 20, "fid": fid, "class_accuracy": 0.9}


def test_paper_points_and_summary_intervals() -> None:
    pts = points((1.0, 5.0), draws=3)
    assert [p["name"] for p in pts[:6]] == ["unedited", "top1%", "lowest1%", "random1%-0", "random1%-1", "random1%-2"]
    assert len(pts) == 1 + 2 * 5
    rows = [_row("unedited", 0, "none", 0, 15, 2.0), _row("top1%", 1, "none", 0, 5, 2.5),
            _row("lowest1%", 1, "lowest", 0, 15, 2.1)]
    rows += [_row(f"random1%-{c}", 1, "random", c, e, 2.0 + c) for c, e in enumerate((12, 14, 16))]
    out = {(r["p"], r["who"]): r for r in summarize_paper(rows, seed=0)}
    assert set(out) == {(0, "unedited"), (1, "top"), (1, "lowest"), (1, "random")}
    top = out[(1, "top")]
    assert top["planted_rate"] == 0.25 and top["draws"] == 1
    lo, hi = top["planted_ci95"]  # Wilson for one draw: 5 / 20
    assert lo == pytest.approx(0.1119, abs=1e-3) and hi == pytest.approx(0.4687, abs=1e-3)
    rnd = out[(1, "random")]
    assert rnd["draws"] == 3 and rnd["planted_rate"] == pytest.approx(0.7) and rnd["fid"] == pytest.approx(3.0)
    assert rnd["planted_ci95"] == pytest.approx([0.6, 0.8])  # bootstrap over the draws: their range
    assert "fid_ci95" in rnd and "fid_ci95" not in top


def test_dup_summary_per_level_against_held_out() -> None:
    rng = np.random.default_rng(0)
    recs = [{"copies": 0, "extracted": False, "agreement": 0.1, "top1": 0.3, "mia_loss": float(rng.normal(-3)),
             "mia_cfg": 0.0} for _ in range(8)]
    for c, shift in ((1, 0.0), (32, 10.0)):
        recs += [{"copies": c, "extracted": c == 32, "agreement": 0.2 + c / 40, "top1": 0.3 + c / 64,
                  "mia_loss": float(rng.normal(-3)) + shift, "mia_cfg": shift} for _ in range(4)]
    rows = {r["copies"]: r for r in summarize_dup(recs, seed=0)}
    assert sorted(rows) == [0, 1, 32]
    assert rows[32]["extracted"] == 1.0 and rows[1]["extracted"] == 0.0 and "auc_mia_loss" not in rows[0]
    assert rows[32]["auc_mia_loss"] == 1.0 and rows[32]["auc_mia_cfg"] == 1.0
    assert rows[1]["auc_mia_cfg"] == 0.5  # all tied with the held-out images
    assert rows[32]["top1"] == pytest.approx(0.8)


def test_dup_settings_refuse_what_cannot_be_planted() -> None:
    assert DupSettings().planted_share == pytest.approx(4 * 63 / (4 * 63 + 2500))
    assert DupSettings().planted_share <= 0.10
    with pytest.raises(Exception, match="--dup-levels"):
        DupSettings(levels=(4, 4)).validate(5000)
    with pytest.raises(Exception, match="needs 2548 images"):
        DupSettings().validate(2000)
