"""Datasets, subsets, per-family preprocessing and planting.

Every dataset follows :class:`ImageDataset`: ``len(ds)``, ``ds[i] -> (RGB PIL image, label)``,
``ds.labels``, ``ds.classes``, ``ds.describe()`` and ``ds.source_id(i)``; an image's id is its
index. Everything random takes a seed and nothing keeps global state.
"""

from iarmem.data.arrays import ArrayDataset
from iarmem.data.base import DataWarning, ImageDataset
from iarmem.data.files import IMAGE_EXTENSIONS, FileDataset
from iarmem.data.folder import image_folder, read_class_index
from iarmem.data.images import make_grid, save_grid, to_pil
from iarmem.data.mnist import bundled_mnist
from iarmem.data.pathlist import path_list
from iarmem.data.planting import Plan, make_plan, read_manifest, write_manifest
from iarmem.data.sources import open_dataset
from iarmem.data.subsets import balanced_sample, balanced_subset, matched_sample, split_holdout
from iarmem.data.transforms import (
    FAMILIES,
    AugParams,
    ImageTransform,
    augmentation_generator,
    augmentation_seed,
    load_batch,
    pil_to_tensor01,
    transform_for,
)

__all__ = [
    "FAMILIES",
    "IMAGE_EXTENSIONS",
    "ArrayDataset",
    "AugParams",
    "DataWarning",
    "FileDataset",
    "ImageDataset",
    "ImageTransform",
    "Plan",
    "augmentation_generator",
    "augmentation_seed",
    "balanced_sample",
    "balanced_subset",
    "bundled_mnist",
    "image_folder",
    "load_batch",
    "make_grid",
    "make_plan",
    "matched_sample",
    "open_dataset",
    "path_list",
    "pil_to_tensor01",
    "read_class_index",
    "read_manifest",
    "save_grid",
    "split_holdout",
    "to_pil",
    "transform_for",
    "write_manifest",
]
