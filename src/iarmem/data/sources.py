"""One entry point from a command-line string to a dataset."""

from __future__ import annotations

import os
from pathlib import Path

from iarmem.data.base import ImageDataset
from iarmem.data.files import Check
from iarmem.data.folder import image_folder
from iarmem.data.mnist import bundled_mnist
from iarmem.data.pathlist import path_list
from iarmem.errors import UserError

BUNDLED = ("mnist", "mnist5k")
LIST_SUFFIXES = (".txt", ".csv", ".lst", ".tsv")


def open_dataset(
    spec: str | os.PathLike,
    num_classes: int | None = None,
    *,
    class_index: str | os.PathLike | None = None,
    check: Check = "verify",
) -> ImageDataset:
    """Open ``"mnist"`` (the bundled MNIST-5k), an image folder, or a ``.txt``/``.csv`` path list.

    The bare word ``mnist`` always means the bundled data; write ``./mnist`` for a folder of
    that name. ``class_index`` (a JSON file) applies to folders only.
    """
    text = os.fspath(spec)
    if text.lower() in BUNDLED:
        if class_index is not None:
            raise UserError("class_index applies to image folders, not to the bundled MNIST; drop it")
        ds = bundled_mnist()
        if num_classes is not None and num_classes < len(ds.classes):
            raise UserError(f"MNIST has {len(ds.classes)} classes but num_classes={num_classes}; raise it")
        return ds
    path = Path(text)
    if path.is_dir():
        return image_folder(path, class_index=class_index, num_classes=num_classes, check=check)
    if path.is_file():
        if path.suffix.lower() not in LIST_SUFFIXES:
            raise UserError(
                f"{path} is neither a folder nor a path list ({', '.join(LIST_SUFFIXES)}); "
                "pass 'mnist', an image folder, or a list of 'path label' lines"
            )
        if class_index is not None:
            raise UserError("class_index applies to image folders; a path list carries its own labels")
        return path_list(path, num_classes=num_classes, check=check)
    raise UserError(
        f"dataset {text!r} not found; pass 'mnist' (bundled), an image folder, or a .txt/.csv path list"
    )
