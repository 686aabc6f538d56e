"""Run folders refuse to mix runs, record what made them, and support resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from iarmem.errors import UserError
from iarmem.runs import fingerprint, read_run, require_finished, start_run


def test_new_run_records_version_command_settings_and_inputs(tmp_path: Path) -> None:
    inp = tmp_path / "in.bin"
    inp.write_bytes(b"abc")
    run = start_run(tmp_path / "r", "localize", {"augs": 10}, {"model": inp}, seed=3)
    rec = read_run(run.path)
    assert rec["stage"] == "localize" and rec["status"] == "running" and rec["seed"] == 3
    assert rec["settings"] == {"augs": 10} and rec["inputs"]["model"] == fingerprint(inp)
    assert "iarmem_version" in rec and rec["command"]
    (run.path / "out.txt").write_text("x")
    run.finish(["out.txt"], {"k": 1})
    rec = require_finished(run.path, "localize")
    assert rec["outputs"]["out.txt"] == fingerprint(run.path / "out.txt") and rec["summary"] == {"k": 1}


def test_refuses_other_stage_other_settings_and_unfinished(tmp_path: Path) -> None:
    out = tmp_path / "r"
    start_run(out, "localize", {"augs": 10}).finish()
    with pytest.raises(UserError, match="holds a `localize` run"):
        start_run(out, "extract", {})
    with pytest.raises(UserError, match=r"other settings \(augs\)"):
        start_run(out, "localize", {"augs": 5})
    with pytest.raises(UserError, match="already holds this finished"):
        start_run(out, "localize", {"augs": 10})
    assert start_run(out, "localize", {"augs": 10}, resume=True).done
    fresh = start_run(out, "localize", {"augs": 5}, overwrite=True)
    assert not fresh.done and read_run(out)["settings"] == {"augs": 5}
    with pytest.raises(UserError, match="unfinished"):
        start_run(out, "localize", {"augs": 5})
    with pytest.raises(UserError, match="did not finish"):
        require_finished(out, "localize")


def test_refuses_foreign_folders_and_changed_inputs(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty and holds no iarmem run"):
        start_run(foreign, "train", {}, overwrite=True)
    assert (foreign / "notes.txt").exists()
    inp = tmp_path / "w.bin"
    inp.write_bytes(b"1")
    start_run(tmp_path / "r", "extract", {}, {"model": inp})
    inp.write_bytes(b"2")
    with pytest.raises(UserError, match="other input files"):
        start_run(tmp_path / "r", "extract", {}, {"model": inp}, resume=True)
    with pytest.raises(UserError, match="not a run folder"):
        require_finished(foreign, "train")
