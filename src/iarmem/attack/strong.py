"""The strong attack: many ways to pull an image out, so that a fix is checked against more than one prompt.

A mitigation chosen with one greedy prompt may only hide a copy from that prompt (Kowalczuk et al.,
"Finding Dori"). For every target (the default attack's candidates, or ``--ids``) and every
held-out control, the strong attack makes these tries, weakest first:

- every ground-truth prefix from none up to VAR's 5th scale (raster: 0 to 50 % of the tokens, in
  steps of 1/16), each decoded greedily on the conditional logits (the paper's decoding), greedily
  with classifier-free guidance (``GUIDANCE``), and sampled at temperature 1 with ``SAMPLES`` seeds;
- a trigger: the class conditioning optimised for the target by gradient descent
  (``attack.trigger``), then greedy decoding with no prefix and with the default prefix.

Every try is judged by the prompt-specific rule of the default attack. With never-trained
calibration images (the default attack's ``--calibration-images``) the tries are calibrated together
(``attack.union``): at most ``fpr`` of those images pass *any* try, and the plan's held-out controls
are judged out of sample. Without them each try is calibrated alone on the held-out controls, which
lets a never-trained image through some try far more often than ``fpr`` (docs/RESULTS.md, section 10).
Rules calibrated once can be passed back in (``rules``) to judge an edited model by the same bars.
An image is extracted when some try extracts it, from its own prompt or as a copy produced from
another prompt, and is reported with the weakest such try. The default try is among them, judged
the same way, so the strong attack finds every image the default finds when both use the same
bars. Generation and trigger search are sharded under torchrun like the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from iarmem.attack.decide import Metric, copies_other, decide_rule, left_out_passes
from iarmem.attack.generate import GREEDY, Decoding, batch_seed, generate_batch, is_multiscale, prefix_tokens
from iarmem.attack.neighbours import TokenCache, embedding_similarity, nearest_other, pixel_similarity, pool_tokens
from iarmem.attack.settings import AttackSettings
from iarmem.attack.similarity import Embedder, embed, psnr, ssim
from iarmem.attack.trigger import generate_with_trigger, optimise_trigger
from iarmem.attack.union import TryRules, union_rules
from iarmem.data import ImageDataset
from iarmem.distributed import World, all_gather_object
from iarmem.models.base import IAR, Tokens
from iarmem.progress import progress

GUIDANCE = (1.5, 3.0)
SAMPLES = 3
MAX_VAR_PREFIX = 5  # scales
MAX_RASTER_PREFIX = 0.5  # of the tokens
RASTER_STEP = 1 / 16
KINDS = ("greedy", "guided", "sampled", "trigger")


@dataclass(frozen=True)
class Try:
    """One way to prompt: a prefix length, a decoding, and whether the conditioning is a trigger."""

    prefix: int
    decoding: Decoding = GREEDY
    trigger: bool = False

    @property
    def kind(self) -> str:
        if self.trigger:
            return "trigger"
        return "greedy" if self.decoding.greedy and self.decoding.cfg is None else (
            "guided" if self.decoding.greedy else "sampled")

    def sort_key(self) -> tuple[int, int, float, int]:
        return self.prefix, KINDS.index(self.kind), self.decoding.cfg or 0.0, self.decoding.seed

    def describe(self, iar: IAR) -> str:
        unit = "scales" if is_multiscale(iar) else "tokens"
        what = "trigger, greedy" if self.trigger else self.decoding.describe()
        return f"prefix {self.prefix} {unit}, {what}"


def strong_tries(iar: IAR, default_prefix: int) -> list[Try]:
    """Every try, weakest first: by prefix, then greedy < guided < sampled < trigger."""
    if is_multiscale(iar):
        prefixes = set(range(0, min(MAX_VAR_PREFIX, len(iar.grids) - 1) + 1))
    else:
        L = iar.seq_len
        prefixes = {int(round(k * RASTER_STEP * L)) for k in range(int(MAX_RASTER_PREFIX / RASTER_STEP) + 1)}
    prefixes = sorted(prefixes | {default_prefix})
    tries = []
    for p in prefixes:
        tries.append(Try(p))
        tries += [Try(p, Decoding(cfg=g)) for g in GUIDANCE]
        tries += [Try(p, Decoding(greedy=False, seed=k + 1)) for k in range(SAMPLES)]
    tries += [Try(0, trigger=True), Try(default_prefix, trigger=True)]
    return sorted(set(tries), key=Try.sort_key)


@dataclass
class StrongResult:
    """Per target id: extracted by some try, the weakest such try (index into ``tries``) and how."""

    tries: list[Try]
    ids: np.ndarray  # targets and held-out controls, as generated
    is_heldout: np.ndarray
    extracted_ids: np.ndarray  # every pool image some try extracted
    weakest: dict[int, int]  # image id -> index of its weakest extracting try
    via: dict[int, int]  # image id -> the prompt whose generation copied it at that try (itself: own prompt)
    similarity: dict[int, float]  # image id -> the similarity at that try
    per_try: list[dict[str, Any]]
    timing: dict[str, float]
    left_out: np.ndarray | None = None  # per held-out control: extracted by some try when left out of calibration
    rules: TryRules | None = None  # the tries' bars when calibrated together (or reused); None: per try
    calibration_passes: int = 0  # calibration images extracted by some try (in sample when ``rules`` came from them)


def _generate(iar: IAR, gt: Tensor, labels: np.ndarray, t: Try, s: AttackSettings, world: World,
              ids: np.ndarray) -> Tensor:
    """[N, L] int32 generations of one non-trigger try from the ground-truth tokens ``gt`` of images ``ids``
    (each row's draws seeded by its image id: the same in any batch, so a probe of one image repeats them)."""
    n = len(gt)
    batches = list(range(0, n, s.batch_size))
    local = {}
    for b in batches[world.rank::world.size]:
        rows = slice(b, min(n, b + s.batch_size))
        out = generate_batch(iar, Tokens(gt[rows].long(), iar.grids), torch.as_tensor(labels[rows]), t.prefix,
                             logit_noise=s.logit_noise, seed=s.seed, batch_index=b // s.batch_size,
                             decoding=t.decoding, row_seeds=ids[rows].tolist())
        local[b] = out.ids_BL.to("cpu", torch.int32)
    merged: dict[int, Tensor] = {}
    for part in all_gather_object(local, world):
        merged.update(part)  # type: ignore[arg-type]
    return torch.cat([merged[b] for b in batches]) if batches else gt[:0].clone()


def trigger_rounds(labels: np.ndarray) -> list[np.ndarray]:
    """Row indices in rounds of distinct classes (round r: the r-th target of every class), so each round's
    triggers are searched together."""
    count: dict[int, int] = {}
    rank = np.empty(len(labels), dtype=np.int64)
    for i, c in enumerate(np.asarray(labels).tolist()):  # the r-th target of class c goes to round r
        rank[i] = count.get(c, 0)
        count[c] = rank[i] + 1
    return [np.flatnonzero(rank == r) for r in range(int(rank.max()) + 1)] if len(labels) else []


def _triggers(iar: IAR, gt: Tensor, labels: np.ndarray, tries: list[Try], steps: int,
              world: World, noise: float = 0.0, seed: int = 0) -> dict[Try, Tensor]:
    """Generations of the trigger tries: one optimised conditioning row per target (rounds sharded)."""
    trig = [t for t in tries if t.trigger]
    rounds = trigger_rounds(labels)
    local: dict[int, list[Tensor]] = {}
    mine = range(world.rank, len(rounds), world.size)
    for r in progress(mine, total=len(mine), desc="trigger search", enabled=world.is_main):
        rows = rounds[r]
        target, lab = Tokens(gt[rows].long(), iar.grids), torch.as_tensor(labels[rows])
        found, _ = optimise_trigger(iar, target, lab, steps)
        local[r] = [generate_with_trigger(iar, target, lab, found, t.prefix, logit_noise=noise,
                                          generator=_noise_generator(iar, noise, seed, r)).ids_BL.to("cpu", torch.int32)
                    for t in trig]
    merged: dict[int, list[Tensor]] = {}
    for part in all_gather_object(local, world):
        merged.update(part)  # type: ignore[arg-type]
    out = {}
    for k, t in enumerate(trig):
        gens = torch.empty(len(gt), gt.shape[1], dtype=torch.int32)
        for r, rows in enumerate(rounds):
            gens[rows] = merged[r][k]
        out[t] = gens
    return out


def _noise_generator(iar: IAR, noise: float, seed: int, batch: int) -> torch.Generator | None:
    """The logit-noise defense's draws for one trigger round: a function of (seed, round) only."""
    return torch.Generator(device=iar.device).manual_seed(batch_seed(seed, batch)) if noise > 0 else None


def _own_and_nearest(iar: IAR, ds: ImageDataset, metric: Metric, gens: Tensor, gt: Tensor, starts: np.ndarray,
                     query_ids: np.ndarray, pool: np.ndarray, extractors: dict[str, Embedder], s: AttackSettings,
                     world: World, cache: TokenCache | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Own similarity and nearest other pool image of every generation of every try, in one pool pass."""
    tokens_of = pool_tokens(iar, ds, s.seed, cache)

    def decode01(ids_BL: Tensor) -> Tensor:
        out = [iar.to_unit_range(iar.decode(Tokens(ids_BL[b:b + s.batch_size].long().to(iar.device), iar.grids)))
               .clamp(0, 1).float() for b in range(0, len(ids_BL), s.batch_size)]
        return torch.cat(out)

    if metric.name == "tokens":
        after_QL = torch.arange(gens.shape[1])[None, :] >= torch.as_tensor(starts)[:, None]
        count_Q = after_QL.sum(1).clamp_min(1).float()
        own = ((gens == gt) & after_QL).sum(1).float() / count_Q

        def sim(pool_nL: Tensor) -> Tensor:
            same = (gens[:, None, :] == pool_nL[None, :, :].to(gens.dtype)) & after_QL[:, None, :]
            return same.sum(-1).float() / count_Q[:, None]

        near, near_id = nearest_other(query_ids, pool, tokens_of, sim, world=world)
        return own.double().numpy(), near, near_id
    gen_img, rec_img = decode01(gens), decode01(gt)
    if metric.name in ("ssim", "psnr"):
        measure = ssim if metric.name == "ssim" else psnr
        own = measure(gen_img, rec_img).double().numpy()
        near, near_id = nearest_other(query_ids, pool, lambda ids: decode01(tokens_of(ids)),
                                      pixel_similarity(gen_img, measure), world=world)
        return own, near, near_id
    ext = extractors[metric.name]
    e_gen, e_rec = embed(ext, gen_img), embed(ext, rec_img)
    near, near_id = nearest_other(query_ids, pool, lambda ids: embed(ext, decode01(tokens_of(ids))),
                                  embedding_similarity(e_gen), world=world)
    return (e_gen * e_rec).sum(1).double().numpy(), near, near_id


def run_strong(iar: IAR, ds: ImageDataset, ids: np.ndarray, labels: np.ndarray, is_heldout: np.ndarray,
               gt: Tensor, pool: np.ndarray, metric: Metric, default_prefix: int, s: AttackSettings,
               extractors: dict[str, Embedder], world: World, cache: TokenCache | None = None,
               is_calibration: np.ndarray | None = None, rules: TryRules | None = None,
               default_calls: list[tuple[int, int, float]] = (),
               class_calibration: np.ndarray | tuple[int, ...] = ()) -> StrongResult:
    """Every try on every target and control; which images come out, and under which weakest try.

    ``is_calibration`` marks never-trained rows (not held-out controls, never targets) that calibrate
    the tries together; ``rules`` fixes every try's bars instead (calibrated earlier, e.g. on the
    unedited model). ``default_calls`` (image, prompt, similarity): what the default attack called
    extracted under its own bar; they count as the default try's, so the strong attack finds every
    image the default finds even where its joint bar is higher. ``class_calibration``: more never-trained
    images (of the targets' classes) that calibrate with ``is_calibration``'s rows, class by class only:
    each class then gets its own bar as well (``union_rules``).
    """
    t0 = time.monotonic()
    tries = strong_tries(iar, default_prefix)
    extra = np.setdiff1d(np.asarray(class_calibration, dtype=np.int64), ids) if rules is None else ids[:0]
    marginal = np.ones(len(ids), dtype=bool)
    if len(extra):  # appended as calibration rows, tokenized like the pool (the eval view)
        gt = torch.cat([gt, pool_tokens(iar, ds, s.seed, cache)(extra).to(gt.dtype)])
        cal0 = np.zeros(len(ids), dtype=bool) if is_calibration is None else np.asarray(is_calibration, dtype=bool)
        is_calibration = np.concatenate([cal0, np.ones(len(extra), dtype=bool)])
        is_heldout = np.concatenate([np.asarray(is_heldout, dtype=bool), np.zeros(len(extra), dtype=bool)])
        labels = np.concatenate([np.asarray(labels, dtype=np.int64), ds.labels[extra].astype(np.int64)])
        ids, marginal = np.concatenate([ids, extra]), np.concatenate([marginal, np.zeros(len(extra), dtype=bool)])
    if rules is not None and len(rules.thresholds) != len(tries):
        raise ValueError(f"{len(rules.thresholds)} calibrated tries for {len(tries)} tries of this model")
    gens: dict[Try, Tensor] = {}
    with torch.no_grad():
        for t in progress([t for t in tries if not t.trigger], desc="strong attack", enabled=world.is_main):
            gens[t] = _generate(iar, gt, labels, t, s, world, ids)
    gens |= _triggers(iar, gt, labels, tries, s.trigger_steps, world, s.logit_noise, s.seed)
    t_gen = time.monotonic() - t0
    n = len(ids)
    all_gens = torch.cat([gens[t] for t in tries])
    starts = np.concatenate([np.full(n, prefix_tokens(iar, t.prefix)) for t in tries])
    query_ids = np.tile(ids, len(tries))
    with torch.no_grad():
        own, near, near_id = _own_and_nearest(iar, ds, metric, all_gens, gt.repeat(len(tries), 1), starts, query_ids,
                                               np.union1d(pool, ids), extractors, s, world, cache)
    cal = np.zeros(n, dtype=bool) if is_calibration is None else np.asarray(is_calibration, dtype=bool)
    is_heldout = np.asarray(is_heldout, dtype=bool) & ~cal
    own_KN, near_KN, near_id_KN = (a.reshape(len(tries), n) for a in (own, near, near_id))
    calibrating = s.calibrates(int(is_heldout.sum() + cal.sum())) and s.margin is None and s.threshold is None
    if rules is None and cal.sum() >= 2 and calibrating:
        rules = union_rules(metric, own_KN[:, cal], own_KN[:, cal] - near_KN[:, cal], s.fpr,
                            labels_N=np.asarray(labels)[cal] if len(extra) else None, marginal_N=marginal[cal])
    bars_KN = rules.bars(labels) if rules is not None else None
    weakest: dict[int, int] = {}
    via: dict[int, int] = {}
    similarity: dict[int, float] = {}
    per_try = []
    left_out = np.zeros(int(is_heldout.sum()), dtype=bool) if calibrating and rules is None else None
    cal_ids = ids[cal]
    cal_passed = np.zeros(n, dtype=bool)
    for k, t in enumerate(tries):
        o, nn, nn_id = own_KN[k], near_KN[k], near_id_KN[k]
        d = rules.decision(k) if rules is not None else decide_rule(
            metric, o, o - nn, is_heldout, calibrate_on=s.calibrates(int(is_heldout.sum())), fpr=s.fpr,
            threshold=s.threshold, margin=s.margin)
        lo = left_out_passes(metric, o, o - nn, is_heldout, s.fpr) if left_out is not None else None
        if lo is not None:
            left_out |= lo
        thr, mar, oth = (b[k] for b in bars_KN) if bars_KN is not None else (d.threshold, d.margin, d.other_bar)
        mine = copies_other(nn, o, thr, mar)
        other = copies_other(o, nn, oth, mar) & (nn_id >= 0)
        cal_passed |= mine & cal
        copied_cal = other & np.isin(nn_id, cal_ids)
        cal_passed[np.isin(ids, nn_id[copied_cal])] = True
        for j in np.flatnonzero(mine & ~cal):
            _claim(weakest, via, similarity, int(ids[j]), k, int(ids[j]), float(o[j]))
        for j in np.flatnonzero(other & ~copied_cal):
            _claim(weakest, via, similarity, int(nn_id[j]), k, int(ids[j]), float(nn[j]))
        per_try.append({"try": t.describe(iar), "kind": t.kind, "prefix": t.prefix, "threshold": d.threshold,
                        "margin": d.margin, "own_prompt": int(mine[~is_heldout & ~cal].sum()),
                        "heldout_own_prompt": int(mine[is_heldout].sum()),
                        "calibration_own_prompt": int(mine[cal].sum()),
                        "copies_other": int((other & ~copied_cal).sum()),
                        "heldout_left_out": int(lo.sum()) if lo is not None else None})
    default_k = tries.index(Try(default_prefix))
    for image, prompt, sim in default_calls:
        if not np.isin(image, cal_ids):
            _claim(weakest, via, similarity, image, default_k, prompt, sim)
    extracted = np.array(sorted(weakest), dtype=np.int64)
    return StrongResult(tries, ids[~cal], is_heldout[~cal], extracted, weakest, via, similarity, per_try,
                        {"generation_s": t_gen, "total_s": time.monotonic() - t0}, left_out, rules,
                        int(cal_passed.sum()))


def _claim(weakest: dict[int, int], via: dict[int, int], similarity: dict[int, float], image: int, k: int,
           prompt: int, sim: float) -> None:
    """Record try ``k`` for ``image`` unless a weaker try (or the image's own prompt at this try) has it."""
    if image in weakest and (weakest[image] < k or (weakest[image] == k and via[image] == image)):
        return
    weakest[image], via[image], similarity[image] = k, prompt, sim
