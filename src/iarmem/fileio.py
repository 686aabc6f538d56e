"""Atomic file writes: every file iarmem writes appears whole or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")  # what atomic_path names its temporary files


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # O_EXCL: never reuse a name; mode 0o666 & ~umask, like any file the user creates
    os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete the temporary files a killed process left in ``folder`` (and below); how many there were."""
    n = 0
    for p in Path(folder).rglob(".*.tmp"):
        if p.is_file() and TEMP_NAME.match(p.name):
            p.unlink(missing_ok=True)
            n += 1
    return n


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
