"""Image folders: the ImageNet layout (one sub-folder per class) or any folder plus a class index.

Class indices follow the sorted sub-folder names, as torchvision's ImageFolder does, so that a
folder laid out like ImageNet's train split gets the indices the official checkpoints expect.
With a class-index JSON the layout is free; the JSON maps each image to its class by relative
path, by file name, or by its top-level sub-folder (ImageNet's ``{"0": ["n01440764", "tench"]}``
wnid map is accepted as is).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from iarmem.data.files import Check, FileDataset, find_unreadable, is_image_name, warn_skipped
from iarmem.errors import UserError


def _sort_key(rel: str) -> tuple[str, ...]:
    """Sort by path components, so files group under their folder like a sorted walk."""
    return tuple(rel.split("/"))


def list_images(root: Path) -> list[str]:
    """Relative POSIX paths of all image files under ``root`` (recursive, hidden entries skipped)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath).relative_to(root)
        for name in filenames:
            if not name.startswith(".") and is_image_name(name):
                found.append((base / name).as_posix())
    return sorted(found, key=_sort_key)


def _normalise_key(key: str) -> str:
    key = key.replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    return key.strip("/")


def read_class_index(path: str | os.PathLike) -> tuple[dict[str, int], list[str] | None]:
    """Parse a class-index JSON into ``{key: class index}`` and, for the ImageNet form, class names.

    Accepted: ``{"relative/path.jpg" | "file.jpg" | "subfolder": index}`` or ImageNet's
    ``{"0": ["n01440764", "tench"], ...}`` (keys are indices, the wnid names the sub-folder).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"class index {path} not found; pass the path of an existing JSON file")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"class index {path} is not valid JSON ({e}); fix or regenerate the file") from e
    bad = UserError(
        f'class index {path}: expected {{"path, file name or sub-folder": index}} or ImageNet\'s '
        '{"0": ["n01440764", "tench"], ...}; rewrite it in one of these forms'
    )
    if not isinstance(obj, dict) or not obj:
        raise bad
    values = list(obj.values())
    if all(isinstance(v, list) and len(v) == 2 and all(isinstance(s, str) for s in v) for v in values):
        if not all(str(k).isdigit() for k in obj):
            raise bad
        mapping = {_normalise_key(v[0]): int(k) for k, v in obj.items()}
        names = [str(i) for i in range(max(mapping.values()) + 1)]
        for k, (_, name) in obj.items():
            names[int(k)] = name
        return mapping, names
    if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        return {_normalise_key(k): int(v) for k, v in obj.items()}, None
    raise bad


def _lookup(mapping: dict[str, int]) -> Callable[[str], int | None]:
    """Resolve a relative path by exact path, then file name, then top-level sub-folder."""

    def find(rel: str) -> int | None:
        parts = rel.split("/")
        for key in (rel, parts[-1], parts[0] if len(parts) > 1 else None):
            if key is not None and key in mapping:
                return mapping[key]
        return None

    return find


def _by_top_folder(index: dict[str, int]) -> Callable[[str], int | None]:
    """Label a file by its class sub-folder; files lying directly in the root get none (ignored)."""

    def find(rel: str) -> int | None:
        return index.get(rel.split("/")[0]) if "/" in rel else None

    return find


def _check_num_classes(where: str, num_found: int, num_classes: int | None) -> int:
    if num_classes is None:
        return num_found
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    if num_found > num_classes:
        raise UserError(
            f"{where} has {num_found} classes but num_classes={num_classes}; "
            "raise num_classes or remove the extra classes"
        )
    return num_classes


def image_folder(
    root: str | os.PathLike,
    *,
    class_index: str | os.PathLike | None = None,
    num_classes: int | None = None,
    check: Check = "verify",
    workers: int = 8,
) -> FileDataset:
    """Index an image folder; ids follow the sorted relative paths of the readable images.

    Unreadable files (see :mod:`iarmem.data.files`) are skipped and reported in one warning.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"image folder {root} does not exist; check the path")
    if not root.is_dir():
        raise UserError(f"{root} is a file, not a folder; pass the folder that holds the images")

    rels = list_images(root)
    if class_index is None:
        class_dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not class_dirs:
            if rels:
                raise UserError(
                    f"{root} has images but no class sub-folders; put each class in its own sub-folder "
                    "or pass a class-index JSON (class_index=...)"
                )
            raise UserError(f"no images in {root}; expected one sub-folder of images per class")
        index = {name: k for k, name in enumerate(class_dirs)}
        find = _by_top_folder(index)
        classes = class_dirs
    else:
        mapping, names = read_class_index(class_index)
        find = _lookup(mapping)
        classes = names or [str(k) for k in range(max(mapping.values()) + 1)]

    labelled = [(rel, find(rel)) for rel in rels]
    unlabelled = [rel for rel, label in labelled if label is None]
    if class_index is not None:
        warn_skipped(root.as_posix(), unlabelled, ["not in the class index"] * len(unlabelled), "images")
    labelled = [(rel, label) for rel, label in labelled if label is not None]

    problems = find_unreadable([root / rel for rel, _ in labelled], check, workers)
    bad = [(rel, why) for (rel, _), why in zip(labelled, problems, strict=True) if why is not None]
    warn_skipped(root.as_posix(), [r for r, _ in bad], [w for _, w in bad])
    kept = [(rel, label) for (rel, label), why in zip(labelled, problems, strict=True) if why is None]
    if not kept:
        raise UserError(
            f"no readable images in {root} (extensions: jpg, jpeg, png, bmp, webp, gif, tif, tiff); "
            "check the path and the files"
        )

    n = _check_num_classes(str(root), len(classes), num_classes)
    classes = classes + [str(k) for k in range(len(classes), n)]
    return FileDataset(
        [root / rel for rel, _ in kept],
        [rel for rel, _ in kept],
        [label for _, label in kept],
        classes,
        title=f"image folder {root}",
        skipped=len(bad),
    )
