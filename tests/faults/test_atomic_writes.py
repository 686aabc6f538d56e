"""Every file a command writes goes to a temporary name and is renamed into place; inputs are never written.

The commands run in this process under a Python audit hook that records each file opened for writing
and each rename. A final file in the run folder must have arrived by a rename from a temporary name
beside it (``.NAME.<hex>.tmp``), and nothing may be opened for writing under its final name, with one
documented exception: ``mu_values.f32`` (``localize --stat median``), a memmap working file filled in
place whose run is resumable, listed in run.json only once the stage has finished.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import TMP_NAME, Inputs, run_cli, stray_tmp
from .test_inputs import evaluate, extract, localize, mitigate, sweep, train_iar, train_tok

IN_PLACE = {"mu_values.f32"}  # memmap working file (see the module docstring)
_events: list[tuple[str, str, str]] | None = None  # (kind, path, other) while a test records


def _hook(event: str, args: tuple) -> None:
    if _events is None:
        return
    if event == "open":
        path, mode, flags = (list(args) + [None, None])[:3]
        if not isinstance(path, (str, bytes, os.PathLike)):
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if writing:
            _events.append(("write", os.fsdecode(path), ""))
    elif event == "os.rename":
        _events.append(("rename", os.fsdecode(args[0]), os.fsdecode(args[1])))


sys.addaudithook(_hook)  # hooks cannot be removed; it does nothing unless _events is a list


def record(fn: Callable[[], object]) -> tuple[object, list[tuple[str, str, str]]]:
    global _events
    _events = []
    try:
        return fn(), list(_events)
    finally:
        _events = None


COMMANDS: dict[str, Callable[[Inputs, Path], list]] = {
    "train-tokenizer": lambda i, out: train_tok(i.images, out, "--num-images", "8"),
    "train": lambda i, out: train_iar(i.tokenizer, "mnist", out),
    "localize": lambda i, out: localize(i.var, "mnist", out),
    "localize-median": lambda i, out: localize(i.var, "mnist", out, "--stat", "median", "--keep-values"),
    "extract": lambda i, out: extract(i.var, "mnist", out),
    "mitigate": lambda i, out: mitigate(i.var, i.loc, out, "--format", "both", "--copy-tokenizer"),
    "evaluate": lambda i, out: evaluate(i.var_plain, i.images, out),
    "sweep": lambda i, out: [*sweep(i.var_plain, i.images, i.loc, out), "--noise", "1"],
    "report": lambda i, out: ["report", i.loc, "--out", out / "report.html"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_output_is_renamed_into_place(command: str, inputs: Inputs, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = COMMANDS[command](inputs, out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res, events = record(lambda: run_cli(argv, capsys))
    assert res.code == 0, res.err  # type: ignore[attr-defined]
    root, inp = str(out.resolve()), str(inputs.root.resolve())

    def under(p: str, base: str) -> bool:
        return os.path.realpath(p).startswith(base + os.sep)

    writes = [p for kind, p, _ in events if kind == "write"]
    assert not [p for p in writes if under(p, inp)], "an input file was opened for writing"
    direct = [p for p in writes if under(p, root) and not TMP_NAME.match(Path(p).name)
              and Path(p).name not in IN_PLACE and not any(part.startswith(".featcnn-") for part in Path(p).parts)]
    assert not direct, f"written under their final names: {direct}"

    arrived = {os.path.realpath(dst): src for kind, src, dst in events if kind == "rename"}
    finals = [p for p in out.rglob("*") if p.is_file()]
    assert finals, "the command wrote nothing"
    for f in finals:
        if f.name in IN_PLACE:
            continue
        src = arrived.get(os.path.realpath(f))
        assert src is not None, f"{f.relative_to(out)} was not renamed into place"
        assert TMP_NAME.match(Path(src).name) and Path(src).parent.resolve() == f.parent.resolve(), (f, src)
    assert not stray_tmp(out)


def test_the_audit_sees_direct_writes_and_renames(tmp_path: Path) -> None:
    """The hook itself: a plain write and an atomic write are told apart."""
    from iarmem.fileio import write_text

    def both() -> None:
        (tmp_path / "direct.txt").write_text("x")
        write_text(tmp_path / "atomic.txt", "y")

    _, events = record(both)
    writes = [Path(p).name for kind, p, _ in events if kind == "write"]
    renames = [(Path(s).name, Path(d).name) for kind, s, d in events if kind == "rename"]
    assert "direct.txt" in writes and "atomic.txt" not in writes
    assert any(TMP_NAME.match(s) and d == "atomic.txt" for s, d in renames)
