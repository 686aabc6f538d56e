"""A text file listing images and labels: one ``path label`` per line.

Fields are separated by a comma (if the line has one) or by whitespace; the label is the last
field, so paths may contain spaces. Relative paths resolve against the list file's folder, so a
list travels with its images. Lines starting with ``#`` and blank lines are skipped, and so is a
``path,label`` header. Ids follow the order of the lines.
"""

from __future__ import annotations

import os
from pathlib import Path

from iarmem.data.files import Check, FileDataset, find_unreadable, warn_skipped
from iarmem.errors import UserError

HEADER_LABELS = ("label", "class", "target", "class_index", "y")


def _split(line: str) -> tuple[str, str] | None:
    parts = line.rsplit(",", 1) if "," in line else line.rsplit(None, 1)
    if len(parts) != 2:
        return None
    path, label = parts[0].strip().strip('"'), parts[1].strip().strip('"')
    return (path, label) if path and label else None


def read_path_list(path: Path, num_classes: int | None = None) -> list[tuple[int, str, int]]:
    """Parse ``path`` into (line number, image path as written, label) entries, validating labels."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(
            f"cannot read path list {path} ({e}); pass a UTF-8 text file of 'path label' lines"
        ) from e
    entries: list[tuple[int, str, int]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = _split(line)
        if fields is None:
            raise UserError(f"{path}:{lineno}: expected 'path label', got {line[:80]!r}; fix the line")
        image, label_text = fields
        if not entries and label_text.lower() in HEADER_LABELS:
            continue  # a CSV header
        try:
            label = int(label_text)
        except ValueError:
            raise UserError(
                f"{path}:{lineno}: label {label_text!r} is not an integer; write the class index (0, 1, ...)"
            ) from None
        if label < 0 or (num_classes is not None and label >= num_classes):
            allowed = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            raise UserError(
                f"{path}:{lineno}: label {label} is outside {allowed}; fix the label or num_classes"
            )
        entries.append((lineno, image, label))
    return entries


def path_list(
    path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    check: Check = "verify",
    workers: int = 8,
) -> FileDataset:
    """Index the images named in a list file; a missing file is an error naming its line."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"path list {path} does not exist; check the path")
    if path.is_dir():
        raise UserError(
            f"{path} is a folder, not a path list; pass a .txt/.csv file or use the folder directly"
        )
    if num_classes is not None and num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    entries = read_path_list(path, num_classes)
    if not entries:
        raise UserError(f"path list {path} names no images; add lines of the form 'path label'")

    base = path.parent
    files: list[Path] = []
    for lineno, image, _ in entries:
        file = Path(image) if Path(image).is_absolute() else base / image
        if not file.is_file():
            raise UserError(
                f"{path}:{lineno}: image {image} not found (looked at {file}); fix or remove the line"
            )
        files.append(file)

    problems = find_unreadable(files, check, workers)
    bad = [(e[1], why) for e, why in zip(entries, problems, strict=True) if why is not None]
    warn_skipped(path.as_posix(), [b for b, _ in bad], [w for _, w in bad])
    kept = [(f, e) for f, e, why in zip(files, entries, problems, strict=True) if why is None]
    if not kept:
        raise UserError(f"no readable images among the {len(entries)} listed in {path}; check the files")

    labels = [e[2] for _, e in kept]
    n = num_classes if num_classes is not None else max(labels) + 1
    return FileDataset(
        [f for f, _ in kept],
        [e[1] for _, e in kept],
        labels,
        [str(k) for k in range(n)],
        title=f"path list {path}",
        skipped=len(bad),
    )
