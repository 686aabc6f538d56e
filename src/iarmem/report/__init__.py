"""The HTML report: one self-contained page over any set of run folders.

``build_report(paths, title)`` returns the page; ``write_report(paths, out, title)`` writes it
atomically. Sections: findings, models and data, UnitMem maps, extraction before / after
mitigation, mitigation edits, the sweep, image quality, the localizer bench, provenance. See docs/REPORT.md.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from iarmem.fileio import write_text
from iarmem.report import bench, findings, modeldata, repair, sections
from iarmem.report.discover import discover
from iarmem.report.html import esc, page, section
from iarmem.report.provenance import environment, provenance_section

DEFAULT_TITLE = "iarmem report"


def build_report(paths: list[str], title: str | None = None) -> str:
    """The report over every run folder found under ``paths`` (UserError when none is found)."""
    runs, groups = discover(paths)
    env = environment()
    parts = [
        ("findings", "Findings", findings.findings_section(groups, runs)),
        ("models-data", "Models and data", modeldata.models_section(groups)),
        ("unitmem", "Where memorization sits (UnitMem)", sections.localization_section(groups)),
        ("leakage", "Leaked images before and after mitigation", sections.extraction_section(groups)),
        ("edits", "Mitigation edits", sections.mitigation_section(groups)),
        ("sweep", "Leak against quality (sweep)", sections.sweep_section(groups)),
        ("repair", "Repair: leaked images removed, verified by the strong attack", repair.repair_section(groups)),
        ("image-quality", "Image quality", sections.quality_section(groups)),
        ("bench", "Ground truth for localizers (bench)", bench.bench_section(groups)),
        ("runs", "Provenance: what made each number", provenance_section(runs, env, [g.key for g in groups])),
    ]
    stages = Counter(r.kind for r in runs)
    sub = [
        f"{len(runs)} runs ({esc(', '.join(f'{n} {k}' for k, n in sorted(stages.items())))}) about "
        f"{len(groups)} model{'s' if len(groups) != 1 else ''}: {esc(', '.join(g.label for g in groups))}",
        f"from {esc(', '.join(os.path.abspath(p) for p in paths))}",
        f"written {esc(env['written'])} by iarmem {esc(env['iarmem'])}",
    ]
    body = "".join(section(i, t, b) for i, t, b in parts)
    return page(title or DEFAULT_TITLE, sub, [(i, t.split(" (")[0].split(":")[0]) for i, t, _ in parts], body)


def write_report(paths: list[str], out: str | os.PathLike, title: str | None = None) -> Path:
    """Write the report to ``out`` (atomically: a reader never sees half a page)."""
    text = build_report(paths, title)
    out = Path(out)
    write_text(out, text)
    return out
