"""`iarmem evaluate` end to end on a tiny random-weight model folder, and the functions the sweep calls."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iarmem.cli import main
from iarmem.data import bundled_mnist
from iarmem.errors import UserError
from iarmem.features import load_trained, train_feature_extractor
from iarmem.metrics import evaluate_model, reference_features
from iarmem.models import build
from iarmem.models.loading import save_model_folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_model_folder(build("tiny-var"), tmp_path_factory.mktemp("models") / "var", preset="tiny-var")


@pytest.fixture(scope="module")
def quick_cnn(tmp_path_factory) -> Path:
    """A briefly trained CNN: the plumbing needs a feature network, not a good one."""
    return train_feature_extractor(bundled_mnist(), tmp_path_factory.mktemp("cnn") / "cnn.pt", image_size=32,
                                   steps=15, seed=0, max_images=500)


def test_cli_end_to_end(tmp_path: Path, model_dir: Path, quick_cnn: Path, capsys) -> None:
    out = tmp_path / "eval"
    argv = ["evaluate", str(model_dir), "mnist", "--out", str(out), "--n-per-class", "3",
            "--features", f"trained:{quick_cnn}", "--batch-size", "16", "--kid-subsets", "5", "--seed", "1"]
    assert main(argv) == 0
    assert "FID" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage", "class_accuracy"):
        assert metrics[key] is not None and np.isfinite(metrics[key]), key
    assert metrics["fid"] > 0 and metrics["n_samples"] == 30 and metrics["n_reference"] == 30
    assert metrics["features"]["dim"] == 128 and metrics["features"]["spec"].startswith("trained:")
    assert metrics["sampling"]["cfg"] == 1.5 and metrics["sampling"]["top_k"] == 900
    assert metrics["model"]["preset"] == "tiny-var" and metrics["seeds"]["samples"] == 1
    assert set(metrics["timing_s"]) >= {"sampling", "total"}
    with np.load(out / "samples.npz") as z:
        arr, labels = z["arr_0"], z["labels"]
    assert arr.shape == (30, 32, 32, 3) and arr.dtype == np.uint8
    assert np.bincount(labels).tolist() == [3] * 10
    grid = Image.open(out / "samples.png")
    assert grid.size == (2 + 3 * 34, 2 + 10 * 34)  # one row of 3 per class, 2 px padding
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "evaluate" and run["status"] == "finished"
    assert set(run["outputs"]) == {"metrics.json", "samples.npz", "samples.png"}
    # finished: --resume returns at once, a plain rerun refuses, another seed needs --overwrite
    assert main(argv + ["--resume"]) == 0
    assert main(argv) == 2
    assert main(argv[:-1] + ["2"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cli_trains_and_shares_the_cnn(tmp_path: Path, model_dir: Path, capsys) -> None:
    cache = tmp_path / "cache"
    common = [str(model_dir), "mnist", "--n-per-class", "2", "--features-cache", str(cache), "--features-steps", "5",
              "--kid-subsets", "2", "--cfg", "none", "--grid-per-class", "1"]
    assert main(["evaluate", *common, "--out", str(tmp_path / "a")]) == 0
    files = sorted(cache.glob("featcnn-*"))
    assert [f.suffix for f in files] == [".json", ".pt"]
    capsys.readouterr()
    assert main(["evaluate", *common, "--out", str(tmp_path / "b")]) == 0
    assert "reusing" in capsys.readouterr().err
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["fid"] == b["fid"] and a["sampling"]["cfg"] is None  # same seed, same CNN: same numbers
    assert "heldout_accuracy" in a["features"]


@pytest.mark.parametrize("extra, message", [
    (["--n-per-class", "1"], "--n-per-class must be >= 2"),
    (["--features", "inception"], "unknown feature extractor"),
    (["--features", "trained:/no/such/cnn.pt"], "not found"),
    (["--subset", "planted"], "needs a model trained by `iarmem train`"),
])
def test_cli_bad_input_is_one_line(tmp_path: Path, model_dir: Path, capsys, extra: list[str], message: str) -> None:
    assert main(["evaluate", str(model_dir), "mnist", "--out", str(tmp_path / "x"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_cli_missing_model(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(tmp_path / "nothing"), "mnist", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_evaluate_model_with_a_shared_reference(model_dir: Path, quick_cnn: Path) -> None:
    """The sweep's path: one reference, several in-memory models; an edit changes the numbers."""
    ds = bundled_mnist()
    features = load_trained(quick_cnn)
    torch.manual_seed(0)
    iar = build("tiny-var")
    ref = reference_features(ds, features, family="var", image_size=32, n_per_class=3, seed=0, show_progress=False)
    assert ref.features.shape == (30, 128) and np.bincount(ref.labels).tolist() == [3] * 10
    kw = dict(reference=ref, batch_size=30, kid_subsets=3, show_progress=False)
    first = evaluate_model(iar, None, features, 3, seed=0, **kw)
    again = evaluate_model(iar, None, features, 3, seed=0, **kw)
    assert first["fid"] == again["fid"] and first["n_classes"] == 10
    with torch.no_grad():
        iar.model.blocks[0].ffn.fc1.weight.mul_(0.0)
    edited = evaluate_model(iar, None, features, 3, seed=0, **kw)
    assert edited["fid"] != first["fid"]
    with pytest.raises(UserError, match="do not fit"):
        evaluate_model(iar, None, features, 3, seed=0, classes=[3, 12], **kw)
    with pytest.raises(UserError, match=">= 2"):
        evaluate_model(iar, None, features, 1, seed=0, **kw)


def test_the_repair_s_quality_noise_draws_other_sampling_seeds_against_the_same_reference(
        quick_cnn: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The noise floor a repair's quality guard is read against: the unedited model's FID under other sampling
    seeds (the first is the measurement already made), the reference images fixed; and every measurement
    draws the same seeds, so the guard compares an edit with the unedited model seed for seed."""
    from iarmem.attack.settings import AttackSettings
    from iarmem.distributed import World
    from iarmem.mitigate import repair
    from iarmem.mitigate.repair import RepairContext, measure, quality, quality_noise
    from iarmem.mitigate.repair_run import fc1_scores

    ds = bundled_mnist()
    features = load_trained(quick_cnn)
    torch.manual_seed(0)
    iar = build("tiny-var")
    ref = reference_features(ds, features, family="var", image_size=32, n_per_class=3, seed=0, show_progress=False)
    ctx = RepairContext(iar, ds, None, np.array([0]), AttackSettings(seed=4), np.array([0]), np.zeros(0, np.int64),
                        fc1_scores(iar), features, ref, 3, {}, World(), np.zeros(0, np.int64))
    before = {"quality": quality(ctx)}
    n = quality_noise(ctx, before, 3)
    assert n["seeds"] == [4, 5, 6] and n["fid"][0] == before["quality"]["fid"]
    assert n["fid"][1] == quality(ctx, seed=5)["fid"] and len(set(n["fid"])) == 3  # each seed its own draw
    f = np.asarray(n["fid"])
    assert n["median"] == pytest.approx(np.median(f))
    assert n["relative_std"] == pytest.approx(f.std(ddof=1) / n["median"])
    assert n["relative_std"] > 0

    ctx.quality_seeds = (5, 6)
    monkeypatch.setattr(repair, "strong_leak", lambda *_a, **_k: {})  # the attack is not what is tested here
    m = measure(ctx)
    assert m["quality"]["fid_draws"] == n["fid"]  # the same seeds as the noise floor, in order
    units = ctx.units(np.array([3, 600, 1100]))
    with repair.temporary_edit(iar, units, "exact", 0.0):
        edited = [quality(ctx, seed=s) for s in (4, 5, 6)]
    q = measure(ctx, np.array([3, 600, 1100]))["quality"]
    assert [e["fid"] for e in edited] != n["fid"] and q["fid_draws"] == [e["fid"] for e in edited]
    assert q["class_accuracy_draws"] == [e["class_accuracy"] for e in edited]
    monkeypatch.setattr(repair, "quality", lambda *_a, **_k: pytest.fail("redrawn"))
    assert quality_noise(ctx, m, 3)["fid"] == n["fid"]  # read from the measurement, not drawn again
