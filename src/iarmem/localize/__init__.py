"""Localization (UnitMem): which units of which blocks, at which scale or token bin, single out one image.

``stats`` holds the streaming accumulators and the UnitMem formulas, ``unitmem`` turns a model and
a batch of images into per-image mu, ``run`` is the stage driver, ``results`` the
unitmem.safetensors contract read by the mitigation stage, ``summary`` and ``figures`` what a
person reads.
"""

from iarmem.localize.results import FILE, UnitMemMap, compute_map, read_map, write_map
from iarmem.localize.run import LocalizeConfig, localize
from iarmem.localize.stats import BinReducer, UnitLayout, UnitStats, mean_others, median_others, unitmem

__all__ = [
    "FILE",
    "BinReducer",
    "LocalizeConfig",
    "UnitLayout",
    "UnitMemMap",
    "UnitStats",
    "compute_map",
    "localize",
    "mean_others",
    "median_others",
    "read_map",
    "unitmem",
    "write_map",
]
