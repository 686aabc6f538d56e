"""Every command against bad input: exit code 2, one `error:` line naming the thing and the fix, nothing written.

Each case is (command, fault): a missing path, a directory where a file is expected (and a file where a
directory is expected), an empty / truncated checkpoint, a checkpoint of another family or size, a
state dict with a NaN, a pickle that would run code, an image folder with no images, a label outside
the classes, options out of range. The CLI runs in this process (``iarmem.cli.main``); the inputs
must not change and the malicious pickle's marker file must never appear.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from iarmem.models.checkpoint import read_state_dict, write_state_dict

from .helpers import Inputs, assert_one_line_error, run_cli, snapshot, stray_tmp

Argv = Callable[[Inputs, Path], list]
Names = Callable[[Inputs], tuple[str, ...]]


@dataclass(frozen=True)
class Case:
    command: str
    fault: str
    argv: Argv
    names: Names = lambda i: ()  # noqa: E731  what the message must name

    @property
    def id(self) -> str:
        return f"{self.command}-{self.fault}"


# ---- how each command is called on tiny inputs ------------------------------------------------------
def localize(model: str | Path, data: str | Path, out: Path, *extra: str) -> list:
    size = [] if "--fraction" in extra or "--per-class" in extra else ["--per-class", "1"]
    return ["localize", model, data, "--out", out, "--augs", "1", *size, "--batch-size", "10", *extra]


def extract(model: str | Path, data: str | Path, out: Path, *extra: str) -> list:
    return ["extract", model, data, "--out", out, "--top", "1", "--batch-size", "8", "--calibration-images", "20",
            *extra]


def mitigate(model: str | Path, loc: str | Path, out: Path, *extra: str) -> list:
    return ["mitigate", model, loc, "--out", out, *extra]


def evaluate(model: str | Path, data: str | Path, out: Path, *extra: str) -> list:
    return ["evaluate", model, data, "--out", out, "--n-per-class", "2", "--features-steps", "2",
            "--kid-subsets", "2", "--kid-subset-size", "4", *extra]


def sweep(model: str | Path, data: str | Path, loc: str | Path, out: Path, *extra: str) -> list:
    return ["sweep", model, data, loc, "--out", out, "--tops", "10", "--factors", "0.5", "--controls", "",
            "--noise", "", "--n-per-class", "2", "--top", "1", "--calibration-images", "10", *extra]


def train_iar(tok: str | Path, data: str | Path, out: Path, *extra: str) -> list:
    return ["train", "var", "--preset", "tiny-var", "--tokenizer", tok, "--data", data, "--out", out,
            "--steps", "2", "--num-train", "10", "--plant", "2", "--copies", "1", "--views", "1",
            "--batch-size", "4", *extra]


def train_tok(data: str | Path, out: Path, *extra: str) -> list:
    return ["train", "tokenizer", "--preset", "tiny-var", "--data", data, "--out", out, "--steps", "1",
            "--num-images", "10", "--batch-size", "4", *extra]


def _ck(fault: str) -> Callable[[Inputs], Path]:
    return lambda i: i.ckpt[fault]


# ---- the cases ----------------------------------------------------------------------------------------
CKPT_FAULTS = ["empty", "truncated", "truncated-pth", "not-a-checkpoint", "nan", "pickle", "pickle-zip",
               "other-family", "other-size", "missing", "directory"]
CKPT_WORDS = {"empty": "empty", "truncated": "truncated", "truncated-pth": "truncated", "nan": "NaN",
              "not-a-checkpoint": "is text",
              "pickle": "refusing", "pickle-zip": "refusing", "other-family": "does not fit",
              "other-size": "does not fit", "missing": "not found", "directory": "directory"}


def _model_cases() -> list[Case]:
    """MODEL / --weights faults, for every command that loads a model."""
    users: dict[str, Callable[..., list]] = {
        "localize": lambda i, out, *x: localize(i.var, "mnist", out, *x),
        "extract": lambda i, out, *x: extract(i.var, "mnist", out, *x),
        "mitigate": lambda i, out, *x: mitigate(i.var, i.loc, out, *x),
        "evaluate": lambda i, out, *x: evaluate(i.var, "mnist", out, *x),
        "sweep": lambda i, out, *x: sweep(i.var, "mnist", i.loc, out, *x),
    }
    with_model: dict[str, Callable[..., list]] = {
        "localize": lambda m, i, out: localize(m, "mnist", out),
        "extract": lambda m, i, out: extract(m, "mnist", out),
        "mitigate": lambda m, i, out: mitigate(m, i.loc, out),
        "evaluate": lambda m, i, out: evaluate(m, "mnist", out),
        "sweep": lambda m, i, out: sweep(m, "mnist", i.loc, out),
    }
    cases = []
    for cmd, call in users.items():
        for fault in CKPT_FAULTS:
            cases.append(Case(cmd, f"weights-{fault}",
                              lambda i, out, call=call, f=fault: call(i, out, "--weights", i.ckpt[f]),
                              lambda i, f=fault: (i.ckpt[f].name, CKPT_WORDS.get(f, ""))))
        cases.append(Case(cmd, "tokenizer-other-family",
                          lambda i, out, call=call: call(i, out, "--tokenizer", i.rar / "tokenizer.safetensors"),
                          lambda i: ("tokenizer.safetensors", "does not fit")))
        m = with_model[cmd]
        cases += [
            Case(cmd, "model-missing", lambda i, out, m=m: m(i.root / "no-such-model", i, out),
                 lambda i: ("no-such-model",)),
            Case(cmd, "model-is-a-file", lambda i, out, m=m: m(i.var / "model.safetensors", i, out),
                 lambda i: ("model.safetensors",)),
            Case(cmd, "model-folder-without-model-json", lambda i, out, m=m: m(i.empty_dir, i, out),
                 lambda i: ("empty-dir", "model.json")),
            Case(cmd, "preset-without-files", lambda i, out, m=m: m("tiny-var", i, out),
                 lambda i: ("tiny-var", "--weights")),
            Case(cmd, "unknown-preset", lambda i, out, m=m: m("var-d99", i, out), lambda i: ("var-d99",)),
        ]
    return cases


def _data_cases() -> list[Case]:
    """DATA faults for every command that reads images (the model has 10 classes)."""
    users: dict[str, Callable[[Inputs, Path, Path | str], list]] = {
        "localize": lambda i, out, d: localize(i.var_plain, d, out),
        "extract": lambda i, out, d: extract(i.var_plain, d, out),
        "evaluate": lambda i, out, d: evaluate(i.var_plain, d, out),
        "sweep": lambda i, out, d: sweep(i.var_plain, d, i.loc, out),
        "train": lambda i, out, d: train_iar(i.tokenizer, d, out),
        "train-tokenizer": lambda i, out, d: train_tok(d, out),
    }
    faults: dict[str, tuple[Callable[[Inputs], Path | str], Names]] = {
        "data-missing": (lambda i: i.root / "no-such-data", lambda i: ("no-such-data",)),
        "data-is-a-file": (lambda i: i.var / "model.json", lambda i: ("model.json",)),
        "data-no-images": (lambda i: i.no_images, lambda i: ("no-images",)),
        "data-empty-folder": (lambda i: i.empty_dir, lambda i: ("empty-dir",)),
        "data-label-outside-classes": (lambda i: i.bad_label_list, lambda i: ("(12|13 classes)",)),
        "data-negative-label": (lambda i: i.negative_label_list, lambda i: ("negative-labels.txt", "-1")),
    }
    return [Case(cmd, fault, lambda i, out, call=call, d=d: call(i, out, d(i)), names)
            for cmd, call in users.items() for fault, (d, names) in faults.items()]


def _loc_cases() -> list[Case]:
    """LOCALIZATION run-folder faults (mitigate, sweep)."""
    users: dict[str, Callable[[Inputs, Path, Path], list]] = {
        "mitigate": lambda i, out, loc: mitigate(i.var, loc, out),
        "sweep": lambda i, out, loc: sweep(i.var, "mnist", loc, out),
    }
    faults: dict[str, tuple[Callable[[Inputs], Path], Names]] = {
        "loc-missing": (lambda i: i.root / "no-such-loc", lambda i: ("no-such-loc",)),
        "loc-is-a-file": (lambda i: i.loc / "summary.json", lambda i: ("summary.json",)),
        "loc-not-a-run": (lambda i: i.var, lambda i: (str(i.var),)),
        "loc-unfinished": (lambda i: _variant(i, "loc-unfinished"), lambda i: ("loc-unfinished", "--resume")),
        "loc-truncated-unitmem": (lambda i: _variant(i, "loc-truncated"), lambda i: ("unitmem.safetensors",)),
        "loc-other-family": (lambda i: _variant(i, "loc-rar"), lambda i: ("rar", "localize the model")),
    }
    return [Case(cmd, fault, lambda i, out, call=call, loc=loc: call(i, out, loc(i)), names)
            for cmd, call in users.items() for fault, (loc, names) in faults.items()]


def _variant(i: Inputs, name: str) -> Path:
    """Damaged copies of the localization run (made once, beside the inputs)."""
    dst = i.root / "variants" / name
    if dst.exists():
        return dst
    shutil.copytree(i.loc, dst)
    if name == "loc-unfinished":
        rec = json.loads((dst / "run.json").read_text())
        (dst / "run.json").write_text(json.dumps(rec | {"status": "running"}))
    elif name == "loc-truncated":
        f = dst / "unitmem.safetensors"
        f.write_bytes(f.read_bytes()[:200])
    elif name == "loc-rar":
        s = json.loads((dst / "summary.json").read_text())
        (dst / "summary.json").write_text(json.dumps(s | {"family": "rar"}))
    return dst


def _tokenizer_variant(i: Inputs, fault: str) -> Path:
    """A tokenizer folder whose weights file is one of the broken checkpoints (or of another family)."""
    dst = i.root / "variants" / f"tok-{fault}"
    if dst.exists():
        return dst
    shutil.copytree(i.tokenizer, dst)
    meta = json.loads((dst / "tokenizer.json").read_text())
    if fault == "other-family":
        meta["family"] = "rar"
    else:
        src = {"empty": i.ckpt["empty"], "nan": None, "pickle": i.ckpt["pickle"],
               "truncated": i.ckpt["truncated"]}[fault]
        if fault == "nan":
            sd = read_state_dict(dst / "tokenizer.safetensors")
            k = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 1)
            sd[k] = sd[k].clone()
            sd[k].view(-1)[0] = torch.nan
            write_state_dict(sd, dst / "weights.safetensors")
            meta["tokenizer_file"] = "weights.safetensors"
        else:
            shutil.copy(src, dst / src.name)
            meta["tokenizer_file"] = src.name
    (dst / "tokenizer.json").write_text(json.dumps(meta))
    return dst


def _train_cases() -> list[Case]:
    tok = "--tokenizer"
    words = {"empty": "empty", "nan": "NaN", "pickle": "refusing", "truncated": "truncated",
             "other-family": "rar"}
    cases = [Case("train", f"tokenizer-{f}", lambda i, out, f=f: train_iar(_tokenizer_variant(i, f), "mnist", out),
                  lambda i, f=f: (words[f],)) for f in words]
    cases += [
        Case("train", "tokenizer-missing", lambda i, out: train_iar(i.root / "no-such-tok", "mnist", out),
             lambda i: ("no-such-tok",)),
        Case("train", "tokenizer-is-a-file", lambda i, out: train_iar(i.a_file, "mnist", out),
             lambda i: ("notes.txt",)),
        Case("train", "tokenizer-not-a-tokenizer-folder", lambda i, out: train_iar(i.empty_dir, "mnist", out),
             lambda i: ("empty-dir", "tokenizer.json")),
        Case("train", "no-tokenizer", lambda i, out: [a for a in train_iar("X", "mnist", out) if a not in (tok, "X")],
             lambda i: ("--tokenizer",)),
        Case("train", "preset-of-another-family",
             lambda i, out: ["train", "var", "--preset", "tiny-rar", "--out", out], lambda i: ("tiny-rar",)),
        Case("train", "unknown-preset", lambda i, out: ["train", "var", "--preset", "var-d99", "--out", out],
             lambda i: ("var-d99",)),
    ]
    ranges = [("steps", "0"), ("steps", "-5"), ("lr", "0"), ("lr", "-1"), ("batch-size", "0"), ("ema", "1.5"),
              ("ckpt-every", "0"), ("views", "0"), ("plant", "-1"), ("copies", "0"), ("num-train", "-1"),
              ("weight-decay", "-1"), ("warmup-steps", "-1"), ("grad-clip", "-1"), ("lr", "nan"),
              ("plant", "3000"), ("steps", "abc"), ("lr", "fast")]
    cases += [Case("train", f"--{o}={v}", lambda i, out, o=o, v=v: train_iar(i.tokenizer, "mnist", out, f"--{o}", v),
                   lambda i, o=o: _flag_word(o)) for o, v in ranges]
    cases += [Case("train-tokenizer", f"--{o}={v}", lambda i, out, o=o, v=v: train_tok("mnist", out, f"--{o}", v),
                   lambda i, o=o: _flag_word(o))
              for o, v in [("num-images", "0"), ("num-images", "-3"), ("steps", "0"), ("lr", "-1")]]
    return cases


def _option_cases() -> list[Case]:
    """Options out of range, per command."""
    def loc(*x: str) -> Argv:
        return lambda i, out: localize(i.var, "mnist", out, *x)

    def ext(*x: str) -> Argv:
        return lambda i, out: extract(i.var, "mnist", out, *x)

    def mit(*x: str) -> Argv:
        return lambda i, out: mitigate(i.var, i.loc, out, *x)

    def ev(*x: str) -> Argv:
        return lambda i, out: evaluate(i.var, "mnist", out, *x)

    def sw(*x: str) -> Argv:
        return lambda i, out: sweep(i.var, "mnist", i.loc, out, *x)

    table: list[tuple[str, Callable[..., Argv], list[tuple[str, ...]]]] = [
        ("localize", loc, [("--augs", "0"), ("--augs", "-2"), ("--batch-size", "0"), ("--fraction", "-0.5"),
                           ("--fraction", "1.5"), ("--per-class", "0"), ("--layers", "9"), ("--layers", "x"),
                           ("--layers", "3-1"), ("--kinds", "foo"), ("--bins", "0"), ("--lanes", "0"),
                           ("--save-every", "-1"), ("--subset", "bogus"), ("--augs", "many"),
                           ("--subset", "heldout", "--per-class", "0")]),
        ("extract", ext, [("--top", "0"), ("--top", "-1"), ("--fraction", "-0.1"), ("--fraction", "2"),
                          ("--fpr", "1.5"), ("--threshold", "2"), ("--logit-noise", "-1"), ("--prefix", "-1"),
                          ("--prefix", "99"), ("--ids", "-3"), ("--ids", "abc"), ("--ids", "99999"),
                          ("--batch-size", "0"), ("--last", "5"), ("--metric", "sscd"),
                          ("--sscd", "no-such-sscd.pt"), ("--per-class-subset", "0"), ("--figure-pairs", "0"),
                          ("--calibrate", "--threshold", "0.5"), ("--features-size", "0"),
                          ("--strength", "bogus"), ("--trigger-steps", "0"), ("--margin", "x"),
                          ("--margin", "nan")]),
        ("mitigate", mit, [("--top", "-5"), ("--top", "0"), ("--top", "150"), ("--factor", "-1"),
                           ("--factor", "nan"), ("--factor", "inf"), ("--forget", "abc"), ("--forget", "99999"),
                           ("--forget", "1", "--forget-top", "200"), ("--kinds", "foo"), ("--bin", "99"),
                           ("--forget-top", "5"), ("--forget", ""), ("--edit", "sideways")]),
        ("evaluate", ev, [("--n-per-class", "1"), ("--n-per-class", "0"), ("--k", "0"), ("--batch-size", "0"),
                          ("--features", "bogus:x"), ("--features", "torchscript:no-such.pt"), ("--cfg", "abc"),
                          ("--cfg", "-1"), ("--top-p", "2"), ("--top-k", "-1"), ("--temperature", "0"),
                          ("--ref-per-class", "-1"), ("--kid-subsets", "0"), ("--grid-per-class", "0"),
                          ("--features-size", "4"), ("--subset", "nope")]),
        ("sweep", sw, [("--n-per-class", "1"), ("--tops", "150"), ("--tops", "-1"), ("--tops", "x"),
                       ("--factors", "-1"), ("--noise", "0"), ("--noise", "-1"), ("--controls", "foo"),
                       ("--top", "0"), ("--tops", "", "--noise", ""), ("--threshold", "5"),
                       ("--features", "bogus:x"), ("--batch-size", "0"), ("--edits", "sideways")]),
    ]
    cases = []
    for cmd, fn, opts in table:
        for opt in opts:
            flag = [o for o in opt if o.startswith("--")][-1]
            cases.append(Case(cmd, "=".join(opt), fn(*opt), lambda i, f=flag: _flag_word(f)))
    return cases


def _flag_word(flag: str) -> tuple[str, ...]:
    """The word of ``flag`` a message must contain (argparse and iarmem name options a little differently)."""
    word = flag.lstrip("-").replace("-", "[-_ ]")
    return (word,)


def _output_cases() -> list[Case]:
    """--out faults: a file where the run folder goes, a folder that is not a run, an input as --out."""
    calls: dict[str, Callable[[Inputs, Path], list]] = {
        "localize": lambda i, out: localize(i.var, "mnist", out),
        "extract": lambda i, out: extract(i.var, "mnist", out),
        "mitigate": lambda i, out: mitigate(i.var, i.loc, out),
        "evaluate": lambda i, out: evaluate(i.var, "mnist", out),
        "sweep": lambda i, out: sweep(i.var, "mnist", i.loc, out),
        "train": lambda i, out: train_iar(i.tokenizer, "mnist", out),
        "train-tokenizer": lambda i, out: train_tok("mnist", out),
    }
    cases = []
    for cmd, call in calls.items():
        cases.append(Case(cmd, "out-is-a-file", lambda i, out, c=call: c(i, _file_out(out)), lambda i: ("out.txt",)))
        cases.append(Case(cmd, "out-is-a-foreign-folder", lambda i, out, c=call: c(i, _foreign_out(out)),
                          lambda i: ("foreign",)))
    cases.append(Case("mitigate", "out-is-the-model", lambda i, out: mitigate(i.var, i.loc, i.var),
                      lambda i: (str(i.var),)))
    cases.append(Case("mitigate", "out-is-the-localization", lambda i, out: mitigate(i.var, i.loc, i.loc),
                      lambda i: (str(i.loc),)))
    return cases


def _file_out(out: Path) -> Path:
    f = out.parent / "out.txt"
    f.write_text("keep me\n")
    return f


def _foreign_out(out: Path) -> Path:
    d = out.parent / "foreign"
    d.mkdir(exist_ok=True)
    (d / "precious.txt").write_text("keep me\n")
    return d


def _demo_cases() -> list[Case]:
    return [
        Case("demo", "families-unknown", lambda i, out: ["demo", "--out", out, "--families", "var,gan"],
             lambda i: ("--families",)),
        Case("demo", "families-empty", lambda i, out: ["demo", "--out", out, "--families", ","],
             lambda i: ("--families",)),
        Case("demo", "out-is-a-file", lambda i, out: ["demo", "--out", _file_out(out)], lambda i: ("out.txt",)),
        Case("demo", "sweep-choice", lambda i, out: ["demo", "--out", out, "--sweep", "sometimes"],
             lambda i: ("--sweep",)),
    ]




def _report_cases() -> list[Case]:
    return [
        Case("report", "run-missing", lambda i, out: ["report", i.root / "no-such-run", "--out", out / "r.html"],
             lambda i: ("no-such-run",)),
        Case("report", "run-is-a-file", lambda i, out: ["report", i.a_file, "--out", out / "r.html"],
             lambda i: ("notes.txt",)),
        Case("report", "run-not-a-run-folder", lambda i, out: ["report", i.empty_dir, "--out", out / "r.html"],
             lambda i: ("empty-dir",)),
        Case("report", "out-not-html", lambda i, out: ["report", i.loc, "--out", out / "r.txt"],
             lambda i: ("--out", "html")),
    ]


CASES = (_model_cases() + _data_cases() + _loc_cases() + _train_cases() + _option_cases() + _output_cases()
         + _demo_cases() + _report_cases())
@pytest.fixture(scope="module")
def guard(inputs: Inputs):
    """The inputs before the module runs; after it, the same files with the same sizes and times."""
    _variant(inputs, "loc-unfinished"), _variant(inputs, "loc-truncated"), _variant(inputs, "loc-rar")
    for f in ("empty", "nan", "pickle", "truncated", "other-family"):
        _tokenizer_variant(inputs, f)
    before = snapshot(inputs.root)
    yield inputs
    assert snapshot(inputs.root) == before, "an input file changed"
    assert not inputs.marker.exists(), "the malicious pickle ran"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case: Case, guard: Inputs, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = case.argv(guard, out)
    targets = [Path(a) for a in argv if isinstance(a, Path)]
    before = {p: p.read_bytes() for p in targets if p.is_file()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the data warning of a folder with bad files is tested on its own
        res = run_cli(argv, capsys)
    line = assert_one_line_error(res, out=out, roots=(guard.root, tmp_path))
    for w in case.names(guard):
        if w:
            pattern = w if "[" in w or "(" in w else re.escape(w)
            assert re.search(pattern, line, re.IGNORECASE), f"{w!r} not named in: {line}"
    for p, data in before.items():  # a file given as --out is left as it was
        assert p.read_bytes() == data
    foreign = tmp_path / "foreign"
    if foreign.exists():
        assert sorted(x.name for x in foreign.iterdir()) == ["precious.txt"]
    assert not guard.marker.exists(), "the malicious pickle ran"
    assert not stray_tmp(guard.root, tmp_path)
