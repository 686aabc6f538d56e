"""Official files through the Hugging Face Hub's cache, offline: a local cache in the Hub's own layout
stands in for the network (HF_HUB_OFFLINE=1), and the real huggingface_hub resolves from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def _iarmem(args: list[str], cache: Path, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp / "hf-home")}
    return subprocess.run([sys.executable, "-m", "iarmem", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_download_resolves_a_presets_files_from_the_hub_cache(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    snap = _cache(cache, "FoundationVision/var", {"vae_ch160v4096z32.pth": b"not a checkpoint\n",
                                                  "var_d16.pth": b"not a checkpoint either\n"})
    out = tmp_path / "loc"
    r = _iarmem(["localize", "var-d16", "mnist", "--download", "--out", str(out)], cache, tmp_path)
    # the files came from the cache (the loader reached them and refused their content), nothing was written
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "the file is text" in err, err
    assert str(snap) in err or "vae_ch160v4096z32.pth" in err
    assert not out.exists()


def test_download_of_an_uncached_file_offline_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "ext"
    r = _iarmem(["extract", "rar-b", "mnist", "--download", "--out", str(out)], tmp_path / "empty", tmp_path)
    assert r.returncode == 2
    err = r.stderr.strip()
    assert err.startswith("error:") and "\n" not in err, err
    assert TITOK in err and "not in the Hugging Face cache" in err
    assert not out.exists()


def test_hf_paths_pin_a_revision(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    _cache(cache, "FoundationVision/LlamaGen", {"vq_ds16_c2i.pt": b"v1 text\n"}, ref="v1")
    out = tmp_path / "ev"
    hub_path = "hf://FoundationVision/LlamaGen/vq_ds16_c2i.pt"
    r = _iarmem(["evaluate", "llamagen-b", "mnist", "--tokenizer", hub_path + "@v1", "--weights", hub_path + "@v1",
                 "--out", str(out)], cache, tmp_path)
    assert r.returncode == 2 and "the file is text" in r.stderr, r.stderr  # the v1 snapshot was found and read
    r = _iarmem(["evaluate", "llamagen-b", "mnist", "--tokenizer", hub_path, "--weights", hub_path,
                 "--out", str(out)], cache, tmp_path)
    assert r.returncode == 2 and "not in the Hugging Face cache" in r.stderr  # main was never cached
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["localize", "tiny-var", "mnist", "--download"], "no official files"),
    (["localize", "var-d16", "mnist", "--revision", "v1"], "--revision pins"),
    (["localize", "var-d16", "mnist", "--weights", "hf://FoundationVision/var_d16.pth"], "hf://OWNER/REPO/FILE"),
])
def test_bad_hub_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    r = _iarmem([*args, "--out", str(tmp_path / "o")], tmp_path / "empty", tmp_path)
    assert r.returncode == 2 and message in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert not (tmp_path / "o").exists()


def test_importing_iarmem_does_not_load_huggingface_hub() -> None:
    code = "import sys, iarmem.cli, iarmem.models.hub; sys.exit('huggingface_hub' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_models_lists_the_hub_files_and_their_cached_sizes(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    _cache(cache, "FoundationVision/var", {"var_d16.pth": b"x" * 1234})
    r = _iarmem(["models", "--hub", "--family", "var", "--json"], cache, tmp_path)
    rows = {x["url"]: x["cached_bytes"] for x in json.loads(r.stdout)}
    assert rows["hf://FoundationVision/var/var_d16.pth"] == 1234
    assert rows["hf://FoundationVision/var/var_d30.pth"] is None
    assert rows["hf://FoundationVision/var/vae_ch160v4096z32.pth"] is None and len(rows) == 5
    r = _iarmem(["models", "--hub", "--family", "rar", "--json"], cache, tmp_path)
    urls = {x["url"] for x in json.loads(r.stdout)}
    assert "hf://yucornetto/RAR/rar_xxl.bin" in urls and TITOK in urls
    r = _iarmem(["models", "--sizes"], cache, tmp_path)
    assert r.returncode == 2 and "--sizes goes with --hub" in r.stderr
