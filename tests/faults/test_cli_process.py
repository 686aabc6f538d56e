"""End to end in real processes (`.venv/bin/iarmem`, `python -m iarmem`): exit codes, one-line errors, --debug."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from .helpers import Inputs, Result, assert_one_line_error, child_env, run_cli, run_subprocess
from .test_inputs import extract, localize, mitigate, train_iar


def _result(proc: subprocess.CompletedProcess[str]) -> Result:
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("module", [False, True], ids=["iarmem", "python-m-iarmem"])
def test_a_missing_model_ends_with_exit_2_in_a_process(module: bool, inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_subprocess(localize(inputs.root / "no-such-model", "mnist", out), module=module)
    line = assert_one_line_error(_result(proc), out=out)
    assert "no-such-model" in line


def test_a_malicious_pickle_is_refused_in_a_process(inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_subprocess(extract(inputs.var, "mnist", out, "--weights", inputs.ckpt["pickle-zip"]), module=True)
    line = assert_one_line_error(_result(proc), out=out)
    assert "refusing to load" in line and "weights_only" in line
    assert not inputs.marker.exists()


def test_an_option_out_of_range_in_a_process(inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_subprocess(mitigate(inputs.var, inputs.loc, out, "--top", "150"))
    assert "--top 150" in assert_one_line_error(_result(proc), out=out)


@pytest.mark.parametrize("argv", [["train"], ["frobnicate"], ["extract", "m", "d", "--out", "o", "--top", "1.5"]],
                         ids=["missing-argument", "unknown-command", "float-for-int"])
def test_argparse_errors_are_one_line_exit_2(argv: list[str]) -> None:
    proc = run_subprocess(argv)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], proc.stderr


def test_success_is_exit_0() -> None:
    proc = run_subprocess(["models"])
    assert proc.returncode == 0 and "tiny-var" in proc.stdout and not proc.stderr.strip()
    proc = run_subprocess(["--version"])
    assert proc.returncode == 0 and proc.stdout.startswith("iarmem ")


def test_debug_shows_the_traceback_in_a_process(inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_subprocess(localize(inputs.var, "mnist", out, "--weights", inputs.ckpt["nan"], "--debug"))
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr and "UserError" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "NaN" in last
    assert not out.exists()


DEBUG_CASES = {
    "localize-nan": lambda i, out: localize(i.var, "mnist", out, "--weights", i.ckpt["nan"]),
    "extract-pickle": lambda i, out: extract(i.var, "mnist", out, "--weights", i.ckpt["pickle"]),
    "mitigate-top": lambda i, out: mitigate(i.var, i.loc, out, "--top", "0"),
    "train-no-images": lambda i, out: train_iar(i.tokenizer, i.no_images, out),
}


@pytest.mark.parametrize("case", list(DEBUG_CASES))
def test_debug_shows_a_traceback_and_still_ends_with_the_error_line(case: str, inputs: Inputs, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = DEBUG_CASES[case](inputs, out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = run_cli(argv, capsys)
        debug = run_cli([*argv, "--debug"], capsys)
    line = assert_one_line_error(plain, out=out)
    assert debug.code == 2
    assert "Traceback (most recent call last)" in debug.err
    assert debug.err_lines[-1] == line  # the same message, after the traceback
    assert not out.exists() or not any(out.iterdir())
    assert not inputs.marker.exists()


def test_demo_stops_at_a_stage_that_refuses_its_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`iarmem demo` runs stages in-process; a stage that refuses (here: its folder holds someone's file) ends the
    demo with exit 2: the stage's own error line is the only one, then a plain note; no traceback; the file is
    left alone."""
    stage = tmp_path / "demo" / "var" / "tokenizer"
    stage.mkdir(parents=True)
    (stage / "precious.txt").write_text("keep me\n")
    res = run_cli(["demo", "--out", tmp_path / "demo", "--families", "var", "--sweep", "none"], capsys)
    assert res.code == 2 and "Traceback" not in res.err
    errors = [ln for ln in res.err_lines if ln.startswith("error: ")]
    assert len(errors) == 1 and "not empty and holds no iarmem run" in errors[0], res.err
    assert res.err_lines[-1].startswith("demo stopped at stage tokenizer")
    assert sorted(p.name for p in stage.iterdir()) == ["precious.txt"]


LOADED = """
import sys
from iarmem.cli import main
try:
    code = main({argv!r})
except SystemExit as e:  # --help
    code = e.code
print("loaded", code, *sorted(m for m in sys.modules if m == "torch" or m.startswith("iarmem.commands.")))
"""


@pytest.mark.parametrize(("argv", "code", "loaded"), [
    (["--help"], 0, []), (["frobnicate"], 2, []), ([], 2, []), (["--version"], 0, []),
    (["report", "--help"], 0, ["iarmem.commands.report"]),
    (["train", "--steps", "x"], 2, ["iarmem.commands.train", "torch"]),
], ids=["help", "unknown-command", "no-command", "version", "report-help", "train-bad-option"])
def test_only_the_command_being_run_is_imported(argv: list[str], code: int, loaded: list[str]) -> None:
    """A mistyped command line answers without importing torch (seconds) or the other commands' stages."""
    proc = subprocess.run([sys.executable, "-c", LOADED.format(argv=argv)], capture_output=True, text=True,
                          timeout=120, env=child_env())
    last = proc.stdout.strip().splitlines()[-1].split()
    assert last == ["loaded", str(code), *loaded], proc.stdout[-500:] + proc.stderr
