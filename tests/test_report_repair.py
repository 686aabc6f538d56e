"""The report's repair section: a repair run folder (repair.json as `iarmem repair` writes it) becomes a table
of the unedited model, every round and the alternatives, with the headline sentence and membership."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iarmem.fileio import write_json
from iarmem.mitigate.repair_run import _summary
from iarmem.report import build_report
from iarmem.runs import start_run


def _m(units: int, extracted: list[int], fid: float, target_loss: float = 0.1) -> dict[str, Any]:
    return {"units": units, "fraction": units / 2048, "quality": {"fid": fid, "class_accuracy": 0.9},
            "leak": {"extracted": extracted, "default_extracted": extracted[:1], "others": [7],
                     "heldout_false_positives": 0},
            "membership": {"mean_loss": {"targets": target_loss, "ordinary": 1.0, "heldout": 2.0}}}


def test_a_repair_run_is_a_section_with_every_round_and_alternative(tmp_path: Path) -> None:
    out = tmp_path / "repair"
    run = start_run(out, "repair", {"model": "runs/var"}, {})
    record = {"targets": [1, 2, 3], "extracted_before": [1, 2, 3], "status": "clean", "message": "every target "
              "stopped after round 2", "before": _m(0, [1, 2, 3], 2.0),
              "rounds": [_m(10, [3], 2.1), _m(14, [], 2.2, 1.9)],
              "final": _m(14, [], 2.2, 1.9),
              "alternatives": [_m(14, [1, 2, 3], 2.05) | {"name": "random", "setting": "14 random units of the same "
                                                          "layers (seed 0)", "cleaned": 0, "of": 3}],
              "quality_noise": {"seeds": [0, 1, 2], "fid": [2.0, 2.3, 1.9], "median": 2.0, "relative_std": 0.104,
                                "class_accuracy": [0.8, 0.78, 0.83], "class_accuracy_std_points": 2.5}}
    # the unedited model and round 2 drew three sampling seeds (means 6.2 / 3 and 7.6 / 3: +22.6 % seed for seed,
    # +10 % on the first draws); round 1 has one draw, read against the unedited model's first (+5.0 %)
    for m, draws in ((record["before"], [2.0, 2.3, 1.9]), (record["rounds"][1], [2.2, 2.9, 2.5]),
                     (record["final"], [2.2, 2.9, 2.5])):
        m["quality"]["fid_draws"] = draws
    record["final"]["quality"]["class_accuracy_draws"] = [0.9, 0.8, 0.7]  # read as its mean, 0.8
    record["before"]["leak"]["rules"] = {"calibration": 200, "bound": 1 / 101}  # the bars set once
    summary = _summary(record) | {"model": {"spec": "runs/var", "family": "var"}}
    assert summary["extracted_after"] == 0 and abs(summary["relative_fid"] - (7.6 / 6.2 - 1)) < 1e-9
    assert summary["fid_before"] == sum([2.0, 2.3, 1.9]) / 3 and summary["fid_draws"] == 3
    assert abs(summary["class_accuracy_after"] - 0.8) < 1e-9 and summary["class_accuracy_before"] == 0.9
    assert summary["class_accuracy_change_se"] is None  # the unedited model drew one class accuracy: no pairs
    assert "class accuracy +0.0 points (one draw)" in summary["sentence"]  # first draws, as the FID change
    write_json(out / "repair.json", record)
    write_json(out / "summary.json", summary)
    run.finish(["repair.json", "summary.json"], {})
    html = build_report([str(tmp_path)])
    assert 'id="repair"' in html
    assert "3 of 3 extracted targets stopped under every strong-attack try, removing 14 fc1 units (0.68 %)" in html
    for row in ("unedited", "round 1", "round 2", "alternative: 14 random units of the same layers (seed 0)"):
        assert f'data-label="edit">{row}</td>' in html, row
    assert "+22.6 %" in html and "+5.0 %" in html and "3 of 3" in html
    assert "1.9 / 1 / 2" in html and "0.1 / 1 / 2" in html
    assert "under 3 sampling seeds" in html and "a relative std of 10.4 %" in html  # the guard's noise floor
    assert "a std of 2.5 points" in html  # and the accuracy guard's
    assert summary["fid_noise_relative_std"] == 0.104
    assert "calibrated together once, on the unedited model, on 200 never-trained images" in html
    assert "chance &lt;= 0.99 %" in html and "held-out false positives are out of sample" in html
    assert "each class has its own bar" not in html
    record["before"]["leak"]["rules"]["class_bounds"] = {"1": 0.0091, "2": 0.0093}
    write_json(out / "repair.json", record)
    assert "each class has its own bar too, a never-trained image of class c passing with chance &lt;= 0.91 % (1), " \
        "0.93 % (2)" in build_report([str(tmp_path)])
    del record["before"]["leak"]["rules"]  # a repair whose tries were calibrated on the held-out at every row
    write_json(out / "repair.json", record)
    assert "the held-out false positives are in sample" in build_report([str(tmp_path)])
    record["prune_attempts"] = [_m(3, [2], 2.0) | {"kept": False}, _m(5, [], 2.1) | {"kept": True}]
    write_json(out / "repair.json", record)
    html = build_report([str(tmp_path)])
    assert 'data-label="edit">pruned, attempt 1 (not kept)</td>' in html  # the strong attack saw through it
    assert 'data-label="edit">pruned, attempt 2</td>' in html
    record["fallback"] = _m(20, [1], 2.3) | {"kept": False}
    write_json(out / "repair.json", record)
    assert "data-label=\"edit\">fallback: the last round's units fine-tuned (not kept)</td>" in build_report(
        [str(tmp_path)])
    assert "grew again" not in build_report([str(tmp_path)])
    record |= {"regrow": {"from_round": 0, "first_round": 2},  # round 1 refused: grown again from nothing
               "grown": [{"order": [4], "screened_out": [9, 8], "screen_seconds": 20.4}]}
    write_json(out / "repair.json", record)
    assert ("The rounds before round 2 ended refused by the quality guard, so the repair went back to the unedited "
            "model and grew again from it") in (html := build_report([str(tmp_path)]))
    assert "2 units screened out (20 s of draws)" in html
    record |= {"edit": "unlearn", "fallback": record["fallback"] | {"kept": True}}
    assert "extracted targets stopped under every strong-attack try, fine-tuning 14 fc1 units" in _summary(
        record)["sentence"]
    # a verdict near the bar drew three more paired seeds for round 2 (and another edit six for the unedited model):
    # the summary reads the seeds both drew, and the row says it was read on more seeds than the others
    record |= {"config": {"quality_draws": 3}, "edit": "exact"}
    record["before"]["quality"]["fid_draws"] = [2.0, 2.3, 1.9, 2.1, 2.0, 2.2, 5.0, 5.0, 5.0]
    for m in (record["rounds"][1], record["final"]):
        m["quality"]["fid_draws"] = [2.2, 2.9, 2.5, 2.0, 2.1, 2.3]
    s6 = _summary(record)
    assert s6["fid_draws"] == 6 and abs(s6["fid_before"] - 12.5 / 6) < 1e-9 and abs(s6["fid_after"] - 14.0 / 6) < 1e-9
    assert abs(s6["relative_fid"] - (14.0 / 12.5 - 1)) < 1e-9
    # an alternative drew three seeds: its change pairs them with the unedited model's first three (+1.6 %), not
    # with the repair's FID before over the final edit's six (+0.8 %)
    record["alternatives"][0]["quality"]["fid_draws"] = [2.1, 2.3, 1.9]
    record["alternatives"][0]["quality"]["fid"] = 2.1
    alt = _summary(record)["alternatives"][0]
    assert abs(alt["relative_fid"] - (6.3 / 6.2 - 1)) < 1e-9
    from iarmem.report.findings import repair_sentence
    assert "cleaned 0 of 3 at FID +2 %" in repair_sentence(_summary(record))
    assert "(+12.0 +- 5.6 %)" in s6["sentence"]  # the standard error of the six per-seed changes, beside the mean
    assert not s6["verdict_within_noise"]  # a record without its guard's bars is not judged
    for bar, near in ((0.1, True), (0.5, False)):  # +12.0 +- 5.6 %: within two errors of 10 %, far under 50 %
        s = _summary(record | {"config": {"quality_draws": 3, "max_quality_loss": bar, "max_accuracy_drop": None}})
        assert s["verdict_within_noise"] is near
        assert ("at 6 paired seeds the guard's verdict is still within two standard errors" in s["sentence"]) is near
    write_json(out / "repair.json", record)
    html = build_report([str(tmp_path)])
    assert "+12.0 % (6 seeds)" in html and "+5.0 %</td>" in html  # round 1's one draw is read as before
