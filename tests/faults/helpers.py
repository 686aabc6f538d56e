"""Helpers of the fault suite: run the CLI in-process or as a process, and check a failure."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from iarmem.cli import main

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# the atomic writer's temporary names: .NAME.<12 hex>.tmp (iarmem.fileio.atomic_path)
TMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")
# words of a message that tells the user what to do
FIX_WORDS = re.compile(r"\b(pass|use|choose|check|give|fix|remove|rerun|re-run|re-download|re-export|re-save|"
                       r"raise|lower|select|train|localize|add|put|drop|write|convert|rewrite|regenerate|re-create|"
                       r"must|should|expected|needs?|takes|lists|one of|choose)\b|`iarmem "
                       r"|\(ids \d|outside \[|in \(|in \[|>= ?\d|<= ?\d", re.IGNORECASE)


# ---- running the CLI -------------------------------------------------------------------------------
@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Result:
    """``iarmem ARGV`` in this process: exit code (argparse's SystemExit included), stdout, stderr."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    cap = capsys.readouterr()
    return Result(int(code), cap.out, cap.err)


def run_subprocess(argv: list[str], *, module: bool = False, timeout: float = 120,
                   cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``.venv/bin/iarmem ARGV`` (or ``python -m iarmem ARGV``) as a real process."""
    exe = [sys.executable, "-m", "iarmem"] if module else [str(VENV_BIN / "iarmem")]
    return subprocess.run([*exe, *map(str, argv)], capture_output=True, text=True, timeout=timeout,
                          env=child_env(), cwd=cwd or REPO)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONHASHSEED="0")
    env.pop("PYTHONWARNINGS", None)
    return env


def stray_tmp(*roots: Path) -> list[Path]:
    """Temporary files of the atomic writer left anywhere under ``roots``."""
    found = []
    for root in roots:
        if root.is_dir():
            found += [p for p in root.rglob("*") if TMP_NAME.match(p.name)]
    return found


def assert_one_line_error(res: Result, *, names: tuple[str, ...] = (), out: Path | None = None,
                          roots: tuple[Path, ...] = ()) -> str:
    """Exit code 2, exactly one stderr line ``error: ...`` naming the thing and a fix, no traceback,
    --out absent or empty, no temporary files anywhere under ``roots`` (and ``out``)."""
    assert res.code == 2, f"exit code {res.code}, stderr:\n{res.err}"
    assert "Traceback" not in res.err, res.err
    assert len(res.err_lines) == 1, f"expected one stderr line, got:\n{res.err}"
    line = res.err_lines[0]
    assert line.startswith("error: "), line
    for name in names:
        assert name in line, f"{name!r} not named in: {line}"
    assert FIX_WORDS.search(line[len("error: "):]), f"no fix in: {line}"
    if out is not None:
        assert not out.exists() or (out.is_dir() and not any(out.iterdir())), (
            f"{out} left behind: {sorted(p.name for p in out.iterdir()) if out.is_dir() else 'a file'}")
    tmp = stray_tmp(*(r for r in (*roots, out) if r is not None))
    assert not tmp, f"temporary files left behind: {tmp}"
    return line


@dataclass(frozen=True)
class Inputs:
    root: Path
    var: Path  # tiny-var model folder with a planting manifest (10 planted, 10 ordinary, 10 held out)
    var_plain: Path  # the same weights, no manifest (works with any 10-class data)
    rar: Path  # tiny-rar model folder (another family)
    var_small: Path  # tiny-var of depth 2 (another size)
    loc: Path  # finished localization run of `var`
    tokenizer: Path  # tokenizer folder (as `iarmem train tokenizer` writes) for tiny-var
    ckpt: dict[str, Path]  # broken / foreign transformer checkpoints by fault name
    marker: Path  # the file the malicious pickle would create
    images: Path  # image folder: 2 classes x 4 good PNGs
    mixed: Path  # the same plus a zero-byte .png and a text file named .png
    no_images: Path  # class sub-folders holding no image files
    empty_dir: Path  # an empty folder
    bad_label_list: Path  # list file with a label outside the model's 10 classes
    negative_label_list: Path  # list file with label -1
    a_file: Path  # a plain text file (where a folder is expected)


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under ``roots``: inputs must never change."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out
