"""The report's bench section: every stage's table beside its chance or control, and the figure."""

from __future__ import annotations

import re
from pathlib import Path

from iarmem.bench.figure import bench_figure
from iarmem.fileio import write_json
from iarmem.report import build_report
from iarmem.runs import start_run

SUMMARY = {
    "model": {"spec": "model", "family": "var", "preset": "tiny-var"},
    "stages": ["inj", "del", "paper", "dup"],
    "inj": [{"rate": 1.0, "images": 2, "injected": 2, "ablation_removes": 2, "random_removes": 0,
             "localizers": {"unitmem-mean/global@1": {"recall": 0.35, "ci95": [0.3, 0.4], "n": 2, "random": 0.01},
                            "unitmem-mean/global@2": {"recall": 0.55, "ci95": [0.5, 0.6], "n": 2, "random": 0.02}}}],
    "del": {"memorized": 15, "candidates": 20, "unedited": {"fid": 2.49, "class_accuracy": 0.9},
            "rows": [{"budget": 1.0,
                      "localizer": {"units_mean": 10.6, "self_removed": 0.08, "self_removed_ci95": [0.0, 0.23],
                                    "neg_removed": 0.07, "fid_change": 0.12},
                      "random": {"units_mean": 10.6, "self_removed": 0.05, "neg_removed": 0.06,
                                 "fid_change": -0.03}}]},
    "del_methods": {"gradient": {"method": "gradient", "memorized": 15, "candidates": 20, "unedited": {"fid": 2.49},
                                 "rows": [{"budget": 1.0,
                                           "localizer": {"units_mean": 20.0, "self_removed": 0.67,
                                                         "self_removed_ci95": [0.4, 0.87], "neg_removed": 0.57,
                                                         "fid_change": 0.35},
                                           "random": {"units_mean": 20.0, "self_removed": 0.1, "neg_removed": 0.1,
                                                      "fid_change": 0.02}}]}},
    "paper": [{"p": 0.0, "who": "unedited", "draws": 1, "units": 0, "planted_rate": 0.75,
               "planted_ci95": [0.53, 0.89], "fid": 2.49, "class_accuracy": 0.885},
              {"p": 10.0, "who": "top", "draws": 1, "units": 204, "planted_rate": 0.55,
               "planted_ci95": [0.34, 0.74], "fid": 2.56, "class_accuracy": 0.9},
              {"p": 10.0, "who": "random", "draws": 3, "units": 204, "planted_rate": 0.65,
               "planted_ci95": [0.6, 0.7], "fid": 2.39, "class_accuracy": 0.91}],
    "dup": {"planted_share": 0.092, "rows": [
        {"copies": 0, "images": 24, "extracted": 0.0, "extracted_ci95": [0.0, 0.0], "agreement": 0.44, "top1": 0.497},
        {"copies": 32, "images": 4, "extracted": 0.75, "extracted_ci95": [0.25, 1.0], "agreement": 0.93,
         "top1": 1.0, "auc_mia_loss": 1.0, "auc_mia_cfg": 0.98}]},
}


def test_bench_section_shows_every_stage_beside_its_control(tmp_path: Path) -> None:
    run = start_run(tmp_path / "bench", "bench", {"model": str(tmp_path / "model")})
    write_json(run.file("summary.json"), SUMMARY)
    bench_figure(SUMMARY, run.file("bench.png"))
    run.finish(["summary.json", "bench.png"], {})
    html = build_report([str(tmp_path / "bench")])
    section = html[html.index('id="bench"'):html.index('id="runs"')]
    heads = re.findall(r"<h4>(.*?)</h4>", section)
    assert [h.split(":")[0] for h in heads] == ["INJ", "DEL (UnitMem)", "DEL (gradient)", "PAPER", "DUP"]
    assert "self removed: gradient (95 % CI)" in section and "0.67 (0.40&ndash;0.87)" in section
    assert "0.350 (0.300&ndash;0.400)" in section and "<td class=\"num\">0.010</td>" in section  # recall beside chance
    assert "unedited FID 2.49" in section and "+0.12" in section and "-0.03" in section
    assert "random (3 draws)" in section and "0.55 (0.34&ndash;0.74)" in section
    assert "held out" in section and "1.00 / 0.98" in section and "9.2 % of the samples planted" in section
    assert section.count('src="data:image/png;base64,') == 1


def test_report_without_a_bench_says_how_to_run_one(tmp_path: Path) -> None:
    run = start_run(tmp_path / "loc", "localize", {"model": str(tmp_path / "model")})
    run.finish([], {})
    html = build_report([str(tmp_path / "loc")])
    section = html[html.index('id="bench"'):html.index('id="runs"')]
    assert "iarmem bench MODEL DATA --out RUN" in section
