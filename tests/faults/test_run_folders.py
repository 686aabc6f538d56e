"""Run folders never mix runs: another stage, other settings, another model or changed input files are refused
unless --overwrite; a finished run is reused only with --resume; run.json records the version, the command, the
seed, hashes of the inputs and of the outputs."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from iarmem import __version__
from iarmem.models.checkpoint import read_state_dict, write_state_dict

from .helpers import Inputs, assert_one_line_error, run_cli, stray_tmp
from .test_inputs import evaluate, extract, localize, mitigate, sweep, train_iar, train_tok


@dataclass(frozen=True)
class Stage:
    name: str
    argv: Callable[[Path, Path, Inputs], list]  # (model or tokenizer copy, out, inputs) -> argv
    other: tuple[str, ...]  # options that change the settings
    source: str  # which input folder the stage reads (copied per test so it can be changed)
    weights: str  # the file inside it whose bytes change in the changed-input case


STAGES = [
    Stage("localize", lambda m, out, i: localize(m, "mnist", out), ("--augs", "2"), "var", "model.safetensors"),
    Stage("extract", lambda m, out, i: extract(m, "mnist", out), ("--top", "2"), "var", "model.safetensors"),
    Stage("mitigate", lambda m, out, i: mitigate(m, i.loc, out), ("--top", "20"), "var", "model.safetensors"),
    Stage("evaluate", lambda m, out, i: evaluate(m, i.images, out, "--features-cache", i.root / "feat-runs"),
          ("--n-per-class", "3"), "var_plain", "model.safetensors"),
    Stage("sweep", lambda m, out, i: [*sweep(m, i.images, i.loc, out), "--tops", "", "--noise", "1",
                                      "--features-cache", i.root / "feat-runs"],
          ("--noise", "2"), "var_plain", "model.safetensors"),
    Stage("train-tokenizer", lambda m, out, i: train_tok(i.images, out, "--num-images", "8"), ("--steps", "2"),
          "tokenizer", "tokenizer.safetensors"),
    Stage("train", lambda m, out, i: train_iar(m, "mnist", out), ("--steps", "3"), "tokenizer",
          "tokenizer.safetensors"),
]


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "run.json"}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _change_weights(path: Path) -> None:
    """Same size, other bytes: a retrained model in the same place."""
    sd = read_state_dict(path)
    k = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 1)
    sd[k] = sd[k] + 0.5
    before = path.stat().st_size
    write_state_dict(sd, path)
    assert path.stat().st_size == before


@pytest.mark.parametrize("stage", STAGES, ids=[s.name for s in STAGES])
def test_run_folders_refuse_to_mix(stage: Stage, inputs: Inputs, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "input"
    shutil.copytree(getattr(inputs, stage.source), src)
    out = tmp_path / "run"
    base = [*stage.argv(src, out, inputs), "--seed", "3"]

    def cli(argv: list) -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return run_cli(argv, capsys)

    res = cli(base)
    assert res.code == 0, res.err
    first = _files(out)
    rec = json.loads((out / "run.json").read_text())

    # what run.json records
    assert rec["iarmem_version"] == __version__
    assert rec["stage"] == stage.name.split("-")[0] and rec["status"] == "finished"
    assert rec["command"] == ["iarmem", *map(str, base)]  # the stage's own command line, not pytest's
    assert rec["seed"] == 3
    assert rec["inputs"], "no input hashes"
    for key, value in rec["inputs"].items():
        assert len(value.removeprefix("dir:")) == 64, (key, value)
    hashed = {_sha(src / stage.weights)} if stage.name != "train-tokenizer" else set()
    assert hashed <= set(rec["inputs"].values()), f"{stage.weights} not hashed: {rec['inputs']}"
    assert rec["outputs"] and all(_sha(out / n) == h for n, h in rec["outputs"].items())

    # a finished run: again without --resume is refused, with --resume reused as is
    line = assert_one_line_error(cli(base))
    assert "already holds this finished" in line and "--overwrite" in line
    assert cli([*base, "--resume"]).code == 0
    assert _files(out) == first

    # other settings
    line = assert_one_line_error(cli([*base, *stage.other]))
    assert "other settings" in line and "--overwrite" in line, line
    assert _files(out) == first

    # another model (or tokenizer) folder, with other weights
    other_src = tmp_path / "other-input"
    shutil.copytree(src, other_src)
    _change_weights(other_src / stage.weights)
    if stage.name != "train-tokenizer":
        other = [str(other_src) if a == src else a for a in base]
        line = assert_one_line_error(cli([*other, "--resume"]))
        assert "--overwrite" in line
        assert _files(out) == first

    # the same path, other bytes (retrained in place)
    if stage.name != "train-tokenizer":
        _change_weights(src / stage.weights)
        line = assert_one_line_error(cli([*base, "--resume"]))
        assert "other input files" in line and "--overwrite" in line, line
        assert _files(out) == first
    else:  # the tokenizer's input is its data: a changed image folder
        data = Path(base[base.index("--data") + 1])
        changed = tmp_path / "data"
        shutil.copytree(data, changed)
        argv = [str(changed) if a == data else a for a in base]
        line = assert_one_line_error(cli([*argv, "--resume"]))
        assert "--overwrite" in line

    # --overwrite replaces the run
    res = cli([*base, *stage.other, "--overwrite"])
    assert res.code == 0, res.err
    rec2 = json.loads((out / "run.json").read_text())
    assert rec2["status"] == "finished" and rec2["settings"] != rec["settings"]
    assert not stray_tmp(out)


@pytest.mark.parametrize("stage", [s for s in STAGES if s.name != "train-tokenizer"],
                         ids=[s.name for s in STAGES if s.name != "train-tokenizer"])
def test_a_folder_of_another_stage_is_refused(stage: Stage, inputs: Inputs, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "loc"
    shutil.copytree(inputs.loc, out)  # a finished localize run
    if stage.name == "localize":
        rec = json.loads((out / "run.json").read_text())
        (out / "run.json").write_text(json.dumps(rec | {"stage": "extract"}))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    src = getattr(inputs, stage.source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_cli(stage.argv(src, out, inputs), capsys)
    line = assert_one_line_error(res, roots=(out,))
    assert "holds a `" in line and "--overwrite" in line, line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_damaged_run_json_is_named(inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"stage": "localize", "status": ')
    res = run_cli(localize(inputs.var, "mnist", out, "--resume"), capsys)
    line = assert_one_line_error(res, roots=(out,))
    assert "run.json" in line and "damaged" in line


def test_mitigate_never_changes_its_inputs(inputs: Inputs, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model"
    shutil.copytree(inputs.var, model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    assert run_cli(mitigate(model, inputs.loc, tmp_path / "edit", "--factor", "0"), capsys).code == 0
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    edited = read_state_dict(tmp_path / "edit" / "model.safetensors")
    original = read_state_dict(model / "model.safetensors")
    assert any(not torch.equal(edited[k], original[k]) for k in original)
