"""`iarmem repair` refuses bad input with one line, exit 2 and nothing written; the whole loop on a model
that memorized its planted images is in test_integration_tiny (slow)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from test_localize_run import make_folder

from iarmem.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("repair")
    model = make_folder(root / "var", "tiny-var")
    other = root / "other"
    shutil.copytree(model, other)
    weights = load_file(str(other / "model.safetensors"))
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1e-3  # another model: same layout, other weights
    save_file(weights, str(other / "model.safetensors"))
    extract = root / "extract"
    assert main(["extract", str(model), "mnist", "--top", "1", "--no-membership", "--calibration-images", "20",
                 "--out", str(extract)]) == 0
    return {"model": model, "other": other, "extract": extract, "root": root}


def _fails(argv: list[str], capsys: pytest.CaptureFixture, out: Path, *words: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    for w in words:
        assert w in err[0], (w, err[0])
    assert not out.exists()


def test_bad_input_is_one_line_exit_2_and_nothing_written(runs: dict[str, Path], capsys: pytest.CaptureFixture,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ["repair", str(runs["model"]), "mnist", "--out", str(out)]
    s = json.loads((runs["extract"] / "summary.json").read_text())
    assert s["extracted_ids"] == []  # a briefly trained model leaks nothing
    _fails([*base, "--leaked", str(runs["extract"])], capsys, out, "no leaked images")
    _fails([*base, "--leaked", str(runs["extract"]), "--images", "planted"], capsys, out, "no leaked images")
    _fails([*base, "--leaked", str(runs["root"] / "nowhere")], capsys, out, "not found")
    _fails([*base, "--leaked", str(runs["model"])], capsys, out, "not a run folder of `iarmem extract`")
    _fails([*base, "--leaked", str(runs["extract"]), "--alternatives", "random,magic"], capsys, out, "magic")
    _fails([*base, "--leaked", str(runs["extract"]), "--max-units", "0"], capsys, out, "--max-units")
    _fails([*base, "--leaked", str(runs["extract"]), "--fallback", "retrain"], capsys, out, "--fallback", "unlearn")
    _fails([*base, "--leaked", str(runs["extract"]), "--probe-rule", "loose"], capsys, out, "--probe-rule", "joint")
    _fails([*base, "--leaked", str(runs["extract"]), "--max-targets", "0"], capsys, out, "--max-targets")
    _fails([*base, "--leaked", str(runs["extract"]), "--quality-draws", "0"], capsys, out, "--quality-draws")
    _fails([*base, "--leaked", str(runs["extract"]), "--quality-draws", "4", "--max-quality-draws", "3"], capsys, out,
           "--max-quality-draws must be >= --quality-draws (4)")
    _fails([*base, "--leaked", str(runs["extract"]), "--grow-past-guard", "0.5"], capsys, out,
           "--grow-past-guard is a multiple of the guard's bars, >= 1 (or 0: never), got 0.5")
    _fails([*base, "--leaked", str(runs["extract"]), "--screen-tries", "-1"], capsys, out,
           "--screen-tries must be >= 0, got -1")
    _fails([*base, "--leaked", str(runs["extract"]), "--max-accuracy-drop", "-1"], capsys, out,
           "--max-accuracy-drop must be >= 0 points")
    _fails([*base, "--leaked", str(runs["extract"]), "--calibration-images", "-1"], capsys, out,
           "--calibration-images")
    _fails([*base, "--leaked", str(runs["extract"]), "--class-calibration-images", "-1"], capsys, out,
           "--class-calibration-images must be >= 0")
    _fails([*base, "--leaked", str(runs["extract"]), "--images", "5", "--calibration-images", "0",
            "--class-calibration-images", "9"], capsys, out, "--calibration-images 0 turns off")
    other = ["repair", str(runs["other"]), "mnist", "--out", str(out), "--leaked", str(runs["extract"]),
             "--images", "5"]
    _fails(other, capsys, out, "attacked another model")


def test_the_extract_run_s_decision_settings_are_kept(runs: dict[str, Path]) -> None:
    from argparse import Namespace

    from iarmem.mitigate.repair_run import attack_settings

    leaked = json.loads((runs["extract"] / "summary.json").read_text())
    leaked["settings"] |= {"metric": "ssim", "fpr": 0.05, "prefix": 2, "ids": [1, 2], "logit_noise": 1.0}
    s = attack_settings(leaked, Namespace(batch_size=8, seed=3, trigger_steps=5))
    assert (s.metric, s.fpr, s.prefix, s.strength, s.seed, s.trigger_steps) == ("ssim", 0.05, 2, "strong", 3, 5)
    assert s.calibration == 20  # the leaked run's never-trained images, unless --calibration-images says otherwise
    assert attack_settings(leaked, Namespace(batch_size=8, seed=3, trigger_steps=5, calibration=0)).calibration == 0
    assert s.class_calibration == 0 and attack_settings(leaked, Namespace(
        batch_size=8, seed=3, trigger_steps=5, class_calibration=30)).class_calibration == 30
    assert s.ids is None and s.logit_noise == 0.0 and not s.membership


def test_max_targets_takes_a_class_balanced_seeded_sample_of_the_leak() -> None:
    import argparse

    import numpy as np

    from iarmem.data import bundled_mnist, make_plan
    from iarmem.mitigate.repair_run import choose_targets

    ds = bundled_mnist()
    plan = make_plan(ds.labels, num_train=10, plant=20, copies=2, seed=0)
    leaked = [*plan.planted_ids.tolist(), *plan.heldout_ids.tolist()]  # held-out ids are never targets
    args = argparse.Namespace(images=None, leaked="run", max_targets=10, seed=0)
    few = choose_targets(args, leaked, plan, ds.labels)
    assert len(few) == 10 and set(few) <= set(plan.planted_ids.tolist()) and len(set(ds.labels[few])) == 10
    assert np.array_equal(few, choose_targets(args, leaked, plan, ds.labels))
    assert not np.array_equal(few, choose_targets(argparse.Namespace(**{**vars(args), "seed": 1}), leaked, plan,
                                                  ds.labels))
    args.max_targets = None
    assert np.array_equal(choose_targets(args, leaked, plan, ds.labels), plan.planted_ids)
    injected = plan.with_injected(np.array([4000, 4001]), ds.labels[[4000, 4001]])  # no extraction scores them
    args.images = "injected"
    assert choose_targets(args, leaked, injected, ds.labels).tolist() == [4000, 4001]


def test_a_resumed_finished_repair_returns_the_recorded_exit_code(runs: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A partial repair exits 1; resuming it once it finished must say the same, not 0 (it used to)."""
    from iarmem.mitigate import repair_run

    def stop(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt  # stop right after the run folder is opened

    out = tmp_path / "out"
    argv = ["repair", str(runs["model"]), "mnist", "--leaked", str(runs["extract"]), "--images", "5",
            "--out", str(out), "--resume"]
    monkeypatch.setattr(repair_run, "resolve_features", stop)
    assert main(argv) != 0  # interrupted (the CLI says so), with the run folder open
    record_file = out / "run.json"
    record = json.loads(record_file.read_text())
    for status, code in (("quality", 1), ("units", 1), ("clean", 0), ("nothing to repair", 0)):
        record |= {"status": "finished", "summary": {"status": status}}
        record_file.write_text(json.dumps(record))
        assert main(argv) == code, status  # finished: returns before the features are needed
