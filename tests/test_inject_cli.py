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
from trained import planted_model_folder, without_manifest

from iarmem.bench.implant import choose_images, least_continued
from iarmem.cli import main
from iarmem.data import bundled_mnist, read_manifest
from iarmem.models.loading import open_model

pytestmark = pytest.mark.all_threads


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return planted_model_folder(tmp_path_factory.mktemp("inject") / "model")


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
    for d in (a, b):  # each the least continued of 4 candidates of its class (the default --candidates)
        assert len(d["candidates"]) == 4 and d["candidates"][str(d["image"])] == min(d["candidates"].values())
    # the first was scored on the model it was injected into: its score is the injection's starting point
    assert a["candidates"][str(a["image"])] == pytest.approx(a["injection"]["agreement_before"], abs=1e-4)

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


def test_of_the_candidates_the_least_continued_image_of_the_class_is_chosen(model_dir: Path) -> None:
    ds = bundled_mnist()
    plan = read_manifest(model_dir / "manifest.json")
    drawn = choose_images(plan, ds.labels, 3, seed=1)
    table = np.random.default_rng(3).random(len(ds))  # a score that differs between images
    calls: list[np.ndarray] = []

    def score(ids: np.ndarray) -> np.ndarray:
        calls.append(ids)
        return table[ids]

    chosen, seen = least_continued(plan, ds.labels, drawn, 4, 1, score)
    assert len(set(chosen.tolist())) == 3 and sorted(seen) == chosen.tolist() and len(calls) == 3
    assert sorted(ds.labels[chosen].tolist()) == sorted(ds.labels[drawn].tolist())
    assert not np.array_equal(chosen, drawn)  # the draw alone would not have been the least
    for image, scores in seen.items():
        ids = [int(i) for i in scores]
        assert len(ids) == 4 and not np.isin(ids, plan.used_ids).any()
        assert (ds.labels[ids] == ds.labels[image]).all()
        assert scores[str(image)] == pytest.approx(table[ids].min(), abs=1e-4), scores
    assert np.array_equal(least_continued(plan, ds.labels, drawn, 1, 1, score)[0], drawn)


@pytest.mark.parametrize(("extra", "words"), [
    (["--rate", "0"], "--rate"),
    (["--images", "0"], "--images"),
    (["--images", "5000"], "outside the model's plan"),
    (["--rate", "30", "--images", "4"], "units left"),
    (["--candidates", "0"], "--candidates"),
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
    bare = without_manifest(model_dir, tmp_path / "bare")
    capsys.readouterr()
    assert main(["inject", str(bare), "mnist", "--out", str(tmp_path / "o")]) == 2
    assert "manifest" in capsys.readouterr().err and not (tmp_path / "o").exists()
