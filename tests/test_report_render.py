"""`iarmem report` end to end: the demo layout, a GPU-style set without training, partial runs,
self-containment (no external URL) and bad input."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from test_report_layout import demo_root, sweep_points, write_sweep

from iarmem.cli import main
from iarmem.mitigate.sweep import label_rows, pareto_front
from iarmem.models import build
from iarmem.models.loading import save_model_folder
from iarmem.report import build_report

MAIN_IDS = ("findings", "models", "evidence", "localization", "extraction", "mitigation", "sweep-table", "quality",
            "provenance")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_root(tmp_path_factory)


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(root)}\0".encode() + f.read_bytes())
    return h.hexdigest()


def external_refs(html: str) -> list[str]:
    """src / href / url() values that would reach the network."""
    attrs = re.findall(r"""(?:src|href|action|poster)\s*=\s*["']?\s*([^"'\s>]+)""", html, flags=re.I)
    urls = re.findall(r"url\(\s*['\"]?([^'\")]+)", html, flags=re.I)
    return [u for u in attrs + urls if re.match(r"(?:https?:)?//", u.strip(), flags=re.I)]


def test_demo_layout_renders_every_section(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    before = tree_hash(demo)
    out = tmp_path / "r" / "report.html"
    assert main(["report", str(demo / "var"), str(demo / "rar"), "--out", str(out), "--title", "Demo <audit>"]) == 0
    assert str(out) in capsys.readouterr().out
    assert tree_hash(demo) == before  # inputs are only read
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # written atomically, no temp left
    html = out.read_text()
    for ident in MAIN_IDS:
        assert f'id="{ident}"' in html, ident
    assert "<title>Demo &lt;audit&gt;</title>" in html and '<meta name="viewport"' in html
    imgs = re.findall(r"<img [^>]*>", html)
    # 2 heat maps + 2 x (blocks, top images) + 6 extracted + 2 bar charts + pareto + 6 sample grids
    assert len(imgs) == 2 + 4 + 6 + 2 + 1 + 6
    assert all('src="data:image/png;base64,' in i for i in imgs)
    assert external_refs(html) == []
    assert "In tiny-var the top 1% units" in html and "In tiny-rar the top 1% units" in html
    assert "of them are driven by planted images" in html or "none of them is driven by a planted image" in html
    assert "mitigated (top 10% x0.5)" in html and "random control (10% x0.5)" in html
    assert "10 planted &times; 2 copies, 10 ordinary, 10 held out" in html and "22.25 dB" in html
    rec = json.loads((demo / "var" / "extract-mitigate" / "run.json").read_text())
    assert rec["command"][1] == "extract" and f"iarmem extract {demo}/var/mitigate mnist" in html
    for stage in ("tokenizer", "train", "localize", "extract-random", "evaluate-mitigate", "sweep"):
        assert f"<code>var/{stage}</code>" in html
    assert "python" in html and "torch" in html and "platform" in html


def test_default_out_is_the_first_run_folder(demo: Path, tmp_path: Path) -> None:
    shutil.copytree(demo / "var" / "localize", tmp_path / "loc")
    assert main(["report", str(tmp_path / "loc")]) == 0
    html = (tmp_path / "loc" / "report.html").read_text()
    assert 'id="localization"' in html and "No <b>extract</b> run among the folders; skipped." in html
    assert main(["report", str(tmp_path / "loc"), "--out", str(tmp_path)]) == 0  # a folder gets report.html
    assert (tmp_path / "report.html").is_file()


def test_gpu_style_set_without_training(tmp_path: Path) -> None:
    """Official-style files (a preset + checkpoint files, no manifest), then the files go away."""
    ckpt, runs = tmp_path / "ckpt", tmp_path / "gpu"
    torch.manual_seed(1)
    save_model_folder(build("tiny-var"), ckpt, preset="tiny-var")
    files = ["--tokenizer", str(ckpt / "tokenizer.safetensors"), "--weights", str(ckpt / "model.safetensors")]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["localize", "tiny-var", "mnist", *files, "--per-class", "1", "--augs", "1",
                     "--out", str(runs / "localize")]) == 0
        assert main(["mitigate", "tiny-var", str(runs / "localize"), *files, "--top", "5",
                     "--out", str(runs / "mitigate")]) == 0
        for tag, model in (("", ["tiny-var", *files]), ("-mitigate", [str(runs / "mitigate")])):
            assert main(["extract", *model, "mnist", "--per-class-subset", "2", "--top", "1",
                         "--out", str(runs / f"extract{tag}")]) == 0
    finally:
        torch.set_num_threads(n)
    source = json.loads((runs / "extract" / "summary.json").read_text())["model"]
    write_sweep(runs / "sweep", Path("tiny-var"), runs / "localize", source)
    shutil.rmtree(ckpt)  # the official checkpoints stay on the GPU machine

    html = build_report([str(runs)], "GPU audit")
    for ident in ("findings", "models", "localization", "extraction", "mitigation", "sweep-table", "provenance"):
        assert f'id="{ident}"' in html, ident
    assert html.count("<tr><td><b>tiny-var</b>") >= 1 and "tiny-var (" not in html  # one model group
    assert "not trained here" in html and "no planting manifest (ground truth unknown)" in html
    assert "No training evidence" in html and "No <b>evaluate</b> run among the folders" in html
    assert re.search(r"In tiny-var the top 1% units \(\d+ of 2,048\) sit ", html)
    assert "mitigated (top 5% x1)" not in html and "mitigated (top 5% x0.5)" in html
    assert external_refs(html) == []


def test_unfinished_and_damaged_runs_are_shown_marked(demo: Path, tmp_path: Path) -> None:
    root = tmp_path / "var"
    shutil.copytree(demo / "var", root)
    rec = json.loads((root / "extract-random" / "run.json").read_text())
    (root / "extract-random" / "run.json").write_text(json.dumps(rec | {"status": "running"}))
    for name in ("summary.json", "extracted.png", "candidates.csv"):
        (root / "extract-random" / name).unlink()
    (root / "localize" / "summary.json").unlink()
    for name in ("summary.json", "pareto.png", "table.csv"):  # a sweep stopped after its points
        (root / "sweep" / name).unlink()
    (root / "broken").mkdir()
    (root / "broken" / "run.json").write_text("{not json")
    html = build_report([str(root)])
    assert "Unfinished runs" in html and "<code>extract-random</code> <span class=\"badge bad\">unfinished" in html
    assert "no summary.json (the run did not finish)" in html
    assert "extracted images of extract-random: figure missing" in html
    assert "broken" not in html  # a damaged run.json is skipped
    assert 'id="extraction"' in html and 'id="quality"' in html
    # the Pareto front is recomputed from points.json: the same points the sweep itself marks
    front = set(re.findall(r'<tr class="front"><td>([^<]+)</td>', html))
    assert front == {r["point"] for r in pareto_front(sweep_points())} - {"unedited"} == {"top10%x0.5", "top10%x0"}
    assert 'id="sweep-table"' in html and "Pareto plot of sweep: figure missing" in html


def test_external_refs_detector() -> None:
    assert external_refs('<img src="https://x/y.png"><a href=//cdn.example>') == ["https://x/y.png", "//cdn.example"]
    assert external_refs('<p>see https://arxiv.org in text</p><img src="data:image/png;base64,AA">') == []


@pytest.mark.parametrize("make, message", [
    (lambda p: [str(p / "missing")], "run folder not found"),
    (lambda p: [str(p)], "no iarmem run found"),
    (lambda p: [str(p), "--out", str(p / "r.txt")], "should be an .html file"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, make, message) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["report", *make(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not list((tmp_path / "empty").glob("*.html"))


def test_labels_of_coinciding_pareto_points_are_stacked() -> None:
    """25%x0 top and random often land on the same (FID, extracted): their labels must not overprint."""
    rows = [{"fid": 3.0, "extracted": 16}, {"fid": 5.27, "extracted": 0}, {"fid": 5.28, "extracted": 0},
            {"fid": 5.27, "extracted": 0}, {"fid": 5.27, "extracted": 2}, {"fid": 7.0, "extracted": 0}]
    assert label_rows(rows) == [0, 0, 1, 2, 0, 0]
