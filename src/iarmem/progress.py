"""Progress for long loops: a tqdm bar on a terminal, a few plain lines in logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, desc: str = "", enabled: bool = True,
             every: float = 0.1) -> Iterator[T]:
    """Yield ``items``; show a bar on a TTY, else print ``desc: i/total`` about every 10 %."""
    if not enabled:
        yield from items
        return
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    if total is None:
        total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    step = max(1, int((total or 0) * every)) if total else 0
    t0 = time.monotonic()
    i = 0
    for i, item in enumerate(items, 1):
        yield item
        if total and (i % step == 0 or i == total):
            print(f"{desc}: {i}/{total} ({time.monotonic() - t0:.0f}s)", file=sys.stderr, flush=True)


def log(msg: str) -> None:
    """A status line for the user (stderr, so stdout stays clean for results)."""
    print(msg, file=sys.stderr, flush=True)
