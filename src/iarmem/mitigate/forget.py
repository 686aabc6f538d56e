"""Targeted forgetting: edit the units that memorize given images rather than the top units overall.

A unit belongs to an image when the image is its argmax (the image that drives it most) in some
bin (``match="any"``) or in the bin its score comes from (``match="reduced"``: the chosen bin, or
the bin where its UnitMem peaks under ``reduce="max"``); a unit whose maximum several images tie
for belongs to none (the localization writes -1). ``top`` optionally keeps only units among the
top P % by UnitMem, since an argmax means little for a unit that memorizes nothing. Given a
localization run made over the forget images alone, its top units are the ones to edit. The
edit itself is the mitigate command's (``--edit exact --factor 0`` removes the units).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from iarmem.errors import UserError
from iarmem.mitigate.localization import Localization
from iarmem.mitigate.select import (
    Scores,
    Selection,
    control_like,
    ranked,
    reduce_scores,
    resolve_reduce,
    top_selection,
)

MATCHES = ("any", "reduced")


def check_ids(loc: Localization, ids: np.ndarray) -> None:
    missing = np.setdiff1d(ids, loc.image_ids)
    if missing.size:
        shown = ", ".join(str(int(x)) for x in missing[:10]) + (" ..." if missing.size > 10 else "")
        where = loc.path or "the localization"
        raise UserError(f"{missing.size} image id(s) are not among the {loc.image_ids.size} images of {where}: "
                        f"{shown}; localize over those images (--forget-run) or pick ids the run saw")


def owned_units(loc: Localization, scores: Scores, ids: np.ndarray, match: str, reduce: str,
                bin: int | None) -> np.ndarray:
    """Bool [total] in layer order: the unit's argmax image is among ``ids``."""
    if match not in MATCHES:
        raise UserError(f"unknown --forget-match {match!r}; choose one of {', '.join(MATCHES)}")
    if match == "reduced" and reduce == "mean":
        raise UserError("--forget-match reduced needs --reduce max or --bin K (a mean over bins has no one bin)")
    parts = []
    for name in scores.names:
        argmax = loc.argmax[name]
        if match == "any":
            parts.append(np.isin(argmax, ids).any(0))
            continue
        if reduce == "bin":
            chosen = argmax[bin]
        else:  # the bin of peak UnitMem (first on ties), the bin that set the unit's score
            peak = np.nan_to_num(loc.unitmem[name].astype(np.float64), nan=0.0).argmax(0)
            chosen = argmax[peak, np.arange(argmax.shape[1])]
        parts.append(np.isin(chosen, ids))
    return np.concatenate(parts)


def forget_units(loc: Localization, ids: Sequence[int] | np.ndarray | None = None, top: float | None = None,
                 scope: str = "global", reduce: str | None = None, bin: int | None = None, match: str | None = None,
                 control: str = "none", seed: int = 0, kinds: Sequence[str] = ("fc1",)) -> Selection:
    """Units owned by ``ids`` (optionally within the top ``top`` %), or the top ``top`` % alone.

    With ``ids`` only: every unit whose argmax image is among them. With ``top`` only (a
    localization made over the forget images): its top ``top`` % units. With both: the intersection.
    A control replaces the result with as many random / lowest-UnitMem units.
    """
    if ids is None and top is None:
        raise UserError("targeted forgetting needs image ids (--forget) or a localization over them (--forget-run)")
    reduce, bin = resolve_reduce(reduce, bin, loc.num_bins)
    match = match or ("reduced" if reduce == "bin" else "any")
    scores = reduce_scores(loc, reduce, bin, kinds)
    mask = np.ones(len(scores.flat), dtype=bool)
    extra: dict = {"forget_match": match if ids is not None else None, "forget_top": top}
    if ids is not None:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        check_ids(loc, ids)
        mask &= owned_units(loc, scores, ids, match, reduce, bin)
        extra["forget_ids"] = [int(x) for x in ids]
    if top is not None:
        top_flat = scores.to_flat(top_selection(scores, top, scope, reduce, bin).units)
        in_top = np.zeros_like(mask)
        in_top[top_flat] = True
        mask &= in_top
    if not mask.any():
        why = (f"no unit of the top {top:g} % has its argmax image among them; raise --forget-top or drop it"
               if top is not None else "no unit has its argmax image among them: no unit is driven most by those "
               "images; try a localization over those images alone (--forget-run)")
        raise UserError(f"targeted forgetting of {len(ids) if ids is not None else 0} image(s) found zero units: "
                        f"{why}")
    base = Selection(scores.to_units(np.flatnonzero(mask)), dict(zip(scores.names, scores.blocks)), "forget", "none",
                     top, scope, reduce, bin, None, len(scores.flat), extra)
    return control_like(base, scores, control, seed)


READINGS = ("per_image", "global")


def image_ranking(loc: Localization, image_id: int, reading: str = "per_image") -> tuple[Scores, np.ndarray]:
    """The fc1 unit scores and the flat indices a localization names for one image, best first.

    ``global``: every unit by the run-level score (the paper's ranking). ``per_image``: a per-image
    method's run ranks every unit by the image's own score; a UnitMem run names the units whose
    peak bin the image owns, by UnitMem. Units refined for the image (``--refine``) come first.
    """
    if reading not in READINGS:
        raise ValueError(f"unknown reading {reading!r}; choose one of {', '.join(READINGS)}")
    scores = reduce_scores(loc, "max")
    if reading == "global":
        return scores, ranked(scores.flat, highest=True)
    if image_id in loc.per_image:
        order = ranked(loc.image_unit_scores(image_id, scores.names), highest=True)
    else:
        order = ranked(scores.flat, highest=True)
        mine = owned_units(loc, scores, np.array([image_id]), "reduced", "max", None)
        order = order[mine[order]]
    if image_id in loc.refined:
        first = scores.to_flat(loc.refined[image_id])
        order = np.concatenate([order[np.isin(order, first)], first[~np.isin(first, order)],
                                order[~np.isin(order, first)]])
    return scores, order

