"""Official files through the Hugging Face Hub's cache, offline: a local cache in the Hub's own layout
stands in for the network (HF_HUB_OFFLINE=1, tests/conftest.py), and the real huggingface_hub
resolves from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iarmem.cli import main

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TITOK = "hf://fun-research/TiTok/maskgit-vqgan-imagenet-f16-256.bin"


def _cache(root: Path, repo: str, files: dict[str, bytes], ref: str = "main", commit: str = COMMIT) -> Path:
    """Files of ``repo`` at ``ref`` laid out as huggingface_hub's cache keeps them (blobs + snapshot links)."""
    base = root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / ref).write_text(commit)
    for name, data in files.items():
        blob = base / "blobs" / f"blob-{name}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = base / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return base / "snapshots" / commit


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    return err


def test_download_resolves_a_presets_files_from_the_hub_cache(hub_cache: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    snap = _cache(hub_cache, "FoundationVision/var", {"vae_ch160v4096z32.pth": b"not a checkpoint\n",
                                                      "var_d16.pth": b"not a checkpoint either\n"})
    out = tmp_path / "loc"
    assert main(["localize", "var-d16", "mnist", "--download", "--out", str(out)]) == 2
    # the files came from the cache (the loader reached them and refused their content); nothing was written
    err = _error(capsys)
    assert "the file is text" in err and str(snap / "vae_ch160v4096z32.pth") in err, err
    assert not out.exists()


def test_download_of_an_uncached_file_offline_is_one_line(hub_cache: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ext"
    assert main(["extract", "rar-b", "mnist", "--download", "--out", str(out)]) == 2
    err = _error(capsys)
    assert TITOK in err and "not in the Hugging Face cache" in err
    assert not out.exists()


def test_hf_paths_pin_a_revision(hub_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = _cache(hub_cache, "FoundationVision/LlamaGen", {"vq_ds16_c2i.pt": b"v1 text\n"}, ref="v1")
    out = tmp_path / "ev"
    path = "hf://FoundationVision/LlamaGen/vq_ds16_c2i.pt"
    assert main(["evaluate", "llamagen-b", "mnist", "--tokenizer", path + "@v1", "--weights", path + "@v1",
                 "--out", str(out)]) == 2
    assert str(snap) in _error(capsys)  # the v1 snapshot was found and read
    assert main(["evaluate", "llamagen-b", "mnist", "--tokenizer", path, "--weights", path, "--out", str(out)]) == 2
    assert "not in the Hugging Face cache" in _error(capsys)  # main was never cached
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["localize", "tiny-var", "mnist", "--download"], "no official files"),
    (["localize", "var-d16", "mnist", "--revision", "v1"], "--revision pins"),
    (["localize", "var-d16", "mnist", "--weights", "hf://FoundationVision/var_d16.pth"], "hf://OWNER/REPO/FILE"),
    (["models", "--sizes"], "--sizes goes with --hub"),
])
def test_bad_hub_input_is_one_line(hub_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   args: list[str], message: str) -> None:
    out = ["--out", str(tmp_path / "o")] if args[0] != "models" else []
    assert main([*args, *out]) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "o").exists()


def test_models_lists_the_hub_files_and_their_cached_sizes(hub_cache: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    _cache(hub_cache, "FoundationVision/var", {"var_d16.pth": b"x" * 1234})
    assert main(["models", "--hub", "--family", "var", "--json"]) == 0
    rows = {x["url"]: x["cached_bytes"] for x in json.loads(capsys.readouterr().out)}
    assert rows["hf://FoundationVision/var/var_d16.pth"] == 1234
    assert rows["hf://FoundationVision/var/var_d30.pth"] is None
    assert rows["hf://FoundationVision/var/vae_ch160v4096z32.pth"] is None and len(rows) == 5
    assert main(["models", "--hub", "--family", "rar", "--json"]) == 0
    urls = {x["url"] for x in json.loads(capsys.readouterr().out)}
    assert "hf://yucornetto/RAR/rar_xxl.bin" in urls and TITOK in urls


def test_importing_iarmem_does_not_load_huggingface_hub() -> None:
    code = "import sys, iarmem.cli, iarmem.models.hub; sys.exit('huggingface_hub' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
