"""Damaged model folders and damaged run folders: one clear line (or a silent redo of a cache), never a traceback.

Interrupted runs are made in-process by raising KeyboardInterrupt right after a checkpoint is written
(what Ctrl-C does): the command returns 130 with one line, run.json says the stage is running, and
--resume finishes it.
"""

from __future__ import annotations

import importlib
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import Inputs, assert_one_line_error, run_cli, stray_tmp
from .test_inputs import extract, localize, train_iar


def _model_json(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        cfg = json.loads((folder / "model.json").read_text())
        result = edit(cfg)
        (folder / "model.json").write_text(json.dumps(cfg if result is None else result))
    return apply


DAMAGE = {
    "model-json-not-json": lambda d: (d / "model.json").write_text("{"),
    "model-json-a-list": _model_json(lambda cfg: []),
    "model-json-without-family": _model_json(lambda cfg: cfg.pop("family") and None),
    "model-json-without-model-file": _model_json(lambda cfg: cfg.pop("model_file") and None),
    "model-json-unknown-family": _model_json(lambda cfg: cfg.update(family="gan")),
    "model-json-bad-kwargs": _model_json(lambda cfg: cfg["model_kwargs"].update(depth="four")),
    "model-file-missing": lambda d: (d / "model.safetensors").unlink(),
    "tokenizer-file-missing": lambda d: (d / "tokenizer.safetensors").unlink(),
    "manifest-not-json": lambda d: (d / "manifest.json").write_text("{"),
    "manifest-of-another-dataset": lambda d: (d / "manifest.json").write_text('{"format": "something else"}'),
}
CALLS = {
    "localize": lambda m, out: localize(m, "mnist", out),
    "extract": lambda m, out: extract(m, "mnist", out),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("command", list(CALLS))
def test_a_damaged_model_folder_is_one_line(command: str, damage: str, inputs: Inputs, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model"
    shutil.copytree(inputs.var, model)
    DAMAGE[damage](model)
    out = tmp_path / "out"
    line = assert_one_line_error(run_cli(CALLS[command](model, out), capsys), out=out, roots=(tmp_path,))
    assert str(model) in line, line


# ---- interrupted runs -------------------------------------------------------------------------------
def _interrupt_after(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """Make ``target`` (module:function) raise KeyboardInterrupt right after it has done its work."""
    module, name = target.split(":")
    mod = importlib.import_module(module)
    cls_name, _, attr = name.partition(".")
    owner = getattr(mod, cls_name) if attr else mod
    original = getattr(owner, attr or name)

    def wrapped(*a: object, **k: object) -> None:
        original(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(owner, attr or name, wrapped)


def _interrupted(argv: list, target: str, capsys: pytest.CaptureFixture[str], out: Path) -> None:
    with pytest.MonkeyPatch.context() as m:
        _interrupt_after(m, target)
        res = run_cli(argv, capsys)
    assert res.code == 130 and res.err_lines[-1] == "interrupted", res.err
    assert "Traceback" not in res.err
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "running", "run.json must say the stage did not finish"


LOC = ["--subset", "all", "--per-class", "2", "--batch-size", "4", "--save-every", "1"]


def test_ctrl_c_then_resume_finishes_localize(inputs: Inputs, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = localize(inputs.var, "mnist", out, *LOC)
    _interrupted(argv, "iarmem.localize.run:_checkpoint", capsys, out)
    assert (out / "localize_state.safetensors").is_file() and not (out / "unitmem.safetensors").exists()
    line = assert_one_line_error(run_cli(argv, capsys))  # an unfinished run needs --resume or --overwrite
    assert "--resume" in line
    res = run_cli([*argv, "--resume"], capsys)
    assert res.code == 0, res.err
    assert "resuming at image" in res.err
    ref = tmp_path / "ref"
    assert run_cli(localize(inputs.var, "mnist", ref, *LOC), capsys).code == 0
    assert (out / "unitmem.safetensors").read_bytes() == (ref / "unitmem.safetensors").read_bytes()
    assert not (out / "localize_state.safetensors").exists() and not stray_tmp(out)


def test_a_damaged_localize_checkpoint_is_one_line(inputs: Inputs, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = localize(inputs.var, "mnist", out, *LOC)
    _interrupted(argv, "iarmem.localize.run:_checkpoint", capsys, out)
    (out / "localize_state.safetensors").write_bytes(b"\0" * 64)
    line = assert_one_line_error(run_cli([*argv, "--resume"], capsys))
    assert "localize_state.safetensors" in line and "--overwrite" in line
    assert run_cli([*argv, "--overwrite"], capsys).code == 0


TRAIN = ["--steps", "4", "--ckpt-every", "2"]


def test_ctrl_c_and_damaged_train_checkpoints(inputs: Inputs, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = train_iar(inputs.tokenizer, "mnist", out, *TRAIN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _interrupted(argv, "iarmem.train.loop:Trainer.save", capsys, out)
        assert (out / "train_state.pt").is_file() and not (out / "model.safetensors").exists()
        good_state = (out / "train_state.pt").read_bytes()
        (out / "train_state.pt").write_bytes(good_state[: len(good_state) // 3])
        line = assert_one_line_error(run_cli([*argv, "--resume"], capsys))
        assert "train_state.pt" in line and "--overwrite" in line
        # a damaged token cache is only a cache: it is rebuilt (the same tokens) and training goes on
        (out / "train_state.pt").write_bytes(good_state)
        (out / "tokens.safetensors").write_bytes(b"garbage")
        res = run_cli([*argv, "--resume"], capsys)
        assert res.code == 0, res.err
        assert "resuming at step 2/4" in res.err
        ref = tmp_path / "ref"
        assert run_cli(train_iar(inputs.tokenizer, "mnist", ref, *TRAIN), capsys).code == 0
    for name in ("model.safetensors", "tokens.safetensors", "train_log.csv"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


def test_a_damaged_score_cache_is_recomputed(inputs: Inputs, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = extract(inputs.var, "mnist", out)
    _interrupted(argv, "iarmem.attack.outputs:write_scores", capsys, out)
    (out / "scores.csv").write_text("id,label\n1,2,3\n")
    assert run_cli([*argv, "--resume"], capsys).code == 0
    ref = tmp_path / "ref"
    assert run_cli(extract(inputs.var, "mnist", ref), capsys).code == 0
    for name in ("scores.csv", "candidates.csv"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
