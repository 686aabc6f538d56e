"""Datasets of image files on disk, and the readability check shared by folders and path lists.

Files are checked once, when the dataset is built, so that a bad file is dropped before it is
given an id (ids must not change between runs that read the same files). The default check is
PIL's ``verify()``: it reads the header and, for PNG, every chunk with its checksum, so it
catches zero-byte files, non-images with an image extension and truncated PNGs, at a fraction of
the cost of decoding. A truncated JPEG passes ``verify()``; ``check="full"`` decodes every image
to catch those too. A file that passes the check and still fails to decode later raises a
UserError naming it, rather than silently changing what the model sees.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from iarmem.data.base import DataWarning, check_index, readonly_labels
from iarmem.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")

Check = Literal["verify", "full", "none"]
CHECKS: tuple[str, ...] = ("verify", "full", "none")


def is_image_name(path: str | os.PathLike) -> bool:
    """True for the image extensions a dataset reads (case-insensitive)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def _problem(path: Path, check: Check) -> str | None:
    """Why ``path`` is not a readable image, or None when it is."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as im:
            if check == "full":
                im.load()
            else:
                im.verify()
            if im.width <= 0 or im.height <= 0:
                return "image has no pixels"
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        return f"{type(e).__name__}: {e}".splitlines()[0][:120]
    return None


def find_unreadable(paths: Sequence[Path], check: Check = "verify", workers: int = 8) -> list[str | None]:
    """One entry per path: None if readable, else the reason. Threads, since PIL releases the GIL."""
    if check not in CHECKS:
        raise UserError(f"unknown image check {check!r}; use one of {', '.join(CHECKS)}")
    if check == "none":
        return [None] * len(paths)
    if len(paths) < 64 or workers <= 1:
        return [_problem(p, check) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: _problem(p, check), paths, chunksize=64))


def warn_skipped(
    where: str, names: Sequence[str], reasons: Sequence[str], what: str = "unreadable files"
) -> None:
    """Report all skipped files in one warning line, with the first as an example."""
    if names:
        warnings.warn(
            f"skipped {len(names)} {what} in {where} (e.g. {names[0]}: {reasons[0]})",
            DataWarning,
            stacklevel=3,
        )


def load_rgb(path: Path) -> Image.Image:
    """Decode ``path`` fully into an RGB image; a failure names the file and the fix."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:
        raise UserError(
            f"cannot read image {path} ({type(e).__name__}: {e}); remove or replace the file, "
            "or build the dataset with check='full' to skip such files"
        ) from e


class FileDataset:
    """Images read from files on demand; ``names`` are the ids used in reports (relative paths)."""

    def __init__(
        self,
        paths: Sequence[Path],
        names: Sequence[str],
        labels: np.ndarray | Sequence[int],
        classes: list[str],
        *,
        title: str,
        skipped: int = 0,
    ) -> None:
        self._paths = [Path(p) for p in paths]
        self._names = list(names)
        self._labels = readonly_labels(labels)
        self._classes = list(classes)
        self._title = title
        self._skipped = skipped

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    @property
    def paths(self) -> list[Path]:
        return list(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        i = check_index(i, len(self))
        return load_rgb(self._paths[i]), int(self._labels[i])

    def describe(self) -> str:
        text = f"{self._title}, {len(self)} images, {len(self._classes)} classes"
        if self._skipped:
            text += f" ({self._skipped} unreadable files skipped)"
        return text

    def source_id(self, i: int) -> str:
        return self._names[check_index(i, len(self))]
