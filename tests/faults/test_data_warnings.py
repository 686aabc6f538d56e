"""An image folder with a zero-byte file and a non-image file among good images: every command works, and
says so in one warning that counts the skipped files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from iarmem.data import DataWarning

from .helpers import Inputs, run_cli, run_subprocess, stray_tmp
from .test_inputs import evaluate, extract, localize, sweep, train_iar, train_tok

COMMANDS = {
    "localize": lambda i, out: localize(i.var_plain, i.mixed, out, "--per-class", "2"),
    "extract": lambda i, out: extract(i.var_plain, i.mixed, out),
    "evaluate": lambda i, out: evaluate(i.var_plain, i.mixed, out, "--features-cache", i.root / "features-mixed"),
    "sweep": lambda i, out: [a for a in sweep(i.var_plain, i.mixed, i.loc, out) if a != "--per-class"]
    + ["--tops", "", "--noise", "1", "--features-cache", i.root / "features-mixed"],
    "train-tokenizer": lambda i, out: train_tok(i.mixed, out, "--num-images", "8"),
    "train": lambda i, out: [*train_iar(i.tokenizer, i.mixed, out), "--num-train", "2", "--plant", "2"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_files_are_skipped_with_one_warning(command: str, inputs: Inputs, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_cli(COMMANDS[command](inputs, out), capsys)
    assert res.code == 0, res.err
    data = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(data) == 1, [str(w.message) for w in data]
    msg = str(data[0].message)
    assert msg.startswith("skipped 2 unreadable files in") and "mixed" in msg, msg
    assert "Traceback" not in res.err
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished"
    assert "(2 unreadable files skipped)" in json.dumps(run["settings"])  # the data description records it
    assert not stray_tmp(out)


def test_the_warning_is_one_line_in_a_real_process(inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_subprocess(localize(inputs.var_plain, inputs.mixed, out, "--per-class", "2"))
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "unreadable" in ln or "warn" in ln.lower()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("warning: skipped 2 unreadable files in "), lines[0]
    assert "Traceback" not in proc.stderr
