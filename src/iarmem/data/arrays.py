"""Datasets held in memory as uint8 arrays (the bundled MNIST, synthetic test data)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from iarmem.data.base import check_index, readonly_labels
from iarmem.errors import UserError


class ArrayDataset:
    """Images from a uint8 array [N, H, W] (grey) or [N, H, W, 3] (RGB); always served as RGB."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | Sequence[int],
        *,
        name: str,
        classes: list[str] | None = None,
        id_prefix: str | None = None,
    ) -> None:
        images = np.asarray(images)
        if (
            images.dtype != np.uint8
            or images.ndim not in (3, 4)
            or (images.ndim == 4 and images.shape[3] != 3)
        ):
            raise UserError(
                f"{name}: images must be uint8 [N, H, W] or [N, H, W, 3], got {images.dtype} "
                f"{list(images.shape)}; convert them with np.asarray(x, dtype=np.uint8)"
            )
        self._labels = readonly_labels(labels)
        if len(self._labels) != len(images):
            raise UserError(
                f"{name}: {len(images)} images but {len(self._labels)} labels; pass one label per image"
            )
        if len(self._labels) and self._labels.min() < 0:
            raise UserError(f"{name}: labels must be >= 0; relabel classes as 0..K-1")
        n_classes = int(self._labels.max()) + 1 if len(self._labels) else 0
        self._classes = list(classes) if classes is not None else [str(k) for k in range(n_classes)]
        if len(self._classes) < n_classes:
            raise UserError(f"{name}: label {n_classes - 1} but only {len(self._classes)} class names")
        self._images = images
        self._name = name
        self._prefix = id_prefix or name

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        i = check_index(i, len(self))
        arr = self._images[i]
        img = Image.fromarray(arr, mode="L" if arr.ndim == 2 else "RGB")
        return img.convert("RGB"), int(self._labels[i])

    def describe(self) -> str:
        h, w = self._images.shape[1:3]
        return f"{self._name}, {len(self)} images, {len(self._classes)} classes, {h}x{w}"

    def source_id(self, i: int) -> str:
        return f"{self._prefix}:{check_index(i, len(self))}"
