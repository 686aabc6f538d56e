"""`iarmem mitigate` end to end: model folder + edit.json + run.json, inputs untouched, bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_mitigate_support import random_localization, tree_hashes

from iarmem.cli import main as cli_main
from iarmem.errors import UserError
from iarmem.mitigate import apply_edit, load_localization, select_units, write_edited_model
from iarmem.models import build
from iarmem.models.checkpoint import read_state_dict
from iarmem.models.loading import open_model, save_model_folder


def main(argv: list[str]) -> int:
    """`iarmem mitigate ARGV...`, returning the exit code (argparse errors exit through SystemExit)."""
    try:
        return cli_main(["mitigate", *argv])
    except SystemExit as e:
        return int(e.code or 0)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random-weight VAR model folder with a planting manifest, and a localization of it."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    iar = build("tiny-var")
    model = save_model_folder(iar, root / "model", preset="tiny-var")
    (model / "manifest.json").write_text('{"format": "stand-in planting manifest"}\n')
    loc = random_localization(root / "loc", iar, str(model))
    rar_loc = random_localization(root / "rar-loc", build("tiny-rar"), "tiny-rar")
    return {"model": model, "loc": loc, "rar_loc": rar_loc, "root": root}


def expected_edit(inputs: dict[str, Path], top: float = 10, edit: str = "exact", factor: float = 0.5, **kw):
    """The same edit done in memory through the Python API."""
    iar, _ = open_model(str(inputs["model"]))
    apply_edit(iar, select_units(load_localization(inputs["loc"]), top, **kw), edit, factor)
    return iar


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bit-identical state dicts (compared as raw bytes, so -0.0 != 0.0)."""
    def raw(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous().view(-1).view(torch.uint8) if t.numel() else t

    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                        and torch.equal(raw(a[k]), raw(b[k])) for k in a)


def test_cli_writes_an_edited_model_folder(inputs: dict[str, Path], tmp_path: Path) -> None:
    before = {k: tree_hashes(inputs[k]) for k in ("model", "loc")}
    out = tmp_path / "edit"
    rc = main([str(inputs["model"]), str(inputs["loc"]), "--out", str(out), "--format", "both", "--top", "5",
               "--scope", "layer"])
    assert rc == 0
    assert {k: tree_hashes(inputs[k]) for k in ("model", "loc")} == before  # inputs untouched
    names = {p.name for p in out.iterdir()}
    assert {"model.json", "model.safetensors", "model.pth", "edit.json", "run.json", "manifest.json"} <= names
    assert "tokenizer.safetensors" not in names  # referenced, not copied
    cfg = json.loads((out / "model.json").read_text())
    assert cfg["tokenizer_file"] == str((inputs["model"] / "tokenizer.safetensors").resolve())
    assert (out / "manifest.json").read_bytes() == (inputs["model"] / "manifest.json").read_bytes()

    want = expected_edit(inputs, 5, scope="layer").model.state_dict()
    for name in ("model.safetensors", "model.pth"):
        assert same_state(read_state_dict(out / name), want), name
    reopened, source = open_model(str(out))
    assert same_state(reopened.model.state_dict(), want) and source.preset == "tiny-var"
    fresh = build("tiny-var")
    fresh.model.load_state_dict(read_state_dict(out / "model.pth"), strict=True)  # the official layout
    assert same_state(fresh.model.state_dict(), want)

    edit = json.loads((out / "edit.json").read_text())
    loc = load_localization(inputs["loc"])
    sel = select_units(loc, 5, scope="layer")
    assert edit["units"] == {k: list(v) for k, v in sel.units.items()}
    assert edit["counts"]["total"] == sel.count and edit["counts"]["per_layer"] == sel.per_layer()
    assert edit["counts"]["per_block"] == {str(b): n for b, n in sel.per_block().items()}
    assert edit["edit"]["edit"] == "exact" and edit["edit"]["factor"] == 0.5
    assert edit["selection"]["scope"] == "layer" and edit["selection"]["reduce"] == "max"
    assert edit["localization"]["run_fingerprint"] == loc.run_fingerprint()
    assert set(edit["source_model"]["sha256"]) == {"model", "tokenizer"}
    assert set(edit["files"]) >= {"model.safetensors", "model.pth", "model.json"}
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "mitigate" and run["status"] == "finished" and "edit.json" in run["outputs"]


def test_cli_pth_only_random_control_and_copied_tokenizer(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "edit"
    rc = main([str(inputs["model"]), str(inputs["loc"]), "--out", str(out), "--format", "pth", "--control",
               "random", "--seed", "3", "--edit", "paper", "--factor", "0", "--copy-tokenizer"])
    assert rc == 0
    names = {p.name for p in out.iterdir()}
    assert "model.pth" in names and "model.safetensors" not in names and "tokenizer.safetensors" in names
    want = expected_edit(inputs, 10, "paper", 0.0, control="random", seed=3).model.state_dict()
    reopened, _ = open_model(str(out))
    assert same_state(reopened.model.state_dict(), want)
    edit = json.loads((out / "edit.json").read_text())
    assert edit["selection"]["control"] == "random" and edit["selection"]["seed"] == 3


def test_cli_targeted_forgetting(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "edit"
    loc = load_localization(inputs["loc"])
    ids = sorted({int(loc.argmax["blocks.2.ffn.fc1"][0, 7]), int(loc.image_ids[0])})
    assert main([str(inputs["model"]), str(inputs["loc"]), "--out", str(out), "--forget",
                 ",".join(map(str, ids)), "--forget-top", "50"]) == 0
    edit = json.loads((out / "edit.json").read_text())
    assert edit["selection"]["rule"] == "forget" and edit["selection"]["forget_ids"] == ids
    for name, units in edit["units"].items():
        for u in units:
            assert set(loc.argmax[name][:, u].tolist()) & set(ids)


def test_cli_refuses_to_redo_or_to_overwrite_an_input(inputs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "edit"
    args = [str(inputs["model"]), str(inputs["loc"]), "--out", str(out)]
    assert main(args) == 0
    first = tree_hashes(out)
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert tree_hashes(out) == first
    assert main(args + ["--overwrite", "--factor", "0.25"]) == 0
    model_before = tree_hashes(inputs["model"])
    assert main([str(inputs["model"]), str(inputs["loc"]), "--out", str(inputs["model"]), "--overwrite"]) == 2
    assert tree_hashes(inputs["model"]) == model_before


def test_a_failure_while_writing_leaves_no_folder(inputs: dict[str, Path], tmp_path: Path, monkeypatch,
                                                   capsys) -> None:
    import iarmem.commands.mitigate as command

    def broken(*args, **kwargs):
        raise UserError("disk full")

    monkeypatch.setattr(command, "write_edited_model", broken)
    out = tmp_path / "edit"
    assert main([str(inputs["model"]), str(inputs["loc"]), "--out", str(out)]) == 2
    assert "disk full" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("name", ["tiny-rar", "tiny-llamagen"])
def test_written_model_reloads_bit_for_bit_for_every_family(tmp_path: Path, name: str) -> None:
    torch.manual_seed(1)
    iar = build(name)
    source = save_model_folder(iar, tmp_path / "src", preset=name)
    loc = load_localization(random_localization(tmp_path / "loc", iar, name))
    apply_edit(iar, select_units(loc, 10), "paper", 0.5)
    _, src = open_model(str(source))
    out = tmp_path / "edit"
    written = write_edited_model(iar, out, src, model_format="both")
    assert written == ["model.json", "model.safetensors", "model.pth"]
    want = iar.model.state_dict()
    for f in ("model.safetensors", "model.pth"):
        fresh = build(name)
        fresh.model.load_state_dict(read_state_dict(out / f), strict=True)
        assert same_state(fresh.model.state_dict(), want), f
    assert same_state(open_model(str(out))[0].model.state_dict(), want)


BAD = {
    "top above 100": (["--top", "150"], "not a percentage"),
    "top zero": (["--top", "0"], "not a percentage"),
    "negative factor": (["--factor", "-0.5"], "factor"),
    "bin out of range": (["--bin", "9"], "out of range"),
    "unknown forget id": (["--forget", "100,5"], "not among"),
    "forget-top alone": (["--forget-top", "5"], "need --forget"),
    "other architecture": ("rar_loc", "was made on tiny-rar"),
    "missing localization": ("missing_loc", "not found"),
    "missing model": ("missing_model", "not found"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_no_output(inputs: dict[str, Path], tmp_path: Path, capsys,
                                                    case: str) -> None:
    extra, message = BAD[case]
    model, loc = str(inputs["model"]), str(inputs["loc"])
    if extra == "rar_loc":
        loc, extra = str(inputs["rar_loc"]), []
    elif extra == "missing_loc":
        loc, extra = str(tmp_path / "no-such-loc"), []
    elif extra == "missing_model":
        model, extra = str(tmp_path / "no-such-model"), []
    out = tmp_path / "out"
    capsys.readouterr()
    assert main([model, loc, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    if case == "other architecture":
        assert model in err  # names both models
    assert not out.exists()
