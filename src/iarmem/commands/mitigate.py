"""Scale down the most memorizing units of a model and write the edited model.

  iarmem mitigate runs/var runs/loc-var --edit paper --out runs/var-edit        # the paper: top 10 %, fc1 rows x0.5
  iarmem mitigate runs/var runs/loc-var --top 5 --factor 0 --out runs/var-ablate  # remove the top 5 % units exactly
  iarmem mitigate var-d16 runs/loc-d16 --tokenizer vae_ch160v4096z32.pth --weights var_d16.pth --out runs/d16-edit
  iarmem mitigate runs/var runs/loc-var --control random --seed 1 --out runs/var-random
  iarmem mitigate runs/var runs/loc-var --forget 17,42 --forget-top 20 --out runs/var-forget

Units are ranked by UnitMem from a localization run (`iarmem localize`). The --out folder is a
model folder (model.json, model.safetensors in the official key layout, the tokenizer referenced
by path) with edit.json (which units, how, from what) and the source folder's manifest.json. The
input checkpoint is never changed. See docs/MITIGATE.md.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from iarmem.errors import UserError
from iarmem.fileio import write_json
from iarmem.mitigate.edit import EDITS, apply_edit, check_edit_args, plan_edit
from iarmem.mitigate.forget import MATCHES, forget_units
from iarmem.mitigate.localization import Localization, check_architecture, load_localization
from iarmem.mitigate.select import CONTROLS, REDUCES, SCOPES, Selection, check_percent, select_units
from iarmem.mitigate.write import EDIT_FILE, FORMATS, edit_manifest, hash_files, write_edited_model
from iarmem.models import hub
from iarmem.models.base import UNIT_KINDS
from iarmem.models.loading import open_model
from iarmem.plans import parse_ids
from iarmem.progress import log
from iarmem.runs import RUN_FILE, check_out, discard_output, start_run


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a model folder, or a preset name with --tokenizer and --weights")
    p.add_argument("localization", metavar="LOCALIZATION", help="run folder written by `iarmem localize` on MODEL")
    p.add_argument("--out", required=True, help="run folder to write (becomes a model folder)")
    p.add_argument("--tokenizer", help="tokenizer checkpoint (presets; overrides a folder's own)")
    p.add_argument("--weights", help="transformer checkpoint (presets; overrides a folder's own)")
    hub.add_arguments(p)
    p.add_argument("--top", type=float, default=10.0, help="percent of units to edit, in (0, 100] (default 10)")
    p.add_argument("--scope", choices=SCOPES, default="global",
                   help="rank units over all layers (global, default, the paper's) or within each layer")
    p.add_argument("--reduce", choices=REDUCES,
                   help="bins -> one score per unit: max (default), mean, or bin (needs --bin)")
    p.add_argument("--bin", type=int, help="rank by this one bin (VAR: scale index); implies --reduce bin")
    p.add_argument("--kinds", default="fc1", help="comma list of unit kinds to rank (default fc1, the paper's)")
    p.add_argument("--edit", choices=EDITS, default="exact",
                   help="exact (default): scale each unit's output by --factor (0 removes the unit); paper: scale "
                        "the weight row that writes it, bias kept (the paper's setting is --edit paper --top 10 "
                        "--factor 0.5)")
    p.add_argument("--factor", type=float, default=0.5,
                   help="scale factor >= 0 (default 0.5; 0 with --edit exact removes the units)")
    p.add_argument("--control", choices=CONTROLS, default="none",
                   help="edit as many random or lowest-UnitMem units instead (default none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random control (default 0)")
    p.add_argument("--forget", metavar="IDS", help="dataset image ids to forget: a comma list or a file of ids")
    p.add_argument("--forget-top", type=float, metavar="P",
                   help="with --forget: keep only units among the top P %% by UnitMem; with --forget-run: "
                        "the percent of its units to edit (default --top)")
    p.add_argument("--forget-run", metavar="RUN", help="a localization run over the forget images alone: "
                   "edit its top units")
    p.add_argument("--forget-match", choices=MATCHES,
                   help="a unit is an image's when that image is its argmax in any bin (any; default) or in "
                        "the bin its score comes from (reduced; the default with --bin)")
    p.add_argument("--format", choices=FORMATS, default="safetensors",
                   help="model file format: safetensors (default), pth (torch.save state dict), both")
    p.add_argument("--copy-tokenizer", action="store_true",
                   help="copy the tokenizer into the folder instead of referencing its file")
    p.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")
    p.add_argument("--resume", action="store_true",
                   help="reuse a finished run with the same settings in --out (an unfinished one is redone)")


def _choose(args: argparse.Namespace, loc: Localization, forget_run: Localization | None,
            kinds: tuple[str, ...]) -> Selection:
    common = {"scope": args.scope, "reduce": args.reduce, "bin": args.bin, "control": args.control,
              "seed": args.seed, "kinds": kinds}
    ids = parse_ids(args.forget, flag="--forget") if args.forget is not None else None
    if forget_run is not None:
        sel = forget_units(forget_run, ids, top=args.forget_top or args.top, match=args.forget_match, **common)
        return replace(sel, extra=sel.extra | {"forget_run": str(forget_run.path)})
    if ids is not None:
        return forget_units(loc, ids, top=args.forget_top, match=args.forget_match, **common)
    if args.forget_top is not None or args.forget_match is not None:
        raise UserError("--forget-top and --forget-match need --forget IDS or --forget-run RUN")
    return select_units(loc, args.top, **common)


def _settings(args: argparse.Namespace, kinds: tuple[str, ...]) -> dict[str, Any]:
    return {"model": args.model, "localization": str(Path(args.localization).resolve()), "top": args.top,
            "scope": args.scope, "reduce": args.reduce, "bin": args.bin, "kinds": list(kinds), "edit": args.edit,
            "factor": args.factor, "control": args.control, "seed": args.seed, "forget": args.forget,
            "forget_top": args.forget_top, "forget_run": args.forget_run, "forget_match": args.forget_match,
            "format": args.format, "copy_tokenizer": args.copy_tokenizer}


def run(args: argparse.Namespace) -> int:
    check_percent(args.top, "--top")
    if args.forget_top is not None:
        check_percent(args.forget_top, "--forget-top")
    args.factor = check_edit_args(args.edit, args.factor)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if not kinds or set(kinds) - set(UNIT_KINDS):
        raise UserError(f"--kinds {args.kinds!r}: choose from {', '.join(UNIT_KINDS)}")
    out = Path(args.out)
    check_out(out, [args.model, args.localization, args.forget_run, args.tokenizer, args.weights])

    loc = load_localization(args.localization)
    forget_run = load_localization(args.forget_run) if args.forget_run else None
    iar, source = open_model(args.model, args.tokenizer, args.weights)
    check_out(out, [source.tokenizer_file, source.model_file])
    for x in (loc, forget_run):
        if x is not None:
            check_architecture(x, iar, args.model)
    selection = _choose(args, loc, forget_run, kinds)
    plan_edit(iar, selection, args.edit)  # refuse an impossible edit before writing anything

    inputs = {"model": source.model_file, "tokenizer": source.tokenizer_file,
              "localization": str(Path(args.localization) / RUN_FILE)}
    if forget_run is not None:
        inputs["forget_run"] = str(Path(args.forget_run) / RUN_FILE)
    if args.forget and Path(args.forget).is_file():
        inputs["forget_ids"] = args.forget
    existed = out.exists()
    run_ = start_run(out, "mitigate", _settings(args, kinds), inputs, seed=args.seed, overwrite=args.overwrite,
                     resume=args.resume)
    if run_.done:
        log(f"{out}: already mitigated with these settings")
        return 0
    try:
        record = apply_edit(iar, selection, args.edit, args.factor)
        written = write_edited_model(iar, out, source, model_format=args.format, copy_tokenizer=args.copy_tokenizer,
                                     extra={"edited_from": args.model, "edit": EDIT_FILE})
        hashes = {k: v for k, v in run_.record["inputs"].items() if k in ("model", "tokenizer")}
        manifest = edit_manifest(source=source, source_hashes=hashes, loc=loc, selection=selection, record=record,
                                 files=hash_files(out, written), forget_run=forget_run)
        write_json(out / EDIT_FILE, manifest)
        summary = {"units_edited": selection.count, "total_units": selection.total_units, "edit": args.edit,
                   "factor": args.factor, "control": selection.control, "per_block": manifest["counts"]["per_block"]}
        run_.finish([*written, EDIT_FILE], summary)
    except BaseException:
        discard_output(out, existed)
        raise
    what = "random" if selection.control == "random" else "lowest-UnitMem" if selection.control == "lowest" else (
        "targeted" if selection.rule == "forget" else "top-UnitMem")
    log(f"scaled {selection.count} of {selection.total_units} {what} units by {args.factor:g} ({args.edit} edit); "
        f"per block {manifest['counts']['per_block']}; wrote {out}")
    return 0
