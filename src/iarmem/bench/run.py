"""The stages of `iarmem bench`. INJ: inject held-out images, check the ground truth, score UnitMem on it.
DEL: remove the units UnitMem names for each memorized image, against random units (``deletion.py``).

For every rate r and target image (held-out images of the model's plan, never trained on): a copy
of the model learns the image through r % of the fc1 units of every block (``inject``); the
ablation check runs (the units removed, and as many random units of the same layers removed);
the injected model is written to a scratch folder and localized with UnitMem over the training
set plus the target; each localizer reading is scored by recall of the injected units in its top
k % for k = r and 2r. One JSON record per (r, image) is written as it finishes, so a killed run
resumes where it stopped; the scratch folders are removed.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iarmem.bench.deletion import DelSettings, run_deletion
from iarmem.bench.inject import InjectConfig, check_ablation, inject, pick_units
from iarmem.bench.score import READINGS, bootstrap_interval, score_injection
from iarmem.data import ImageDataset
from iarmem.data.planting import Plan
from iarmem.fileio import write_json
from iarmem.localize.run import LocalizeConfig, localize
from iarmem.mitigate.localization import Localization, load_localization
from iarmem.models.base import IAR
from iarmem.models.loading import save_model_folder, training_views
from iarmem.progress import log
from iarmem.runs import read_run
from iarmem.tokens import load_views

STATS = ("mean", "median")
BASES = ("zscore", "gradient", "mask")  # the per-image localizers scored beside UnitMem ...
METHODS = (*BASES, "gradient+refine")  # ... and any of them "+refine" (refine.py)
REFINE = "+refine"


def method_config(method: str) -> dict[str, Any]:
    """LocalizeConfig fields of a bench method name ("gradient", "mask+refine", ...)."""
    base = method.removesuffix(REFINE)
    if base not in BASES:
        raise ValueError(f"unknown method {method!r}")
    return {"method": base, "refine": method.endswith(REFINE)}
KEEP_IMAGES = 256


@dataclass(frozen=True)
class InjSettings:
    rates: tuple[float, ...] = (0.5, 1.0, 2.0)  # percent of the fc1 units of every block
    images: int = 2
    stats: tuple[str, ...] = STATS
    inject: InjectConfig = InjectConfig()
    batch_size: int = 8
    methods: tuple[str, ...] = METHODS


def localizer_names(s: InjSettings) -> list[str]:
    """The record keys of the localizers a bench scores: unitmem_STAT, then the per-image methods."""
    return [f"unitmem_{stat}" for stat in s.stats] + list(s.methods)


def pick_targets(plan: Plan, count: int, seed: int) -> np.ndarray:
    """``count`` held-out images (never trained on), seeded, in a fixed order."""
    rng = np.random.default_rng([seed, 14])
    return rng.choice(plan.heldout_ids, size=min(count, len(plan.heldout_ids)), replace=False).astype(np.int64)


def _tokens(iar: IAR, ds: ImageDataset, ids: np.ndarray, seed: int,
            views: int | np.ndarray = 0) -> tuple[Any, torch.Tensor]:
    """Tokens and labels of ``ids`` at ``views`` (default the eval view)."""
    with torch.no_grad():
        x, y = load_views(iar, ds, ids, views, seed)
        return iar.tokenize(x), y


def record_name(rate: float, image: int) -> str:
    return f"r{rate:g}-img{image}.json"


@dataclass(frozen=True)
class Source:
    """The trained model folder and dataset the bench starts from (scratch copies point back to them)."""

    model_folder: Path
    tokenizer_file: Path
    data: str  # the dataset argument, as `iarmem localize` takes it
    ds: ImageDataset
    plan: Plan
    device: str = "cpu"


def run_inj(iar: IAR, src: Source, s: InjSettings, out: Path, seed: int) -> list[dict[str, Any]]:
    """Every (rate, target) record, computing the missing ones; ``out`` / inj holds them."""
    folder = out / "inj"
    folder.mkdir(parents=True, exist_ok=True)
    plan = src.plan
    targets = pick_targets(plan, s.images, seed)
    keep_ids = np.random.default_rng([seed, 15]).choice(plan.train_ids, size=min(KEEP_IMAGES, len(plan.train_ids)),
                                                         replace=False)
    keep, keep_labels = _tokens(iar, src.ds, keep_ids, seed)
    records = []
    jobs = [(r, int(h)) for r in s.rates for h in targets]
    for n, (rate, h) in enumerate(jobs, 1):
        path = folder / record_name(rate, h)
        if path.is_file():
            rec = json.loads(path.read_text())
            if not rec["extracted"] or all(k in rec for k in localizer_names(s)):
                records.append(rec)
                continue  # a record of an earlier bench that lacks a localizer is redone (the injection is seeded)
        log(f"bench inj: {n}/{len(jobs)} (r = {rate:g} %, image {h})")
        records.append(_one(iar, src, keep, keep_labels, rate, h, s, folder, seed))
        write_json(path, records[-1])
    return records


def _one(base: IAR, src: Source, keep: Any, keep_labels: torch.Tensor, rate: float, image: int, s: InjSettings,
         folder: Path, seed: int) -> dict[str, Any]:
    iar = copy.deepcopy(base, {id(base.tokenizer): base.tokenizer})
    target, label = _tokens(iar, src.ds, np.array([image]), seed)
    views = _view_tokens(iar, src, image)
    units = pick_units(iar, rate / 100, np.random.default_rng([seed, image, round(rate * 1000)]))
    res = inject(iar, target, label, keep, keep_labels, units, s.inject, views)
    rec: dict[str, Any] = {"rate": rate, "image": image, "label": int(label), **res.as_dict(),
                           "ablation": check_ablation(iar, target, label, units, np.random.default_rng([seed, image]))}
    if not res.extracted:
        return rec
    scratch = folder / f"scratch-r{rate:g}-img{image}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        model_dir = save_model_folder(iar, scratch / "model", tokenizer_file=src.tokenizer_file,
                                      extra=_training_fields(src.model_folder))
        ids = tuple(int(i) for i in np.union1d(src.plan.train_ids, [image]))
        for stat in s.stats:
            loc_dir = scratch / f"loc-{stat}"
            localize(LocalizeConfig(model=str(model_dir), data=src.data, out=str(loc_dir), ids=ids, stat=stat,
                                    batch_size=s.batch_size, seed=seed, device=src.device))
            rec[f"unitmem_{stat}"] = score_injection(load_localization(loc_dir), image, units, (rate, 2 * rate))
        for method in s.methods:  # the image alone against the other held-out images (never trained on)
            loc_dir = scratch / f"loc-{method}"
            refs = inj_references(src.plan, image, seed)
            localize(LocalizeConfig(model=str(model_dir), data=src.data, out=str(loc_dir), targets=(image,),
                                    references=refs, batch_size=s.batch_size, seed=seed, device=src.device,
                                    **method_config(method)))
            rec[method] = score_injection(load_localization(loc_dir), image, units, (rate, 2 * rate))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rec


def inj_references(plan: Plan, image: int, seed: int, least: int = 8) -> tuple[int, ...]:
    """The per-image methods' references for an injected image: the other held-out images, topped up with
    ordinary training images (seeded) when the plan holds out fewer than ``least``."""
    held = [int(i) for i in plan.heldout_ids if i != image]
    if len(held) >= least:
        return tuple(held)
    rng = np.random.default_rng([seed, image, 16])
    extra = rng.choice(plan.ordinary_ids, size=min(least - len(held), len(plan.ordinary_ids)), replace=False)
    return tuple(sorted(held + [int(i) for i in extra]))


def _view_tokens(iar: IAR, src: Source, image: int) -> Any:
    """The image under the views the model was trained on (those localize reads), eval view alone if unknown."""
    trained = training_views(src.model_folder)
    views, view_seed = trained if trained is not None else ((0,), 0)
    return _tokens(iar, src.ds, np.full(len(views), image), view_seed, np.asarray(views))[0]


def _training_fields(model_folder: Path) -> dict[str, Any]:
    """model.json fields that say which views the model was trained on (localize reads them)."""
    info = json.loads((model_folder / "model.json").read_text())
    return {k: v for k, v in info.items() if k in ("training_views", "preset")}


def summarize_inj(records: list[dict[str, Any]], s: InjSettings, seed: int) -> dict[str, Any]:
    """Per rate: injection success, the ablation check, and per localizer reading the recall at k = r, 2r."""
    rows = []
    for rate in s.rates:
        rs = [r for r in records if r["rate"] == rate]
        ok = [r for r in rs if r["extracted"]]
        row: dict[str, Any] = {
            "rate": rate, "images": len(rs), "injected": len(ok),
            "steps_median": float(np.median([r["steps"] for r in ok])) if ok else None,
            "ablated_agreement": float(np.mean([r["ablation"]["ablated"] for r in ok])) if ok else None,
            "random_ablated_agreement": float(np.mean([np.mean(r["ablation"]["random"]) for r in ok])) if ok else None,
            "ablation_removes": int(sum(r["ablation"]["ablated"] <= s.inject.bar for r in ok)),
            "random_removes": int(sum(np.mean(r["ablation"]["random"]) <= s.inject.bar for r in ok)),
            "keep_loss_change": float(np.mean([r["keep_loss_after"] - r["keep_loss_before"] for r in ok])) if ok
            else None,
            "localizers": {},
        }
        for key in localizer_names(s):
            for reading in READINGS:
                for k in (rate, 2 * rate):
                    vals = [r[key][f"{reading}_recall_at_{k:g}"] for r in ok if key in r]
                    lo, hi = bootstrap_interval(vals, seed)
                    row["localizers"][f"{key.replace('_', '-')}/{reading}@{k:g}"] = {
                        "recall": float(np.mean(vals)) if vals else None, "ci95": [lo, hi], "n": len(vals),
                        "random": k / 100}
        rows.append(row)
    return {"inj": rows}


def inj_table(summary: dict[str, Any]) -> str:
    """Markdown: one line per (rate, localizer reading, k)."""
    lines = ["| r % | injected | ablation removes / random removes | localizer | k % | recall (95 % CI) | random |",
             "|---|---|---|---|---|---|---|"]
    for row in summary["inj"]:
        head = (f"| {row['rate']:g} | {row['injected']} / {row['images']} | "
                f"{row['ablation_removes']} / {row['random_removes']} |")
        for name, v in row["localizers"].items():
            loc, k = name.split("@")
            rec = "-" if v["recall"] is None else f"{v['recall']:.3f} ({v['ci95'][0]:.2f}-{v['ci95'][1]:.2f})"
            lines.append(f"{head} {loc} | {k} | {rec} | {v['random']:.3f} |")
    return "\n".join(lines) + "\n"


DEL_FILE = "del.json"


def localize_model(src: Source, out: Path, seed: int, batch_size: int, method: str = "unitmem") -> Localization:
    """A localization of the unedited model in ``out``/localize (UnitMem, mean, over the training set) or
    ``out``/localize-METHOD (a per-image method over the planted images, against the held-out ones);
    resumable, reused."""
    loc_dir = out / ("localize" if method == "unitmem" else f"localize-{method}")
    if (read_run(loc_dir) or {}).get("status") != "finished":
        log(f"bench: localizing the unedited model ({method})")
        per_image = {} if method == "unitmem" else {"targets": "planted", **method_config(method)}
        localize(LocalizeConfig(model=str(src.model_folder), data=src.data, out=str(loc_dir), batch_size=batch_size,
                                seed=seed, device=src.device, resume=(loc_dir / "run.json").is_file(), **per_image))
    return load_localization(loc_dir)


def del_file(method: str) -> str:
    return DEL_FILE if method == "unitmem" else f"del-{method}.json"


def run_del(iar: IAR, src: Source, s: DelSettings, out: Path, seed: int, batch_size: int,
            quality: Callable[[], dict[str, Any]] | None = None, method: str = "unitmem") -> dict[str, Any]:
    """The DEL stage for one localizer: its localization of the unedited model, then every deletion
    (``quality``: FID and class accuracy)."""
    path = out / del_file(method)
    if path.is_file():
        return json.loads(path.read_text())
    loc = localize_model(src, out, seed, batch_size, method)
    planted = src.plan.planted_ids
    tokens, labels = _tokens(iar, src.ds, planted, seed)
    held, held_labels = _tokens(iar, src.ds, src.plan.heldout_ids, seed)
    log(f"bench del ({method}): {len(planted)} planted images x {len(s.budgets)} budgets x (1 + {s.controls} "
        f"controls)")
    result = run_deletion(iar, loc, planted, tokens, labels, held, held_labels, s, seed, quality)
    write_json(path, result)
    return result


def del_table(rows: list[dict[str, Any]], name: str = "UnitMem") -> str:
    """Markdown: per budget, the localizer ``name`` against the random controls."""
    lines = [f"| budget % | units (mean) | self removed: {name} (95 % CI) | self removed: random | "
             f"neg removed: {name} | neg removed: random | held-out loss change: {name} | random | "
             f"FID change: {name} | random |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        a, r = row.get("localizer"), row.get("random")
        if a is None or r is None:
            continue
        ci = a["self_removed_ci95"]
        neg = "-" if a["neg_removed"] is None else f"{a['neg_removed']:.2f}"
        rneg = "-" if r["neg_removed"] is None else f"{r['neg_removed']:.2f}"
        lines.append(f"| {row['budget']:g} | {a['units_mean']:.1f} | {a['self_removed']:.2f} "
                     f"({ci[0]:.2f}-{ci[1]:.2f}) | {r['self_removed']:.2f} | {neg} | {rneg} | "
                     f"{a['heldout_loss_change']:+.3f} | {r['heldout_loss_change']:+.3f} | "
                     f"{_change(a, 'fid_change')} | {_change(r, 'fid_change')} |")
    return "\n".join(lines) + "\n"


def _change(row: dict[str, Any], key: str) -> str:
    return "-" if row.get(key) is None else f"{row[key]:+.2f}"
