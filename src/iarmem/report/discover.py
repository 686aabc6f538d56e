"""Find the run folders under the paths given to `iarmem report` and group them by model.

A run folder is any folder with a run.json. Runs are grouped by the *model they are about*: a
trained model folder, an official checkpoint file, and every edited model `iarmem mitigate` made
from it (followed through edit.json back to its source). That works on the demo layout
(OUT/<family>/<stage>), on flat folders, and on a handful of runs copied from a GPU machine that
never trained anything, because it reads only what each run recorded about its model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iarmem.errors import UserError
from iarmem.runs import RUN_FILE

MAX_DEPTH = 8
FAMILY_ORDER = ("var", "rar", "llamagen")
# the order in which a model's variants appear in tables and figure rows
ROLE_ORDER = ("unedited", "mitigated", "random", "lowest", "forget", "edited")


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or damaged (partial runs are normal)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class Run:
    """One run folder and what it recorded."""

    path: Path
    record: dict[str, Any]
    kind: str  # tokenizer, train, localize, extract, mitigate, evaluate, sweep, or the recorded stage
    source: dict[str, Any] = field(default_factory=dict)  # the model the run reads (ModelSource-like)
    name: str = ""  # path relative to the report's base folder
    group: str = ""  # key of the ModelGroup it belongs to
    variant: Variant | None = None  # which edit of the model (extract / evaluate / localize / sweep)

    @property
    def stage(self) -> str:
        return str(self.record.get("stage") or "?")

    @property
    def status(self) -> str:
        return str(self.record.get("status") or "unknown")

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def json(self, name: str) -> Any:
        return read_json(self.path / name)


@dataclass(frozen=True)
class Variant:
    """Which model a run measured: the unedited one or an edit of it (by the mitigate run that made it)."""

    role: str  # one of ROLE_ORDER
    label: str  # e.g. "mitigated (top 10% x0.5)"
    mitigate: str = ""  # name of the mitigate run

    @property
    def order(self) -> int:
        return ROLE_ORDER.index(self.role) if self.role in ROLE_ORDER else len(ROLE_ORDER)


UNEDITED = Variant("unedited", "unedited")


@dataclass
class ModelGroup:
    """All runs about one model (and its edits)."""

    key: str
    label: str
    family: str | None
    preset: str | None
    runs: list[Run] = field(default_factory=list)

    def of(self, *kinds: str) -> list[Run]:
        """Runs of these kinds, unedited first, then by variant and name."""
        sel = [r for r in self.runs if r.kind in kinds]
        return sorted(sel, key=lambda r: ((r.variant or UNEDITED).order, r.name))


# ---------------------------------------------------------------- finding run folders


def _walk(root: Path) -> list[Path]:
    found: list[Path] = []
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if RUN_FILE in filenames:
            found.append(here)
        if len(here.parts) - base_depth >= MAX_DEPTH:
            dirnames[:] = []
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
    return found


def find_run_dirs(paths: list[str]) -> list[Path]:
    """Every folder holding a run.json under ``paths`` (a run.json file stands for its folder)."""
    dirs: list[Path] = []
    for text in paths:
        p = Path(text)
        if not p.exists():
            raise UserError(f"run folder not found: {p}; pass folders written by iarmem commands (check the path)")
        if p.is_file():
            if p.name != RUN_FILE:
                raise UserError(f"{p} is a file; pass run folders (or folders holding them)")
            p = p.parent
        dirs.extend(_walk(p))
    seen: set[Path] = set()
    unique = []
    for d in dirs:
        r = d.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(d)
    if not unique:
        raise UserError(f"no iarmem run found in {', '.join(paths)} (no {RUN_FILE} in any folder below); "
                        f"pass the --out folders of iarmem commands, e.g. runs/demo")
    return unique


def _kind(path: Path, record: dict[str, Any]) -> str:
    stage = str(record.get("stage") or "")
    if stage == "train":
        target = (record.get("settings") or {}).get("target")
        if target == "tokenizer" or ((path / "tokenizer.json").is_file() and not (path / "model.json").is_file()):
            return "tokenizer"
    return stage or "unknown"


def load_runs(paths: list[str]) -> list[Run]:
    """Runs under ``paths``, each with its kind and recorded model; damaged run.json files are skipped."""
    runs = []
    for d in find_run_dirs(paths):
        record = read_json(d / RUN_FILE)
        if not isinstance(record, dict):
            continue
        run = Run(d.resolve(), record, _kind(d, record))
        run.source = _source(run)
        runs.append(run)
    if not runs:
        raise UserError(f"no readable iarmem run in {', '.join(paths)} (every {RUN_FILE} is damaged)")
    try:
        base = Path(os.path.commonpath([str(r.path.parent) for r in runs]))
    except ValueError:  # no common folder (other drives): full paths
        base = Path(runs[0].path.anchor)
    for r in runs:
        r.name = r.path.relative_to(base).as_posix()
    return runs


# ---------------------------------------------------------------- which model a run is about


def _model_json_source(folder: Path) -> dict[str, Any]:
    cfg = read_json(folder / "model.json")
    if not isinstance(cfg, dict):
        return {}
    mf = cfg.get("model_file")
    model_file = str(folder / mf) if mf and not Path(mf).is_absolute() else mf
    return {"spec": str(folder), "family": cfg.get("family"), "preset": cfg.get("preset"), "model_file": model_file}


def _source(run: Run) -> dict[str, Any]:
    """The model a run reads: the ModelSource its outputs recorded, else its settings."""
    if run.kind == "train":
        return _model_json_source(run.path)
    if run.kind == "tokenizer":
        tok = run.json("tokenizer.json") or {}
        preset = tok.get("preset") or (run.record.get("settings") or {}).get("preset")
        return {"family": tok.get("family"), "preset": preset}
    files = {"localize": "summary.json", "extract": "summary.json", "sweep": "summary.json", "repair": "summary.json",
             "evaluate": "metrics.json", "mitigate": "edit.json"}
    data = run.json(files[run.kind]) if run.kind in files else None
    if isinstance(data, dict):
        src = data.get("source_model") if run.kind == "mitigate" else data.get("model")
        if isinstance(src, dict) and (src.get("model_file") or src.get("spec")):
            return dict(src)
    settings = run.record.get("settings") or {}
    spec = settings.get("model")
    if not isinstance(spec, str):
        return {}
    src = {"spec": spec, "model_file": settings.get("weights")}
    if not src["model_file"] and Path(spec).is_dir():
        src = _model_json_source(Path(spec)) or src
    return src


def _norm(path: str | None) -> str | None:
    """One spelling per file: the real path when it exists here, else the recorded string, normalised."""
    if not path:
        return None
    p = Path(path)
    if p.exists():
        return str(p.resolve())
    return os.path.normpath(path)


def model_key(source: dict[str, Any]) -> str | None:
    return _norm(source.get("model_file")) or _norm(source.get("spec"))


def _produced(run: Run) -> str | None:
    """The model file a run wrote (train and mitigate runs are model folders)."""
    if run.kind not in ("train", "mitigate"):
        return None
    return model_key(_model_json_source(run.path)) or str(run.path / "model.safetensors")


def _match(key: str | None, produced: dict[str, Run]) -> str | None:
    """``key`` as one of the produced models. A path recorded relative to another working folder
    matches the one produced model file (or model folder) it is the tail of."""
    if key is None:
        return None
    if key in produced:
        return key
    if not os.path.isabs(key):
        tail = os.sep + key
        hits = [k for k, r in produced.items() if k.endswith(tail) or str(r.path).endswith(tail)]
        if len(hits) == 1:
            return hits[0]
    return key


def _variant(mit: Run) -> Variant:
    s = mit.record.get("settings") or {}
    edit = mit.json("edit.json") or {}
    sel = edit.get("selection") or {}
    control = sel.get("control") or s.get("control") or "none"
    p, factor = sel.get("p", s.get("top")), (edit.get("edit") or {}).get("factor", s.get("factor"))
    how = f"{_g(p)}% x{_g(factor)}" if p is not None else f"x{_g(factor)}"
    if ((edit.get("edit") or {}).get("edit") or s.get("edit")) == "paper":
        how += ", paper's edit"
    if sel.get("rule") == "forget" or s.get("forget") or s.get("forget_run"):
        return Variant("forget", f"targeted forgetting ({how})", mit.name)
    if control == "none":
        return Variant("mitigated", f"mitigated (top {how})", mit.name)
    if control in ("random", "lowest"):
        return Variant(control, f"{control} control ({how})", mit.name)
    return Variant("edited", f"edited ({control}, {how})", mit.name)


def _g(x: Any) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


def _link_tokenizers(runs: list[Run], group_of_train: dict[Path, str]) -> None:
    """Attach each tokenizer run to the model trained from it (same tokenizer file hash)."""
    trains = [r for r in runs if r.kind == "train" and r.group]
    for tok in (r for r in runs if r.kind == "tokenizer"):
        h = (tok.record.get("outputs") or {}).get("tokenizer.safetensors")
        hits = [t for t in trains if h and (t.record.get("outputs") or {}).get("tokenizer.safetensors") == h]
        if not hits:  # the train command named the tokenizer folder
            hits = [t for t in trains if _names(t.record.get("command"), tok.path)]
        if not hits:
            preset = tok.source.get("preset")
            hits = [t for t in trains if preset and t.source.get("preset") == preset]
        groups = {group_of_train[t.path] for t in hits}
        if len(groups) == 1:
            tok.group = groups.pop()


def _names(command: Any, folder: Path) -> bool:
    if not isinstance(command, list):
        return False
    return any(isinstance(a, str) and a and _norm(a) == str(folder) for a in command)


def _add_edit_on_disk(key: str | None, produced: dict[str, Run]) -> None:
    """An edited model whose mitigate run was not passed to the report, read from its folder on
    disk, so the runs on it still count as mitigated (or control) runs of the source model."""
    if key is None or key in produced:
        return
    folder = Path(key).parent
    record = read_json(folder / RUN_FILE) if (folder / "edit.json").is_file() else None
    if isinstance(record, dict) and record.get("stage") == "mitigate":
        run = Run(folder.resolve(), record, "mitigate", name=folder.name)
        run.source = _source(run)
        produced[key] = run


def group_runs(runs: list[Run]) -> list[ModelGroup]:
    """Assign every run a model group and a variant; groups in family order, then by label."""
    produced: dict[str, Run] = {}
    for r in runs:
        key = _produced(r)
        if key:
            produced[key] = r

    def root(key: str | None) -> tuple[str | None, Run | None]:
        """The unedited model behind ``key`` and the mitigate run that made ``key`` (if any)."""
        maker = None
        seen: set[str] = set()
        key = _match(key, produced)
        _add_edit_on_disk(key, produced)
        while key in produced and produced[key].kind == "mitigate" and key not in seen:
            seen.add(key)
            maker = maker or produced[key]
            key = _match(model_key(produced[key].source), produced)
            _add_edit_on_disk(key, produced)
        return key, maker

    group_of_train: dict[Path, str] = {}
    for r in runs:
        if r.kind == "tokenizer":
            continue
        key = _produced(r) if r.kind == "train" else model_key(r.source)
        base, maker = root(key)
        r.group = base or ""
        if r.kind == "mitigate":
            r.variant = _variant(r)
        elif r.kind != "train":
            r.variant = _variant(maker) if maker is not None else UNEDITED
        if r.kind == "train":
            group_of_train[r.path] = r.group
    _link_tokenizers(runs, group_of_train)
    return _make_groups(runs)


def _make_groups(runs: list[Run]) -> list[ModelGroup]:
    _merge_preset_keys(runs)
    groups: dict[str, ModelGroup] = {}
    for r in runs:
        key = r.group or f"other:{r.source.get('preset') or r.source.get('family') or ''}"
        r.group = key
        g = groups.setdefault(key, ModelGroup(key, "", None, None))
        g.runs.append(r)
        g.family = g.family or r.source.get("family")
        g.preset = g.preset or r.source.get("preset")
    labels: dict[str, list[ModelGroup]] = {}
    for g in groups.values():
        base = g.preset or g.family or (Path(g.key).name if not g.key.startswith("other:") else "other runs")
        labels.setdefault(base, []).append(g)
    for base, same in labels.items():
        for g in same:
            g.label = base if len(same) == 1 else f"{base} ({_short(g)})"

    def order(g: ModelGroup) -> tuple[int, str]:
        fam = FAMILY_ORDER.index(g.family) if g.family in FAMILY_ORDER else len(FAMILY_ORDER)
        return fam, g.label

    return sorted(groups.values(), key=order)


def _merge_preset_keys(runs: list[Run]) -> None:
    """A run that recorded only a preset name (an unfinished run on official files) joins the one
    model group of that preset, when there is exactly one."""
    by_preset: dict[str, set[str]] = {}
    for r in runs:
        if r.group and r.source.get("preset"):
            by_preset.setdefault(str(r.source["preset"]), set()).add(r.group)
    for r in runs:
        if r.group and os.sep not in r.group:
            others = by_preset.get(r.group, set()) - {r.group}
            if len(others) == 1:
                r.group = next(iter(others))


def _short(g: ModelGroup) -> str:
    """A distinguishing name for one of several groups with one label: the model's folder or file."""
    train = next((r for r in g.runs if r.kind == "train"), None)
    if train is not None:
        return train.name
    p = Path(g.key)
    return p.parent.name + "/" + p.name if p.name.startswith("model.") else p.name


def discover(paths: list[str]) -> tuple[list[Run], list[ModelGroup]]:
    """Runs under ``paths`` and their model groups (UserError when there is none)."""
    runs = load_runs(paths)
    return runs, group_runs(runs)
