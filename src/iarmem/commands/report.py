"""One self-contained HTML report of run folders: models and data, UnitMem heat maps with a
sentence on where memorization sits, leaked images before and after mitigation, the sweep's
Pareto plot, image quality, and the exact commands and versions behind every number.

  iarmem report runs/demo/var runs/demo/rar --out runs/demo/report.html
  iarmem report /tmp/exp                          # every run folder below, report in /tmp/exp/report.html

RUN may be a run folder or any folder holding run folders (searched recursively). Missing stages
are skipped with a note; unfinished runs are shown, marked. The page embeds every image, needs no
network and reads well on a phone. See docs/REPORT.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from iarmem.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders, or folders holding run folders")
    p.add_argument("--out", help="HTML file to write (default: the first RUN/report.html; a folder gets report.html)")
    p.add_argument("--title", help="page title (default 'iarmem report')")


def default_out(runs: list[str], out: str | None) -> Path:
    """Where the report goes: --out (a folder gets report.html inside), else the first RUN's folder."""
    if out:
        p = Path(out)
        return p / "report.html" if p.is_dir() else p
    first = Path(runs[0])
    return (first.parent if first.is_file() else first) / "report.html"


def run(args: argparse.Namespace) -> int:
    from iarmem.report import write_report  # matplotlib only when the command runs

    out = default_out(args.runs, args.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {out} should be an .html file")
    path = write_report(args.runs, out, args.title)
    print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
