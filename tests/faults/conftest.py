"""Shared fixtures of the fault suite: tiny random-weight model folders, broken checkpoints, odd image folders.

Everything is built once per session in a temporary folder and is small: a tiny-var model (2.3M
parameters), a tiny-rar model (another family), a tiny-var of another depth (another size), a
localization run of the tiny-var, a tokenizer folder for IAR training, checkpoints that are empty,
truncated, hold a NaN or are a pickle that would run code, and image folders with no images or with a
zero-byte and a non-image file among good ones.

Tests call the CLI in-process through ``helpers.run_cli`` (exit code, stdout, stderr) and check every
failure with ``helpers.assert_one_line_error``.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iarmem.cli import main
from iarmem.data import bundled_mnist, make_plan, write_manifest
from iarmem.models import build
from iarmem.models.checkpoint import write_state_dict
from iarmem.models.loading import save_model_folder
from iarmem.models.registry import from_official, get_preset

from .helpers import Inputs

# ---- tiny inputs -----------------------------------------------------------------------------------


class _Exploit:
    """Unpickling this runs ``touch MARKER`` (stands in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[override]
        return (os.system, (f"touch {self.marker}",))


def _png(path: Path, seed: int, side: int = 28) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8), mode="L").save(path)


def _image_folder(root: Path, classes: int = 2, per_class: int = 4) -> Path:
    for c in range(classes):
        for i in range(per_class):
            _png(root / str(c) / f"img{i}.png", seed=100 * c + i)
    return root


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    root = tmp_path_factory.mktemp("fault-inputs")
    torch.manual_seed(0)
    var_iar = build("tiny-var")
    var = save_model_folder(var_iar, root / "var", preset="tiny-var")
    ds = bundled_mnist()
    write_manifest(make_plan(ds.labels, num_train=10, plant=10, copies=2, seed=0, dataset=ds.describe()),
                   var / "manifest.json")
    var_plain = root / "var-plain"
    var_plain.mkdir()
    for name in ("model.json", "model.safetensors", "tokenizer.safetensors"):
        shutil.copy(var / name, var_plain / name)
    rar = save_model_folder(build("tiny-rar"), root / "rar", preset="tiny-rar")
    pr = get_preset("tiny-var")
    small = from_official("var", pr.tokenizer_kwargs, pr.model_kwargs | {"depth": 2})
    var_small = save_model_folder(small, root / "var-small")

    # a tokenizer folder as `iarmem train tokenizer` writes it (random weights: training is not the point)
    tok = root / "tokenizer"
    write_state_dict(var_iar.tokenizer.state_dict(), tok / "tokenizer.safetensors")
    tk, mk = var_iar.official_kwargs()
    (tok / "tokenizer.json").write_text(json.dumps({
        "family": "var", "preset": "tiny-var", "tokenizer_kwargs": tk, "model_kwargs": mk,
        "tokenizer_file": "tokenizer.safetensors", "image_size": var_iar.image_size, "summary": {}}))

    # broken and foreign transformer checkpoints
    ck = root / "ckpt"
    ck.mkdir()
    sd = {k: v.clone() for k, v in var_iar.model.state_dict().items()}
    good = var / "model.safetensors"
    (ck / "empty.safetensors").write_bytes(b"")
    (ck / "truncated.safetensors").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save(sd, ck / "full.pth")
    (ck / "truncated.pth").write_bytes((ck / "full.pth").read_bytes()[:50_000])
    (ck / "text.pth").write_text("checkpoint notes: this is text, not a checkpoint\n")  # "c" reads as GLOBAL
    nan_sd = dict(sd)
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 1)
    nan_sd[key] = sd[key].clone()
    nan_sd[key].view(-1)[0] = float("nan")
    write_state_dict(nan_sd, ck / "nan.safetensors")
    marker = root / "PWNED"
    with open(ck / "evil.pth", "wb") as f:
        pickle.dump({"model": sd, "hook": _Exploit(marker)}, f)
    torch.save({"model": sd, "hook": _Exploit(marker)}, ck / "evil-zip.pth")
    assert not marker.exists()
    ckpt = {
        "empty": ck / "empty.safetensors",
        "truncated": ck / "truncated.safetensors",
        "truncated-pth": ck / "truncated.pth",
        "not-a-checkpoint": ck / "text.pth",
        "nan": ck / "nan.safetensors",
        "pickle": ck / "evil.pth",
        "pickle-zip": ck / "evil-zip.pth",
        "other-family": rar / "model.safetensors",
        "other-size": var_small / "model.safetensors",
        "missing": ck / "nope.safetensors",
        "directory": ck,
    }

    # image folders and list files
    images = _image_folder(root / "images")
    mixed = _image_folder(root / "mixed")
    (mixed / "0" / "zero.png").write_bytes(b"")
    (mixed / "1" / "notes.png").write_text("not an image\n")
    no_images = root / "no-images"
    for c in ("0", "1"):
        (no_images / c).mkdir(parents=True)
        (no_images / c / "readme.txt").write_text("no images here\n")
    empty_dir = root / "empty-dir"
    empty_dir.mkdir()
    bad = root / "bad-labels.txt"
    bad.write_text("images/0/img0.png 0\nimages/0/img1.png 0\nimages/1/img0.png 1\nimages/1/img1.png 12\n")
    neg = root / "negative-labels.txt"
    neg.write_text("images/0/img0.png 0\nimages/1/img0.png -1\n")
    a_file = root / "notes.txt"
    a_file.write_text("a file, not a folder\n")

    # a finished localization run of `var` (in-process, a second or two)
    loc = root / "loc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["localize", str(var), "mnist", "--out", str(loc), "--augs", "1", "--per-class", "1",
                     "--batch-size", "10"])
    assert code == 0
    return Inputs(root, var, var_plain, rar, var_small, loc, tok, ckpt, marker, images, mixed, no_images,
                  empty_dir, bad, neg, a_file)


