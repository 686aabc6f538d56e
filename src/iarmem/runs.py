"""Run folders: each stage writes into one folder and records what made it (run.json).

run.json names the stage, the iarmem version, the command line, the settings that shape the
results, fingerprints of the inputs, and whether the stage finished. A command refuses to write
into a folder that holds another stage or other settings unless told to overwrite, so results of
different runs never mix.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iarmem import __version__
from iarmem.errors import UserError
from iarmem.fileio import remove_stale_temps, write_json

RUN_FILE = "run.json"
# the command line being run (set by the CLI, so that a stage run in-process, as `iarmem demo` does,
# records its own command rather than the outer one)
_COMMAND: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("iarmem_command", default=None)


@contextlib.contextmanager
def recording_command(argv: list[str]) -> Iterator[None]:
    """Within the block, run.json records ``argv`` as the command."""
    token = _COMMAND.set([str(a) for a in argv])
    try:
        yield
    finally:
        _COMMAND.reset(token)


def command_line() -> list[str]:
    return _COMMAND.get() or [Path(sys.argv[0]).name] + sys.argv[1:]


def fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, or of a folder's listing (relative names and sizes, run.json excluded:
    it changes when the folder's own run is resumed or finished)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file() and q.name != RUN_FILE and q.suffix != ".tmp"):
            h.update(f"{f.relative_to(p)}\0{f.stat().st_size}\n".encode())
        return "dir:" + h.hexdigest()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def environment() -> dict[str, str]:
    """Versions and machine behind a run, so every number can be traced to what made it."""
    import platform

    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "machine": platform.machine(), "cpu_count": str(os.cpu_count())}


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


@dataclass
class Run:
    """An open stage in a run folder; call ``finish`` when every output is written."""

    path: Path
    record: dict[str, Any] = field(default_factory=dict)

    def file(self, name: str) -> Path:
        return self.path / name

    def finish(self, outputs: list[str] | None = None, summary: dict[str, Any] | None = None) -> None:
        self.record["status"] = "finished"
        self.record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.record["outputs"] = {name: fingerprint(self.path / name) for name in (outputs or [])
                                  if (self.path / name).is_file()}
        if summary is not None:
            self.record["summary"] = _jsonable(summary)
        write_json(self.path / RUN_FILE, self.record)

    @property
    def resumed(self) -> bool:
        return bool(self.record.get("resumed"))

    @property
    def done(self) -> bool:
        """True when resuming a run that already finished: the stage can return at once."""
        return self.record.get("status") == "finished"


def read_run(path: str | os.PathLike) -> dict[str, Any] | None:
    f = Path(path) / RUN_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{f} is damaged ({e}); remove the folder or pass --overwrite") from e


def require_finished(path: str | os.PathLike, stage: str | tuple[str, ...]) -> dict[str, Any]:
    """The run.json of a finished stage run, or a UserError saying what to run first."""
    stages = (stage,) if isinstance(stage, str) else stage
    p = Path(path)
    if not p.exists():
        raise UserError(f"run folder not found: {p} (run `iarmem {stages[0]} ... --out {p}` first)")
    if not p.is_dir():
        raise UserError(f"{p} is a file; pass the run folder written by `iarmem {stages[0]}`")
    rec = read_run(p)
    if rec is None or rec.get("stage") not in stages:
        raise UserError(f"{p} is not a run folder of `iarmem {' / '.join(stages)}` (no matching {RUN_FILE})")
    if rec.get("status") != "finished":
        raise UserError(f"the {rec['stage']} run in {p} did not finish; rerun it with --resume")
    return rec


def start_run(
    path: str | os.PathLike,
    stage: str,
    settings: dict[str, Any],
    inputs: dict[str, str | os.PathLike] | None = None,
    *,
    seed: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> Run:
    """Open ``path`` for ``stage``: new, resumed (same stage and settings) or overwritten."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"output {p} is a file; pass a folder for --out")
    settings = _jsonable(settings)
    prints = {k: fingerprint(v) for k, v in (inputs or {}).items() if v is not None and Path(v).exists()}
    existing = read_run(p) if p.is_dir() else None
    if p.is_dir() and any(p.iterdir()):
        if existing is None:
            raise UserError(f"output folder {p} is not empty and holds no iarmem run; choose an empty or new folder")
        same = existing.get("stage") == stage and existing.get("settings") == settings
        if overwrite:
            shutil.rmtree(p)
        elif not same:
            what = existing.get("stage")
            diff = sorted(k for k in set(settings) | set(existing.get("settings", {}))
                          if settings.get(k) != existing.get("settings", {}).get(k))
            detail = f"other settings ({', '.join(diff[:5])})" if what == stage else f"a `{what}` run"
            raise UserError(f"output folder {p} holds {detail}; choose another --out or pass --overwrite")
        elif existing.get("inputs") and existing.get("inputs") != prints:
            raise UserError(f"output folder {p} was made from other input files; choose another --out or pass "
                            f"--overwrite")
        elif existing.get("status") == "finished" and not resume:
            raise UserError(f"output folder {p} already holds this finished {stage} run; pass --overwrite to redo it "
                            f"or choose another --out")
        elif existing.get("status") != "finished" and not resume:
            raise UserError(f"output folder {p} holds an unfinished {stage} run; pass --resume to continue it or "
                            f"--overwrite to start again")
    p.mkdir(parents=True, exist_ok=True)
    resumed = existing is not None and resume and not overwrite
    if resumed:
        remove_stale_temps(p)  # a killed run's half-written temporary files; its final files are whole
    record = {
        "iarmem_version": __version__,
        "stage": stage,
        "status": "running",
        "command": command_line(),
        "seed": seed,
        "settings": settings,
        "inputs": prints,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "resumed": resumed,
        "environment": environment(),
    }
    if resumed and existing is not None:
        if existing.get("status") == "finished":
            return Run(p, existing)  # nothing to redo: leave the record as it is
        record["started_at"] = existing.get("started_at", record["started_at"])
    write_json(p / RUN_FILE, record)
    return Run(p, record)


def check_out(out: Path, inputs: list[str | None]) -> None:
    """--out must not be an input nor hold one: --overwrite would delete it."""
    o = out.resolve()
    for item in inputs:
        if not item:
            continue
        q = Path(item).resolve()
        if q.exists() and (q == o or o in q.parents):
            raise UserError(f"--out {out} would overwrite the input {item}; choose another folder")


def discard_output(out: Path, existed: bool) -> None:
    """Leave no half-written output: remove the folder we made, or empty the one we were given."""
    if not out.is_dir():
        return
    if not existed:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
