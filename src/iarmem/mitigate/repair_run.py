"""`iarmem repair` end to end: inputs checked, the repair's steps in order, the model folder and repair.json.

Everything that can refuse the input runs before the run folder is opened (exit 2, nothing written).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors

from iarmem.attack.pipeline import from_main
from iarmem.attack.settings import AttackSettings, load_extractors
from iarmem.commands.repair import leaked_ids
from iarmem.data import open_dataset
from iarmem.data.planting import outside_by_class, outside_sample
from iarmem.data.subsets import balanced_sample
from iarmem.distributed import barrier, close, init_world
from iarmem.errors import UserError
from iarmem.features import CNN_STEPS, parse_feature_spec, resolve_features
from iarmem.fileio import write_json
from iarmem.localize.refine_run import gradient_rerank
from iarmem.localize.run import LocalizeConfig, localize, prepare
from iarmem.metrics.quality import reference_features
from iarmem.mitigate.edit import EditRecord, apply_edit
from iarmem.mitigate.forget import image_ranking
from iarmem.mitigate.localization import Localization, check_architecture, load_localization
from iarmem.mitigate.repair import (
    FALLBACK_FILE,
    JOURNAL_FILE,
    Journal,
    RepairConfig,
    RepairContext,
    alternatives,
    config_dict,
    fallback,
    keep_bars,
    measure,
    quality_noise,
    run_repair,
    unlearn_units,
)
from iarmem.mitigate.select import Scores, Selection
from iarmem.mitigate.unlearn import UnlearnConfig, set_unit_values, unlearn_record
from iarmem.mitigate.write import EDIT_FILE, edit_manifest, hash_files, write_edited_model
from iarmem.models.loading import is_model_folder
from iarmem.plans import model_plan, parse_ids, select_ids
from iarmem.progress import log
from iarmem.quality_guard import mean_fid, mean_of, paired, paired_change, relative_fid, relative_fid_se, unsettled
from iarmem.runs import Run, fingerprint, require_finished, start_run

REPAIR_FILE = "repair.json"
GROUPS = ("planted", "ordinary", "injected")


def fc1_scores(iar: Any) -> Scores:
    layers = iar.unit_layers(("fc1",))
    return Scores(tuple(layer.name for layer in layers), tuple(layer.width for layer in layers),
                  tuple(layer.block for layer in layers), np.zeros(sum(layer.width for layer in layers)))


def attack_settings(leaked: dict[str, Any], args: argparse.Namespace) -> AttackSettings:
    """The leaked run's decision settings (metric, extractors, calibration, prefix), made strong."""
    recorded = leaked.get("settings") or {}
    names = {f.name for f in dataclasses.fields(AttackSettings)}
    keep = {k: v for k, v in recorded.items() if k in names and k not in ("ids", "subset", "fraction",
                                                                          "per_class_subset", "logit_noise")}
    s = AttackSettings(**keep).replace(strength="strong", membership=False, batch_size=args.batch_size,
                                       seed=args.seed, trigger_steps=args.trigger_steps)
    cal, per_class = getattr(args, "calibration", None), getattr(args, "class_calibration", None)
    s = s if cal is None else s.replace(calibration=cal)
    return (s if per_class is None else s.replace(class_calibration=per_class)).validate()


def choose_targets(args: argparse.Namespace, leaked: list[int], plan: Any, labels: np.ndarray) -> np.ndarray:
    if args.images in GROUPS:
        if plan is None:
            raise UserError(f"--images {args.images} needs a model folder with a planting manifest")
        if args.images == "injected":  # an extraction never scores them: the repair's own strong attack checks them
            ids = plan.injected_ids
        else:
            group = plan.planted_ids if args.images == "planted" else plan.ordinary_ids
            ids = np.intersect1d(np.asarray(leaked, dtype=np.int64), group)
    elif args.images is not None:
        ids = parse_ids(args.images, len(labels), flag="--images")
    else:
        ids = np.unique(np.asarray(leaked, dtype=np.int64))
    if plan is not None:
        ids = np.setdiff1d(ids, plan.heldout_ids)
    if len(ids) == 0:
        what = f"--images {args.images}" if args.images else f"the extraction run {args.leaked}"
        raise UserError(f"no leaked images to repair: {what} names no extracted training image; run `iarmem extract "
                        f"MODEL DATA --strength strong` or pass --images IDS")
    cap = getattr(args, "max_targets", None)
    if cap is not None and len(ids) > cap:
        ids = np.sort(balanced_sample(labels, cap, seed=args.seed, purpose="repair-targets", pool=ids))
    return ids


def _check_model(args: argparse.Namespace, model_file: str) -> None:
    recorded = (require_finished(args.leaked, "extract").get("inputs") or {}).get("model_file")
    if recorded and recorded != fingerprint(model_file):
        raise UserError(f"--leaked {args.leaked} attacked another model (its model file differs from {args.model}'s); "
                        f"pass an extraction run of this model")


def repair(args: argparse.Namespace, alts: tuple[str, ...]) -> int:
    world = init_world(args.device)
    try:
        return _repair(args, alts, world)
    finally:
        close(world)


def _repair(args: argparse.Namespace, alts: tuple[str, ...], world: Any) -> int:
    parse_feature_spec(args.features)
    ds = open_dataset(args.data)
    plan = model_plan(args.model, ds) if is_model_folder(args.model) else None
    require_finished(args.leaked, "extract")
    leaked, leaked_summary = leaked_ids(Path(args.leaked))
    targets = choose_targets(args, leaked, plan, ds.labels)
    loc_cfg = LocalizeConfig(model=args.model, data=args.data, out=str(Path(args.out) / "localize"),
                             tokenizer=args.tokenizer, weights=args.weights, method="gradient",
                             targets=tuple(int(i) for i in targets), refine=True, seed=args.seed, device=args.device,
                             resume=True)
    setup = prepare(loc_cfg, world)  # opens the model (the rerank of the grow step needs its collector)
    iar, source = setup.iar, setup.source
    _check_model(args, source.model_file)
    attack = attack_settings(leaked_summary, args)
    unitmem = load_localization(args.unitmem) if args.unitmem else None
    if unitmem is not None:
        check_architecture(unitmem, iar, args.model)
    cfg = RepairConfig(max_quality_loss=args.max_quality_loss, max_accuracy_drop=args.max_accuracy_drop,
                       max_units=args.max_units, max_rounds=args.max_rounds,
                       grow_past_guard=args.grow_past_guard, screen_tries=args.screen_tries,
                       prune_tries=args.prune_tries,
                       prune_rounds=args.prune_rounds, every_try_after=args.every_try_after,
                       alternatives=alts, fallback=args.fallback, probe_rule=args.probe_rule,
                       paper_tops=tuple(args.paper_tops), noise_levels=tuple(args.noise_levels),
                       unlearn=UnlearnConfig(steps=args.unlearn_steps), quality_draws=args.quality_draws,
                       max_quality_draws=args.max_quality_draws, seed=args.seed)
    settings = {"model": args.model, "data": ds.describe(), "leaked": str(Path(args.leaked).resolve()),
                "targets": [int(i) for i in targets], "config": config_dict(cfg), "attack": attack.as_dict(),
                "n_per_class": args.n_per_class, "features": args.features, "unitmem": args.unitmem}
    inputs = {"model_file": source.model_file, "tokenizer_file": source.tokenizer_file,
              "leaked": str(Path(args.leaked) / "summary.json"), "data": args.data}
    out = Path(args.out)

    def open_run() -> dict[str, Any]:
        return start_run(args.out, "repair", settings, inputs, seed=args.seed, overwrite=args.overwrite,
                         resume=args.resume).record

    run_ = Run(out, from_main(world, open_run))  # every rank learns whether the run already finished
    barrier(world)
    if run_.done:
        status = (run_.record.get("summary") or {}).get("status")
        if world.is_main:
            log(f"{out}: this repair already finished ({status})")
        return exit_code(status)

    cache = Path(args.features_cache) if args.features_cache else out / "features"
    features = resolve_features(args.features, ds, cache, min(iar.image_size, 64), args.seed, device=args.device,
                                steps=CNN_STEPS)
    reference = reference_features(ds, features, family=iar.family, image_size=iar.image_size,
                                   n_per_class=args.n_per_class, seed=args.seed, show_progress=False)
    heldout = np.sort(plan.heldout_ids) if plan is not None else np.zeros(0, dtype=np.int64)
    pool = np.union1d(select_ids(ds, plan, "train" if plan is not None else "all"), heldout)
    pool = np.union1d(pool, targets)
    rng = np.random.default_rng(args.seed)
    others = np.setdiff1d(plan.ordinary_ids if plan is not None else np.arange(len(ds)), targets)
    keep = np.sort(rng.choice(others, size=min(64, len(others)), replace=False))
    ctx = RepairContext(iar, ds, plan, targets, attack, pool, heldout, fc1_scores(iar), features, reference,
                        args.n_per_class, load_extractors(attack, iar.device), world, keep, args.batch_size)
    ctx.quality_seeds = tuple(attack.seed + k for k in range(1, cfg.quality_draws))  # quality_noise's seeds
    if plan is not None and attack.calibrates(len(heldout)) and attack.threshold is None and attack.margin is None:
        ctx.calibration = np.setdiff1d(outside_sample(plan, ds.labels, attack.calibration, attack.seed), pool)
        ctx.class_calibration = outside_by_class(plan, ds.labels, ds.labels[targets], attack.class_calibration,
                                                 attack.seed, exclude=np.union1d(pool, ctx.calibration))
    ctx.eval_tokens(np.union1d(targets, keep))
    journal = Journal(out / JOURNAL_FILE, world)

    with torch.no_grad():
        # a copy: a verdict near a bar draws the unedited model under more seeds into it (``settle``), journalled apart
        before = copy.deepcopy(journal.step("before", lambda: measure(ctx)))
        keep_bars(ctx, before)
        noise = (journal.step("quality-noise", lambda: quality_noise(ctx, before, cfg.quality_draws))
                 if cfg.quality_draws > 1 else None)
    work = before["leak"]["extracted"]
    log(f"before: the strong attack extracts {len(work)} of {len(targets)} targets; "
        f"FID {mean_fid(before['quality']):.3g}")
    # the guard compares means over the draws, seed for seed: an edit's own draws are as noisy as the
    # unedited model's, so the change it reads moves by about std x sqrt(2 / draws)
    guard_noise = noise["relative_std"] * (2 / len(noise["fid"])) ** 0.5 if noise is not None else 0.0
    # seeds, not samples per class: at the same generations 9 x 20 per class read the change as closely as 3 x 60
    # on the tiny models (docs/RESULTS.md section 10, thirteenth session), and only verdicts near a bar draw them
    advice = f"a verdict near it draws up to {cfg.draw_cap} seeds (a higher --max-quality-draws narrows it further)"
    if guard_noise > cfg.max_quality_loss / 2:
        log(f"note: the unedited model's FID moves {100 * noise['relative_std']:.1f} % (relative std over "
            f"{len(noise['fid'])} sampling seeds) with no edit, so the guard's FID change moves about "
            f"{100 * guard_noise:.1f} %; a --max-quality-loss of {100 * cfg.max_quality_loss:g} % is within that "
            f"noise: {advice}")
    acc_noise = (noise or {}).get("class_accuracy_std_points", 0.0) * (2 / cfg.quality_draws) ** 0.5
    if cfg.max_accuracy_drop is not None and acc_noise > cfg.max_accuracy_drop / 2:
        log(f"note: the unedited model's class accuracy moves {noise['class_accuracy_std_points']:.1f} points (std "
            f"over {cfg.quality_draws} sampling seeds) with no edit, so the guard's accuracy change moves about "
            f"{acc_noise:.1f} points; a --max-accuracy-drop of {cfg.max_accuracy_drop:g} is within that noise: "
            f"{advice}")
    record: dict[str, Any] = {"format": "iarmem.repair", "version": 1, "targets": [int(i) for i in targets],
                              "extracted_before": work,
                              "not_extracted_before": [int(i) for i in targets if int(i) not in work],
                              "before": before, "quality_noise": noise,
                              "config": config_dict(cfg)}
    if not work:
        record |= {"status": "nothing to repair", "message": "the strong attack extracts none of the targets"}
        return _finish(run_, out, record, [], source, None, ctx, world)

    loc_cfg = dataclasses.replace(loc_cfg, targets=tuple(work))
    localize(loc_cfg, world)
    loc = load_localization(loc_cfg.out)
    refined = _refined_order(loc, work, ctx.scores)

    def rerank_of(i: int):
        scores, _ = image_ranking(loc, i, "per_image")
        return gradient_rerank(setup, loc, i, scores)

    with torch.no_grad():
        outcome, rounds = run_repair(ctx, cfg, journal, refined, rerank_of, before)
    outcome = fallback(ctx, cfg, journal, outcome, rounds, before)
    record |= {"status": outcome.status, "message": outcome.message, "edit": outcome.edit, **rounds,
               "refined": {str(i): refined.get(i, []) for i in work}}
    compared = outcome.final if outcome.final is not None else (rounds["rounds"] or [None])[-1]
    record["alternatives_at"] = "the kept edit" if outcome.final is not None else "the last round tried (none kept)"
    if "paper" in alts and unitmem is None and compared is not None:
        unitmem = _unitmem(args, out, world)
    with torch.no_grad():
        record["alternatives"] = (alternatives(ctx, cfg, journal, compared, before, unitmem)
                                  if compared is not None and compared["units"] else [])
    record["final"] = outcome.final
    return _finish(run_, out, record, outcome.units, source, loc, ctx, world, cfg)


def _refined_order(loc: Localization, work: list[int], scores: Scores) -> dict[int, list[int]]:
    """Each target's refined units (flat, in ``scores``' layout), best-ranked first."""
    out = {}
    for i in work:
        s, order = image_ranking(loc, i, "per_image")
        if s.names != scores.names:
            raise UserError("the localization's layers differ from the model's fc1 layers")
        chosen = s.to_flat(loc.refined.get(i, {}))
        out[i] = [int(u) for u in order[np.isin(order, chosen)]]
    return out


def _unitmem(args: argparse.Namespace, out: Path, world: Any) -> Localization:
    """UnitMem over the training images (the paper's localization) for the paper's edit, in OUT/unitmem."""
    cfg = LocalizeConfig(model=args.model, data=args.data, out=str(out / "unitmem"), tokenizer=args.tokenizer,
                         weights=args.weights, seed=args.seed, device=args.device, resume=True)
    localize(cfg, world)
    return load_localization(cfg.out)


def kept_edit(ctx: RepairContext, record: dict[str, Any], units: list[int], cfg: RepairConfig, tuned: Path,
              ) -> EditRecord:
    """Put the kept edit on ``ctx.iar`` for good: the units removed exactly, or (the fallback) their values as the
    fine-tuning measured them, read back from ``tuned`` (tuned again, deterministically, if the file is gone)."""
    chosen = ctx.units(np.asarray(units, dtype=np.int64))
    if record.get("edit") != "unlearn":
        return apply_edit(ctx.iar, chosen, "exact", 0.0)
    if tuned.is_file():
        set_unit_values(ctx.iar, chosen, load_tensors(tuned.read_bytes()))
    else:
        unlearn_units(ctx, cfg, chosen, record["extracted_before"])
    return unlearn_record(ctx.iar, chosen, cfg.unlearn)


def _finish(run_: Run, out: Path, record: dict[str, Any], units: list[int], source: Any, loc: Localization | None,
            ctx: RepairContext, world: Any, cfg: RepairConfig | None = None) -> int:
    files = [REPAIR_FILE, "summary.json", JOURNAL_FILE]
    summary = _summary(record) | {"model": source.as_dict()}
    if world.is_main:
        if units:
            flat = np.asarray(units, dtype=np.int64)
            edit = kept_edit(ctx, record, units, cfg or RepairConfig(), out / FALLBACK_FILE)
            written = write_edited_model(ctx.iar, out, source, extra={"edited_from": str(source.spec),
                                                                      "edit": EDIT_FILE, "repair": REPAIR_FILE})
            sel = Selection(ctx.units(flat), dict(zip(ctx.scores.names, ctx.scores.blocks)), "repair", "none", None,
                            "global", "max", None, None, len(ctx.scores.flat),
                            {"targets": record["extracted_before"]})
            assert loc is not None
            hashes = {k: v for k, v in run_.record["inputs"].items() if k in ("model_file", "tokenizer_file")}
            write_json(out / EDIT_FILE, edit_manifest(source=source, source_hashes=hashes, loc=loc, selection=sel,
                                                      record=edit, files=hash_files(out, written)))
            files += [*written, EDIT_FILE] + ([FALLBACK_FILE] if (out / FALLBACK_FILE).is_file() else [])
        write_json(out / REPAIR_FILE, record)
        write_json(out / "summary.json", summary)
        run_.finish(files, {k: summary[k] for k in ("status", "targets", "extracted_before", "extracted_after",
                                                     "units", "fraction", "fid_before", "fid_after")})
        log(summary["sentence"])
    barrier(world)
    return exit_code(record["status"])


def exit_code(status: str | None) -> int:
    """0 when nothing is left to repair, 1 for a partial repair (recorded, and the same when resumed)."""
    return 0 if status in ("clean", "nothing to repair") else 1


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    before, final = record["before"], record.get("final")
    work = record["extracted_before"]
    after = final["leak"]["extracted"] if final else work
    s: dict[str, Any] = {
        "status": record["status"], "message": record["message"], "edit": record.get("edit", "exact"),
        "targets": len(record["targets"]),
        "extracted_before": len(work), "extracted_after": len(after), "still_extracted": after,
        "units": final["units"] if final else 0, "fraction": final["fraction"] if final else 0.0,
        "fid_before": mean_fid(before["quality"]), "fid_after": mean_fid(final["quality"]) if final else None,
        "fid_draws": len(before["quality"].get("fid_draws") or [0]),
        "fid_noise_relative_std": (record.get("quality_noise") or {}).get("relative_std"),
        "class_accuracy_before": mean_of(before["quality"], "class_accuracy"),
        "class_accuracy_after": mean_of(final["quality"], "class_accuracy") if final else None,
        "alternatives": [{k: a.get(k) for k in ("name", "setting", "units", "cleaned", "of", "same_leak")}
                         | {"fid": mean_fid(a["quality"]),
                            "relative_fid": relative_fid(a["quality"], before["quality"])}
                         for a in record.get("alternatives", [])],
    }
    if final:
        a, b = paired(final["quality"], before["quality"], "fid")
        if a:  # the seeds both drew (a verdict near the bar drew more of them)
            s |= {"fid_before": sum(b) / len(b), "fid_after": sum(a) / len(a), "fid_draws": len(a)}
        rel = relative_fid(final["quality"], before["quality"])
        s["relative_fid"] = rel
        acc = paired_change(final["quality"], before["quality"], "class_accuracy")
        s["class_accuracy_change"], s["class_accuracy_change_se"] = acc if acc is not None else (None, None)
        acc_text = "" if acc is None else f"; class accuracy {100 * acc[0]:+.1f}" + (
            f" +- {100 * acc[1]:.1f} points (paired draws)" if acc[1] is not None else " points (one draw)")
        how = "fine-tuning" if record.get("edit") == "unlearn" else "removing"
        se = relative_fid_se(final["quality"], before["quality"])
        s["relative_fid_se"] = se
        cfg = record.get("config") or {}
        # the cap of --max-quality-draws reached with the verdict still near a bar: the seeds could turn it
        s["verdict_within_noise"] = "max_quality_loss" in cfg and unsettled(
            final["quality"], before["quality"], cfg["max_quality_loss"], cfg.get("max_accuracy_drop"))
        near = (f"; at {s['fid_draws']} paired seeds the guard's verdict is still within two standard errors of a "
                f"bar (more: --max-quality-draws)" if s["verdict_within_noise"] else "")
        s["sentence"] = (f"repair: {len(work) - len(after)} of {len(work)} extracted targets stopped under every "
                         f"strong-attack try, {how} {s['units']} fc1 units ({100 * s['fraction']:.2f} %); FID "
                         f"{s['fid_before']:.3g} -> {s['fid_after']:.3g} ({100 * rel:+.1f}"
                         + (f" +- {100 * se:.1f}" if se is not None else "") + f" %){acc_text}; "
                         f"{record['message']}{near}")
    else:
        s["sentence"] = f"repair: nothing written to the model ({record['message']})"
    return s
