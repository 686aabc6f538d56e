"""What made each number: the command, version, seed, settings and input fingerprints of every run
used, and the machine that wrote the report, so a reader can rerun exactly what they see."""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import sys
import time
from collections import Counter
from importlib import metadata
from typing import Any

from iarmem import __version__
from iarmem.report.discover import Run
from iarmem.report.html import badge, code, esc, note, table


def settings_hash(settings: Any) -> str:
    """sha256 (first 12 hex digits) of the settings as canonical JSON: equal hash, equal settings."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def command_text(command: Any) -> str:
    """The recorded argv as one shell line a user can paste."""
    if isinstance(command, list):
        return shlex.join(str(a) for a in command)
    return str(command or "")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    """The machine writing the report (no torch import: the report must not need one)."""
    return {"iarmem": __version__, "python": platform.python_version(), "torch": _version("torch"),
            "numpy": _version("numpy"), "matplotlib": _version("matplotlib"),
            "platform": platform.platform(), "executable": sys.executable,
            "written": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def _short(fp: Any) -> str:
    text = str(fp)
    prefix = "dir:" if text.startswith("dir:") else ""
    return prefix + text[len(prefix):len(prefix) + 12]


def _inputs(record: dict[str, Any]) -> str:
    items = record.get("inputs") or {}
    if not items:
        return ""
    return ", ".join(f"{esc(k)} {code(_short(v))}" for k, v in items.items())


def _status(run: Run) -> str:
    if run.finished:
        return badge("finished", good=True)
    return badge(run.status) + (" " + badge("resumed", good=True) if run.record.get("resumed") else "")


def recorded(runs: list[Run]) -> list[str]:
    """What the runs themselves recorded about software and machines, as short HTML lines."""
    versions = Counter(str(r.record.get("iarmem_version", "unknown")) for r in runs)
    lines = ["iarmem versions recorded: " + ", ".join(f"{esc(v)} ({n} runs)" for v, n in sorted(versions.items()))]
    if any(v != __version__ for v in versions):
        lines[0] += f" {badge('differs from this iarmem ' + __version__)}"
    devices = Counter(str((r.record.get("settings") or {}).get("device")) for r in runs
                      if (r.record.get("settings") or {}).get("device"))
    worlds = Counter(int(s.get("world_size")) for r in runs for s in [r.record.get("summary") or {}]
                     if isinstance(s.get("world_size"), int))
    if devices:
        lines.append("devices: " + ", ".join(f"{esc(d)} ({n})" for d, n in sorted(devices.items())))
    if worlds:
        lines.append("processes per run (world size): "
                     + ", ".join(f"{w} ({n} runs)" for w, n in sorted(worlds.items())))
    machine = False
    for key in ("python", "torch", "platform", "host"):  # top-level or under "environment", if a run has them
        vals = Counter(str(v) for r in runs
                       for v in [r.record.get(key) or (r.record.get("environment") or {}).get(key)] if v)
        if vals:
            machine = True
            lines.append(f"{key}: " + ", ".join(f"{esc(v)} ({n})" for v, n in sorted(vals.items())))
    if not machine:
        lines.append("the run.json files record the iarmem version, command, seed and settings, but not the python "
                     "or torch version of the machine that ran them")
    return lines


STAGE_ORDER = ("tokenizer", "train", "localize", "mitigate", "extract", "evaluate", "sweep")


def _when(text: Any) -> str:
    return esc(str(text or "").replace("T", " "))


def provenance_section(runs: list[Run], env: dict[str, str], group_order: list[str] | None = None) -> str:
    """The provenance table (id="provenance"): one row per run, its command and inputs beneath it."""
    groups = group_order or []

    def order(r: Run) -> tuple[int, int, str]:
        g = groups.index(r.group) if r.group in groups else len(groups)
        s = STAGE_ORDER.index(r.kind) if r.kind in STAGE_ORDER else len(STAGE_ORDER)
        return g, s, r.name

    rows, details = [], []
    for r in sorted(runs, key=order):
        rec = r.record
        seed = rec.get("seed")
        rows.append([
            code(r.name), esc(r.stage if r.kind == r.stage else f"{r.stage} ({r.kind})"), _status(r),
            esc(rec.get("iarmem_version", "")), esc("" if seed is None else seed),
            code(settings_hash(rec.get("settings"))), _when(rec.get("started_at")), _when(rec.get("finished_at")),
        ])
        inputs = _inputs(rec)
        details.append(f"<b>command</b> {code(command_text(rec.get('command')))}"
                       + (f"<br><b>inputs</b> {inputs}" if inputs else ""))
    body = table(["run", "stage", "status", "iarmem", "seed", "settings hash", "started", "finished"], rows,
                 id_="provenance", details=details, row_classes=["has-detail"] * len(rows), stack=True)
    env_rows = [[esc(k), code(v)] for k, v in env.items()]
    body += "<h3>This report</h3>" + table(["", "value"], env_rows, id_="environment")
    body += "<h3>What the runs recorded</h3><ul>" + "".join(f"<li>{x}</li>" for x in recorded(runs)) + "</ul>"
    body += note("The settings hash is the sha256 of a run's settings as canonical JSON (sorted keys), first 12 "
                 "digits: two runs with the same hash were made with the same settings. Input fingerprints are the "
                 "sha256 of each input file (dir: of a folder's listing), first 12 digits; the full values are in "
                 "each run.json.")
    return body
