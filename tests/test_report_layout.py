"""Run folders for the report tests, and discovery / grouping over a demo-like layout.

The layout is the demo's (OUT/<family>/<stage>): tokenizer and train folders are written by hand
(random weights, a real planting manifest), localize / mitigate / extract are the real commands on
them (a few seconds), evaluate and sweep are written by hand with the files those stages write
(their FID needs a trained CNN: too slow here). Other report tests import ``demo_root``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from iarmem.cli import main
from iarmem.data import bundled_mnist, make_plan, write_manifest
from iarmem.fileio import write_json
from iarmem.models import build
from iarmem.models.loading import save_model_folder
from iarmem.report.discover import discover
from iarmem.runs import start_run

FAMILIES = ("var", "rar")
LOC = ["--augs", "2", "--batch-size", "8"]
EXT = ["--top", "1", "--batch-size", "8", "--calibration-images", "20"]


def _finish(run: Any, command: list[str], outputs: list[str], summary: dict[str, Any] | None = None) -> None:
    run.record["command"] = command
    run.finish(outputs, summary)


def write_train(d: Path, family: str) -> Path:
    """A tokenizer run and a train run (model folder with manifest and evidence), random weights."""
    preset = f"tiny-{family}"
    ds = bundled_mnist()
    tr = start_run(d / "train", "train", {"target": family, "preset": preset, "data": ds.describe(),
                                          "plant": 10, "copies": 2, "train": {"steps": 5, "batch_size": 4}}, seed=0)
    torch.manual_seed(0)
    save_model_folder(build(preset), d / "train", preset=preset, extra={"dataset": ds.describe()})
    write_manifest(make_plan(ds.labels, num_train=10, plant=10, copies=2, seed=0, dataset=ds.describe()),
                   d / "train" / "manifest.json")
    ev = {"scored": "last scale" if family == "var" else "last 16 tokens",
          "planted": {"n": 10, "top1": 1.0, "top1_min": 0.98, "psnr_db": 21.5},
          "ordinary": {"n": 10, "top1": 0.61, "top1_min": 0.4, "psnr_db": 21.9},
          "heldout": {"n": 10, "top1": 0.43, "top1_min": 0.2, "psnr_db": 22.0},
          "gap_top1": 0.57, "train_loss_first": 6.2, "train_loss_last": 0.7}
    write_json(d / "train" / "evidence.json", ev)
    _finish(tr, ["iarmem", "train", family, "--preset", preset, "--tokenizer", str(d / "tokenizer"),
                 "--out", str(d / "train")],
            ["model.safetensors", "tokenizer.safetensors", "model.json", "manifest.json", "evidence.json"],
            {"evidence": ev})
    tok = start_run(d / "tokenizer", "train", {"target": "tokenizer", "preset": preset}, seed=0)
    shutil.copy(d / "train" / "tokenizer.safetensors", d / "tokenizer" / "tokenizer.safetensors")
    write_json(d / "tokenizer" / "tokenizer.json", {"family": family, "preset": preset,
                                                     "summary": {"psnr_db": 22.25}})
    _finish(tok, ["iarmem", "train", "tokenizer", "--preset", preset, "--out", str(d / "tokenizer")],
            ["tokenizer.safetensors", "tokenizer.json"], {"psnr_db": 22.25, "step": 5})
    return d / "train"


def samples_png(path: Path, seed: int) -> None:
    """A sample grid stand-in: random 'digits' on black, clearly not one flat colour."""
    rng = np.random.default_rng(seed)
    img = np.zeros((160, 160, 3), np.uint8)
    img[rng.random((160, 160)) > 0.8] = 255
    Image.fromarray(img).save(path)


def write_evaluate(out: Path, model: Path, family: str, fid: float) -> None:
    run = start_run(out, "evaluate", {"model": str(model), "data": "mnist", "n_per_class": 5}, seed=0)
    samples_png(out / "samples.png", int(fid * 100))
    metrics = {"fid": fid, "kid_mean": fid / 100, "kid_std": 0.001, "precision": 0.8, "recall": 0.7,
               "density": 0.9, "coverage": 0.75, "class_accuracy": 0.9, "n_samples": 50, "n_reference": 50,
               "features": {"name": "iarmem-cnn:test.pt", "dim": 128}, "sampling": {"cfg": 1.5},
               "model": {"spec": str(model), "family": family, "preset": f"tiny-{family}",
                         "tokenizer_file": str(model / "tokenizer.safetensors"),
                         "model_file": str(model / "model.safetensors")}}
    write_json(out / "metrics.json", metrics)
    _finish(run, ["iarmem", "evaluate", str(model), "mnist", "--out", str(out)], ["metrics.json", "samples.png"],
            {k: metrics[k] for k in ("fid", "precision", "recall")})


def sweep_points() -> list[dict[str, Any]]:
    common = {"candidates": 10, "ordinary_rate": 0.0, "heldout_rate": 0.0, "kid": 0.01, "precision": 0.8,
              "recall": 0.7, "class_accuracy": 0.9, "decision": "extracted when tokens > 0.9", "seconds": 1.0}
    pts = [("unedited", "reference", None, None, None, None, 0, 8, 1.0),
           ("top10%x0.5", "edit", 10.0, 0.5, "none", None, 205, 5, 1.2),
           ("random10%x0.5", "edit", 10.0, 0.5, "random", None, 205, 8, 1.1),
           ("top10%x0", "edit", 10.0, 0.0, "none", None, 205, 2, 1.6),
           ("noise1", "noise", None, None, None, 1.0, 0, 6, 2.5)]
    return [{"point": p, "kind": k, "p": pp, "factor": f, "control": c, "std": s, "units": u, "extracted": e,
             "planted_rate": e / 10, "fid": fid, **common} for p, k, pp, f, c, s, u, e, fid in pts]


def write_sweep(out: Path, model: Path, loc: Path, source: dict[str, Any]) -> None:
    from iarmem.mitigate.sweep import pareto_plot, summarize, write_table

    run = start_run(out, "sweep", {"model": str(model), "localization": str(loc), "data": "mnist"}, seed=0)
    rows = sweep_points()
    write_json(out / "points.json", rows)
    write_table(rows, out)
    pareto_plot(rows, out / "pareto.png", "test-cnn")
    summary = summarize(rows) | {"model": source}
    write_json(out / "summary.json", summary)
    _finish(run, ["iarmem", "sweep", str(model), "mnist", str(loc), "--out", str(out)],
            ["points.json", "table.csv", "table.md", "pareto.png", "summary.json"], summary)


def build_family(root: Path, family: str, sweep: bool) -> None:
    d = root / family
    model = write_train(d, family)
    assert main(["localize", str(model), "mnist", "--out", str(d / "localize"), *LOC]) == 0
    assert main(["mitigate", str(model), str(d / "localize"), "--out", str(d / "mitigate")]) == 0
    assert main(["mitigate", str(model), str(d / "localize"), "--control", "random",
                 "--out", str(d / "mitigate-random")]) == 0
    for tag, m, fid in (("", model, 1.0), ("-mitigate", d / "mitigate", 1.3), ("-random", d / "mitigate-random", 1.1)):
        assert main(["extract", str(m), "mnist", "--out", str(d / f"extract{tag}"), *EXT]) == 0
        write_evaluate(d / f"evaluate{tag}", m, family, fid)
    if sweep:
        source = json.loads((d / "extract" / "summary.json").read_text())["model"]
        write_sweep(d / "sweep", model, d / "localize", source)


def make_demo(root: Path, families: tuple[str, ...] = FAMILIES) -> Path:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i, family in enumerate(families):
            build_family(root, family, sweep=i == 0)
    finally:
        torch.set_num_threads(n)
    (root / "features").mkdir(exist_ok=True)
    (root / "features" / "featcnn.json").write_text("{}")
    return root


def demo_root(factory: pytest.TempPathFactory) -> Path:
    """The demo-like layout, built once per test session (other modules call this too)."""
    root = factory.getbasetemp() / "report-demo"
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        make_demo(root)
        (root / ".complete").write_text("")
    return root


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_root(tmp_path_factory)


STAGES = ("tokenizer", "train", "localize", "mitigate", "mitigate-random", "extract", "extract-mitigate",
          "extract-random", "evaluate", "evaluate-mitigate", "evaluate-random")


def test_discovery_finds_every_stage_and_groups_by_model(demo: Path) -> None:
    runs, groups = discover([str(demo / "var"), str(demo / "rar")])
    assert len(runs) == 2 * len(STAGES) + 1  # + the var sweep; OUT/features holds no run
    assert [g.label for g in groups] == ["tiny-var", "tiny-rar"]
    var = groups[0]
    assert {r.name for r in var.runs} == {f"var/{s}" for s in (*STAGES, "sweep")}
    assert var.family == "var" and var.preset == "tiny-var"
    roles = {r.name: r.variant.role for r in var.runs if r.variant is not None}
    assert roles["var/extract"] == roles["var/evaluate"] == roles["var/localize"] == "unedited"
    assert roles["var/extract-mitigate"] == roles["var/evaluate-mitigate"] == "mitigated"
    assert roles["var/extract-random"] == roles["var/mitigate-random"] == "random"
    labels = {r.name: r.variant.label for r in var.runs if r.variant is not None}
    assert labels["var/extract-mitigate"] == "mitigated (top 10% x0.5)"
    assert [r.name for r in var.of("extract")] == ["var/extract", "var/extract-mitigate", "var/extract-random"]
    tok = next(r for r in var.runs if r.kind == "tokenizer")
    assert tok.name == "var/tokenizer"


def test_the_root_folder_and_a_single_run_are_found_too(demo: Path) -> None:
    runs, groups = discover([str(demo)])
    assert len(groups) == 2 and len(runs) == 2 * len(STAGES) + 1
    runs, groups = discover([str(demo / "var" / "extract-mitigate")])
    assert [r.name for r in runs] == ["extract-mitigate"] and groups[0].label == "tiny-var"
    assert runs[0].variant is not None and runs[0].variant.role == "mitigated"
    runs, _ = discover([str(demo / "var" / "localize" / "run.json"), str(demo / "var" / "localize")])
    assert len(runs) == 1  # the same folder twice counts once


def test_paths_recorded_relative_to_another_folder_still_group(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_train(Path("runs/var"), "var")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["localize", "runs/var/train", "mnist", "--out", "runs/var/localize", *LOC]) == 0
        assert main(["mitigate", "runs/var/train", "runs/var/localize", "--out", "runs/var/mitigate"]) == 0
        assert main(["extract", "runs/var/mitigate", "mnist", "--out", "runs/var/extract-mitigate", *EXT]) == 0
    finally:
        torch.set_num_threads(n)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the recorded relative paths do not resolve from here
    runs, groups = discover([str(tmp_path / "runs")])
    assert len(groups) == 1 and len(runs) == 5
    ext = next(r for r in runs if r.kind == "extract")
    assert ext.variant is not None and ext.variant.role == "mitigated"


def test_two_models_of_one_preset_get_distinct_labels(demo: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        shutil.copytree(demo / "var" / "train", tmp_path / name / "train")
    _, groups = discover([str(tmp_path)])
    assert sorted(g.label for g in groups) == ["tiny-var (a/train)", "tiny-var (b/train)"]
