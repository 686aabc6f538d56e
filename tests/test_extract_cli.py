"""`iarmem extract` end to end on a tiny random-weight model folder with a planting manifest."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from twoproc import one_then_two

from iarmem.cli import main
from iarmem.data import bundled_mnist, make_plan, write_manifest
from iarmem.models import build
from iarmem.models.loading import save_model_folder

FAST = ["--top", "1", "--batch-size", "8", "--calibration-images", "40"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-var")
    torch.manual_seed(0)
    save_model_folder(build("tiny-var"), folder, preset="tiny-var")
    ds = bundled_mnist()
    write_manifest(make_plan(ds.labels, num_train=10, plant=10, copies=2, seed=0, dataset=ds.describe()),
                   folder / "manifest.json")
    return folder


@pytest.fixture(scope="module")
def first_run(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "extract"
    assert main(["extract", str(model_dir), "mnist", "--out", str(out), *FAST]) == 0
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_writes_every_output(first_run: Path) -> None:
    for name in ("candidates.csv", "summary.json", "extracted.png", "scores.csv", "generated.safetensors"):
        assert (first_run / name).is_file(), name
    rows = _rows(first_run / "candidates.csv")
    assert len(rows) == 70  # 20 trained (10 planted + 10 ordinary) + 10 held out, all scored; 40 calibration
    cal = [r for r in rows if r["group"] == "calibration"]
    assert len(cal) == 40 and all(r["generated"] == "yes" and r["is_candidate"] == "no" for r in cal)
    assert not {r["id"] for r in cal} & {r["id"] for r in rows if r["group"] != "calibration"}
    assert len({r["class"] for r in cal}) == 10  # class-balanced, outside the plan
    assert {"id", "class", "group", "top1", "gt_prob", "loss", "tokens", "tokens_fg", "background_share", "ssim",
            "psnr", "similarity", "extracted", "is_candidate", "copies_other", "other_similarity"} <= set(rows[0])
    cands = [r for r in rows if r["is_candidate"] == "yes"]
    assert len(cands) == 10 and len({r["class"] for r in cands}) == 10
    assert all(r["generated"] == "yes" for r in rows if r["group"] == "heldout")
    assert not any(r["is_candidate"] == "yes" for r in rows if r["group"] == "heldout")
    s = json.loads((first_run / "summary.json").read_text())
    assert s["candidates"] == 10 and s["metric"] == "tokens"
    # threshold and margin are calibrated on the 40 never-trained images outside the plan, the margin not
    # below its floor; the held-out images are judged out of sample (no left-out estimate needed)
    assert s["calibration"]["heldout"] == 40 and s["threshold"] == s["calibration"]["threshold"]
    assert s["margin"] >= 0.1 and s["margin_calibration"]["heldout"] == 40 and s["pool"] == 70
    assert s["calibration_images"] == 40 and s["heldout_left_out_false_positives"] is None
    assert s["calibration_false_positives"] <= s["calibration"]["allowed"]
    assert s["threshold_rule"].startswith("calibrated on 40 never-trained calibration images")
    assert {"image_extracted", "extracted_via", "other_id"} <= set(rows[0])
    assert s["heldout_false_positives"] == 0 and set(s["membership"]) >= {"heldout", "mia_loss", "mia_cfg"}
    assert set(s["membership"]["mia_cfg"]) == {"planted", "ordinary", "members"}
    assert set(s["rates"]) == {"planted", "ordinary", "heldout", "calibration"}
    assert s["by_group"]["heldout"]["generated"] == 10
    assert s["prefix"]["steps"] == 4 and "scales" in s["prefix"]["rule"]
    assert s["model"]["preset"] == "tiny-var" and s["world_size"] == 1
    run = json.loads((first_run / "run.json").read_text())
    assert run["stage"] == "extract" and run["status"] == "finished"
    assert set(run["outputs"]) >= {"candidates.csv", "summary.json", "extracted.png"}


def test_resume_reuses_the_scores_of_a_stopped_run(model_dir: Path, first_run: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "stopped"

    def stop(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr("iarmem.attack.pipeline.attack_ids", stop)
        assert main(["extract", str(model_dir), "mnist", "--out", str(out), *FAST]) == 130
    assert (out / "scores.csv").is_file() and not (out / "candidates.csv").exists()
    assert main(["extract", str(model_dir), "mnist", "--out", str(out), *FAST]) == 2  # unfinished: needs --resume
    capsys.readouterr()
    assert main(["extract", str(model_dir), "mnist", "--out", str(out), *FAST, "--resume"]) == 0
    captured = capsys.readouterr()
    assert "reusing the scores" in captured.err
    assert "training images extracted from 10 candidates" in captured.out
    assert (out / "candidates.csv").read_text() == (first_run / "candidates.csv").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--top", "0"], "--top must be >= 1"),
    (["--threshold", "1.5"], "outside [0, 1]"),
    (["--metric", "tokens", "--threshold", "-0.2"], "outside [0, 1]"),
    (["--ids", "3,99999"], "not in the dataset"),
    (["--prefix", "6"], "--prefix counts scales"),
    (["--last", "10"], "--last applies to raster"),
    (["--metric", "sscd"], "--metric sscd needs --sscd"),
    (["--features", "missing.pt"], "--features file not found"),
    (["--fraction", "0"], "--fraction"),
    (["--subset", "heldout"], "no images to attack"),  # an empty candidate pool
    (["--trigger-steps", "0"], "--trigger-steps must be >= 1"),
    (["--calibration-images", "-1"], "--calibration-images must be >= 0"),
    (["--class-calibration-images", "-1"], "--class-calibration-images must be >= 0"),
    (["--class-calibration-images", "50"], "add --strength strong"),
    (["--strength", "strong", "--calibration-images", "0", "--class-calibration-images", "50"],
     "--calibration-images 0 turns off"),
])
def test_bad_input_is_one_line_and_exit_2(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          extra: list[str], message: str) -> None:
    out = tmp_path / "bad"
    assert main(["extract", str(model_dir), "mnist", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not out.exists()  # refused before anything is written


@pytest.mark.parametrize("flag, value", [("--metric", "lpips"), ("--strength", "extreme")])
def test_unknown_choices_are_refused_by_the_parser(model_dir: Path, tmp_path: Path, flag: str, value: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(["extract", str(model_dir), "mnist", "--out", str(tmp_path / "x"), flag, value])
    assert e.value.code == 2 and not (tmp_path / "x").exists()


def test_explicit_ids_on_a_model_without_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "plain"
    torch.manual_seed(1)
    save_model_folder(build("tiny-llamagen"), folder, preset="tiny-llamagen")
    out = tmp_path / "run"
    assert main(["extract", str(folder), "mnist", "--out", str(out), "--ids", "4,1,9", "--calibrate"]) == 2
    assert not out.exists()  # no held-out images to calibrate on: refused up front
    assert "held-out images to calibrate on" in capsys.readouterr().err
    assert main(["extract", str(folder), "mnist", "--out", str(out), "--ids", "4,1,9", "--metric", "tokens"]) == 0
    rows = _rows(out / "candidates.csv")
    assert [r["id"] for r in rows] == ["1", "4", "9"] and {r["group"] for r in rows} == {"other"}
    s = json.loads((out / "summary.json").read_text())
    assert s["candidates"] == 3 and s["rates"] == {} and s["scoring"]["selection"] == "explicit --ids"
    assert s["prefix"]["steps"] == 15


def test_two_processes_write_what_one_writes(model_dir: Path, tmp_path: Path) -> None:
    args = ["extract", str(model_dir), "mnist", "--top", "1", "--batch-size", "4", "--logit-noise", "0.5",
            "--metric", "ssim", "--calibration-images", "16"]
    one_then_two(args, tmp_path / "one", tmp_path / "two")  # one process in this one: no second start-up
    assert (tmp_path / "two" / "candidates.csv").read_text() == (tmp_path / "one" / "candidates.csv").read_text()
    s1, s2 = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert s2["world_size"] == 2 and s1["by_group"] == s2["by_group"]
