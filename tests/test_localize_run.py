"""The localize stage end to end on tiny random-weight model folders: outputs, resume, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from direct_mu import direct_mu, direct_unitmem
from safetensors import safe_open
from trained import briefly_trained

from iarmem.cli import main
from iarmem.data import bundled_mnist, make_plan, write_manifest
from iarmem.localize import LocalizeConfig, localize, read_map
from iarmem.localize.run import STATE_FILE, VALUES_FILE
from iarmem.localize.summary import evidence_table
from iarmem.mitigate import load_localization, select_units
from iarmem.models.loading import open_model, save_model_folder
from iarmem.plans import MANIFEST, model_plan, select_ids
from iarmem.tokens import load_views

FAST = ["--augs", "2", "--batch-size", "3"]


def make_folder(path: Path, preset: str, num_train: int = 14, plant: int = 4) -> Path:
    save_model_folder(briefly_trained(preset), path, preset=preset)
    ds = bundled_mnist()
    write_manifest(make_plan(ds.labels, num_train=num_train, plant=plant, copies=3, seed=0, dataset=ds.describe()),
                   path / MANIFEST)
    return path




@pytest.fixture(scope="module")
def var_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("models") / "var", "tiny-var")


def test_cli_writes_every_output(var_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "loc"
    assert main(["localize", str(var_folder), "mnist", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "top 1% units" in printed and "images driving the most top-1% units" in printed
    for name in ("unitmem.safetensors", "summary.json", "heatmap.png", "blocks.png", "top_images.png", "run.json"):
        assert (out / name).is_file(), name
    assert not (out / STATE_FILE).exists()

    ds = bundled_mnist()
    plan = model_plan(str(var_folder), ds)
    ids = select_ids(ds, plan, "train")
    tensors, meta = read_map(out)
    assert meta["stat"] == "mean" and meta["num_bins"] == 5  # the class-only 1x1 scale is left out
    assert meta["layers"] == [f"blocks.{i}.ffn.fc1" for i in range(4)]
    np.testing.assert_array_equal(tensors["image_ids"].numpy(), ids)
    # against a direct computation of every image's mu (plain hooks, numpy statistics)
    iar, _ = open_model(str(var_folder))
    images, labels = load_views(iar, ds, np.repeat(ids, 2), np.tile([1, 2], len(ids)), 0)
    want = direct_unitmem(direct_mu(iar, iar.tokenize(images), labels, 2), ids)
    for i in range(4):
        name = f"blocks.{i}.ffn.fc1"
        for what, dtype in (("unitmem", torch.float32), ("max", torch.float32), ("mean_others", torch.float32),
                            ("argmax", torch.int64), ("ties", torch.int64)):
            t = tensors[f"{name}.{what}"]
            assert t.shape == (5, 512) and t.dtype == dtype, (name, what)
        cols = slice(i * 5 * 512, (i + 1) * 5 * 512)
        for what in ("unitmem", "max", "mean_others"):
            np.testing.assert_allclose(tensors[f"{name}.{what}"].numpy().ravel(), want[what][cols], rtol=1e-4,
                                       atol=1e-6, err_msg=f"{name}.{what}")
        np.testing.assert_array_equal(tensors[f"{name}.ties"].numpy().ravel(), want["ties"][cols])
        np.testing.assert_array_equal(tensors[f"{name}.argmax"].numpy().ravel(), want["owner"][cols])
    assert f"{name}.median_others" not in tensors

    s = json.loads((out / "summary.json").read_text())
    assert s["family"] == "var" and s["model"]["preset"] == "tiny-var" and s["model"]["spec"] == str(var_folder)
    assert [layer["name"] for layer in s["layers"]] == [f"blocks.{i}.ffn.fc1" for i in range(4)]
    assert s["bins"] == {"count": 5, "labels": ["2x2", "3x3", "4x4", "6x6", "8x8"]}
    assert s["num_images"] == len(ids) and s["augs"] == 2 and s["stat"] == "mean" and s["subset"] == "train"
    assert s["views"] == [1, 2] and s["view_source"] == "augment" and s["excluded_positions"] == 1
    assert np.asarray(s["per_layer_bin"]).shape == (4, 5)
    assert [e["percent"] for e in s["top_shares"]] == [1, 5, 10]
    for e in s["top_shares"]:
        assert sum(e["per_layer"]) == pytest.approx(1.0, abs=1e-4)
        assert np.sum(e["per_layer_bin"]) == pytest.approx(1.0, abs=1e-4)
    assert s["top_shares"][0]["units"] == 20  # round(1% of 4 x 512)
    top = s["top_images"]
    assert top and all(t["group"] in ("planted", "ordinary") and t["id"] in ids for t in top)
    assert [t["units"] for t in top] == sorted((t["units"] for t in top), reverse=True)
    assert evidence_table(s, "tiny-var").count("\n") == 2  # one Markdown row per top p %
    g = s["groups"][0]
    assert g["percent"] == 1 and sum(g["counts"].values()) == g["units"] == 20
    assert g["expected_shares"]["planted"] == pytest.approx(4 / 18) and g["expected_shares"]["heldout"] == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["stage"] == "localize"
    # the contract with the mitigation stage: its reader accepts the run and ranks the same top units
    loc = load_localization(out)
    assert [i.name for i in loc.layers] == [layer["name"] for layer in s["layers"]]
    assert loc.bin_labels == tuple(s["bins"]["labels"]) and np.array_equal(loc.image_ids, ids)
    sel = select_units(loc, p=1, scope="global", reduce="max", bin=None, control="none", seed=0)
    per_layer = [len(sel.units.get(layer["name"], [])) / sel.count for layer in s["layers"]]
    assert per_layer == pytest.approx(s["top_shares"][0]["per_layer"], abs=1e-6)


@pytest.mark.parametrize("stat", ["mean", "median"])
def test_resume_after_a_stop_is_bit_for_bit(var_folder: Path, tmp_path: Path, stat: str) -> None:
    common = [str(var_folder), "mnist", "--augs", "2", "--batch-size", "2", "--stat", stat, "--per-class", "1",
              "--subset", "all"]
    assert main(["localize", *common, "--out", str(tmp_path / "straight")]) == 0
    cfg = LocalizeConfig(model=str(var_folder), data="mnist", out=str(tmp_path / "stopped"), augs=2, batch_size=2,
                         stat=stat, per_class=1, subset="all", save_every=2)
    assert localize(cfg, stop_after=3) is None  # the stand-in for a kill, after a checkpoint at step 2 and 3
    assert (tmp_path / "stopped" / STATE_FILE).is_file()
    assert (tmp_path / "stopped" / VALUES_FILE).is_file() == (stat == "median")
    assert main(["localize", *common, "--out", str(tmp_path / "stopped")]) == 2  # unfinished: needs --resume
    if stat == "median":  # the per-image values are part of the state: without them there is no resume
        shutil.copytree(tmp_path / "stopped", tmp_path / "lost")
        (tmp_path / "lost" / VALUES_FILE).unlink()
        assert main(["localize", *common, "--out", str(tmp_path / "lost"), "--resume"]) == 2
    assert main(["localize", *common, "--out", str(tmp_path / "stopped"), "--resume"]) == 0
    a = (tmp_path / "straight" / "unitmem.safetensors").read_bytes()
    b = (tmp_path / "stopped" / "unitmem.safetensors").read_bytes()
    assert a == b
    assert not (tmp_path / "stopped" / VALUES_FILE).exists()  # removed unless --keep-values
    # resuming a finished run is a no-op that returns its summary
    again = localize(LocalizeConfig(**{**cfg.__dict__, "resume": True}))
    assert again is not None and again["num_images"] == 10


def test_rar_token_bins_median_and_options(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "rar", "tiny-rar")
    out = tmp_path / "loc"
    args = ["localize", str(folder), "mnist", "--out", str(out), "--augs", "2", "--batch-size", "4", "--bins", "4",
            "--kinds", "fc1,fc2", "--layers", "1-2", "--stat", "median", "--include-eval-view", "--keep-values",
            "--subset", "planted+heldout", "--dtype", "bfloat16"]
    assert main(args) == 0
    s = json.loads((out / "summary.json").read_text())
    assert [layer["name"] for layer in s["layers"]] == ["blocks.1.mlp.fc1", "blocks.1.mlp.fc2",
                                                        "blocks.2.mlp.fc1", "blocks.2.mlp.fc2"]
    assert s["bins"]["labels"] == ["tokens 1-15", "tokens 16-31", "tokens 32-47", "tokens 48-63"]  # class-only 0 out
    assert s["views"] == [0, 1] and s["num_images"] == 8
    assert {g for t in s["top_images"] for g in [t["group"]]} <= {"planted", "heldout"}
    with safe_open(str(out / "unitmem.safetensors"), framework="pt") as f:
        assert f.get_tensor("blocks.2.mlp.fc2.median_others").shape == (4, 128)
        assert f.get_tensor("blocks.1.mlp.fc1.unitmem").shape == (4, 512)
    values = np.memmap(out / VALUES_FILE, dtype=np.float32, mode="r")
    assert values.size == 8 * 4 * (512 + 128) * 2


@pytest.mark.parametrize(("extra", "message"), [
    (["--layers", "2-9"], "blocks [4, 5, 6, 7, 8, 9]"),
    (["--layers", "x"], "--layers 'x'"),
    (["--bins", "3"], "VAR bins are its"),
    (["--kinds", "fc3"], "--kinds 'fc3'"),
    (["--per-class", "0"], "per_class must be >= 1"),
    (["--subset", "heldout", "--per-class", "1", "--augs", "0"], "--augs must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(var_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                          extra: list[str], message: str) -> None:
    assert main(["localize", str(var_folder), "mnist", "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "o" / "unitmem.safetensors").exists()


def test_a_preset_with_official_files_has_no_ground_truth(var_folder: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    assert main(["localize", "tiny-var", "mnist", "--out", str(tmp_path / "o")]) == 2
    assert "needs its checkpoint files" in capsys.readouterr().err
    files = ["--tokenizer", str(var_folder / "tokenizer.safetensors"),
             "--weights", str(var_folder / "model.safetensors")]
    assert main(["localize", "tiny-var", "mnist", "--out", str(tmp_path / "p"), *files, "--per-class", "1",
                 "--augs", "1", "--layers", "3"]) == 0
    s = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert s["subset"] == "all" and s["num_images"] == 10 and "groups" not in s
    assert s["model"]["preset"] == "tiny-var" and [layer["block"] for layer in s["layers"]] == [3]
    assert {t["group"] for t in s["top_images"]} == {"other"}


def test_a_single_image_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = make_folder(tmp_path / "m", "tiny-var", num_train=0, plant=1)
    assert main(["localize", str(folder), "mnist", "--out", str(tmp_path / "p"), "--subset", "planted"]) == 2
    assert "select at least 2" in capsys.readouterr().err


def test_sigkill_at_any_point_then_resume_is_bit_for_bit(var_folder: Path, tmp_path: Path) -> None:
    """A real kill (SIGKILL once a checkpoint exists), wherever it lands, then --resume."""
    common = [str(var_folder), "mnist", "--augs", "2", "--batch-size", "1", "--save-every", "1", "--subset", "all",
              "--per-class", "4"]  # 40 steps: the kill lands long before the end even on a loaded machine
    assert main(["localize", *common, "--out", str(tmp_path / "straight")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "iarmem", "localize", *common, "--out", str(tmp_path / "killed")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / STATE_FILE
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["status"] == "running"  # killed mid-run
    assert main(["localize", *common, "--out", str(tmp_path / "killed"), "--resume"]) == 0
    a = (tmp_path / "straight" / "unitmem.safetensors").read_bytes()
    assert (tmp_path / "killed" / "unitmem.safetensors").read_bytes() == a


def test_llamagen_swiglu_hidden_units(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "lg", "tiny-llamagen")
    out = tmp_path / "loc"
    assert main(["localize", str(folder), "mnist", "--out", str(out), "--augs", "1", "--layers", "0",
                 "--subset", "planted+heldout"]) == 0
    tensors, meta = read_map(out)
    assert meta["layers"] == ["layers.0.feed_forward.w3"]
    assert tensors["layers.0.feed_forward.w3.unitmem"].shape == (16, 384)


def test_trained_views_are_the_default_and_travel_with_edits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A folder that records its training views (as `iarmem train` writes) is localized on exactly those views
    and that seed; an edited copy keeps the record; --augs / --views augment take the paper's draws instead."""
    folder = make_folder(tmp_path / "var", "tiny-var")
    cfg = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps(cfg | {"training_views": {"views": 3, "seed": 7}}))
    common = ["mnist", "--subset", "planted", "--batch-size", "4"]
    assert main(["localize", str(folder), *common, "--out", str(tmp_path / "trained")]) == 0
    s = json.loads((tmp_path / "trained" / "summary.json").read_text())
    assert (s["views"], s["view_seed"], s["view_source"], s["augs"]) == ([0, 1, 2], 7, "trained", 3)
    assert "3 trained views 0-2 (seed 7" in capsys.readouterr().out
    # the mu of the trained views, computed directly, gives the file's UnitMem
    iar, _ = open_model(str(folder))
    ds = bundled_mnist()
    ids = select_ids(ds, model_plan(str(folder), ds), "planted")
    images, labels = load_views(iar, ds, np.repeat(ids, 3), np.tile([0, 1, 2], len(ids)), 7)
    want = direct_unitmem(direct_mu(iar, iar.tokenize(images), labels, 3), ids)
    tensors, _ = read_map(tmp_path / "trained")
    got = np.concatenate([tensors[f"blocks.{i}.ffn.fc1.unitmem"].numpy().ravel() for i in range(4)])
    np.testing.assert_allclose(got, want["unitmem"], rtol=1e-4, atol=1e-6)

    assert main(["localize", str(folder), *common, "--augs", "2", "--out", str(tmp_path / "augs")]) == 0
    s = json.loads((tmp_path / "augs" / "summary.json").read_text())
    assert (s["views"], s["view_seed"], s["view_source"]) == ([1, 2], 0, "augment")

    loc = tmp_path / "trained"
    assert main(["mitigate", str(folder), str(loc), "--top", "1", "--factor", "0", "--out", str(tmp_path / "ed")]) == 0
    assert json.loads((tmp_path / "ed" / "model.json").read_text())["training_views"] == {"views": 3, "seed": 7}

    plain = make_folder(tmp_path / "plain", "tiny-var")
    capsys.readouterr()
    assert main(["localize", str(plain), *common, "--views", "trained", "--out", str(tmp_path / "no")]) == 2
    assert "records no training views" in capsys.readouterr().err
    assert main(["localize", str(folder), *common, "--views", "trained", "--augs", "2",
                 "--out", str(tmp_path / "both")]) == 2
    assert not (tmp_path / "no").exists() and not (tmp_path / "both").exists()
