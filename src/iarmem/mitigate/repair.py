"""The repair: remove given leaked images from a model at the least cost, checked by the strong attack.

1. Before: the strong attack (every prefix, decoding, guidance and a trigger search) on the targets
   and the held-out controls, and the quality of held-out generations (FID and the rest).
2. Localize: each extracted target's units from the gradient localizer, refined (issue 15: the
   attack-checked smallest set per image). The edit is one set: the union over the targets.
3. Rounds: remove the union exactly (``exact`` x0), run the strong attack and the quality
   evaluation again. A target still extracted grows its set: units from its ranking re-computed on
   the edited model, doubling, until probes of every try that brought it back are stopped. Stop
   when no target comes out, when the relative FID increase crosses ``max_quality_loss`` or class accuracy
   falls by more than ``max_accuracy_drop`` points (that edit is refused; one that leaves targets grows on
   while its cost is within ``grow_past_guard`` x the bars, for a later round's prune), when the union would
   pass ``max_units`` % of the fc1 units, or after ``max_rounds``.
   When the rounds end refused, the repair goes back to its last round within the guard that left targets
   (or to the unedited model when there is none) and grows again from there, each unit it adds screened by
   the guard first (``Screen``).
4. Prune: put back whole blocks, then single units (last added first), while every target's probes
   stay stopped; the pruned edit is kept only if the strong attack confirms it and the guard passes
   it. When the strong attack sees through it, the tries it used join the probes and the grown set is
   pruned again (``prune_rounds`` attempts). A round that stops every target but crosses the guard is
   pruned too before it is refused.
5. Fallback: when no exact removal within the budgets stops every target within the guard, the last round's
   units are fine-tuned instead (unit-local unlearning); kept only if the strong attack and the guard pass it.
6. Alternatives at the same leak: as many random units of the same layers, the paper's global top
   p % x 0.5 (the smallest p of a grid whose probes all stop), the logit-noise defense (the smallest
   std that does), and fine-tuning the repair's own units (``unlearn``).

Every expensive step is journalled under its name, so a stopped repair resumes where it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_tensors

from iarmem.attack.decide import METRICS, Decision
from iarmem.attack.generate import GREEDY
from iarmem.attack.membership import evaluate_membership
from iarmem.attack.neighbours import TokenCache, pool_tokens
from iarmem.attack.pipeline import attack_ids, score_images
from iarmem.attack.settings import AttackSettings
from iarmem.attack.similarity import Embedder
from iarmem.attack.strong import Try, run_strong, strong_tries
from iarmem.attack.union import TryRules
from iarmem.data import ImageDataset, Plan
from iarmem.distributed import World
from iarmem.features import FeatureExtractor
from iarmem.fileio import write_bytes, write_json
from iarmem.localize.refine import Rerank
from iarmem.metrics.quality import Reference, evaluate_model
from iarmem.metrics.sampling import default_sampling
from iarmem.mitigate import probe as probes_
from iarmem.mitigate.edit import temporary_edit
from iarmem.mitigate.localization import Localization
from iarmem.mitigate.probe import Probe
from iarmem.mitigate.select import Scores, pick_random, select_units
from iarmem.mitigate.unlearn import UnlearnConfig, restore, snapshot, unit_values, unlearn
from iarmem.models.base import IAR, Tokens
from iarmem.progress import log
from iarmem.quality_guard import (
    mean_fid,
    noise_floor,
    paired_change,
    refusal,
    relative_fid,
    relative_fid_se,
    unsettled,
)
from iarmem.tokens import load_views

ALTERNATIVES = ("random", "paper", "noise", "unlearn")
QUALITY_KEYS = ("fid", "kid_mean", "precision", "recall", "class_accuracy")
DRAWN_KEYS = ("fid", "class_accuracy")  # recorded per sampling seed (``KEY_draws``); decisions read their means
JOURNAL_FILE = "repair_steps.json"
FALLBACK_FILE = "fallback_units.safetensors"
FALLBACKS = ("unlearn", "none")
PROBE_RULES = ("joint", "agreement")


@dataclass(frozen=True)
class RepairConfig:
    max_quality_loss: float = 0.10  # relative FID increase an edit may cost
    # points of class accuracy an edit may cost (None: not guarded); read, like FID, as the mean over paired draws
    max_accuracy_drop: float | None = 2.0
    max_units: float = 5.0  # percent of the fc1 units the edit may remove
    max_rounds: int = 4
    # a round the guard refuses that still leaves targets extracted grows on when no cost is over this multiple of
    # its bar: a later round may stop them, and its prune (below) may bring the edit back within the guard; a round
    # far over the guard only gets dearer as it grows (0: stop at the first refused round, before 2026-12-03)
    grow_past_guard: float = 2.0
    # when the rounds end refused: go back to the last round within the guard that left targets (none: the unedited
    # model) and grow again from there, each unit added only if removing it with the units already chosen keeps the
    # guard (``Screen``), at most this many skipped per target and grow. Removals interact: on tiny-var s2 inj. 0 no
    # grown unit alone cost over 9 % FID, two together 39 % (docs/RESULTS.md section 10, fourteenth session).
    # 0: no second grow
    screen_tries: int = 8
    prune_tries: int = 48  # single units tried back in the prune step
    # prune attempts: one whose edit the strong attack sees through adds the try it used to the probes and prunes the
    # grown set again (a probe screens the tries seen so far; the strong attack may find another)
    prune_rounds: int = 3
    # a target extracted in this many rounds (it came back after a grow) is probed with every try of the strong
    # attack from its own prompt, at its class's bars, not only the tries seen so far (0: never)
    every_try_after: int = 2
    # probes: "joint" judges a probe as the strong attack judges its try (agreement above the bar *and* above the
    # nearest other pool image's by the margin: stopped when either is under its bar minus ``margin``);
    # "agreement" reads the agreement alone, a stricter screen than the verdict (before 2026-12-03)
    probe_rule: str = "joint"
    # probes: stopped means agreement <= the try's threshold minus this; below the refinement's 0.1 because the
    # repair's bars are the calibrated ones (0.4-0.9), already far under the absolute 0.9, and the strong attack
    # verifies every kept edit
    margin: float = 0.05
    alternatives: tuple[str, ...] = ALTERNATIVES
    paper_tops: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
    noise_levels: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    alternative_points: int = 3  # strong attacks one alternative may spend looking for the same leak
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    # when exact removal within the budgets leaves a target or crosses the guard: fine-tune the last round's units
    # instead ("unlearn"), kept only if the strong attack stops every target and the guard passes it ("none": off)
    fallback: str = "unlearn"
    # sampling seeds every FID is measured under, the same for every edit: the guard compares the mean over them
    # (one draw moves ~10 % on tiny-var at 20 samples per class, docs/RESULTS.md section 10), and their spread on
    # the unedited model is the noise a guard must exceed
    quality_draws: int = 3
    # a verdict the seeds could flip (the change within two standard errors of a bar, over none by more) draws
    # ``quality_draws`` more paired seeds, up to this many (None: 3 x ``quality_draws``)
    max_quality_draws: int | None = None
    seed: int = 0

    @property
    def draw_cap(self) -> int:
        return self.max_quality_draws if self.max_quality_draws is not None else 3 * self.quality_draws


@dataclass
class RepairContext:
    """What every step shares. ``iar`` is edited only inside ``temporary_edit`` blocks until the end."""

    iar: IAR
    ds: ImageDataset
    plan: Plan | None
    targets: np.ndarray  # the images to remove
    attack: AttackSettings  # the leaked run's decision settings, strength strong
    pool: np.ndarray  # the images a generation's nearest other is searched in
    heldout: np.ndarray
    scores: Scores  # the fc1 units, flat in layer order
    features: FeatureExtractor
    reference: Reference
    n_per_class: int
    extractors: dict[str, Embedder]
    world: World
    keep: np.ndarray  # ordinary training images: unlearning keeps their loss; membership scores them
    batch_size: int = 32
    quality_seeds: tuple[int, ...] = ()  # sampling seeds of the FID draws beyond ``attack.seed`` (the same per edit)
    # never-trained images that calibrate the strong attack's tries together on the first measurement; its bars
    # (``rules``) then judge every edited state, so an edit cannot move the bars it is judged by
    calibration: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    class_calibration: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # per-class bars
    rules: TryRules | None = None
    default_rule: Decision | None = None  # the default attack's threshold and margin, fixed with ``rules``
    cache: TokenCache = field(default_factory=TokenCache)
    tokens: dict[int, torch.Tensor] = field(default_factory=dict)  # eval-view tokens of targets and prompts
    labels: dict[int, int] = field(default_factory=dict)

    def units(self, flat: np.ndarray) -> dict[str, tuple[int, ...]]:
        return self.scores.to_units(np.asarray(flat, dtype=np.int64))

    def eval_tokens(self, ids: np.ndarray) -> None:
        """Tokenize the eval view of ``ids`` once (probes compare against these)."""
        todo = np.array([i for i in np.asarray(ids).tolist() if i not in self.tokens], dtype=np.int64)
        for b in range(0, len(todo), self.batch_size):
            rows = todo[b:b + self.batch_size]
            with torch.no_grad():
                x, y = load_views(self.iar, self.ds, rows, 0, self.attack.seed)
                t = self.iar.tokenize(x).ids_BL.cpu()
            for i, row, lab in zip(rows.tolist(), t, y.tolist()):
                self.tokens[i], self.labels[i] = row, int(lab)


class Journal:
    """Named results of finished steps in ``path`` (JSON), so a resumed repair skips them."""

    def __init__(self, path: Path, world: World) -> None:
        self.path, self.world = path, world
        self.steps: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        if name not in self.steps:
            self.steps[name] = fn()
            if self.world.is_main:
                write_json(self.path, self.steps)
        return self.steps[name]


# ---- measuring one model state -------------------------------------------------------------------------
def strong_leak(ctx: RepairContext, noise: float = 0.0) -> dict[str, Any]:
    """The strong attack on the targets and held-out controls of the model as it is now: judged by ``ctx.rules``,
    or (first measurement) calibrated on ``ctx.calibration`` together, or else try by try on the held-out."""
    s = ctx.attack.replace(logit_noise=noise)
    calibration = ctx.calibration if ctx.rules is None else np.zeros(0, dtype=np.int64)
    res = attack_ids(ctx.iar, ctx.ds, ctx.targets, None, s, heldout=ctx.heldout, pool=ctx.pool,
                     extractors=ctx.extractors, world=ctx.world, pool_cache=ctx.cache, calibration=calibration)
    if ctx.default_rule is not None:  # the default attack's calls count too: by its rule on the unedited model
        res = res.judged_by(ctx.default_rule)
    cal = res.is_calibration if res.is_calibration is not None else np.zeros(len(res.ids), dtype=bool)
    st = run_strong(ctx.iar, ctx.ds, res.ids, res.labels, ~res.is_candidate & ~cal, res.gt, ctx.pool,
                    METRICS[res.metric], res.prefix, s, ctx.extractors, ctx.world, ctx.cache, is_calibration=cal,
                    rules=ctx.rules, default_calls=res.calls(),
                    class_calibration=ctx.class_calibration if ctx.rules is None and cal.any() else ())
    taken = st.extracted_ids
    out_targets = sorted(int(i) for i in np.intersect1d(taken, ctx.targets))
    label_of = dict(zip(res.ids.tolist(), res.labels.tolist()))

    def bar(k: int, prompt: int) -> float:
        """Try ``k``'s token bar for a generation prompted with ``prompt`` (its class's bar where there is one)."""
        if res.metric != "tokens":
            return METRICS["tokens"].default_threshold
        if st.rules is None:
            return float(st.per_try[k]["threshold"])
        # the prompt may be a calibration image (its generation copied a target): its dataset label
        return float(st.rules.bars(np.array([label_of.get(prompt, int(ctx.ds.labels[prompt]))]))[0][k, 0])

    def gap(k: int, prompt: int) -> float | None:
        """Try ``k``'s margin over the nearest other image (the joint rule's second bar), as ``bar``."""
        if res.metric != "tokens":
            return None
        if st.rules is None:
            return float(st.per_try[k]["margin"])
        return float(st.rules.bars(np.array([label_of.get(prompt, int(ctx.ds.labels[prompt]))]))[1][k, 0])

    probes = [Probe(i, st.via[i], st.tries[st.weakest[i]], bar(st.weakest[i], st.via[i]), gap(st.weakest[i], i))
              for i in out_targets]
    default_try = next(k for k, t in enumerate(st.tries) if t == Try(res.prefix, GREEDY))
    return {
        "extracted": out_targets,
        "default_extracted": sorted(int(i) for i in np.intersect1d(res.extracted_ids(), ctx.targets)),
        "others": sorted(int(i) for i in np.setdiff1d(taken, np.union1d(ctx.targets, ctx.heldout))),
        "heldout_false_positives": int(np.isin(taken, ctx.heldout).sum()),
        "rules": st.rules.as_dict() if st.rules is not None else None,
        "default_rule": {"threshold": res.decision.threshold, "margin": res.decision.margin,
                         "other_bar": res.decision.other_bar},
        "calibration_false_positives": st.calibration_passes if cal.any() else None,
        "weakest": {str(i): st.tries[st.weakest[i]].describe(ctx.iar) for i in out_targets},
        "weakest_kind": {str(i): st.tries[st.weakest[i]].kind for i in out_targets},
        "per_try": [{"try": t["try"], "kind": t["kind"], "prefix": t["prefix"], "threshold": t["threshold"],
                     "extracted": t["own_prompt"], "copies_other": t["copies_other"]} for t in st.per_try],
        "tries": len(st.tries),
        "probes": [p.as_dict() for p in probes],
        "default_probe_bar": float(st.per_try[default_try]["threshold"]) if res.metric == "tokens" else
        METRICS["tokens"].default_threshold,  # the overall bar (journals before class bars read only this)
        "default_probe_bars": {str(i): bar(default_try, int(i)) for i in ctx.targets.tolist()},
        "default_probe_gaps": {str(i): gap(default_try, int(i)) for i in ctx.targets.tolist()},
        "default_prefix": int(res.prefix),
        "metric": res.metric,
        "seconds": round(st.timing["total_s"] + res.timing.get("generation_s", 0.0), 2),
    }


def keep_bars(ctx: RepairContext, before: dict[str, Any]) -> None:
    """Judge every later state by the bars the first measurement calibrated (its ``rules``); without them
    (no calibration images, or a journal from before they existed) each try stays calibrated on the held-out."""
    rules, default = before["leak"].get("rules"), before["leak"].get("default_rule")
    ctx.rules = TryRules.from_dict(rules) if rules else None
    ctx.default_rule = None
    if rules and default:  # journals before the default rule was kept: it is calibrated again at every state
        how = "fixed on the unedited model"
        ctx.default_rule = Decision(float(default["threshold"]), how, float(default["margin"]), how,
                                    other_threshold=float(default["other_bar"]))
    if rules is None:
        ctx.calibration = np.zeros(0, dtype=np.int64)


def quality(ctx: RepairContext, noise: float = 0.0, seed: int | None = None) -> dict[str, Any]:
    sampling = default_sampling(ctx.iar)
    if noise > 0:
        sampling = sampling.override(logit_noise=noise)
    q = evaluate_model(ctx.iar, None, ctx.features, ctx.n_per_class, ctx.attack.seed if seed is None else seed,
                       reference=ctx.reference, settings=sampling, batch_size=ctx.batch_size, show_progress=False)
    return {k: q.get(k) for k in QUALITY_KEYS}


def quality_noise(ctx: RepairContext, before: dict[str, Any], draws: int) -> dict[str, Any]:
    """FID of the unedited model under ``draws`` sampling seeds, the reference images fixed as in every
    measurement: how far FID moves with no edit at all. A quality guard inside that spread reads noise
    (on the tiny models at 20 samples per class: a relative std of about 9 %, docs/RESULTS.md section 10)."""
    seeds = [ctx.attack.seed + k for k in range(draws)]
    fids = [float(f) for f in before["quality"].get("fid_draws", [])]
    if len(fids) != draws:  # a journal written before every measurement drew them
        fids = [float(before["quality"]["fid"])] + [float(quality(ctx, seed=s)["fid"]) for s in seeds[1:]]
    f = np.asarray(fids)
    med = float(np.median(f))
    out = {"seeds": seeds, "fid": fids, "median": med,
           "relative_std": float(f.std(ddof=1) / med) if len(f) > 1 and med else 0.0}
    acc = [float(a) for a in before["quality"].get("class_accuracy_draws") or [] if a is not None]
    if len(acc) == draws > 1:  # the accuracy guard's noise, in points (binomial at 200 generations: about 3)
        out |= {"class_accuracy": acc, "class_accuracy_std_points": float(100 * np.std(acc, ddof=1))}
    return out


def measure(ctx: RepairContext, flat: np.ndarray | None = None, *, edit: str = "exact", factor: float = 0.0,
            noise: float = 0.0) -> dict[str, Any]:
    """Leak and quality with ``flat`` units edited (none: the model as it is now)."""
    t0 = time.monotonic()
    units = ctx.units(flat if flat is not None else np.zeros(0, dtype=np.int64))
    with temporary_edit(ctx.iar, units, edit, factor):
        leak = strong_leak(ctx, noise)
        q = quality(ctx, noise)
        if ctx.quality_seeds:
            more = drawn(ctx, ctx.quality_seeds, noise)
            for key in DRAWN_KEYS:
                q[f"{key}_draws"] = [q[key]] + more[f"{key}_draws"]
        # logit noise acts on sampling, not on the weights the teacher-forced loss reads: no membership there
        mia = membership(ctx) if noise == 0.0 else None
    n = 0 if flat is None else len(flat)
    return {"units": n, "fraction": n / len(ctx.scores.flat), "leak": leak, "quality": q, "membership": mia,
            "seconds": round(time.monotonic() - t0, 2)}


def drawn(ctx: RepairContext, seeds: Sequence[int], noise: float = 0.0) -> dict[str, Any]:
    """``DRAWN_KEYS`` of the model as it is now under each of ``seeds`` (``KEY_draws`` lists), and the seconds."""
    t0 = time.monotonic()
    qs = [quality(ctx, noise, seed=s) for s in seeds]
    return {f"{key}_draws": [q[key] for q in qs] for key in DRAWN_KEYS} | {
        "seconds": round(time.monotonic() - t0, 2)}


def with_draws(q: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``q`` with the draws of ``extra`` (a ``drawn`` result with its first seed index ``start``) put in place
    from that index on: a resumed repair merges the same journalled draws to the same lists."""
    start = int(extra["start"])
    return q | {k: list(q.get(k) or [])[:start] + list(v) for k, v in extra.items() if k.endswith("_draws")}


def removed(ctx: RepairContext, units: Sequence[int]) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """The state with ``units`` removed exactly, to enter again for more draws."""
    return lambda: temporary_edit(ctx.iar, ctx.units(np.asarray(units, dtype=np.int64)), "exact", 0.0)


def settle(ctx: RepairContext, cfg: RepairConfig, journal: Journal, name: str, m: dict[str, Any],
           before: dict[str, Any], state: Callable[[], contextlib.AbstractContextManager[Any]]) -> dict[str, Any]:
    """``m`` (journalled as ``name``) with more paired quality draws while the guard's verdict on it could flip
    with the sampling seeds (``unsettled``), ``cfg.quality_draws`` at a time up to ``cfg.draw_cap``. The unedited
    model draws the same seeds once (``before-draws{n}``, put into ``before["quality"]`` in place, so every
    later verdict pairs them too), the state under ``state()`` its own (``{name}-draws{n}``). Three draws read
    FID within about +-8 % on the tiny models (docs/RESULTS.md section 10): at a 10 % bar a verdict near it is
    a coin flip. Six more draws cost about one measurement (docs/BENCHMARKS.md), and only where it matters."""
    q, q0 = m["quality"], before["quality"]
    while True:
        n = len(q.get("fid_draws") or [])
        if n < 2 or n >= cfg.draw_cap or not unsettled(q, q0, cfg.max_quality_loss, cfg.max_accuracy_drop):
            break
        k = min(n + cfg.quality_draws, cfg.draw_cap)
        if ctx.world.is_main:
            acc = paired_change(q, q0, "class_accuracy")
            log(f"repair {name}: the guard's verdict is within the sampling noise (FID "
                f"{100 * relative_fid(q, q0):+.1f} +- {100 * (relative_fid_se(q, q0) or 0.0):.1f} %"
                + (f", class accuracy {100 * acc[0]:+.1f} +- {100 * (acc[1] or 0.0):.1f} points" if acc else "")
                + f"): {k - n} more paired seeds")
        before_draws(ctx, journal, q0, k)

        def more(a: int = n, b: int = k) -> dict[str, Any]:
            with state():
                return {"start": a, **drawn(ctx, [ctx.attack.seed + j for j in range(a, b)])}

        q = with_draws(q, journal.step(f"{name}-draws{k}", more))
    n = len(q.get("fid_draws") or [])
    if n >= max(cfg.draw_cap, 2) and ctx.world.is_main and unsettled(q, q0, cfg.max_quality_loss,
                                                                      cfg.max_accuracy_drop):
        log(f"repair {name}: the guard's verdict is still within the sampling noise at the cap of {n} seeds "
            f"(--max-quality-draws): it reads the mean")
    return m if q is m["quality"] else m | {"quality": q}


def before_draws(ctx: RepairContext, journal: Journal, q0: dict[str, Any], k: int) -> None:
    """The unedited model's draws (``q0``, in place) up to ``k`` seeds, each batch drawn once (``before-draws{k}``),
    so every later verdict pairs them too."""
    n0 = len(q0.get("fid_draws") or [])
    if n0 < k:
        q0.update(with_draws(q0, journal.step(f"before-draws{k}", lambda a=n0, b=k: {
            "start": a, **drawn(ctx, [ctx.attack.seed + j for j in range(a, b)])})))


def membership(ctx: RepairContext) -> dict[str, Any] | None:
    """Membership scores of the targets, ordinary training images and the held-out controls (AUC, TPR@1 %)."""
    ids = np.union1d(np.union1d(ctx.targets, ctx.keep), ctx.heldout)
    sc = score_images(ctx.iar, ctx.ds, ids, batch_size=ctx.batch_size, seed=ctx.attack.seed, world=ctx.world)
    out = evaluate_membership(sc, ctx.plan)
    loss = {g: float(np.mean(sc["loss"][np.isin(sc["id"], m)])) for g, m in
            (("targets", ctx.targets), ("ordinary", ctx.keep), ("heldout", ctx.heldout)) if len(m)}
    return {"auc": out, "mean_loss": loss}


def quality_refusal(q: dict[str, Any], q0: dict[str, Any], cfg: RepairConfig) -> str | None:
    """Why the quality guard refuses the state ``q`` (None: it passes)."""
    return refusal(q, q0, cfg.max_quality_loss, cfg.max_accuracy_drop)


def within_quality(q: dict[str, Any], q0: dict[str, Any], cfg: RepairConfig) -> bool:
    return quality_refusal(q, q0, cfg) is None


def grows_past(q: dict[str, Any], q0: dict[str, Any], cfg: RepairConfig) -> bool:
    """Whether a refused round leaving targets grows on: no cost over ``grow_past_guard`` times its bar."""
    k = cfg.grow_past_guard
    drop = None if cfg.max_accuracy_drop is None else k * cfg.max_accuracy_drop
    return k > 0 and refusal(q, q0, k * cfg.max_quality_loss, drop) is None


# ---- growing, pruning -----------------------------------------------------------------------------------
def probes_stopped(ctx: RepairContext, flat: np.ndarray, probes: list[Probe], margin: float,
                   noise: float = 0.0, edit: str = "exact", factor: float = 0.0) -> bool:
    ctx.eval_tokens(np.array(sorted({p.prompt for p in probes} | {p.image for p in probes}), dtype=np.int64))
    # joint probes search the nearest other image in the strong attack's pool (its tokens cached by that attack)
    pool = (ctx.pool, pool_tokens(ctx.iar, ctx.ds, ctx.attack.seed, ctx.cache)) if any(p.joint for p in probes) \
        else None
    with temporary_edit(ctx.iar, ctx.units(flat), edit, factor):
        return probes_.stopped(ctx.iar, probes, ctx.tokens, ctx.labels, margin, noise=noise, seed=ctx.attack.seed,
                               trigger_steps=ctx.attack.trigger_steps, pool=pool)


class Screen:
    """The quality guard on a grow's candidate units: a unit is taken only if the state with it removed, beside the
    units already chosen, passes the guard over the seeds every measurement draws first, so a round grown from
    screened units reads, on those seeds, what the screen read. A refusal the seeds could flip (``unsettled``, its
    standard error floored by the unedited model's own spread, ``noise_floor``) draws more paired seeds first, as
    the guard settles a round: a unit refused is never offered again, a unit passed is judged again by its round.
    At most ``screen_tries`` units are screened out per grow (``begin``); those it refuses are remembered (``out``).
    Used where an unscreened grow ended refused (``run_repair``)."""

    def __init__(self, ctx: RepairContext, cfg: RepairConfig, journal: Journal, q0: dict[str, Any],
                 out: Sequence[int] = ()) -> None:
        self.ctx, self.cfg, self.journal, self.q0 = ctx, cfg, journal, q0
        self.out: list[int] = list(out)
        self.left = cfg.screen_tries
        self.seconds = 0.0
        self.settled: list[int] = []  # units whose first refusal more seeds took back
        # verdicts by state: a grow that does not stop its probes without filling the budget is tried again with
        # it and offers the same first units on the same state (the draws are seeded, so a verdict is exact)
        self.seen: dict[tuple[int, ...], bool] = {}

    def begin(self) -> None:
        self.left = self.cfg.screen_tries

    def passes(self, flat: list[int]) -> bool:
        key = tuple(sorted(flat))
        if key not in self.seen:
            self.seen[key] = self._passes(flat)
        return self.seen[key]

    def _passes(self, flat: list[int]) -> bool:
        t0 = time.monotonic()
        ctx, cfg, q0 = self.ctx, self.cfg, self.q0
        seeds = [ctx.attack.seed, *ctx.quality_seeds]
        q = self.quality(flat, seeds)
        first = quality_refusal(q, q0, cfg) is None
        ok = first
        while not ok:
            n = len(q["fid_draws"])
            if n >= cfg.draw_cap or not unsettled(q, q0, cfg.max_quality_loss, cfg.max_accuracy_drop,
                                                  floor=noise_floor(q0)):
                break
            k = min(n + cfg.quality_draws, cfg.draw_cap)
            before_draws(ctx, self.journal, q0, k)
            q = with_draws(q, {"start": n, **self.quality(flat, [ctx.attack.seed + j for j in range(n, k)])})
            ok = quality_refusal(q, q0, cfg) is None
        if ok and not first:
            self.settled.append(flat[-1])
        self.seconds += time.monotonic() - t0
        return ok

    def quality(self, flat: list[int], seeds: Sequence[int]) -> dict[str, Any]:
        """The draws of ``flat`` removed under ``seeds`` (the first ones paired with ``q0``'s)."""
        with removed(self.ctx, flat)():
            return drawn(self.ctx, seeds)

    def pick(self, chosen: list[int], ranking: np.ndarray, n: int) -> list[int]:
        """Up to ``n`` units of ``ranking`` (not in ``chosen``), in its order, each passing with ``chosen`` and the
        ones picked before it; fewer when the grow has refused its ``screen_tries`` units."""
        picked: list[int] = []
        for u in (int(u) for u in ranking):
            if len(picked) == n or self.left <= 0:
                break
            if u in chosen or u in self.out:
                continue
            if self.passes(chosen + picked + [u]):
                picked.append(u)
            else:
                self.out.append(u)
                self.left -= 1
        return picked


def grow(ctx: RepairContext, removed: list[int], rerank: Rerank, probes: list[Probe], start: int, budget: int,
         margin: float, fill: bool = True, screen: Screen | None = None) -> tuple[list[int], bool] | None:
    """Units to add to ``removed`` until ``probes`` stop: doubling along the ranking re-computed on the
    edited model; and whether the probes stopped. With ``fill`` the last step fills the budget and a set
    that fills it without stopping the probes is still returned, for the strong attack to judge (probes
    read agreement alone, a margin under the bar: stricter than the verdict). None: nothing to add
    (without ``fill``: also when the probes do not stop within the budget). With a ``screen`` each unit
    added passes the quality guard first (``Screen``)."""
    added: list[int] = []
    step = max(1, start)
    if screen is not None:
        screen.begin()
    while True:
        current = np.asarray(removed + added, dtype=np.int64)
        room = budget - len(current)
        ranking = np.asarray(rerank(current), dtype=np.int64)
        n = min(step, room) if fill else step
        fresh = (ranking[~np.isin(ranking, current)][:n] if screen is None else
                 np.asarray(screen.pick([int(u) for u in current], ranking, n), dtype=np.int64))
        if len(fresh) == 0 or len(current) + len(fresh) > budget:
            return (added, False) if added and fill else None
        added += [int(u) for u in fresh]
        if probes_stopped(ctx, np.asarray(removed + added), probes, margin):
            return added, True
        step = len(added)


def prune(ctx: RepairContext, order: list[int], probes: list[Probe], margin: float, tries: int) -> list[int]:
    """Put back whole blocks, then single units (last added first, at most ``tries``), while the probes stay
    stopped: the smallest union the probes accept."""
    keep = list(order)
    layer = np.searchsorted(ctx.scores.offsets, np.asarray(keep), side="right") - 1
    block_of = {u: ctx.scores.blocks[i] for u, i in zip(keep, layer)}
    for b in sorted(set(block_of.values())):
        rest = [u for u in keep if block_of[u] != b]
        if rest and len(rest) < len(keep) and probes_stopped(ctx, np.asarray(rest), probes, margin):
            keep = rest
    for u in list(reversed(keep))[:tries]:
        rest = [x for x in keep if x != u]
        if rest and probes_stopped(ctx, np.asarray(rest), probes, margin):
            keep = rest
    return keep


# ---- the loop ------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    status: str  # "clean", "quality", "units", "rounds", "revealed", "nothing to repair"
    units: list[int]  # the edit kept (flat), best-first order
    final: dict[str, Any] | None  # its measurement
    message: str
    edit: str = "exact"  # how the units are edited: removed exactly, or fine-tuned by the ``fallback`` (unlearn)


def target_probes(before: dict[str, Any], work: list[int], rounds: list[dict[str, Any]]) -> dict[int, list[Probe]]:
    """Per target: the default greedy try from its own prefix, and every try that extracted it so far."""
    leak = before["leak"]
    bars = leak.get("default_probe_bars") or {}  # per target (its class's bar); older journals: one for all
    gaps = leak.get("default_probe_gaps") or {}  # journals before the joint rule: agreement alone
    out = {i: [Probe(i, i, Try(leak["default_prefix"], GREEDY), float(bars.get(str(i), leak["default_probe_bar"])),
                     gaps.get(str(i)))] for i in work}
    for m in [before, *rounds]:
        for d in m["leak"]["probes"]:
            p = Probe.from_dict(d)
            if p.image in out and p not in out[p.image]:
                out[p.image].append(p)
    return out


def every_try_probes(ctx: RepairContext, before: dict[str, Any], image: int) -> list[Probe]:
    """Every try of the strong attack from ``image``'s own prompt, at the bars its class is judged by: for a target
    the strong attack keeps finding by a try the probes had not seen. Empty when the bars are not token agreement
    or were set try by try (no fixed ``rules``)."""
    leak = before["leak"]
    metric = leak.get("metric") or ("tokens" if not ctx.extractors else None)  # journals before it was recorded
    if ctx.rules is None or metric != "tokens":
        return []
    tries = strong_tries(ctx.iar, int(leak["default_prefix"]))
    bars, gaps, _ = (b[:, 0] for b in ctx.rules.bars(np.array([ctx.labels[image]])))
    if len(bars) != len(tries):
        return []
    return [Probe(image, image, t, float(b), float(g)) for t, b, g in zip(tries, bars, gaps)]


def round_probes(ctx: RepairContext, cfg: RepairConfig, before: dict[str, Any], work: list[int],
                 rounds: list[dict[str, Any]]) -> dict[int, list[Probe]]:
    """The probes a grow or prune step holds: ``target_probes``, and every try for a target that has come back
    after a grow (extracted in ``cfg.every_try_after`` rounds)."""
    out = target_probes(before, work, rounds)
    for i in out:
        if cfg.every_try_after > 0 and sum(i in m["leak"]["extracted"] for m in rounds) >= cfg.every_try_after:
            out[i] += [p for p in every_try_probes(ctx, before, i) if p not in out[i]]
    return {i: ruled(ctx, cfg, before, ps) for i, ps in out.items()}


def ruled(ctx: RepairContext, cfg: RepairConfig, before: dict[str, Any], probes: list[Probe]) -> list[Probe]:
    """``probes`` under ``cfg.probe_rule``: joint (a probe recorded without its try's margin bar, as journals before
    the joint rule were, gets it from the fixed bars at its prompt's class), or agreement alone."""
    if cfg.probe_rule != "joint":
        out: list[Probe] = []
        for p in (dataclasses.replace(p, gap_bar=None) for p in probes):
            if p not in out:
                out.append(p)
        return out
    leak = before["leak"]
    if ctx.rules is None or (leak.get("metric") or "tokens") != "tokens" or all(p.gap_bar is not None for p in probes):
        return probes
    index = {t: k for k, t in enumerate(strong_tries(ctx.iar, int(leak["default_prefix"])))}
    if len(index) != len(ctx.rules.thresholds):
        return probes
    ctx.eval_tokens(np.array(sorted({p.prompt for p in probes}), dtype=np.int64))
    rules = ctx.rules

    def gap(p: Probe) -> float:
        return float(rules.bars(np.array([ctx.labels[p.prompt]]))[1][index[p.attempt], 0])

    return [dataclasses.replace(p, gap_bar=gap(p)) if p.gap_bar is None and p.attempt in index else p
            for p in probes]


def run_repair(ctx: RepairContext, cfg: RepairConfig, journal: Journal, refined: dict[int, list[int]],
               rerank_of: Callable[[int], Rerank], before: dict[str, Any]) -> tuple[Outcome, dict[str, Any]]:
    """The rounds and the prune step; returns the outcome and the record of every round. When they end with no
    edit that stops every target within the guard, the repair goes back to its last round within the guard that
    left targets (``_Rounds.back_to``; the unedited model when none did) and grows again from there, each unit it
    adds screened (``Screen``), for the rounds it had left."""
    work = before["leak"]["extracted"]
    budget = int(cfg.max_units / 100 * len(ctx.scores.flat))
    order: list[int] = []
    for i in work:
        order += [u for u in refined.get(i, []) if u not in order]
    if len(order) > budget:
        order = order[:budget]
    run = _Rounds(ctx, cfg, journal, refined, rerank_of, before, budget)
    status, message = run.go(order, 1, cfg.max_rounds)
    record: dict[str, Any] = {"rounds": run.rounds, "grown": run.grown, "budget_units": budget}
    best, units, status, message = _prune_and_keep(run, record, status, message)
    back = run.back_to() if status == "quality" and cfg.screen_tries > 0 else None
    if back is not None:
        n = len(run.rounds)
        start = f"round {back}" if back else "the unedited model"
        if ctx.world.is_main:
            log(f"repair: {message}; going back to {start} (within the guard, targets left) to grow again "
                f"with each unit screened by the guard")
        g = run.grow_step(f"regrow{back}", run.state(back), screen=True)
        record["regrow"] = {"from_round": back, "first_round": n + 1}  # its grow is the last of ``grown`` here
        if g["added"]:
            first = message
            status, message = run.go(list(g["order"]), n + 1, n + cfg.max_rounds - back, screen=True)
            best, units, status, message = _prune_and_keep(run, record, status, message, "screened-")
            message += f" (grown again from {start} with each unit screened by the guard, after: {first})"
    record["over_budget"] = run.unreachable
    if best is None:  # an edit that stops no target is not worth its cost: nothing is kept
        return Outcome(status, [], None, message + "; no edit within the budgets lowers the number of targets "
                       "extracted"), record
    return Outcome(status, units, best, message), record


@dataclass
class _Rounds:
    """The rounds of one repair: their measurements and grows, kept in order, and the targets no grow could stop."""

    ctx: RepairContext
    cfg: RepairConfig
    journal: Journal
    refined: dict[int, list[int]]
    rerank_of: Callable[[int], Rerank]
    before: dict[str, Any]
    budget: int
    rounds: list[dict[str, Any]] = field(default_factory=list)
    grown: list[dict[str, Any]] = field(default_factory=list)
    unreachable: list[int] = field(default_factory=list)  # targets whose probes did not stop within the budget

    @property
    def work(self) -> list[int]:
        return self.before["leak"]["extracted"]

    def go(self, order: list[int], first: int, last: int, screen: bool = False) -> tuple[str, str]:
        """Rounds ``first`` to ``last`` from ``order``: measure, stop or grow. The status and message they end on."""
        ctx, cfg, q0, work = self.ctx, self.cfg, self.before["quality"], self.work
        status, message = "rounds", f"targets still extracted after {last} rounds"
        for r in range(first, last + 1):
            m = self.journal.step(f"round{r}", lambda o=order: measure(ctx, np.asarray(o)) | {"order": list(o)})
            order = list(m["order"])
            m = settle(ctx, cfg, self.journal, f"round{r}", m, self.before, removed(ctx, order))
            self.rounds.append(m)
            survivors = [i for i in m["leak"]["extracted"] if i in work]
            # targets the strong attack missed before and this edit brings out: a removal can undo another's
            # (section 9); they have no ranking to grow by, so the repair names them and does not call itself clean
            revealed = [i for i in m["leak"]["extracted"] if i not in work]
            if ctx.world.is_main:
                log(f"repair round {r}: {len(order)} units, {len(survivors)} of {len(work)} targets still extracted"
                    + (f" and {len(revealed)} brought out" if revealed else "")
                    + f", FID {mean_fid(m['quality']):.3g} (before {mean_fid(q0):.3g})")
            refused = quality_refusal(m["quality"], q0, cfg)
            if refused is None and not survivors:
                if not revealed:
                    status, message = "clean", f"every target stopped after round {r}"
                else:
                    status = "revealed"
                    message = (f"round {r} stops every target but brings out {', '.join(map(str, revealed))}, which "
                               f"the strong attack did not extract before")
                break
            status, message = ("rounds", f"targets still extracted after {r} rounds") if refused is None else (
                "quality", f"round {r} costs {refused}: refused")
            if refused is not None and (not survivors or not grows_past(m["quality"], q0, cfg)):
                break  # a round that stops every target over the guard is pruned
            if r == last:
                break
            if refused is not None and ctx.world.is_main:
                log(f"repair round {r} is refused ({refused}) but leaves {len(survivors)} targets and is within "
                    f"{cfg.grow_past_guard:g} x the guard: growing on, a later round's prune may fit the guard")
            # from a refused round (grown past the guard) every unit would fail the screen: it grows unscreened
            g = self.grow_step(f"grow{r}", m, screen=screen and refused is None)
            if not g["added"]:
                status = "units"
                message = (f"targets {', '.join(map(str, g['failed']))} need more than --max-units "
                           f"{cfg.max_units:g} % of the fc1 units ({self.budget}) to stop their probes"
                           + (f", with {len(g['screened_out'])} units screened out for their quality cost"
                              if g.get("screened_out") else ""))
                break
            order = list(g["order"])
        return status, message

    def grow_step(self, name: str, m: dict[str, Any], screen: bool) -> dict[str, Any]:
        """Grow every target ``m`` leaves (journalled as ``name``): the units added per target, the new order."""
        ctx, cfg = self.ctx, self.cfg
        survivors = [i for i in m["leak"]["extracted"] if i in self.work]
        probes = round_probes(ctx, cfg, self.before, self.work, self.rounds)

        def grow_all() -> dict[str, Any]:
            new = list(m["order"])
            added: dict[str, list[int]] = {}
            unconfirmed: list[int] = []
            before_out = [u for g in self.grown for u in g.get("screened_out", [])]  # refused in earlier grows
            sc = Screen(ctx, cfg, self.journal, self.before["quality"], before_out) if screen else None

            def take(i: int, fill: bool) -> bool:
                more = grow(ctx, new, self.rerank_of(i), probes[i], max(len(self.refined.get(i, [])), 1),
                            self.budget, cfg.margin, fill=fill, screen=sc)
                if more is None:
                    return False
                added[str(i)] = more[0]
                new.extend(more[0])
                if not more[1]:  # the budget is full and its probes are not stopped: the next attack decides
                    unconfirmed.append(i)
                return True

            # one after another (a later image's ranking sees the earlier ones' units gone); those whose probes stop
            # within the budget first, then the rest fill what is left, for the next strong attack to judge
            failed = [i for i in survivors if not take(i, fill=False)]
            failed = [i for i in failed if not take(i, fill=True)]
            screened = {} if sc is None else {"screened_out": sc.out[len(before_out):],
                                              "screen_seconds": round(sc.seconds, 2), "screen_settled": sc.settled}
            return {"order": new, "added": added, "failed": failed, "unconfirmed": unconfirmed} | screened

        g = self.journal.step(name, grow_all)
        self.grown.append(g)
        self.unreachable = sorted(set(self.unreachable) | set(g["failed"]))
        return g

    def state(self, k: int) -> dict[str, Any]:
        """Round ``k``'s measurement (1-based); for 0 the unedited model, no unit removed, every target out."""
        return self.rounds[k - 1] if k else {"order": [], "leak": self.before["leak"]}

    def back_to(self) -> int:
        """The last round within the guard that left targets and was followed by another (1-based), with rounds left
        after it; 0 (the unedited model) when there is none: the localizer's own units already cross the guard, and
        the screened grow starts again from nothing (tiny-llamagen s1 inj. 1: its 2 units cost 2.2 points)."""
        q0 = self.before["quality"]
        for k in range(len(self.rounds) - 1, 0, -1):
            m = self.rounds[k - 1]
            if k < self.cfg.max_rounds and m["leak"]["extracted"] and within_quality(m["quality"], q0, self.cfg):
                return k
        return 0


def _prune_and_keep(run: _Rounds, record: dict[str, Any], status: str, message: str, prefix: str = "",
                    ) -> tuple[dict[str, Any] | None, list[int], str, str]:
    """The best round within the guard, pruned when the rounds ended clean, or ended on a round that stops every target
    but crosses the guard (journalled as ``prefix`` + prune, pruned, prune2, ...): the edit kept, its units, and the
    status and message."""
    ctx, cfg, journal, before, rounds, work = run.ctx, run.cfg, run.journal, run.before, run.rounds, run.work
    q0 = before["quality"]
    within = [m for m in rounds if within_quality(m["quality"], q0, cfg) and len(m["leak"]["extracted"]) < len(work)]
    best = min(within, key=lambda m: (len(m["leak"]["extracted"]), m["units"])) if within else None
    units = list(best["order"]) if best is not None else []
    # prune a clean round; and a round that stops every target but costs too much: its units grew along rankings
    # recomputed after each removal, so some may not be needed, and fewer units may cost less
    start = best if status == "clean" else (
        rounds[-1] if status == "quality" and not rounds[-1]["leak"]["extracted"] else None)
    if start is None:
        return best, units, status, message
    grown_units = list(start["order"])
    probes = [p for ps in round_probes(ctx, cfg, before, work, rounds).values() for p in ps]
    attempts: list[dict[str, Any]] = []
    for k in range(1, cfg.prune_rounds + 1):
        tag = "" if k == 1 else str(k)  # the first attempt's names are those of journals before there were more
        pruned = journal.step(f"{prefix}prune{tag}", lambda ps=list(probes): prune(ctx, grown_units, ps, cfg.margin,
                                                                                   cfg.prune_tries))
        if len(pruned) == len(grown_units) or any(sorted(pruned) == sorted(a["order"]) for a in attempts):
            break  # nothing to put back, or a set the strong attack already saw through
        mp = journal.step(f"{prefix}pruned{tag}", lambda u=pruned: measure(ctx, np.asarray(u)) | {"order": list(u)})
        if not mp["leak"]["extracted"]:  # seen through: not kept whatever its quality
            mp = settle(ctx, cfg, journal, f"{prefix}pruned{tag}", mp, before, removed(ctx, pruned))
        ok = not mp["leak"]["extracted"] and within_quality(mp["quality"], q0, cfg)
        attempts.append(mp | {"kept": ok})
        if ok:
            if status == "quality":
                status, message = "clean", (
                    f"every target stopped after round {len(rounds)}, pruned from {len(grown_units)} to "
                    f"{len(pruned)} units within the quality guard ({message} before pruning)")
            else:
                message += f", pruned from {len(grown_units)} to {len(pruned)} units"
            best, units = mp, list(pruned)
            break
        # the strong attack found a try the probes let through: hold it too and prune the grown set again
        fresh = [p for p in ruled(ctx, cfg, before, [Probe.from_dict(d) for d in mp["leak"]["probes"]])
                 if p not in probes]
        if not mp["leak"]["extracted"] or not fresh:
            break
        probes += fresh
    record["pruned_units"] = len(attempts[-1]["order"]) if attempts else len(grown_units)
    if attempts:
        record |= {"pruned": attempts[-1], "pruned_kept": attempts[-1]["kept"], "prune_attempts": attempts}
    return best, units, status, message


# ---- alternatives at the same leak ------------------------------------------------------------------------
def cleaned(m: dict[str, Any], work: list[int]) -> dict[str, Any]:
    left = [i for i in work if i in m["leak"]["extracted"]]
    return {"cleaned": len(work) - len(left), "of": len(work), "still_extracted": left}


def alternatives(ctx: RepairContext, cfg: RepairConfig, journal: Journal, edit: dict[str, Any],
                 before: dict[str, Any], unitmem: Localization | None) -> list[dict[str, Any]]:
    """The alternatives at the leak of ``edit`` (the kept edit, or the last round tried when none was kept)."""
    work = before["leak"]["extracted"]
    leak = len(edit["leak"]["extracted"])
    probes = ruled(ctx, cfg, before, [p for ps in target_probes(before, work, []).values() for p in ps])
    units = list(edit["order"])
    n = len(units)
    out = []
    if "random" in cfg.alternatives and n:
        counts = [int(c) for c in np.bincount(np.searchsorted(ctx.scores.offsets, units, side="right") - 1,
                                              minlength=len(ctx.scores.names))]
        flat = np.sort(pick_random(ctx.scores, counts, cfg.seed))
        m = journal.step(f"alt-random-{n}", lambda: measure(ctx, flat))
        out.append({"name": "random", "setting": f"{n} random units of the same layers (seed {cfg.seed})", **m,
                    **cleaned(m, work)})
    if "paper" in cfg.alternatives and unitmem is not None:
        out.append(_search(ctx, cfg, journal, "paper", cfg.paper_tops, probes, leak, work, unitmem))
    if "noise" in cfg.alternatives:
        out.append(_search(ctx, cfg, journal, "noise", cfg.noise_levels, probes, leak, work, None))
    if "unlearn" in cfg.alternatives and n:
        # the fallback's fine-tuning of these same units (kept or not) is the same measurement
        done = journal.steps.get("fallback-unlearn")
        m = done if done is not None and list(done["order"]) == units else journal.step(
            f"alt-unlearn-{n}", lambda: tuned(ctx, cfg, units, work))
        out.append({"name": "unlearn", "setting": f"{cfg.unlearn.steps} Adam steps (lr {cfg.unlearn.lr:g}) on the "
                    f"repair's {n} units", **m, **cleaned(m, work)})
    return out


def unlearn_units(ctx: RepairContext, cfg: RepairConfig, chosen: dict[str, tuple[int, ...]], work: list[int],
                  ) -> dict[str, float]:
    """Fine-tune ``chosen`` in place: the targets ``work``'s loss up, the first 32 ``ctx.keep`` images' kept."""
    k = np.asarray(ctx.keep[:32])
    ctx.eval_tokens(k)

    def tokens(ids: list[int]) -> tuple[Tokens, torch.Tensor]:
        return (Tokens(torch.stack([ctx.tokens[i] for i in ids]).long(), ctx.iar.grids),
                torch.tensor([ctx.labels[i] for i in ids]))

    return unlearn(ctx.iar, chosen, *tokens(list(work)), *tokens(k.tolist()), cfg.unlearn)


@contextlib.contextmanager
def tuned_state(ctx: RepairContext, cfg: RepairConfig, units: list[int], work: list[int],
                save: Path | None = None) -> Iterator[dict[str, float]]:
    """The model with ``units`` fine-tuned (unit-local unlearning: the targets' loss up, 32 ordinary images'
    kept) for the ``with`` block, the weights put back after; deterministic, so entering again is the same
    state. ``save``: where the tuned units' values go, to write that model."""
    chosen = ctx.units(np.asarray(units))
    saved = snapshot(ctx.iar, chosen)
    try:
        info = unlearn_units(ctx, cfg, chosen, work)
        if save is not None and ctx.world.is_main:
            write_bytes(save, save_tensors(unit_values(ctx.iar, chosen)))
        yield info
    finally:
        restore(ctx.iar, saved)


def tuned(ctx: RepairContext, cfg: RepairConfig, units: list[int], work: list[int],
          save: Path | None = None) -> dict[str, Any]:
    """Measure the model with ``units`` fine-tuned (``tuned_state``)."""
    with tuned_state(ctx, cfg, units, work, save) as info:
        n = len(units)
        return measure(ctx) | {"units": n, "fraction": n / len(ctx.scores.flat), "unlearn": info,
                               "order": list(units), "edit": "unlearn"}


def fallback(ctx: RepairContext, cfg: RepairConfig, journal: Journal, outcome: Outcome, record: dict[str, Any],
             before: dict[str, Any]) -> Outcome:
    """When removing units exactly leaves a target or costs too much: fine-tune the last round's units instead
    (unit-local unlearning, the fix the literature found strongest) and keep that if the strong attack stops every
    target and the guard passes it. The record gets ``fallback`` (the measurement and whether it was kept)."""
    rounds = record["rounds"]
    if cfg.fallback != "unlearn" or outcome.status == "clean" or not rounds or not rounds[-1]["order"]:
        return outcome
    units = [int(u) for u in rounds[-1]["order"]]
    work = before["leak"]["extracted"]
    m = journal.step("fallback-unlearn", lambda: tuned(ctx, cfg, units, work, save=fallback_file(journal)))
    if not m["leak"]["extracted"]:
        m = settle(ctx, cfg, journal, "fallback-unlearn", m, before, lambda: tuned_state(ctx, cfg, units, work))
    refused = quality_refusal(m["quality"], before["quality"], cfg)
    left = m["leak"]["extracted"]
    record["fallback"] = m | {"kept": not left and refused is None}
    if ctx.world.is_main:
        log(f"repair fallback: fine-tuning round {len(rounds)}'s {len(units)} units leaves "
            f"{len(left)} of {len(work)} targets extracted" + (f", costs {refused}" if refused else "")
            + ("" if record["fallback"]["kept"] else ": not kept"))
    if not record["fallback"]["kept"]:
        return outcome
    return Outcome("clean", units, m, f"{outcome.message}; fine-tuning those {len(units)} units instead "
                   f"({cfg.unlearn.steps} Adam steps, unit-local unlearning) stops every target within the quality "
                   f"guard", edit="unlearn")


def fallback_file(journal: Journal) -> Path:
    """The fallback's tuned unit values, beside the journal (the model folder is written from them)."""
    return journal.path.with_name(FALLBACK_FILE)


def _search(ctx: RepairContext, cfg: RepairConfig, journal: Journal, name: str, grid: tuple[float, ...],
            probes: list[Probe], leak: int, work: list[int], unitmem: Localization | None) -> dict[str, Any]:
    """The weakest point of ``grid`` whose probes all stop, verified with the strong attack; up the grid while
    the strong attack still finds more than ``leak`` targets (at most ``cfg.alternative_points`` attacks)."""
    tried = 0
    m: dict[str, Any] | None = None
    setting = ""
    for k, v in enumerate(grid):
        flat = None
        if name == "paper":
            assert unitmem is not None
            flat = ctx.scores.to_flat(select_units(unitmem, v).units)
            passes = probes_stopped(ctx, flat, probes, cfg.margin, edit="paper", factor=0.5)
            setting = f"top {v:g} % x 0.5 (the paper's edit, global UnitMem ranking)"
        else:
            passes = probes_stopped(ctx, np.zeros(0, dtype=np.int64), probes, cfg.margin, noise=v)
            setting = f"logit noise std {v:g}"
        last = k == len(grid) - 1
        if not passes and not last:
            continue
        if name == "paper":
            m = journal.step(f"alt-paper-{v:g}", lambda f=flat: measure(ctx, f, edit="paper", factor=0.5))
        else:
            m = journal.step(f"alt-noise-{v:g}", lambda v=v: measure(ctx, noise=v))
        tried += 1
        if len(m["leak"]["extracted"]) <= leak or tried >= cfg.alternative_points or last:
            return {"name": name, "setting": setting, "value": v, "same_leak": len(m["leak"]["extracted"]) <= leak,
                    **m, **cleaned(m, work)}
    raise AssertionError("unreachable: the last grid point is always measured")


def config_dict(cfg: RepairConfig) -> dict[str, Any]:
    d = asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
