"""Official checkpoints from the Hugging Face Hub, where the users of VAR, RAR and LlamaGen get them.

Nothing here touches the network at import or by default. A preset's files are fetched only when
a command is given ``--download`` (or a path ``hf://OWNER/REPO/FILE[@REVISION]``), through
``huggingface_hub``: its cache (``HF_HOME`` / ``HF_HUB_CACHE``), resumable downloads, revision
pinning, and ``HF_HUB_OFFLINE=1``, under which only what is already cached is used.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from iarmem.errors import UserError

SCHEME = "hf://"
# the repositories the official READMEs name (VAR, RAR + the MaskGIT-VQGAN of TiTok, LlamaGen)
REPOS = {
    "vae_ch160v4096z32.pth": "FoundationVision/var",
    "maskgit-vqgan-imagenet-f16-256.bin": "fun-research/TiTok",
    "vq_ds16_c2i.pt": "FoundationVision/LlamaGen",
}
MODEL_REPOS = {"var": "FoundationVision/var", "rar": "yucornetto/RAR", "llamagen": "FoundationVision/LlamaGen"}


@dataclass(frozen=True)
class HubFile:
    repo: str
    filename: str
    revision: str | None = None

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.repo}/{self.filename}" + (f"@{self.revision}" if self.revision else "")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--download`` and ``--revision`` for every command that takes a preset."""
    p.add_argument("--download", action="store_true",
                   help="fetch the preset's official files from the Hugging Face Hub into its cache when --tokenizer/"
                        "--weights are not given (HF_HUB_OFFLINE=1: the cache only); hf://OWNER/REPO/FILE[@REV] "
                        "paths are fetched the same way")
    p.add_argument("--revision", help="with --download: the Hub revision (commit, tag or branch) to pin")


def parse(text: str) -> HubFile:
    """``hf://OWNER/REPO/FILE[@REVISION]`` as a HubFile (UserError when malformed)."""
    body = text[len(SCHEME):]
    body, _, revision = body.partition("@")
    parts = body.split("/")
    if len(parts) < 3 or not all(parts):
        raise UserError(f"{text}: a Hub path is hf://OWNER/REPO/FILE[@REVISION], e.g. "
                        f"hf://FoundationVision/var/var_d16.pth")
    return HubFile("/".join(parts[:2]), "/".join(parts[2:]), revision or None)


def preset_files(family: str, files: tuple[str, str], revision: str | None = None) -> list[HubFile]:
    """The (tokenizer, model) files a preset would fetch; empty for presets without official files."""
    tok, model = files
    if not tok or not model:
        return []
    return [HubFile(REPOS.get(tok, MODEL_REPOS[family]), tok, revision),
            HubFile(MODEL_REPOS[family], model, revision)]


def fetch(f: HubFile, cache_dir: str | Path | None = None) -> Path:
    """The local path of ``f``: from the cache, else downloaded (unless HF_HUB_OFFLINE)."""
    from huggingface_hub import hf_hub_download  # here: a plain import of iarmem never loads it
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(f.repo, f.filename, revision=f.revision, cache_dir=cache_dir))
    except LocalEntryNotFoundError as e:
        raise UserError(f"{f.url} is not in the Hugging Face cache and the Hub cannot be reached (offline, or "
                        f"HF_HUB_OFFLINE=1); fetch it once with network access or pass the file's path") from e
    except EntryNotFoundError as e:
        raise UserError(f"{f.url}: the repository has no such file at that revision; check the name") from e
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise UserError(f"{f.url} could not be fetched ({type(e).__name__}: {str(e).splitlines()[0]}); check "
                        f"the repository, the revision and the network") from e


def resolve(path: str | None) -> str | None:
    """A file argument with ``hf://`` fetched to its cached path; other paths unchanged."""
    if path is None or not str(path).startswith(SCHEME):
        return path
    return str(fetch(parse(str(path))))


def resolve_model_files(model: str, tokenizer: str | None, weights: str | None, download: bool,
                        revision: str | None = None) -> tuple[str | None, str | None]:
    """``--tokenizer`` / ``--weights`` as local paths: hf:// fetched, and a preset's own files with --download."""
    from iarmem.models.registry import presets  # the registry imports the families; only when asked

    tokenizer, weights = resolve(tokenizer), resolve(weights)
    if revision and not download:
        raise UserError("--revision pins what --download fetches; add --download (or put @REV in an hf:// path)")
    if not download:
        return tokenizer, weights
    pr = presets().get(model)
    if pr is None:
        raise UserError(f"--download fetches a preset's official files, but {model} is not a preset "
                        f"(`iarmem models` lists them); drop --download for model folders")
    files = preset_files(pr.family, pr.files, revision)
    if not files:
        raise UserError(f"preset {model} has no official files to download (train it with `iarmem train`)")
    tok_file, model_file = files
    return (tokenizer or str(fetch(tok_file))), (weights or str(fetch(model_file)))


def cached_size(f: HubFile, cache_dir: str | Path | None = None) -> int | None:
    """Bytes of ``f`` in the local cache, None when it is not there (never the network)."""
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(f.repo, f.filename, cache_dir=cache_dir, revision=f.revision)
    return Path(hit).stat().st_size if isinstance(hit, str) else None


def remote_size(f: HubFile) -> int | None:
    """The file's size as the Hub reports it (network; ``iarmem models --hub --sizes``)."""
    from huggingface_hub import HfApi

    try:
        (info,) = HfApi().get_paths_info(f.repo, [f.filename], revision=f.revision)
    except Exception as e:  # noqa: BLE001 - any failure of the Hub query is one line for the user
        raise UserError(f"cannot ask the Hub about {f.url} ({type(e).__name__}); check the network or drop "
                        f"--sizes") from e
    return getattr(info, "size", None)
