"""`iarmem bench`: the INJ stage end to end on a small model folder, its resume, and its bad input.

The model is a briefly trained tiny-var (non-zero biases) saved as `iarmem train` would, with a
planting manifest over 10 ordinary and 2 planted MNIST images (so localization is quick). The
injection itself is tested on learned behaviour in test_bench_inject.py; here the wiring: records,
the ablation check, UnitMem scored on the injected model, the summary, resume and refusals.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trained import planted_model_folder, without_manifest

from iarmem.cli import main
from iarmem.data import bundled_mnist
from iarmem.features import train_feature_extractor

pytestmark = pytest.mark.all_threads


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return planted_model_folder(tmp_path_factory.mktemp("bench") / "model")


@pytest.fixture(scope="module")
def quick_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plumbing needs a feature network, not a good one (the default trains 300 steps: ~20 s a test)."""
    return train_feature_extractor(bundled_mnist(), tmp_path_factory.mktemp("cnn") / "cnn.pt", image_size=32,
                                   steps=15, seed=0, max_images=500)


def test_inj_records_scores_and_resumes(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    argv = ["bench", str(model_dir), "mnist", "--stages", "inj", "--rates", "5", "--images", "1", "--stats", "mean",
            "--methods", "gradient", "--steps", "300", "--out", str(out)]
    assert main(argv) == 0
    (rec_file,) = (out / "inj").glob("*.json")
    rec = json.loads(rec_file.read_text())
    assert rec["extracted"] and rec["agreement"] > 0.9 >= rec["agreement_before"], rec
    # removing the injected units removes the copy; as many random units leave it in most draws (the copy is
    # injected only just past the bar, 0.93 here, so one draw of three may land on it: 0.90 at the 4-scale prefix)
    random = sorted(rec["ablation"]["random"])
    assert rec["ablation"]["ablated"] < 0.5 and random[1] > 0.9 and random[0] >= 0.85, rec["ablation"]
    score = rec["unitmem_mean"]
    assert score["global_named"] == 4 * 512 and 0 <= score["global_recall_at_5"] <= 1
    assert score["random_recall_at_5"] == pytest.approx(0.05)
    s = json.loads((out / "summary.json").read_text())
    (row,) = s["inj"]
    assert row["injected"] == 1 and row["ablation_removes"] == 1 and row["random_removes"] == 0
    assert row["localizers"]["unitmem-mean/global@5"]["recall"] == score["global_recall_at_5"]
    grad = rec["gradient"]  # a per-image method ranks every unit for the image
    assert grad["per_image_named"] == 4 * 512 and grad["random_recall_at_5"] == pytest.approx(0.05)
    assert row["localizers"]["gradient/per_image@5"]["recall"] == grad["per_image_recall_at_5"]
    assert not list((out / "inj").glob("scratch-*")), "scratch models and localizations must be removed"
    assert "unitmem-mean/global" in capsys.readouterr().out

    # resume: a finished record is read, not recomputed (a changed record file shows through)
    rec["agreement"] = 0.95
    rec_file.write_text(json.dumps(rec))
    (out / "run.json").write_text((out / "run.json").read_text().replace('"finished"', '"running"'))
    assert main([*argv, "--resume"]) == 0
    assert json.loads(rec_file.read_text())["agreement"] == 0.95


@pytest.mark.parametrize("extra, message", [
    (["--stats", "mode"], "--stats"),
    (["--methods", "gradient+fix"], "--methods"),
    (["--stats", "none", "--methods", "none"], "no localizer to score"),
    (["--rates", "0"], "--rates"),
    (["--images", "0"], "--images"),
    (["--steps", "0"], "--steps"),
    (["--stages", "inj,dell"], "--stages"),
    (["--budgets", "0"], "--budgets"),
    (["--controls", "0"], "--controls"),
    (["--stages", "paper", "--draws", "0"], "--draws"),
    (["--stages", "paper", "--n-per-class", "1"], "--n-per-class"),
    (["--stages", "dup", "--dup-levels", "4"], "--dup-levels"),
    (["--stages", "dup", "--dup-ordinary", "5000"], "--dup-ordinary"),
    (["--device", "gpu0"], "--device"),
    pytest.param(["--device", "cuda"], "--device", marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                                            reason="a GPU is there")),
])
def test_bad_input_is_one_line_and_exit_2(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          extra: list[str], message: str) -> None:
    out = tmp_path / "bad"
    assert main(["bench", str(model_dir), "mnist", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not out.exists()


def test_a_model_without_held_out_images_is_refused(model_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    plain = without_manifest(model_dir, tmp_path / "plain")
    assert main(["bench", str(plain), "mnist", "--out", str(tmp_path / "x")]) == 2
    assert "no held-out images" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["bench", "tiny-var", "mnist", "--out", str(tmp_path / "y")]) == 2
    assert "not a model folder" in capsys.readouterr().err and not (tmp_path / "y").exists()


def test_del_localizes_the_model_and_judges_only_memorized_images(model_dir: Path, quick_cnn: Path,
                                                                 tmp_path: Path) -> None:
    """The random-token model memorized none of its planted MNIST images: DEL says so and edits nothing."""
    out = tmp_path / "del"
    assert main(["bench", str(model_dir), "mnist", "--stages", "del", "--budgets", "5", "--controls", "1",
                 "--methods", "gradient", "--features", f"trained:{quick_cnn}", "--out", str(out)]) == 0
    result = json.loads((out / "del.json").read_text())
    assert result["reference"]["candidates"] == 2 and result["reference"]["memorized"] == []
    assert result["records"] == []
    assert json.loads((out / "localize" / "run.json").read_text())["status"] == "finished"
    s = json.loads((out / "summary.json").read_text())
    assert s["del"]["memorized"] == 0 and "inj" not in s
    assert s["del_methods"]["gradient"]["memorized"] == 0 and (out / "del-gradient.json").is_file()
    assert json.loads((out / "localize-gradient" / "summary.json").read_text())["method"] == "gradient"


def test_quick_runs_the_stages_and_reuses_the_model_it_trained(model_dir: Path, quick_cnn: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "models"
    argv = ["bench", str(model_dir), "mnist", "--quick", "--cache", str(cache), "--features", f"trained:{quick_cnn}"]
    # INJ's wiring is the test above (an injection costs most of a quick run); the other three here
    assert main([*argv, "--stages", "del,paper,dup", "--out", str(tmp_path / "a")]) == 0
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["stages"] == ["del", "paper", "dup"] and "inj" not in s
    assert set(s["seconds"]) == {"del", "paper", "dup"} and min(s["seconds"].values()) > 0
    assert s["del"]["unedited"]["fid"] > 0 and s["del"]["candidates"] == 2
    assert s["del_methods"]["gradient"]["candidates"] == 2  # --quick scores one per-image method beside UnitMem
    assert [(r["p"], r["who"]) for r in s["paper"]] == [(0, "unedited"), (5, "top"), (5, "lowest"), (5, "random")]
    assert len({r["units"] for r in s["paper"][1:]}) == 1  # the controls edit as many units as the top ones
    dup = s["dup"]
    assert [r["copies"] for r in dup["rows"]] == [0, 1, 8] and [r["images"] for r in dup["rows"]] == [4, 2, 2]
    (trained,) = cache.iterdir()
    assert json.loads((trained / "manifest.json").read_text())["copies_each"].count(8) == 2
    assert (tmp_path / "a" / "bench.png").read_bytes()[:4] == b"\x89PNG"
    stamp = (trained / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*argv, "--stages", "dup", "--out", str(tmp_path / "b")]) == 0
    assert "reusing" in capsys.readouterr().err
    assert (trained / "model.safetensors").stat().st_mtime_ns == stamp and len(list(cache.iterdir())) == 1
    again = json.loads((tmp_path / "b" / "summary.json").read_text())["dup"]["rows"]
    assert again == dup["rows"]  # the same cached model measured again gives the same curve
