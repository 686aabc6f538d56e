"""The report in a real browser: headless chromium decodes every image, finds the main tables,
and a phone-width page does not scroll sideways. Skipped when chromium is not installed."""

from __future__ import annotations

import html as htmllib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_report_bench import SUMMARY
from test_report_layout import demo_root
from test_report_repair import _m

from iarmem.bench.figure import bench_figure
from iarmem.cli import main
from iarmem.fileio import write_json
from iarmem.mitigate.repair_run import _summary
from iarmem.runs import start_run

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs Debian's chromium "
                                                          "in .ci/run); the browser checks of the report are skipped")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=5000"]
MAIN_IDS = ("findings", "models", "evidence", "localization", "extraction", "membership", "mitigation", "sweep-table",
            "repair", "quality", "bench", "provenance")


def chromium(tmp: Path, *args: str) -> str:
    profile = tmp / "profile"
    profile.mkdir(exist_ok=True)
    proc = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def body_data(dom: str) -> dict[str, str]:
    """The data-* attributes the page's inline script put on <body>."""
    tag = re.search(r"<body([^>]*)>", dom)
    assert tag, dom[:500]
    return {k: htmllib.unescape(v) for k, v in re.findall(r'data-([a-z-]+)="([^"]*)"', tag.group(1))}


STRONG = {"tries": 38, "extracted": 3, "extracted_ids": [1, 2, 3], "by_group": {"planted": 3},
          "heldout_false_positives": 0, "heldout_left_out_false_positives": 1, "beyond_default": [2, 3],
          "default_not_found": [], "weakest_kind": {"trigger": 2, "greedy": 1}, "per_try": [], "timing": {}}


def add_the_demo_extras(root: Path) -> None:
    """What the demo adds on its first family: the strong attack's block in the extract summary, a repair and a
    bench run, written as the commands write them (their real runs need a model that memorized; the strong
    attack itself is tested in test_attack_strong)."""
    var = root / "var"
    summary = json.loads((var / "extract" / "summary.json").read_text())
    write_json(var / "extract" / "summary.json", summary | {"strong": STRONG})
    source = summary["model"]
    run = start_run(var / "repair", "repair", {"model": str(var / "train")}, {})
    record = {"targets": [1, 2], "extracted_before": [1, 2], "status": "partial", "message": "1 target left",
              "before": _m(0, [1, 2], 2.0), "rounds": [_m(12, [2], 2.3)], "final": _m(12, [2], 2.3),
              "alternatives": [_m(12, [1, 2], 2.1) | {"name": "random", "setting": "12 random units", "cleaned": 0,
                                                       "of": 2}]}
    write_json(var / "repair" / "repair.json", record)
    write_json(var / "repair" / "summary.json", _summary(record) | {"model": source})
    run.finish(["repair.json", "summary.json"], {})
    bench = start_run(var / "bench", "bench", {"model": str(var / "train")})
    write_json(bench.file("summary.json"), SUMMARY | {"model": source})
    bench_figure(SUMMARY, bench.file("bench.png"))
    bench.finish(["summary.json", "bench.png"], {})


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    for family in ("var", "rar"):
        shutil.copytree(demo_root(tmp_path_factory) / family, root / family)
    add_the_demo_extras(root)
    out = root / "report.html"
    assert main(["report", str(root / "var"), str(root / "rar"), "--out", str(out)]) == 0
    return out


def assert_picture(path: Path, width: int) -> None:
    assert path.is_file() and path.stat().st_size > 20_000
    with Image.open(path) as im:
        assert im.size[0] == width
        small = im.convert("RGB").resize((200, 200))
        colours = small.getcolors(maxcolors=200 * 200)
        assert colours is not None and len(colours) > 50  # a page, not one flat colour
        lo, hi = zip(*small.getextrema())
        assert max(hi) - min(lo) > 100


def test_every_image_decodes_and_the_tables_are_there(report: Path, tmp_path: Path) -> None:
    dom = chromium(tmp_path, "--dump-dom", "--window-size=1200,3000", report.as_uri())
    data = body_data(dom)
    assert data.get("ready") == "yes", data
    assert int(data["images-total"]) > 0 and data["images-loaded"] == data["images-total"]
    for ident in MAIN_IDS:
        assert f'id="{ident}"' in dom, ident
    assert data["overflow-x"] == "no"
    # the findings answer the reader's questions first; the strong attack, the repair and the bench are shown
    findings = dom[dom.index('id="findings"'):dom.index('id="models-data"')]
    for question in ("Does it leak?", "Where?", "What fixed it, at what quality, against which control?"):
        assert f"<dt>{question}</dt>" in findings, question
    assert "the strong attack (" in findings and "Beside it: 12 random units: cleaned 0 of 2 at FID +5 %" in findings
    assert 'data-label="edit">round 1</td>' in dom and "INJ: recall of the injected units" in dom
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", report.as_uri())
    assert_picture(shot, 1200)


def test_phone_width_does_not_scroll_sideways(report: Path, tmp_path: Path) -> None:
    # Headless windows are at least 500 px wide, so the 390 px phone viewport is an iframe; its page's
    # own script measures itself and the wrapper copies the result onto its <body>.
    wrapper = report.parent / "phone.html"
    wrapper.write_text(
        '<!DOCTYPE html><html><body style="margin:0"><iframe id="f" src="report.html" '
        'style="width:390px;height:2000px;border:0"></iframe><script>'
        'document.getElementById("f").addEventListener("load", function () { setTimeout(function () {'
        ' try { document.body.dataset.inner = JSON.stringify(document.getElementById("f").contentDocument'
        '.body.dataset); } catch (e) { document.body.dataset.error = String(e); } }, 200); });'
        "</script></body></html>")
    dom = chromium(tmp_path, "--allow-file-access-from-files", "--dump-dom", "--window-size=800,2000",
                   wrapper.as_uri())
    outer = body_data(dom)
    assert "inner" in outer, outer
    inner = json.loads(outer["inner"])
    assert inner["innerWidth"] == "390" and inner["overflowX"] == "no", inner
    assert inner["imagesLoaded"] == inner["imagesTotal"]
    shot = tmp_path / "phone.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=390,2400", report.as_uri())
    assert_picture(shot, 390)
