"""Scale-out: two torchrun CPU processes (gloo) give the bytes one process gives."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file
from trained import briefly_trained
from twoproc import one_then_two

from iarmem.data import bundled_mnist, make_plan, write_manifest
from iarmem.models.loading import save_model_folder

# the class-only 1x1 scale is kept: its maxima are tied across images of a class, on both ranks
ARGS = ["--augs", "2", "--batch-size", "4", "--stat", "median", "--kinds", "fc1,attn.proj", "--save-every", "1",
        "--keep-class-positions"]


def test_two_processes_equal_one(tmp_path: Path) -> None:
    folder = tmp_path / "var"
    save_model_folder(briefly_trained("tiny-var"), folder, preset="tiny-var")
    ds = bundled_mnist()  # 18 training images: the last steps are partial batches
    write_manifest(make_plan(ds.labels, num_train=14, plant=4, copies=3, seed=0), folder / "manifest.json")
    proc = one_then_two(["localize", str(folder), "mnist", *ARGS], tmp_path / "one", tmp_path / "two")
    one = (tmp_path / "one" / "unitmem.safetensors").read_bytes()
    two = (tmp_path / "two" / "unitmem.safetensors").read_bytes()
    assert one == two
    ties = load_file(str(tmp_path / "two" / "unitmem.safetensors"))["blocks.0.ffn.fc1.ties"]
    assert int(ties[0].max()) > 1  # the 1x1 scale: tied across images of a class, counted over both ranks
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["num_images"] == 18
    assert proc.stdout.count("top 1% units") == 1  # only rank 0 reports
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
