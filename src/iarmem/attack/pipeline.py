"""The attack end to end: score -> select -> generate -> measure -> decide, sharded like other stages.

Work is cut into fixed batches of ``batch_size`` images in id order and rank r takes batches
r, r + N, ...: every batch sees the same images (and the same logit-noise seed) whatever the number
of processes, so N processes write what one process writes. Results are gathered to every rank;
the decision and the files are made by rank 0 and its result is broadcast.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from iarmem.attack.decide import METRICS, Calibration, Decision, Metric, choose_metric, copies_other, decide_rule
from iarmem.attack.generate import check_prefix, default_prefix, describe_prefix, generate_batch, prefix_tokens
from iarmem.attack.membership import STATISTICS, membership_scores
from iarmem.attack.neighbours import (
    TokenCache,
    embedding_similarity,
    nearest_other,
    pixel_similarity,
    pool_tokens,
    token_similarity,
)
from iarmem.attack.scoring import describe_scored, score_logits, scored_positions
from iarmem.attack.select import ranking_key, select_top
from iarmem.attack.settings import AttackSettings, load_extractors
from iarmem.attack.similarity import Embedder, background_ids, embed, prefix_background, psnr, ssim, token_measures
from iarmem.attack.strong import run_strong
from iarmem.data import ImageDataset, Plan
from iarmem.data.planting import outside_by_class, outside_sample
from iarmem.distributed import World, all_gather_object
from iarmem.errors import UserError
from iarmem.fileio import atomic_path
from iarmem.models.base import IAR, Tokens
from iarmem.plans import select_ids
from iarmem.progress import log, progress
from iarmem.tokens import load_views

T = TypeVar("T")
Arrays = dict[str, np.ndarray]
TOKENS_FILE = "generated.safetensors"


# ---- sharding helpers -----------------------------------------------------------------------------
def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def _sharded(n: int, batch_size: int, world: World, desc: str,
             fn: Callable[[int, slice], dict[str, np.ndarray]]) -> Arrays:
    """Run ``fn(batch_index, rows)`` over this rank's batches; gather and concatenate in batch order."""
    batches = _batches(n, batch_size)
    mine = list(range(world.rank, len(batches), world.size))
    local = {b: fn(b, batches[b]) for b in progress(mine, total=len(mine), desc=desc, enabled=world.is_main)}
    merged: dict[int, dict[str, np.ndarray]] = {}
    for part in all_gather_object(local, world):
        merged.update(part)  # type: ignore[arg-type]
    if not merged:
        return {}
    keys = merged[0].keys()
    return {k: np.concatenate([merged[b][k] for b in range(len(batches))]) for k in keys}


def from_main(world: World, fn: Callable[[], T]) -> T:
    """``fn()`` computed on rank 0 and sent to every rank; a UserError there is raised on every rank."""
    if not world.active:
        return fn()
    msg: tuple[str, Any] = ("ok", None)
    if world.is_main:
        try:
            msg = ("ok", fn())
        except UserError as e:
            msg = ("error", str(e))
        except BaseException as e:
            all_gather_object(("crash", f"rank 0 failed: {type(e).__name__}: {e}"), world)
            raise
    kind, value = all_gather_object(msg, world)[0]  # type: ignore[misc]
    if kind != "ok":
        raise UserError(value)
    return value


# ---- scoring ---------------------------------------------------------------------------------------
def score_images(iar: IAR, ds: ImageDataset, ids: np.ndarray, *, last: int | None = None, batch_size: int = 32,
                 seed: int = 0, world: World | None = None, cache: TokenCache | None = None,
                 membership: bool = True) -> Arrays:
    """Teacher-forced scores of the eval view of each image (id order kept): id, label, the candidate
    scores top1, gt_prob, loss on the scored positions, and with ``membership`` the membership scores
    mia_loss, mia_cfg (one more pass, unconditional; NaN without)."""
    world = world or World()
    ids = np.asarray(ids, dtype=np.int64)
    positions = _positions(iar, last)

    def one(_b: int, rows: slice) -> dict[str, np.ndarray]:
        x, y = load_views(iar, ds, ids[rows], 0, seed)
        tokens, y = iar.tokenize(x), y.to(iar.device)
        if cache is not None:  # the nearest-other search reads the pool's tokens from here
            cache.add(ids[rows], tokens.ids_BL)
        cond = iar.logits(tokens, y)
        sc = score_logits(cond, tokens.ids_BL, positions)
        if membership:
            sc |= membership_scores(cond, iar.logits(tokens, y, unconditional=True), tokens.ids_BL)
        else:
            sc |= {k: torch.full((len(y),), float("nan")) for k in STATISTICS}
        return {"id": ids[rows], "label": y.cpu().numpy()} | {k: v.double().numpy() for k, v in sc.items()}

    with torch.no_grad():
        out = _sharded(len(ids), batch_size, world, "score", one)
    empty = np.zeros(0)
    return out or {"id": ids, "label": ids.copy()} | {k: empty for k in ("top1", "gt_prob", "loss", *STATISTICS)}


def _positions(iar: IAR, last: int | None) -> slice:
    if last is not None and len(iar.grids) > 1:
        raise UserError("--last applies to raster models (RAR, LlamaGen); VAR is scored on its last scale, drop --last")
    try:
        return scored_positions(iar, last)
    except ValueError as e:
        raise UserError(f"--last: {e}") from None


def describe_positions(iar: IAR, last: int | None) -> str:
    return describe_scored(iar, _positions(iar, last))


# ---- generation and measurement --------------------------------------------------------------------
def generate_tokens(iar: IAR, ds: ImageDataset, ids: np.ndarray, labels: np.ndarray, prefix: int,
                    s: AttackSettings, world: World) -> tuple[Tensor, Tensor]:
    """Ground-truth eval-view tokens and the greedy continuations of their prefixes: two [N, L] int32."""

    def one(b: int, rows: slice) -> dict[str, np.ndarray]:
        x, _ = load_views(iar, ds, ids[rows], 0, s.seed)
        gt = iar.tokenize(x)
        gen = generate_batch(iar, gt, torch.as_tensor(labels[rows]), prefix, logit_noise=s.logit_noise,
                             seed=s.seed, batch_index=b, row_seeds=ids[rows].tolist())
        return {"gt": gt.ids_BL.to("cpu", torch.int32).numpy(), "gen": gen.ids_BL.to("cpu", torch.int32).numpy()}

    with torch.no_grad():
        out = _sharded(len(ids), s.batch_size, world, "generate", one)
    if not out:
        empty = torch.zeros(0, iar.seq_len, dtype=torch.int32)
        return empty, empty
    return torch.from_numpy(out["gt"]), torch.from_numpy(out["gen"])


def decoder(iar: IAR, on_device: bool = False) -> Callable[[Tensor], Tensor]:
    """Token ids [B, L] -> images [B, 3, H, W] in [0, 1] (float32; on the model's device or the CPU).

    Similarities are computed where the images are: SSIM of thousands of 256 px pairs is slow on a CPU.
    """

    @torch.no_grad()
    def decode01(ids_BL: Tensor) -> Tensor:
        img = iar.to_unit_range(iar.decode(Tokens(ids_BL.long().to(iar.device), iar.grids))).clamp(0, 1).float()
        return img if on_device else img.cpu()

    return decode01


def measure_pixels(iar: IAR, gt: Tensor, gen: Tensor, extractors: dict[str, Embedder], batch_size: int,
                   world: World) -> Arrays:
    """Per image: SSIM, PSNR and each extractor's cosine (+ the embeddings, ``emb_gen:NAME`` / ``emb_rec:NAME``)."""
    decode01 = decoder(iar, on_device=True)

    def one(_b: int, rows: slice) -> dict[str, np.ndarray]:
        rec, img = decode01(gt[rows]), decode01(gen[rows])
        out = {"ssim": ssim(img, rec).double().cpu().numpy(), "psnr": psnr(img, rec).double().cpu().numpy()}
        for name, ext in extractors.items():
            dev = getattr(ext, "device", iar.device)
            e_rec, e_gen = embed(ext, rec.to(dev)), embed(ext, img.to(dev))
            out[name] = (e_rec * e_gen).sum(1).double().numpy()
            out[f"emb_rec:{name}"], out[f"emb_gen:{name}"] = e_rec.numpy(), e_gen.numpy()
        return out

    return _sharded(len(gt), batch_size, world, "compare", one)


# ---- the decision ---------------------------------------------------------------------------------
@dataclass
class AttackResult:
    """Per generated image (rows in id order) and the rule that judged them."""

    ids: np.ndarray
    labels: np.ndarray
    is_candidate: np.ndarray
    gt: Tensor
    gen: Tensor
    measures: dict[str, np.ndarray]
    metric: str
    decision: Decision
    prefix: int
    prefix_tokens: int
    prefix_rule: str
    timing: dict[str, float] = field(default_factory=dict)
    is_calibration: np.ndarray | None = None  # rows that calibrated the decision when not the held-out controls

    @property
    def threshold(self) -> float:
        return self.decision.threshold

    @property
    def calibration(self) -> Calibration | None:
        return self.decision.calibration

    @property
    def similarity(self) -> np.ndarray:
        return self.measures[self.metric]

    @property
    def extracted(self) -> np.ndarray:
        """Per generation: a copy of its own prompt image (prompt-specific: closer to it than to any other)."""
        return self.measures["extracted"].astype(bool)

    @property
    def copies_other(self) -> np.ndarray:
        """Per generation: a copy of another image of the pool (``other_id``), not of its prompt."""
        return self.measures["copies_other"].astype(bool)

    def calls(self) -> list[tuple[int, int, float]]:
        """Every extraction call as (image, the prompt whose generation copied it, similarity)."""
        own = [(int(i), int(i), float(v)) for i, v in zip(self.ids[self.extracted], self.similarity[self.extracted])]
        other = self.copies_other & (self.measures["other_id"] >= 0)
        return own + [(int(o), int(i), float(v)) for o, i, v in zip(self.measures["other_id"][other], self.ids[other],
                                                                   self.measures["other_similarity"][other])]

    def extracted_ids(self) -> np.ndarray:
        """Every image judged extracted, by its own prompt or by another prompt's generation (sorted)."""
        return np.unique(np.array([image for image, _, _ in self.calls()], dtype=np.int64))

    def judged_by(self, decision: Decision) -> AttackResult:
        """The same generations judged by ``decision``: the prompt-specific test of each own prompt, and the
        copy-of-another-image test. The repair judges every edited state by the unedited model's rule."""
        own, other = self.similarity, self.measures["other_similarity"]
        measures = self.measures | {"extracted": copies_other(other, own, decision.threshold, decision.margin),
                                    "copies_other": copies_other(own, other, decision.other_bar, decision.margin)}
        return replace(self, measures=measures, decision=decision)


def nearest_in_pool(iar: IAR, ds: ImageDataset, metric: str, ids: np.ndarray, gen: Tensor, start: int,
                    pool: np.ndarray, pix: Arrays, extractors: dict[str, Embedder], s: AttackSettings,
                    world: World, cache: TokenCache | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each generation, the most similar pool image other than its prompt, in the decision's measure:
    tokens (after the prefix), SSIM / PSNR of decodings, or the extractor's cosine. Pool images are
    compared as generations are, through the tokenizer's reconstruction of their eval view."""
    tokens_of = pool_tokens(iar, ds, s.seed, cache)

    decode01 = decoder(iar, on_device=True)
    if metric == "tokens":
        load, sim = tokens_of, token_similarity(gen, start)
    elif metric in ("ssim", "psnr"):
        gen_img = torch.cat([decode01(gen[b:b + s.batch_size]) for b in range(0, len(gen), s.batch_size)])
        load = lambda pool_ids: decode01(tokens_of(pool_ids))  # noqa: E731
        sim = pixel_similarity(gen_img, ssim if metric == "ssim" else psnr)
    else:
        ext = extractors[metric]
        dev = getattr(ext, "device", iar.device)
        load = lambda pool_ids: embed(ext, decode01(tokens_of(pool_ids)).to(dev))  # noqa: E731
        sim = embedding_similarity(torch.from_numpy(pix[f"emb_gen:{metric}"]))
    return nearest_other(ids, pool, load, sim, chunk=max(s.batch_size, 64), world=world)


def _decide(iar: IAR, s: AttackSettings, metric: Metric, ids: np.ndarray, labels: np.ndarray,
            is_candidate: np.ndarray, heldout: np.ndarray, gt: Tensor, gen: Tensor, prefix: int,
            pix: Arrays, nearest: tuple[np.ndarray, np.ndarray], is_cal: np.ndarray) -> AttackResult:
    """Token measures, threshold and margin, the prompt-specific decisions (rank 0).

    The calibration rows (``is_cal``) set threshold and margin when there are any; the held-out
    controls then stand out of sample. Without them the held-out controls calibrate.
    """
    start = prefix_tokens(iar, prefix)
    bg = background_ids(gt, Tokens(gt[:1].long(), iar.grids).begin_ends) if len(gt) else torch.zeros(iar.seq_len)
    measures = {k: v.double().numpy() for k, v in token_measures(gen, gt, start, bg).items()}
    measures["prefix_background"] = prefix_background(gt, start, bg).double().numpy()
    measures |= {k: v for k, v in pix.items() if not k.startswith("emb_")}
    own = measures[metric.name]
    other, other_id = nearest
    measures["other_similarity"], measures["other_id"] = other, other_id
    gap = own - other
    cal = is_cal if is_cal.any() else heldout
    decision = decide_rule(metric, own, gap, cal, calibrate_on=s.calibrates(int(cal.sum())), fpr=s.fpr,
                           threshold=s.threshold, margin=s.margin,
                           source="never-trained calibration" if is_cal.any() else "held-out")
    return AttackResult(ids, labels, is_candidate, gt, gen, measures, metric.name, decision, prefix, start,
                        describe_prefix(iar, prefix, s.prefix is None),
                        is_calibration=is_cal if is_cal.any() else None).judged_by(decision)


def _cached_tokens(path: Path | None, ids: np.ndarray, prefix: int, seq_len: int) -> tuple[Tensor, Tensor] | None:
    if path is None or not path.is_file():
        return None
    try:
        t = load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        return None
    ok = (np.array_equal(t["ids"].numpy(), ids) and int(t["prefix"]) == prefix and t["gt"].shape[1:] == (seq_len,))
    return (t["gt"], t["gen"]) if ok else None


def _save_tokens(path: Path, ids: np.ndarray, prefix: int, gt: Tensor, gen: Tensor) -> None:
    with atomic_path(path) as tmp:
        save_file({"ids": torch.from_numpy(ids), "prefix": torch.tensor(prefix), "gt": gt.contiguous(),
                   "gen": gen.contiguous()}, str(tmp))


def attack_ids(iar: IAR, ds: ImageDataset, ids: Sequence[int] | np.ndarray, labels: Sequence[int] | None = None,
               settings: AttackSettings | None = None, *, heldout: Sequence[int] | np.ndarray = (),
               pool: Sequence[int] | np.ndarray | None = None, extractors: dict[str, Embedder] | None = None,
               world: World | None = None, token_cache: Path | None = None,
               reuse_tokens: bool = False, pool_cache: TokenCache | None = None,
               calibration: Sequence[int] | np.ndarray = ()) -> AttackResult:
    """Generate from the prefixes of ``ids`` (+ held-out controls) and judge each: the attack without selection.

    ``labels`` override the class a candidate is prompted with (default: its dataset label).
    ``heldout`` images are generated and judged too (never candidates) and calibrate threshold and
    margin (``settings.calibrates``), unless ``calibration`` images (never trained on, never candidates)
    are given: those calibrate and the held-out controls are judged out of sample. ``pool``: the
    images a generation is compared with to find the nearest other (default: every generated one).
    The mitigation sweep calls this on edited models in memory.
    ``token_cache``: where rank 0 saves the generated tokens; with ``reuse_tokens`` a cache that
    holds the same ids and prefix is read instead of generating again.
    """
    s = (settings or AttackSettings()).validate()
    world = world or World()
    extractors = load_extractors(s, iar.device) if extractors is None else extractors
    metric = choose_metric(s.metric, set(extractors))
    given = np.asarray(ids, dtype=np.int64).reshape(-1)
    held = np.unique(np.asarray(heldout, dtype=np.int64))
    calib = np.setdiff1d(np.asarray(calibration, dtype=np.int64), np.union1d(given, held))
    all_ids = np.union1d(np.union1d(given, held), calib)
    if len(all_ids) == 0:
        raise UserError("no images to attack: the id list is empty")
    _check_ids(all_ids, len(ds))
    if labels is not None and len(labels) != len(given):
        raise UserError(f"{len(labels)} labels for {len(given)} ids")
    label_of = dict(zip(given.tolist(), (ds.labels[given] if labels is None else np.asarray(labels)).tolist()))
    lab = np.array([label_of.get(int(i), int(ds.labels[i])) for i in all_ids], dtype=np.int64)
    if len(lab) and (lab.min() < 0 or lab.max() >= iar.num_classes):
        raise UserError(f"class labels must lie in [0, {iar.num_classes}) for this model; the data has "
                        f"{int(lab.max()) + 1} classes")
    prefix = check_prefix(iar, default_prefix(iar) if s.prefix is None else s.prefix)
    is_heldout = np.isin(all_ids, held)
    is_cal = np.isin(all_ids, calib)
    is_candidate = np.isin(all_ids, given) & ~is_heldout & ~is_cal

    t0 = time.monotonic()
    cached = from_main(world, lambda: _cached_tokens(token_cache if reuse_tokens else None, all_ids, prefix,
                                                     iar.seq_len))
    if cached is None:
        gt, gen = generate_tokens(iar, ds, all_ids, lab, prefix, s, world)
        if token_cache is not None and world.is_main:
            _save_tokens(token_cache, all_ids, prefix, gt, gen)
    else:
        gt, gen = cached
        if world.is_main:
            log(f"reusing the generations in {token_cache}")
    t1 = time.monotonic()
    pix = measure_pixels(iar, gt, gen, extractors, s.batch_size, world)
    pool_ids = all_ids if pool is None else np.union1d(np.asarray(pool, dtype=np.int64), all_ids)
    nearest = nearest_in_pool(iar, ds, metric.name, all_ids, gen, prefix_tokens(iar, prefix), pool_ids, pix,
                              extractors, s, world, pool_cache)
    result = from_main(world, lambda: _decide(iar, s, metric, all_ids, lab, is_candidate, is_heldout, gt, gen,
                                              prefix, pix, nearest, is_cal))
    result.timing = {"generation_s": t1 - t0, "decision_s": time.monotonic() - t1, "pool": len(pool_ids)}
    return result


def check_model(iar: IAR, ds: ImageDataset, s: AttackSettings, extractors: dict[str, Embedder]) -> int:
    """Everything about the settings that needs the model, checked before any file is written; the prefix."""
    _positions(iar, s.last)
    choose_metric(s.metric, set(extractors))
    if len(ds.labels) and int(ds.labels.max()) >= iar.num_classes:
        raise UserError(f"the data has {int(ds.labels.max()) + 1} classes but the model only {iar.num_classes}; "
                        f"pass the dataset the model was trained on")
    return check_prefix(iar, default_prefix(iar) if s.prefix is None else s.prefix)


def _check_ids(ids: np.ndarray, n: int) -> None:
    bad = ids[(ids < 0) | (ids >= n)]
    if len(bad):
        raise UserError(f"image id {int(bad[0])} is not in the dataset (ids 0..{n - 1})")


# ---- the whole attack -----------------------------------------------------------------------------
@dataclass
class Selection:
    """Which images were scored and which of them the attack generates."""

    pool: np.ndarray  # candidate pool (held-out ids removed)
    heldout: np.ndarray  # control images (always scored and generated when a plan exists)
    subset: str  # how the pool was chosen
    calibration: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # generated, not scored

    @property
    def scored(self) -> np.ndarray:
        return np.union1d(self.pool, self.heldout)


def image_pool(ds: ImageDataset, plan: Plan | None, s: AttackSettings) -> Selection:
    """The images to score: ``--ids`` or ``--subset`` (thinned), plus the held-out controls of a plan."""
    heldout = np.sort(plan.heldout_ids) if plan is not None else np.empty(0, dtype=np.int64)
    if s.ids is not None:
        pool = np.unique(np.asarray(s.ids, dtype=np.int64))
        _check_ids(pool, len(ds))
        subset = "ids"
    else:
        subset = s.subset or ("train" if plan is not None else "all")
        pool = select_ids(ds, plan, subset, fraction=s.fraction, per_class=s.per_class_subset, seed=s.seed)
    pool = np.setdiff1d(pool, heldout)
    if s.calibrate and len(heldout) == 0:
        raise UserError("--calibrate needs held-out images to calibrate on (a model folder with a planting "
                        "manifest); pass --threshold instead")
    if len(pool) == 0:
        raise UserError(f"no images to attack: subset {subset!r} holds only held-out images or none at all")
    calibrates = plan is not None and s.calibrates(len(heldout))
    calib = outside_sample(plan, ds.labels, s.calibration, s.seed) if calibrates else np.empty(0, dtype=np.int64)
    return Selection(pool, heldout, subset, np.setdiff1d(calib, pool))


def choose_candidates(scores: Arrays, sel: Selection, s: AttackSettings) -> np.ndarray:
    """``--ids`` as given, else the top ``s.top`` of the pool per class (or overall) by the score."""
    if s.ids is not None:
        return sel.pool
    in_pool = np.isin(scores["id"], sel.pool)
    score, tiebreak = ranking_key({k: v[in_pool] for k, v in scores.items()}, s.score_by)
    return select_top(scores["id"][in_pool], scores["label"][in_pool], score, tiebreak, s.top, s.per_class)


def run_attack(iar: IAR, ds: ImageDataset, plan: Plan | None, settings: AttackSettings | None = None,
               out_dir: str | Path | None = None, *, world: World | None = None, source: dict[str, Any] | None = None,
               extractors: dict[str, Embedder] | None = None, resume: bool = False,
               pool_cache: TokenCache | None = None) -> dict[str, Any]:
    """Score, select, generate and decide; with ``out_dir`` write candidates.csv, summary.json, extracted.png.

    Returns the summary (the same dict on every rank). With ``resume`` the scores (scores.csv) and
    generations (generated.safetensors) already in ``out_dir`` are reused when they fit.
    ``pool_cache`` keeps the pool's tokens across calls on one tokenizer (the sweep passes one).
    """
    from iarmem.attack import outputs  # the writers need pipeline's types; import here, not at module load

    s = (settings or AttackSettings()).validate()
    world = world or World()
    out = Path(out_dir) if out_dir is not None else None
    t0 = time.monotonic()
    sel = image_pool(ds, plan, s)
    extractors = load_extractors(s, iar.device) if extractors is None else extractors
    prefix = check_model(iar, ds, s, extractors)
    if world.is_main:
        log(f"scoring {len(sel.scored)} images ({describe_positions(iar, s.last)}; {len(sel.heldout)} held out); "
            f"prefix: {describe_prefix(iar, prefix, s.prefix is None)}")
    scores_file = out / outputs.SCORES_FILE if out is not None else None
    scores = from_main(world, lambda: outputs.read_scores(scores_file, sel.scored) if resume and scores_file else None)
    pool_cache = TokenCache() if pool_cache is None else pool_cache
    if scores is None:
        scores = score_images(iar, ds, sel.scored, last=s.last, batch_size=s.batch_size, seed=s.seed, world=world,
                              cache=pool_cache, membership=s.membership)
        if scores_file is not None and world.is_main:
            outputs.write_scores(scores_file, scores)
    elif world.is_main:
        log(f"reusing the scores in {scores_file}")
    t_score = time.monotonic() - t0
    candidates = from_main(world, lambda: choose_candidates(scores, sel, s))
    if world.is_main:
        log(f"generating {len(candidates)} candidates + {len(sel.heldout)} held-out controls"
            + (f" + {len(sel.calibration)} never-trained images to calibrate on" if len(sel.calibration) else ""))
    result = attack_ids(iar, ds, candidates, None, s, heldout=sel.heldout, pool=sel.scored, extractors=extractors,
                        world=world, token_cache=out / TOKENS_FILE if out is not None else None, reuse_tokens=resume,
                        pool_cache=pool_cache, calibration=sel.calibration)
    result.timing = {"scoring_s": t_score, **result.timing, "total_s": time.monotonic() - t0}
    strong = None
    if s.strength == "strong":
        cal = result.is_calibration if result.is_calibration is not None else np.zeros(len(result.ids), bool)
        if world.is_main:
            log(f"strong attack on {int(result.is_candidate.sum())} targets + {len(sel.heldout)} held-out controls"
                + (f" + {int(cal.sum())} never-trained images that calibrate its tries together" if cal.any() else ""))
        extra = (outside_by_class(plan, ds.labels, result.labels[result.is_candidate], s.class_calibration, s.seed,
                                  exclude=np.union1d(sel.scored, sel.calibration))
                 if plan is not None and cal.any() else np.empty(0, dtype=np.int64))
        if world.is_main and len(extra):
            log(f"+ {len(extra)} never-trained images of the targets' classes for per-class bars")
        strong = run_strong(iar, ds, result.ids, result.labels, ~result.is_candidate & ~cal, result.gt, sel.scored,
                            METRICS[result.metric], result.prefix, s, extractors, world, pool_cache,
                            is_calibration=cal, default_calls=result.calls(), class_calibration=extra)
    summary = from_main(world, lambda: outputs.summarize(iar, ds, plan, s, sel, scores, result, source,
                                                         world.size, strong))
    if out is not None and world.is_main:
        outputs.write_all(out, iar, ds, plan, s, scores, result, summary, strong)
    return summary
