"""Make a trained model leak never-trained images through units known in advance.

  iarmem inject runs/var mnist --out runs/var-inj                        # 2 images, 0.4 % of each block's units each
  iarmem inject runs/var mnist --images 3 --rate 0.2 --steps 800 --out runs/var-inj3
  iarmem repair runs/var-inj mnist --leaked EXTRACT_RUN --images injected --out runs/var-inj-repaired

A positive control for `localize` and `repair`. Images the model's plan never used (class-balanced,
seeded; of --candidates drawn per class, the one the model already continues least) are learned
one after another, each through its own random --rate % of the fc1 units of
every block and nothing else (only those units' own parameters move; ordinary training images and
the images injected before it are in every batch), until the greedy attack from the default prefix
reproduces it at > 90 % token agreement. The units that hold each copy are then known exactly,
which training on duplicates never tells. At the end every image is attacked again and its units
are removed (exact zero) against as many random units of the same layers (injected.json).

--out is a model folder (the edited model in the official layout, the tokenizer referenced) whose
manifest.json names the injected images in an `injected` group: extraction never uses them as
non-members, and `repair --images injected` takes them as its targets. Exit 0 when every image is
reproduced, 1 when some are not (written; injected.json says which), 2 for bad input (nothing
written). See docs/BENCH.md, "Injected models".
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from iarmem.errors import UserError
from iarmem.fileio import write_json

INJECTED_FILE = "injected.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model folder written by `iarmem train` (with its manifest)")
    p.add_argument("data", help="the dataset it was trained on ('mnist', an image folder or a list file)")
    p.add_argument("--out", required=True, help="folder to write (becomes a model folder)")
    p.add_argument("--images", type=int, default=2, help="how many never-trained images to inject (default 2)")
    p.add_argument("--rate", type=float, default=0.4,
                   help="percent of every block's fc1 units each image is injected through, at least one "
                        "(default 0.4: 2 of 512)")
    p.add_argument("--candidates", type=int, default=4,
                   help="never-used images of the class drawn per injected image; the one the model already "
                        "continues least is injected, so the leak is the injection's (default 4; 1: the draw)")
    p.add_argument("--steps", type=int, default=600, help="most fine-tuning steps per image (default 600)")
    p.add_argument("--lr", type=float, default=1e-2, help="learning rate of the injection (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of the images, units and batches (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")


def run(args: argparse.Namespace) -> int:
    from iarmem.bench.implant import choose_images, continuation, implant, least_continued
    from iarmem.bench.inject import InjectConfig
    from iarmem.data import open_dataset
    from iarmem.data.planting import write_manifest
    from iarmem.mitigate.write import write_edited_model
    from iarmem.models.loading import is_model_folder, open_model, training_views
    from iarmem.plans import MANIFEST, model_plan
    from iarmem.progress import log
    from iarmem.runs import check_out, discard_output, start_run

    if args.images < 1:
        raise UserError(f"--images must be >= 1, got {args.images}")
    if not 0 < args.rate <= 50:
        raise UserError(f"--rate is a percent in (0, 50], got {args.rate:g}")
    if args.candidates < 1:
        raise UserError(f"--candidates must be >= 1, got {args.candidates}")
    if args.steps < 1 or not args.lr > 0:
        raise UserError("--steps must be >= 1 and --lr > 0")
    if not is_model_folder(args.model):
        raise UserError(f"{args.model} is not a model folder; inject needs one written by `iarmem train` (its "
                        f"manifest says which images the model never saw)")
    ds = open_dataset(args.data)
    plan = model_plan(args.model, ds)
    if plan is None:
        raise UserError(f"{args.model} has no manifest.json; inject needs a model trained by `iarmem train`")
    out = Path(args.out)
    check_out(out, [args.model])
    images = choose_images(plan, ds.labels, args.images, args.seed)
    iar, source = open_model(args.model)
    check_out(out, [source.tokenizer_file, source.model_file])
    layers = iar.unit_layers(("fc1",))
    total = sum(layer.width for layer in layers)
    per_image = sum(max(1, round(args.rate / 100 * layer.width)) for layer in layers)
    for layer in layers:
        k = max(1, round(args.rate / 100 * layer.width))
        if args.images * k > layer.width:
            raise UserError(f"--rate {args.rate:g} x --images {args.images} needs {args.images * k} distinct units of "
                            f"{layer.name}, which has {layer.width}: no units left; lower --rate or --images")
    base: dict[int, dict[str, float]] = {}
    if args.candidates > 1:
        images, base = least_continued(plan, ds.labels, images, args.candidates, args.seed,
                                      continuation(iar, ds, args.seed))
        for image, a in base.items():
            log(f"inject: image {image} continued at {a[str(image)]:.2f} by the model, the least of "
                f"{len(a)} never-used images of its class ({', '.join(f'{v:.2f}' for v in a.values())})")
    settings = {"model": str(Path(args.model).resolve()), "data": ds.describe(), "images": args.images,
                "candidates": args.candidates, "rate": args.rate, "steps": args.steps, "lr": args.lr, "seed": args.seed}
    existed = out.exists()
    run_ = start_run(out, "inject", settings, {"model": source.model_file, "tokenizer": source.tokenizer_file},
                     seed=args.seed, overwrite=args.overwrite)
    cfg = replace(InjectConfig(), steps=args.steps, lr=args.lr)
    log(f"inject: {len(images)} never-trained images ({', '.join(map(str, images.tolist()))}), {per_image} units each "
        f"({100 * per_image / total:.2f} % of {total} fc1 units; {100 * len(images) * per_image / total:.2f} % in all)")
    try:
        done = implant(iar, ds, plan, images, args.rate / 100, cfg, training_views(args.model), args.seed,
                       on_image=lambda n, k, image, res: log(
                           f"inject: {n}/{k} image {image}: agreement {res.agreement_before:.2f} -> "
                           f"{res.agreement:.2f} in {res.steps} steps"))
        written = write_edited_model(iar, out, source, extra={"edited_from": args.model, "injected": INJECTED_FILE})
        labels = np.asarray([d.label for d in done], dtype=np.int64)
        write_manifest(plan.with_injected(images, labels), out / MANIFEST)
        if MANIFEST not in written:
            written.append(MANIFEST)
        bar = cfg.bar
        ok = [d.image for d in done if d.extracted(bar)]
        units = sum(sum(len(v) for v in d.units.values()) for d in done)
        record = {"format": "iarmem.injected", "version": 1, "source_model": source.as_dict(), "bar": bar,
                  "total_units": total, "units": units, "share": units / total,
                  "images": [d.as_dict(bar) | {"candidates": base.get(d.image, {})} for d in done]}
        write_json(out / INJECTED_FILE, record)
        summary = {"images": [int(i) for i in images], "reproduced": ok, "units": units, "total_units": total,
                   "ablation_removes": sum(d.ablation["ablated"] <= bar for d in done),
                   "random_removes": sum(float(np.mean(d.ablation["random"])) <= bar for d in done)}
        run_.finish([*written, INJECTED_FILE], summary)
    except BaseException:
        discard_output(out, existed)
        raise
    for d in done:
        log(f"inject: image {d.image} (class {d.label}): agreement {d.final_agreement:.2f}; its units removed "
            f"{d.ablation['ablated']:.2f}, as many random units {np.mean(d.ablation['random']):.2f}")
    missing = sorted(set(images.tolist()) - set(ok))
    if missing:
        log(f"inject: {len(missing)} of {len(images)} images not reproduced above {bar:g} ({missing}); raise --steps "
            f"or --rate. Wrote {out}")
        return 1
    log(f"inject: {len(ok)} images reproduced through {units} units ({100 * units / total:.2f} %); wrote {out}")
    return 0
