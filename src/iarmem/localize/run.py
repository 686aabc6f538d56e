"""The localize stage: stream images through a tapped model, reduce, write the UnitMem map.

Order of work is a pure function of the settings: the sorted id list is cut into steps of
W x B positions (W processes, B images per process and forward), position p goes to rank p mod W
(``distributed.shard``), and every rank adds its rows in position order. A checkpoint is taken
only between steps, as the reduced statistics plus the next position, so a resumed run repeats
exactly the additions an uninterrupted run makes and ends with the same bytes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from iarmem.data import ImageDataset, Plan, open_dataset
from iarmem.distributed import World, all_gather_object, barrier, close, init_world
from iarmem.errors import UserError
from iarmem.fileio import write_json
from iarmem.localize import figures
from iarmem.localize.mask import RELAXATIONS
from iarmem.localize.results import FILE, STATS, UnitMemMap, compute_map, write_map
from iarmem.localize.stats import UnitLayout, UnitStats, ValueStore, median_others
from iarmem.localize.summary import (
    bin_labels,
    group_evidence,
    per_layer_bin,
    rank_units,
    top_images,
    top_shares,
)
from iarmem.localize.targeted import METHODS, PER_IMAGE, choose_references, log_method, run_targeted
from iarmem.localize.unitmem import DTYPES, MuCollector, localization_bins, view_indices
from iarmem.models.base import IAR, UNIT_KINDS, UnitLayer
from iarmem.models.checkpoint import read_state_dict, write_state_dict
from iarmem.models.loading import ModelSource, is_model_folder, open_model, training_views
from iarmem.plans import SUBSETS, model_plan, parse_ids, select_ids
from iarmem.progress import log, progress
from iarmem.runs import Run, start_run
from iarmem.tokens import load_views

STAGE = "localize"
GROUP_NAMES = ("planted", "heldout", "ordinary")  # --targets / --references by the plan's groups
VIEW_SOURCES = ("auto", "trained", "augment")
PAPER_AUGS = 10  # the paper's A
STATE_FILE = "localize_state.safetensors"
VALUES_FILE = "mu_values.f32"
SUMMARY_FILE = "summary.json"
FIGURES = ("heatmap.png", "blocks.png", "top_images.png")
GRID_IMAGES = 16


@dataclass
class LocalizeConfig:
    """Everything that shapes a localize run (the CLI options, one to one)."""

    model: str
    data: str
    out: str
    tokenizer: str | None = None
    weights: str | None = None
    kinds: tuple[str, ...] = ("fc1",)
    blocks: tuple[int, ...] | None = None
    augs: int | None = None  # None: the trained views (model folders of `iarmem train`), else 10 draws
    views: str = "auto"
    include_eval_view: bool = False
    keep_class_positions: bool = False
    subset: str | None = None
    fraction: float | None = None
    per_class: int | None = None
    ids: tuple[int, ...] | None = None  # exactly these dataset ids (the bench: training set + an injected image)
    bins: int | None = None
    batch_size: int = 8
    device: str = "cpu"
    seed: int = 0
    dtype: str = "float32"
    stat: str = "mean"
    save_every: int = 20
    lanes: int = 8
    keep_values: bool = False
    resume: bool = False
    overwrite: bool = False
    method: str = "unitmem"  # or a per-image localizer (targeted.py)
    targets: str | tuple[int, ...] | None = None  # ids, an id file, or a group of the plan (planted, heldout)
    references: str | tuple[int, ...] | None = None  # the same; None: the plan's held-out images
    reference_count: int = 64
    refine: bool = False
    refine_max_units: int = 256
    mask_steps: int = 100
    mask_sparsity: float = 1.0
    mask_relaxation: str = "hardconcrete"

    def validate(self) -> None:
        checks = [
            (self.augs is None or self.augs >= 1, f"--augs must be >= 1, got {self.augs}"),
            (self.views in VIEW_SOURCES, f"--views must be one of {', '.join(VIEW_SOURCES)}, got {self.views!r}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.save_every >= 0, f"--save-every must be >= 0 (0: only when stopping), got {self.save_every}"),
            (self.lanes >= 1, f"--lanes must be >= 1, got {self.lanes}"),
            (self.stat in STATS, f"--stat must be one of {', '.join(STATS)}, got {self.stat!r}"),
            (self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"),
            (not (self.fraction is not None and self.per_class is not None),
             "give --fraction or --per-class, not both"),
            (self.subset is None or self.subset in SUBSETS,
             f"--subset must be one of {', '.join(SUBSETS)}, got {self.subset!r}"),
            (self.bins is None or self.bins >= 1, f"--bins must be >= 1, got {self.bins}"),
            (self.method in METHODS, f"--method must be one of {', '.join(METHODS)}, got {self.method!r}"),
            (self.method not in PER_IMAGE or self.targets,
             f"--method {self.method} scores one image at a time; give the images with --targets IDS (e.g. 12,40-45)"),
            (not self.refine or self.targets, "--refine checks units per image; give the images with --targets IDS"),
            (self.method not in PER_IMAGE or self.stat == "mean", f"--stat is UnitMem's; drop it for --method "
             f"{self.method}"),
            (self.reference_count >= 2, f"--reference-count must be >= 2, got {self.reference_count}"),
            (self.mask_steps >= 1 and self.mask_sparsity >= 0, "--mask-steps must be >= 1 and --mask-sparsity >= 0"),
            (self.mask_relaxation in RELAXATIONS,
             f"--mask-relaxation must be one of {', '.join(RELAXATIONS)}, got {self.mask_relaxation!r}"),
            (self.refine_max_units >= 1, f"--refine-max-units must be >= 1, got {self.refine_max_units}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)
        bad = [k for k in self.kinds if k not in UNIT_KINDS]
        if bad or not self.kinds:
            raise UserError(f"unknown unit kind {', '.join(bad) or '(none)'}; choose from {', '.join(UNIT_KINDS)}")


@dataclass
class Setup:
    """What every rank builds identically before the loop."""

    iar: IAR
    source: ModelSource
    ds: ImageDataset
    plan: Plan | None
    subset: str
    ids: np.ndarray
    layers: list[UnitLayer]
    bins_L: torch.Tensor
    collector: MuCollector
    view_source: str
    targets: np.ndarray | None = None
    references: np.ndarray | None = None

    @property
    def layout(self) -> UnitLayout:
        return self.collector.layout


def prepare(cfg: LocalizeConfig, world: World) -> Setup:
    cfg.validate()
    iar, source = open_model(cfg.model, cfg.tokenizer, cfg.weights, device=world.device)
    ds = open_dataset(cfg.data)
    plan = model_plan(cfg.model, ds)
    subset = cfg.subset or ("train" if plan is not None else "all")
    targets = refs = None
    if cfg.targets is not None:
        targets = resolve_ids(cfg.targets, plan, len(ds), "--targets")
    if cfg.method in PER_IMAGE:
        assert targets is not None
        given = None if cfg.references is None else resolve_ids(cfg.references, plan, len(ds), "--references")
        refs = choose_references(cfg.method, targets, given, plan, cfg.reference_count, cfg.seed)
        subset, ids = "targets", np.union1d(targets, refs)
    elif cfg.ids is not None:
        subset, ids = "ids", np.unique(np.asarray(cfg.ids, dtype=np.int64))
        if len(ids) and not 0 <= ids[0] <= ids[-1] < len(ds):
            raise UserError(f"image ids must be in 0..{len(ds) - 1} for {ds.describe()}")
    else:
        ids = select_ids(ds, plan, subset, fraction=cfg.fraction, per_class=cfg.per_class, seed=cfg.seed)
    if len(ids) < 2:
        raise UserError(f"UnitMem compares images, but subset {subset!r} gives {len(ids)}; select at least 2 "
                        f"(raise --fraction / --per-class or use another --subset)")
    if int(ds.labels[ids].max()) >= iar.num_classes:
        raise UserError(f"{ds.describe()} has labels up to {int(ds.labels[ids].max())} but the model knows "
                        f"{iar.num_classes} classes; use the dataset the model was trained on")
    layers = iar.unit_layers(tuple(cfg.kinds))
    if cfg.blocks is not None:
        have = sorted({layer.block for layer in layers})
        missing = sorted(set(cfg.blocks) - set(have))
        if missing:
            raise UserError(f"--layers names blocks {missing} but the model has blocks {have[0]}-{have[-1]}; "
                            f"choose blocks in that range")
        layers = [layer for layer in layers if layer.block in set(cfg.blocks)]
    try:
        bins_L = localization_bins(iar, cfg.bins, cfg.keep_class_positions)
    except ValueError as e:
        raise UserError(f"--bins: {e}") from e
    views, view_seed, view_source = choose_views(cfg)
    collector = MuCollector(iar, layers, bins_L, views, view_seed, cfg.dtype)
    if targets is not None and cfg.method == "unitmem" and not np.isin(targets, ids).all():
        missing = int(targets[~np.isin(targets, ids)][0])
        raise UserError(f"--targets image {missing} is not among the {len(ids)} images UnitMem runs over "
                        f"(subset {subset!r}); choose targets in the subset or widen it")
    return Setup(iar, source, ds, plan, subset, ids, layers, bins_L, collector, view_source, targets, refs)


def resolve_ids(spec: str | tuple[int, ...], plan: Plan | None, num_images: int, flag: str) -> np.ndarray:
    """Sorted ids from a list, an id file, or the name of a group of the model's plan."""
    if isinstance(spec, str) and spec in GROUP_NAMES:
        if plan is None:
            raise UserError(f"{flag} {spec}: the model records no planting manifest; pass image ids instead")
        return np.unique(np.asarray(getattr(plan, f"{spec}_ids"), dtype=np.int64))
    return parse_ids(spec, num_images, flag=flag)


def choose_views(cfg: LocalizeConfig) -> tuple[tuple[int, ...], int, str]:
    """(views, their seed, "trained" or "augment").

    A model folder written by ``iarmem train`` records the views it trained on (0..V-1 of its
    seed): by default UnitMem is measured on exactly those pixels. Otherwise (official checkpoints,
    or ``--views augment`` / ``--augs``) it averages the paper's A draws of the family's training
    augmentation (default 10) with ``--seed``.
    """
    trained = training_views(cfg.model) if is_model_folder(cfg.model) else None
    source = cfg.views
    if source == "auto":
        source = "trained" if trained is not None and cfg.augs is None and not cfg.include_eval_view else "augment"
    if source == "trained":
        if trained is None:
            raise UserError(f"--views trained: {cfg.model} records no training views (model folders written by "
                            f"`iarmem train` do); use --views augment")
        if cfg.augs is not None or cfg.include_eval_view:
            raise UserError("--augs and --include-eval-view choose augmentation draws; drop them or use "
                            "--views augment")
        return trained[0], trained[1], source
    augs = PAPER_AUGS if cfg.augs is None else cfg.augs
    return view_indices(augs, cfg.include_eval_view), cfg.seed, source


def settings_of(cfg: LocalizeConfig, setup: Setup) -> dict[str, Any]:
    """The settings that shape the results (run.json refuses to mix runs that differ in them)."""
    return {"model": cfg.model, "tokenizer": cfg.tokenizer, "weights": cfg.weights, "data": setup.ds.describe(),
            "kinds": list(cfg.kinds), "blocks": None if cfg.blocks is None else list(cfg.blocks),
            "augs": setup.collector.augs, "include_eval_view": cfg.include_eval_view,
            "views": list(setup.collector.views), "view_seed": setup.collector.seed, "view_source": setup.view_source,
            "keep_class_positions": cfg.keep_class_positions,
            "subset": setup.subset, "fraction": cfg.fraction, "per_class": cfg.per_class,
            **({"ids": [int(i) for i in setup.ids]} if cfg.ids is not None else {}),
            "bins": setup.layout.num_bins, "batch_size": cfg.batch_size, "seed": cfg.seed, "dtype": cfg.dtype,
            "stat": cfg.stat, "lanes": cfg.lanes, **_method_settings(cfg, setup)}


def _method_settings(cfg: LocalizeConfig, setup: Setup) -> dict[str, Any]:
    """The per-image methods' and refinement's settings (absent for a plain UnitMem run, as before)."""
    out: dict[str, Any] = {}
    if cfg.method != "unitmem":
        out |= {"method": cfg.method, "reference_count": cfg.reference_count,
                "references": [int(r) for r in setup.references] if setup.references is not None else None}
    if cfg.method == "mask":
        out |= {"mask_steps": cfg.mask_steps, "mask_sparsity": cfg.mask_sparsity,
                "mask_relaxation": cfg.mask_relaxation}
    if setup.targets is not None:
        out["targets"] = [int(t) for t in setup.targets]
    if cfg.refine:
        out |= {"refine": True, "refine_max_units": cfg.refine_max_units}
    return out


def localize(cfg: LocalizeConfig, world: World | None = None, *, stop_after: int | None = None) -> dict | None:
    """Run (or resume) the stage; the summary on rank 0, None elsewhere or when stopped early.

    ``stop_after`` stops after that many steps of this call, with a checkpoint (tests use it to
    stand in for a kill).
    """
    own_world = world is None
    world = init_world(cfg.device) if world is None else world
    try:
        return _localize(cfg, world, stop_after)
    finally:
        if own_world:
            close(world)


def _open_run(cfg: LocalizeConfig, setup: Setup, world: World) -> Run | None:
    """Rank 0 opens the run folder; a refusal there is raised on every rank."""
    run, err = None, None
    if world.is_main:
        try:
            run = start_run(cfg.out, STAGE, settings_of(cfg, setup),
                            inputs={"model_file": setup.source.model_file,
                                    "tokenizer_file": setup.source.tokenizer_file, "data": cfg.data},
                            seed=cfg.seed, overwrite=cfg.overwrite, resume=cfg.resume)
        except UserError as e:
            err = str(e)
    errors = [e for e in all_gather_object(err, world) if e]
    if errors:
        raise UserError(str(errors[0]))
    return run


def _localize(cfg: LocalizeConfig, world: World, stop_after: int | None) -> dict | None:
    setup = prepare(cfg, world)
    run = _open_run(cfg, setup, world)
    out = Path(cfg.out)
    done = all_gather_object(bool(run is not None and run.done), world)[0]
    if done:
        summary = None
        if world.is_main:
            log(f"{out}: this localize run already finished")
            summary = json.loads((out / SUMMARY_FILE).read_text())
        return _refined(cfg, setup, summary, world)
    if cfg.method in PER_IMAGE:
        assert setup.targets is not None and setup.references is not None
        log_method(cfg, setup.targets, setup.references, world)
        summary = run_targeted(cfg, setup, run, setup.targets, setup.references, world)
        return _refined(cfg, setup, summary, world)
    if world.size > 1 and cfg.lanes % world.size and world.is_main:
        log(f"note: {world.size} processes do not divide --lanes {cfg.lanes}: float64 sums may differ from one "
            f"process's in the last bits")

    N, F = len(setup.ids), setup.layout.size
    stats = UnitStats(F, cfg.lanes, world.device)
    position = _restore(out / STATE_FILE, stats, setup.ids, cfg, world) if cfg.resume else 0
    store = _open_store(out / VALUES_FILE, N, F, position) if cfg.stat == "median" and world.is_main else None
    if position and world.is_main:
        log(f"resuming at image {position} of {N}")

    step_size = world.size * cfg.batch_size
    starts = range(position, N, step_size)
    t0 = time.monotonic()
    for steps, lo in enumerate(progress(starts, total=len(starts), desc="localize", enabled=world.is_main), 1):
        pos = np.arange(lo, min(N, lo + step_size))
        mine = pos[pos % world.size == world.rank]  # distributed.shard: position p belongs to rank p mod W
        ids_b = setup.ids[mine]
        mu_BF = setup.collector(setup.ds, ids_b, pad_to=cfg.batch_size) if len(mine) else torch.empty(0, F)
        try:
            stats.update(mine, ids_b, mu_BF)
        except FloatingPointError as e:
            raise UserError(f"{e} in {cfg.model}: the weights hold inf/NaN or --dtype bfloat16 overflowed; "
                            f"check the checkpoint or use --dtype float32") from e
        if cfg.stat == "median":
            rows = all_gather_object((mine, mu_BF.cpu().numpy()), world)
            if store is not None:
                for p, v in rows:  # type: ignore[misc]
                    store.write(p, v)
        position = int(pos[-1]) + 1
        stopping = stop_after is not None and steps >= stop_after and position < N
        if stopping or (cfg.save_every and steps % cfg.save_every == 0 and position < N):
            _checkpoint(out / STATE_FILE, stats, position, setup.ids, cfg, world, store)
        if stopping:
            if world.is_main:
                log(f"stopped after {steps} steps at image {position} of {N}; continue with --resume")
            return None
    elapsed = time.monotonic() - t0
    total = stats.reduced(world)
    summary = None
    if world.is_main:
        assert run is not None
        summary = _finish(cfg, setup, run, total, store, elapsed, world)
    barrier(world)
    return _refined(cfg, setup, summary, world)


def _refined(cfg: LocalizeConfig, setup: Setup, summary: dict | None, world: World) -> dict | None:
    """With --refine: each target's causally checked units in refined.json (the targets sharded over ranks)."""
    if not cfg.refine:
        return summary
    assert setup.targets is not None
    from iarmem.localize.refine_run import refine_targets

    return refine_targets(cfg, setup, summary, world)


def _open_store(path: Path, num_images: int, size: int, position: int) -> ValueStore:
    try:
        return ValueStore(path, num_images, size, resume=position > 0)
    except FileNotFoundError as e:
        raise UserError(f"cannot resume the median statistic: {e}; pass --overwrite to start again") from e


def _checkpoint(path: Path, stats: UnitStats, position: int, ids: np.ndarray, cfg: LocalizeConfig, world: World,
                store: ValueStore | None) -> None:
    """Reduce and let rank 0 save (values flushed first, so the state never runs ahead of them)."""
    total = stats.reduced(world)
    if world.is_main:
        if store is not None:
            store.flush()
        state = total.state_dict() | {"image_ids": torch.as_tensor(ids)}
        write_state_dict(state, path, metadata={"position": str(position), "lanes": str(cfg.lanes),
                                                "size": str(stats.size), "world_size": str(world.size)})
    barrier(world)


def _restore(path: Path, stats: UnitStats, ids: np.ndarray, cfg: LocalizeConfig, world: World) -> int:
    """Load the last checkpoint into ``stats``; the position to continue from (0 without one)."""
    if not path.is_file():
        return 0
    try:
        state = read_state_dict(path, "localize checkpoint")
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (UserError, SafetensorError, OSError) as e:
        raise UserError(f"the checkpoint {path} of this run is damaged; pass --overwrite to start again") from e
    if "ties" not in state:
        raise UserError(f"{path} was saved by an older iarmem (no tie counts); pass --overwrite to start again")
    same = (torch.equal(state["image_ids"], torch.as_tensor(ids)) and int(meta.get("lanes", -1)) == cfg.lanes
            and int(meta.get("size", -1)) == stats.size)
    if not same:
        raise UserError(f"{path} was saved for other images or layers; pass --overwrite to start again")
    stats.load_reduced(state, world)
    return int(meta["position"])


def _finish(cfg: LocalizeConfig, setup: Setup, run: Run, total: UnitStats, store: ValueStore | None,
            elapsed: float, world: World) -> dict[str, Any]:
    out = run.path
    median = None
    if store is not None:
        store.flush()
        median = median_others(store.values)
        store.close()
    result = compute_map(total, setup.layout, setup.ids, cfg.stat, median)
    write_map(result, out / FILE)
    summary = build_summary(cfg, setup, result, world)
    write_json(out / SUMMARY_FILE, summary)
    write_figures(summary, setup, out, cfg.seed)
    (out / STATE_FILE).unlink(missing_ok=True)
    if store is not None and not cfg.keep_values:
        (out / VALUES_FILE).unlink(missing_ok=True)
    rate = len(setup.ids) / elapsed if elapsed > 0 else float("nan")
    run.finish([FILE, SUMMARY_FILE, *FIGURES] + ([VALUES_FILE] if store is not None and cfg.keep_values else []),
               {"num_images": summary["num_images"], "per_layer_bin_max": float(np.max(summary["per_layer_bin"])),
                "top_images": summary["top_images"][:5], "groups": summary.get("groups"),
                "seconds": round(elapsed, 3), "images_per_s": round(rate, 3), "world_size": world.size})
    return summary


def build_summary(cfg: LocalizeConfig, setup: Setup, result: UnitMemMap, world: World) -> dict[str, Any]:
    ranking = rank_units(result)
    summary: dict[str, Any] = {
        "model": setup.source.as_dict(),
        "family": setup.iar.family,
        "data": setup.ds.describe(),
        "layers": [s.describe() for s in setup.layout.layers],
        "bins": {"count": setup.layout.num_bins, "labels": bin_labels(setup.iar.grids, setup.bins_L)},
        "num_images": result.num_images,
        "augs": setup.collector.augs,
        "views": list(setup.collector.views),
        "view_seed": setup.collector.seed,
        "view_source": setup.view_source,
        "excluded_positions": int((setup.bins_L < 0).sum()),
        "tied_units": int((result.ties_F > 1).sum()),
        "stat": cfg.stat,
        "subset": setup.subset,
        "settings": settings_of(cfg, setup),
        "world_size": world.size,
        "per_layer_bin": [[round(v, 6) for v in row] for row in per_layer_bin(result)],
        "top_shares": top_shares(result, ranking),
        "top_images": top_images(result, ranking, setup.ds, setup.plan),
    }
    groups = group_evidence(result, ranking, setup.plan)
    if groups is not None:
        summary["groups"] = groups
    if cfg.stat == "median" and cfg.keep_values:
        summary["values_file"] = {"name": VALUES_FILE, "dtype": "float32",
                                  "shape": [result.num_images, setup.layout.size],
                                  "rows": "positions in image_ids", "columns": "layer-major, bin, unit"}
    return summary


def write_figures(summary: dict[str, Any], setup: Setup, out: Path, seed: int) -> None:
    figures.heatmap(summary, out / "heatmap.png")
    figures.block_curves(summary, out / "blocks.png")
    top = summary["top_images"][:GRID_IMAGES]
    if top:
        images, _ = load_views(setup.iar, setup.ds, [t["id"] for t in top], 0, seed)
        caps = [f"id {t['id']} ({t['class']})\n{t['group']}, {_units(t['units'])}" for t in top]
        figures.image_grid(setup.iar.to_unit_range(images).cpu(), caps, out / "top_images.png")


def _units(n: int) -> str:
    return f"{n} unit" if n == 1 else f"{n} units"
