"""`iarmem inject`: several unseen images made to leak through known, disjoint units, and its bad input.

The model is a briefly trained tiny-var (non-zero biases) saved as `iarmem train` would, with a
planting manifest. The single-image injection is tested in test_bench_inject.py; here what the
command adds: several images in turn without undoing each other, disjoint units, nothing outside
them changed, the manifest's injected group, and refusals. The two tests on an injected model
take minutes (two injections, each checked by generation) and are marked slow; the refusals are fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from trained import briefly_trained

from iarmem.cli import main
from iarmem.data import bundled_mnist, make_plan, read_manifest, write_manifest
from iarmem.models.loading import open_model, save_model_folder

pytestmark = pytest.mark.all_threads


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    iar = briefly_trained("tiny-var", steps=25)
    folder = save_model_folder(iar, tmp_path_factory.mktemp("inject") / "model", preset="tiny-var",
                               extra={"training_views": {"views": 1, "seed": 0}})
    ds = bundled_mnist()
    write_manifest(make_plan(ds.labels, num_train=10, plant=2, copies=2, seed=0, dataset=ds.describe()),
                   folder / "manifest.json")
    return folder


@pytest.fixture(scope="module")
def injected(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("inject-out") / "inj"
    assert main(["inject", str(model_dir), "mnist", "--images", "2", "--rate", "2", "--steps", "300",
                 "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_every_image_leaks_through_its_own_units_and_nothing_else_moved(model_dir: Path, injected: Path) -> None:
    rec = json.loads((injected / "injected.json").read_text())
    a, b = rec["images"]
    for d in (a, b):  # judged after both injections: the second did not undo the first
        assert d["extracted"] and d["final_agreement"] > 0.9 >= d["injection"]["agreement_before"], d
        assert d["ablation"]["ablated"] < 0.5 < min(d["ablation"]["random"]), d["ablation"]
        assert d["unit_count"] == 4 * 10  # 2 % of 512 units in each of 4 blocks
    for layer in a["units"]:
        assert not set(a["units"][layer]) & set(b["units"][layer]), layer
    assert rec["units"] == 80 and rec["share"] == pytest.approx(80 / 2048)

    before, after = load_file(model_dir / "model.safetensors"), load_file(injected / "model.safetensors")
    iar, _ = open_model(str(model_dir))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    owned = {k for layer in a["units"] for k, _ in iar.unit_layer(layer).own_params}
    assert changed and changed <= owned, changed - owned
    for layer in a["units"]:  # within a unit's own tensors, only the injected slices moved
        units = set(a["units"][layer]) | set(b["units"][layer])
        for key, axis in iar.unit_layer(layer).own_params:
            moved = (before[key] != after[key]).movedim(axis, 0).reshape(before[key].shape[axis], -1).any(1)
            assert set(moved.nonzero().flatten().tolist()) <= units, key


@pytest.mark.slow
def test_the_manifest_names_them_injected_and_the_rest_is_kept(model_dir: Path, injected: Path) -> None:
    old, new = read_manifest(model_dir / "manifest.json"), read_manifest(injected / "manifest.json")
    rec = json.loads((injected / "injected.json").read_text())
    ids = [d["image"] for d in rec["images"]]
    assert new.injected_ids.tolist() == sorted(ids)
    assert not np.isin(ids, old.used_ids).any()  # never-trained and never held out
    for name in ("planted_ids", "ordinary_ids", "heldout_ids"):
        assert np.array_equal(getattr(old, name), getattr(new, name))
    info = json.loads((injected / "model.json").read_text())
    assert info["injected"] == "injected.json" and info["training_views"] == {"views": 1, "seed": 0}
    run = json.loads((injected / "run.json").read_text())
    assert run["status"] == "finished" and run["summary"]["reproduced"] == ids


@pytest.mark.parametrize(("extra", "words"), [
    (["--rate", "0"], "--rate"),
    (["--images", "0"], "--images"),
    (["--images", "5000"], "outside the model's plan"),
    (["--rate", "30", "--images", "4"], "units left"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(model_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str], extra: list[str],
                                                          words: str) -> None:
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["inject", str(model_dir), "mnist", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and words in err[0], err
    assert not out.exists()


def test_a_model_without_a_manifest_is_refused(model_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.json", "model.safetensors", "tokenizer.safetensors"):
        (bare / name).write_bytes((model_dir / name).read_bytes())
    capsys.readouterr()
    assert main(["inject", str(bare), "mnist", "--out", str(tmp_path / "o")]) == 2
    assert "manifest" in capsys.readouterr().err and not (tmp_path / "o").exists()
