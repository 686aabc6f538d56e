"""The one small dataset protocol that every stage relies on.

A dataset is a fixed, ordered list of labelled images. The position of an image in that list
is its stable id: plans, manifests, statistics and reports all refer to images by id, so the
order must not depend on anything but the files themselves (sorted paths, list order).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image


class DataWarning(UserWarning):
    """Issued once per dataset for problems that are skipped rather than fatal (unreadable files)."""


@runtime_checkable
class ImageDataset(Protocol):
    """Labelled RGB images addressed by a stable integer id (their index)."""

    @property
    def labels(self) -> np.ndarray:
        """All labels as a read-only int64 array, without decoding any image."""
        ...

    @property
    def classes(self) -> list[str]:
        """Class names; label ``k`` is ``classes[k]``."""
        ...

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        """The image ``i`` in RGB mode and its label."""
        ...

    def describe(self) -> str:
        """One short line for logs and reports."""
        ...

    def source_id(self, i: int) -> str:
        """Where image ``i`` came from (a relative path or ``mnist5k:123``), for reports."""
        ...


def readonly_labels(labels: np.ndarray | list[int]) -> np.ndarray:
    """Return ``labels`` as a read-only int64 array, so callers cannot corrupt a dataset's labels."""
    arr = np.array(labels, dtype=np.int64).reshape(-1)
    arr.flags.writeable = False
    return arr


def check_index(i: int, n: int) -> int:
    """Normalise ``i`` (numpy ints, negatives) and bound-check it like a list does."""
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"image id {i} out of range for a dataset of {n} images")
    return i
