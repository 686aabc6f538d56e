"""`iarmem localize --method M --targets IDS` end to end: the files every later stage reads, torchrun, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_localize_run import make_folder
from twoproc import one_then_two

from iarmem.cli import main
from iarmem.data import bundled_mnist
from iarmem.mitigate import load_localization
from iarmem.mitigate.forget import image_ranking
from iarmem.plans import model_plan

FAST = ["--augs", "2", "--batch-size", "3", "--mask-steps", "5"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("models") / "var", "tiny-var")


def _plan(folder: Path):
    return model_plan(str(folder), bundled_mnist())


@pytest.mark.parametrize("method", ["zscore", "gradient", "mask"])
def test_a_per_image_run_is_a_localization_every_stage_reads(folder: Path, tmp_path: Path, method: str) -> None:
    plan = _plan(folder)
    out = tmp_path / method
    assert main(["localize", str(folder), "mnist", "--out", str(out), "--method", method, "--targets", "planted",
                 *FAST]) == 0
    loc = load_localization(out)
    assert loc.method == method and sorted(loc.per_image) == sorted(int(i) for i in plan.planted_ids)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["references"] == sorted(int(i) for i in plan.heldout_ids)  # the default references
    # the run-level map is each column's best target, and that target owns it
    first = loc.layers[0].name
    width = loc.layers[0].width
    per = np.stack([loc.per_image[t][:loc.num_bins * width].reshape(loc.num_bins, width)
                    for t in sorted(loc.per_image)])
    np.testing.assert_allclose(loc.unitmem[first], per.max(0), rtol=1e-6)
    owners = np.asarray(sorted(loc.per_image))[per.argmax(0)]
    ties = (per == per.max(0)).sum(0) > 1
    assert (loc.argmax[first][~ties] == owners[~ties]).all()
    # the per-image reading ranks every unit by the image's own score
    image = int(plan.planted_ids[0])
    scores, order = image_ranking(loc, image, "per_image")
    own = loc.image_unit_scores(image, scores.names)
    assert len(order) == len(scores.flat) and (np.diff(own[order]) <= 0).all()
    # mitigate takes it unchanged
    assert main(["mitigate", str(folder), str(out), "--top", "1", "--out", str(tmp_path / f"{method}-edit")]) == 0


def test_refine_writes_checked_units_that_rank_first(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "g"
    assert main(["localize", str(folder), "mnist", "--out", str(out), "--method", "gradient", "--targets", "planted",
                 "--refine", "--refine-max-units", "4", *FAST]) == 0
    refined = json.loads((out / "refined.json").read_text())
    assert len(refined["images"]) == 4
    assert {r["status"] for r in refined["images"]} <= {"refined", "not extracted", "not stopped"}
    loc = load_localization(out)
    for r in refined["images"]:
        if r["status"] == "refined":
            scores, order = image_ranking(loc, r["image"], "per_image")
            first = scores.to_flat(r["units"])
            assert set(order[:len(first)].tolist()) == set(first.tolist())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["refined"]["targets"] == 4


@pytest.mark.parametrize("method", ["zscore", "gradient", "mask"])
def test_two_processes_equal_one(folder: Path, tmp_path: Path, method: str) -> None:
    args = ["--method", method, "--targets", "planted", *FAST] + (["--refine", "--refine-max-units", "4"]
                                                                  if method == "gradient" else [])
    one_then_two(["localize", str(folder), "mnist", *args], tmp_path / "one", tmp_path / "two")
    for name in ("unitmem.safetensors", "per_image.safetensors") + (("refined.json",) if method == "gradient" else ()):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2


@pytest.mark.parametrize(("extra", "message"), [
    (["--method", "gradient"], "give the images with --targets"),
    (["--method", "zscore", "--targets", "99999"], "image id 99999 is not in the dataset"),
    (["--method", "mask", "--targets", "heldout"], "needs at least 2 to compare with"),
    (["--refine"], "--refine checks units per image"),
    (["--method", "zscore", "--stat", "median", "--targets", "planted"], "--stat is UnitMem's"),
    (["--method", "gradient", "--targets", "x1"], "--targets 'x1'"),
])
def test_bad_input_is_one_line_and_exit_2(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                          extra: list[str], message: str) -> None:
    assert main(["localize", str(folder), "mnist", "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


def test_references_that_overlap_the_targets_are_refused(folder: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    planted = [int(i) for i in _plan(folder).planted_ids]
    refs = ",".join(str(i) for i in planted[:1] + [int(i) for i in _plan(folder).heldout_ids])
    assert main(["localize", str(folder), "mnist", "--out", str(tmp_path / "o"), "--method", "zscore",
                 "--targets", "planted", "--references", refs]) == 2
    err = capsys.readouterr().err.strip()
    assert f"share image {planted[0]}" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_targets_alone_choose_the_per_image_default(folder: Path, tmp_path: Path) -> None:
    assert main(["localize", str(folder), "mnist", "--out", str(tmp_path / "t"), "--targets", "planted", *FAST]) == 0
    assert load_localization(tmp_path / "t").method == "gradient"  # the bench's best (RESULTS section 9)
    assert main(["localize", str(folder), "mnist", "--out", str(tmp_path / "u"), *FAST]) == 0
    assert load_localization(tmp_path / "u").method == "unitmem"  # the paper's setting is unchanged
