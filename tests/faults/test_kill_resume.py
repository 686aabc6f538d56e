"""SIGKILL `iarmem localize`, `iarmem extract` and `iarmem train` at a random point, resume, get the same files.

Each kill happens after a random delay, when the k-th progress line appears, or when a checkpoint file
appears (the seed picks). After the kill every final file present must be whole (writes go to a temporary
name and are renamed), and run.json must say the stage has not finished (or list outputs that all exist).
`--resume` then finishes the run, and its result files equal those of an uninterrupted run: byte for byte
for the tensors, tables and figures, and the JSON summaries up to timings and timestamps.

Two seeds per command run by default (about 10-25 s a command), plus the kill right after the first
checkpoint; four more seeds per command are marked slow (`make test-slow`).
"""

from __future__ import annotations

import csv
import json
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from .helpers import VENV_BIN, Inputs, child_env, stray_tmp


@dataclass(frozen=True)
class Job:
    name: str
    argv: Callable[[Inputs, Path], list]
    exact: tuple[str, ...]  # files that must be byte-equal to the uninterrupted run's
    json_files: tuple[str, ...]  # JSON files compared without timings / timestamps
    progress: str  # a progress line on stderr
    checkpoints: tuple[str, ...]  # files that appear while the stage runs
    window: float  # seconds a run takes here (random delays are drawn below it)


JOBS = {
    "localize": Job(
        "localize",
        lambda i, out: ["localize", i.var, "mnist", "--out", out, "--subset", "all", "--per-class", "4", "--augs", "2",
                        "--batch-size", "2", "--save-every", "1"],
        exact=("unitmem.safetensors", "heatmap.png", "blocks.png", "top_images.png"),
        json_files=("summary.json",),
        progress=r"^localize: \d+/\d+", checkpoints=("run.json", "localize_state.safetensors"), window=3.0),
    "extract": Job(
        "extract",
        lambda i, out: ["extract", i.var, "mnist", "--out", out, "--subset", "all", "--per-class-subset", "6",
                        "--top", "2", "--batch-size", "4", "--calibration-images", "10"],
        exact=("candidates.csv", "scores.csv", "generated.safetensors", "extracted.png"),
        json_files=("summary.json",),
        progress=r"^(score|generate|compare): \d+/\d+", checkpoints=("run.json", "scores.csv", "generated.safetensors"),
        window=3.0),
    "train": Job(
        "train",
        lambda i, out: ["train", "var", "--preset", "tiny-var", "--tokenizer", i.tokenizer, "--data", "mnist",
                        "--out", out, "--steps", "30", "--ckpt-every", "3", "--batch-size", "8", "--num-train", "20",
                        "--plant", "4", "--copies", "2", "--views", "2"],
        exact=("model.safetensors", "tokenizer.safetensors", "tokens.safetensors", "manifest.json", "train_log.csv",
               "model.json"),
        json_files=("evidence.json",),
        progress=r"^train var: \d+/\d+", checkpoints=("manifest.json", "tokens.safetensors", "train_state.pt"),
        window=6.0),
}
# keys whose values are wall-clock times, dates or the command line: they differ between runs by nature
VOLATILE = re.compile(r"(^|_)(timing|seconds|images_per_s|started_at|finished_at|command|resumed)(_s)?$|_s$")


def _iarmem(argv: list) -> list[str]:
    return [str(VENV_BIN / "iarmem"), *map(str, argv)]


class Reference:
    """An uninterrupted run, started at once in the background (the kill tests run beside it)."""

    def __init__(self, argv: list, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(_iarmem(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=child_env())

    def wait(self) -> Path:
        _, err = self.proc.communicate(timeout=300)
        assert self.proc.returncode == 0, err
        return self.out


@pytest.fixture(scope="module")
def references(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Reference]:
    root = tmp_path_factory.mktemp("uninterrupted")
    return {name: Reference(job.argv(inputs, root / name), root / name) for name, job in JOBS.items()}


# ---- what a killed run may leave --------------------------------------------------------------------
def _whole(path: Path) -> None:
    """Fail unless ``path`` is a complete file of its kind."""
    suffix = path.suffix
    if suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".safetensors":
        load_file(str(path))
    elif suffix == ".pt":
        torch.load(path, map_location="cpu", weights_only=True)
    elif suffix == ".png":
        with Image.open(path) as im:
            im.verify()
    elif suffix == ".csv":
        text = path.read_text()
        assert text.endswith("\n"), f"{path.name} does not end with a newline"
        rows = list(csv.reader(text.splitlines()))
        assert rows and all(len(r) == len(rows[0]) for r in rows), f"{path.name} has ragged rows"


def check_after_kill(out: Path, job: Job) -> dict[str, Any] | None:
    """Every final file whole; run.json says what finished. Returns run.json (None if the kill came first)."""
    if not out.exists():
        return None
    for p in out.rglob("*"):
        if p.is_file() and not p.name.endswith(".tmp"):
            try:
                _whole(p)
            except Exception as e:  # any failure to read is the finding
                raise AssertionError(f"{p.name} is not whole after a kill: {type(e).__name__}: {e}") from e
    run_file = out / "run.json"
    if not run_file.exists():
        return None
    rec = json.loads(run_file.read_text())
    assert rec["stage"] == job.name.split("-")[0]
    assert rec["status"] in ("running", "finished"), rec["status"]
    if rec["status"] == "finished":
        for name in rec["outputs"]:
            assert (out / name).is_file(), f"run.json lists {name}, which is missing"
    else:
        assert "finished_at" not in rec and "outputs" not in rec
    return rec


def _normal(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _normal(v) for k, v in x.items() if not VOLATILE.search(str(k))}
    if isinstance(x, list):
        return [_normal(v) for v in x]
    return x


def assert_same_results(out: Path, ref: Path, job: Job) -> None:
    for name in job.exact:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), f"{name} differs from the uninterrupted run"
    for name in job.json_files:
        a, b = json.loads((out / name).read_text()), json.loads((ref / name).read_text())
        assert _normal(a) == _normal(b), f"{name} differs from the uninterrupted run"
    ra, rb = json.loads((out / "run.json").read_text()), json.loads((ref / "run.json").read_text())
    assert ra["status"] == rb["status"] == "finished"
    for key in ("stage", "settings", "inputs", "seed", "iarmem_version", "outputs"):
        if key == "outputs":  # the same files, and the same bytes for the exact ones
            assert set(ra[key]) == set(rb[key])
            assert all(ra[key][n] == rb[key][n] for n in job.exact if n in ra[key])
        else:
            assert ra[key] == rb[key], key


# ---- killing ----------------------------------------------------------------------------------------
def kill_at_random(argv: list, out: Path, job: Job, rng: random.Random, log: Path) -> str:
    """Start the stage, SIGKILL it at a point the seed picks; a description of where."""
    trigger = rng.choice(["delay", "line", "file"])
    if trigger == "delay":
        target = rng.uniform(0.3, job.window)
        what = f"after {target:.2f}s"
    elif trigger == "line":
        nth = rng.randint(1, 4)
        what = f"at progress line {nth}"
    else:
        name = rng.choice(job.checkpoints)
        extra = rng.uniform(0.0, 0.3)
        what = f"{extra:.2f}s after {name} appeared"
    with open(log, "w") as err:
        proc = subprocess.Popen(_iarmem(argv), stdout=subprocess.DEVNULL, stderr=err, env=child_env())
    t0 = time.monotonic()
    seen_at = None
    while proc.poll() is None and time.monotonic() - t0 < 120:
        now = time.monotonic()
        if trigger == "delay":
            fire = now - t0 >= target
        elif trigger == "line":
            fire = sum(bool(re.match(job.progress, ln)) for ln in log.read_text().splitlines()) >= nth
        else:
            if seen_at is None and (out / name).exists():
                seen_at = now
            fire = seen_at is not None and now - seen_at >= extra
        if fire:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    code = proc.wait()
    return what + ("" if code == -signal.SIGKILL else f" (finished first, exit {code})")


def resume(argv: list, log: Path) -> None:
    proc = subprocess.run(_iarmem([*argv, "--resume"]), capture_output=True, text=True, env=child_env(), timeout=300)
    log.write_text(proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def _kill_and_resume(job: Job, seed: int, inputs: Inputs, references: dict[str, Reference], tmp_path: Path,
                     kills: int = 1) -> None:
    rng = random.Random(f"{job.name}-{seed}")
    out = tmp_path / "run"
    argv = job.argv(inputs, out)
    where = []
    for k in range(kills):
        run_argv = argv if k == 0 else [*argv, "--resume"]
        where.append(kill_at_random(run_argv, out, job, rng, tmp_path / f"kill{k}.err"))
        rec = check_after_kill(out, job)
        if rec is not None and rec["status"] == "finished":
            break
    resume(argv, tmp_path / "resume.err")
    assert not stray_tmp(out), f"temporary files left after --resume: {stray_tmp(out)}"
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "finished"
    assert_same_results(out, references[job.name].wait(), job), where


FAST = [(name, seed) for name in JOBS for seed in (0, 1)]  # seed 1 kills twice before resuming
SLOW = [pytest.param(name, seed, marks=pytest.mark.slow) for name in JOBS for seed in (2, 3, 4, 5)]


@pytest.mark.parametrize(("name", "seed"), FAST + SLOW)
def test_kill_then_resume_gives_the_uninterrupted_result(name: str, seed: int, inputs: Inputs,
                                                         references: dict[str, Reference], tmp_path: Path) -> None:
    _kill_and_resume(JOBS[name], seed, inputs, references, tmp_path, kills=1 + seed % 2)


@pytest.mark.parametrize("name", list(JOBS))
def test_kill_when_the_first_checkpoint_appears(name: str, inputs: Inputs, references: dict[str, Reference],
                                                tmp_path: Path) -> None:
    """The deterministic variant: killed right after the stage's first checkpoint file is renamed into place."""
    job = JOBS[name]
    out = tmp_path / "run"
    argv = job.argv(inputs, out)
    log = tmp_path / "kill.err"
    ckpt = job.checkpoints[-1]
    with open(log, "w") as err:
        proc = subprocess.Popen(_iarmem(argv), stdout=subprocess.DEVNULL, stderr=err, env=child_env())
    t0 = time.monotonic()
    while proc.poll() is None and not (out / ckpt).exists() and time.monotonic() - t0 < 120:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"{name} finished before {ckpt} appeared"
    rec = check_after_kill(out, job)
    assert rec is not None and rec["status"] == "running", "run.json must say the stage did not finish"
    assert not any((out / n).exists() for n in job.exact if n not in job.checkpoints + ("manifest.json",)), (
        "a final result exists although the stage did not finish")
    resume(argv, tmp_path / "resume.err")
    assert "resum" in (tmp_path / "resume.err").read_text().lower() or name == "extract"
    assert not stray_tmp(out)
    assert_same_results(out, references[name].wait(), job)
