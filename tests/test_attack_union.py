"""The strong attack's tries calibrated together: the union keeps the stated rate, alone each try does not."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_attack_known import fake

from iarmem.attack import AttackSettings, attack_ids, run_attack
from iarmem.attack.decide import METRICS, Decision, decide_rule
from iarmem.attack.generate import default_prefix
from iarmem.attack.strong import Try, run_strong
from iarmem.attack.union import ClassBar, TryRules, union_passes, union_rules
from iarmem.data import bundled_mnist, make_plan
from iarmem.data.planting import outside_by_class
from iarmem.distributed import World
from iarmem.mitigate.repair import RepairContext, keep_bars, strong_leak
from iarmem.mitigate.repair_run import fc1_scores
from iarmem.tokens import load_views

TOKENS = METRICS["tokens"]


def _tries(rng: np.random.Generator, K: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """K tries on n never-trained images: own similarity and margin, independent across tries."""
    own = rng.beta(2, 5, size=(K, n))
    return own, own - rng.uniform(0.0, 0.3, size=(K, n))


def test_many_tries_together_keep_the_rate_each_alone_does_not() -> None:
    rng = np.random.default_rng(0)
    fresh = _tries(rng, 40, 20000)  # never-trained images out of sample
    together, alone, at_max = [], [], []
    for _ in range(20):  # the bound holds over calibration draws: average 20 of them
        own, gap = _tries(rng, 40, 200)
        rules = union_rules(TOKENS, own, gap, fpr=0.01)
        assert (rules.calibration, rules.barred, rules.allowed, rules.union_passes) == (200, 100, 0, 0)
        assert rules.bound == pytest.approx(1 / 101)
        together.append(union_passes(*fresh, np.array(rules.thresholds), np.array(rules.margins)).mean())
        each = [decide_rule(TOKENS, own[k], gap[k], np.ones(200, bool), calibrate_on=True, fpr=0.01, threshold=None,
                            margin=None) for k in range(40)]
        alone.append(union_passes(*fresh, np.array([d.threshold for d in each]),
                                  np.array([d.margin for d in each])).mean())
        at_max.append(union_passes(*fresh, own.max(1), np.maximum(TOKENS.margin, gap.max(1))).mean())
    # together: within the stated 0.99 % (plus the error of a 20-draw mean); each try alone at 1 %, or each at
    # its calibration maximum, far above it
    assert np.mean(together) < 0.015 and np.mean(alone) > 0.2 and np.mean(at_max) > 3 * np.mean(together)


def test_one_try_repeated_is_one_try() -> None:
    rng = np.random.default_rng(1)
    own, gap = _tries(rng, 1, 300)
    one, many = union_rules(TOKENS, own, gap, 0.05), union_rules(TOKENS, np.repeat(own, 30, 0),
                                                                 np.repeat(gap, 30, 0), 0.05)
    assert many.thresholds == one.thresholds * 30 and many.margins == one.margins * 30
    assert many.union_passes == one.union_passes <= one.allowed == 6  # floor(0.05 * 151) - 1
    rules = union_rules(TOKENS, *_tries(rng, 30, 300), fpr=0.01)
    assert all(m >= TOKENS.margin for m in rules.margins) and all(
        o >= max(t, TOKENS.default_threshold) for o, t in zip(rules.other_bars, rules.thresholds))
    assert TryRules.from_dict(json.loads(json.dumps(rules.as_dict()))) == rules
    few = union_rules(TOKENS, own[:, :30], gap[:, :30], 0.01)  # fewer than 1 / fpr: none passes, the bound says so
    assert few.allowed == 0 and few.union_passes == 0 and few.bound == pytest.approx(1 / 16)
    with pytest.raises(ValueError, match="at least 2"):
        union_rules(TOKENS, own[:, :1], gap[:, :1], 0.01)


def _classed_tries(rng: np.random.Generator, K: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """As ``_tries``, but every try draws class 1 closer to its prompt: a "1" is easy to draw."""
    easy = (labels == 1)[None, :]
    own = rng.beta(2, 5, size=(K, len(labels))) + 0.12 * easy
    return own, own - rng.uniform(0.0, 0.3, size=(K, len(labels))) + 0.06 * easy


def test_class_bars_hold_the_rate_for_an_easy_class_the_overall_bar_does_not() -> None:
    rng = np.random.default_rng(3)
    fresh_labels = np.repeat(np.arange(10), 2000)
    fresh = _classed_tries(rng, 40, fresh_labels)
    overall, by_class = [], []
    for _ in range(20):
        # 200 class-balanced never-trained images, then 200 more of the targets' class (1), shuffled together
        order = rng.permutation(400)
        labels = np.concatenate([np.repeat(np.arange(10), 20), np.ones(200, dtype=np.int64)])[order]
        balanced = order < 200
        own, gap = _classed_tries(rng, 40, labels)
        one = union_rules(TOKENS, own[:, balanced], gap[:, balanced], 0.01)
        rules = union_rules(TOKENS, own, gap, 0.01, labels_N=labels, marginal_N=balanced)
        assert rules.calibration == 400 and rules.barred == int(balanced[1::2].sum())
        ones = rules.class_bar(1)
        assert ones is not None and ones.barred > 90 and ones.allowed == 0 and ones.bound < 0.011
        overall.append(union_passes(*fresh, np.array(one.thresholds), np.array(one.margins)))
        t_KN, m_KN, _ = rules.bars(fresh_labels)
        by_class.append(((np.nan_to_num(fresh[0]) > t_KN) & (fresh[1] > m_KN)).any(0))
        assert (t_KN >= np.array(rules.thresholds)[:, None] - 1e-12).all()  # a class bar only ever raises a bar
    overall_, by_class_ = np.mean(overall, 0), np.mean(by_class, 0)
    # one bar for all: within the stated rate overall, but a never-trained "1" passes several times as often;
    # with class bars the "1"s are held to their own bound and the overall rate does not rise
    assert overall_.mean() < 0.015 and overall_[fresh_labels == 1].mean() > 0.05
    assert by_class_[fresh_labels == 1].mean() < 0.012 and by_class_.mean() <= overall_.mean()


def test_class_bars_apply_row_by_row_and_survive_a_round_trip() -> None:
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(3), 100)
    own, gap = _classed_tries(rng, 5, labels)
    rules = union_rules(TOKENS, own, gap, 0.05, labels_N=labels)
    assert [c.label for c in rules.classes] == [0, 1, 2] and all(c.barred == 50 for c in rules.classes)
    t_KN, m_KN, o_KN = rules.bars(np.array([0, 1, 2, 7]))
    ones = rules.class_bar(1)
    assert ones is not None and ones.level > rules.level  # the easy class sets a higher bar than the overall one
    assert (t_KN[:, 1] > np.array(rules.thresholds)).all() and (m_KN[:, 1] >= np.array(rules.margins)).all()
    assert (t_KN[:, 3] == np.array(rules.thresholds)).all()  # a class not calibrated: the overall bar
    assert (o_KN >= t_KN).all()
    back = TryRules.from_dict(json.loads(json.dumps(rules.as_dict())))
    assert back == rules and all((a == b).all() for a, b in zip(back.bars(labels), rules.bars(labels)))
    assert "class by class" in rules.describe() and rules.as_dict()["class_bounds"]["1"] == pytest.approx(ones.bound)
    # the overall bar is set on the class-balanced images only: extra images of one class (here in the bar half,
    # so the standardisation is the same) move that class's bar, never the overall one
    extra = (np.arange(300) % 2 == 1) & (np.arange(300) >= 200)
    tilted_own, tilted_gap = own.copy(), gap.copy()
    tilted_own[:, extra], tilted_gap[:, extra] = 0.99, 0.9
    fair = union_rules(TOKENS, own, gap, 0.05, labels_N=labels, marginal_N=~extra)
    tilted = union_rules(TOKENS, tilted_own, tilted_gap, 0.05, labels_N=labels, marginal_N=~extra)
    assert tilted.thresholds == fair.thresholds and tilted.barred == fair.barred == 100
    assert tilted.class_bar(2).level > fair.class_bar(2).level  # type: ignore[union-attr]
    old = {k: v for k, v in rules.as_dict().items() if k not in ("scale", "floors", "classes")}  # written before
    assert TryRules.from_dict(old).classes == () and (TryRules.from_dict(old).bars(labels)[0] ==
                                                      np.array(rules.thresholds)[:, None]).all()


@pytest.fixture(scope="module")
def data():
    ds = bundled_mnist()
    return ds, make_plan(ds.labels, num_train=10, plant=10, copies=2, seed=0, dataset=ds.describe())


def _memorizer(ds, plan):  # noqa: ANN001, ANN202
    """A tiny-var that copies the planted images whatever it is prompted with from them, and emits noise
    for every other image (held-out and never-trained ones included)."""
    iar = fake("tiny-var", "members")
    x, _ = load_views(iar, ds, plan.planted_ids, 0, 0)
    with torch.no_grad():
        iar.members = {int(r.sum()) for r in iar.tokenize(x).ids_BL}
    return iar


STRONG = AttackSettings(top=1, batch_size=16, strength="strong", trigger_steps=2, membership=False)


def test_a_member_copier_calibrated_on_never_trained_images(data) -> None:
    ds, plan = data
    planted, ordinary = plan.planted_ids.tolist(), plan.ordinary_ids.tolist()
    s = run_attack(_memorizer(ds, plan), ds, plan, STRONG.replace(calibration=30, ids=tuple(planted + ordinary)))
    st = s["strong"]
    cal = st["calibration"]
    assert (cal["calibration"], cal["barred"], cal["union_passes"], cal["allowed"]) == (30, 15, 0, 0)
    assert st["calibration_false_positives"] == 0 and st["heldout_false_positives"] == 0
    assert st["heldout_left_out_false_positives"] is None  # the held-out controls are out of sample already
    assert st["extracted_ids"] == sorted(planted)  # every member, none of the ordinary or never-trained images
    assert all(t["calibration_own_prompt"] == 0 for t in st["per_try"])
    assert [t["threshold"] for t in st["per_try"]] == list(cal["thresholds"])


def test_class_calibration_images_give_the_targets_classes_their_own_bars(data) -> None:
    ds, plan = data
    targets = plan.planted_ids[:2].tolist()
    s = run_attack(_memorizer(ds, plan), ds, plan, STRONG.replace(calibration=20, class_calibration=6,
                                                                  ids=tuple(targets)))
    st = s["strong"]
    cal = st["calibration"]
    classes = {int(ds.labels[i]) for i in targets}
    assert cal["calibration"] == 20 + 6 * len(classes) and cal["barred"] == 10  # overall: balanced images only
    barred = {c["label"]: c["barred"] for c in cal["classes"]}
    assert all(barred[c] >= 3 for c in classes) and all(m <= 2 for c, m in barred.items() if c not in classes)
    assert st["extracted_ids"] == sorted(targets) and st["heldout_false_positives"] == 0
    assert st["calibration_false_positives"] == 0


def test_a_class_bar_judges_the_rows_prompted_with_that_class(data) -> None:
    ds, plan = data
    iar = _memorizer(ds, plan)
    s = STRONG.replace(calibrate=True)
    first, second = (int(i) for i in plan.planted_ids[:2])
    assert ds.labels[first] != ds.labels[second]
    res = attack_ids(iar, ds, [first, second], None, s, heldout=plan.heldout_ids)
    K = len(run_strong(iar, ds, res.ids, res.labels, ~res.is_candidate, res.gt, res.ids, METRICS[res.metric],
                       res.prefix, s, {}, World()).tries)
    scale = ((0.5,) * K, (0.1,) * K, (0.1,) * K, (0.1,) * K)
    strict = ClassBar(int(ds.labels[first]), 100, 0, 10.0, 0)  # its bar: similarity above 1.5, never met
    rules = TryRules((0.5,) * K, (0.1,) * K, (0.9,) * K, 0.01, 200, 100, 0.0, 0, 0, scale, (0.0, 0.1, 0.9),
                     (strict,))
    st = run_strong(iar, ds, res.ids, res.labels, ~res.is_candidate, res.gt, res.ids, METRICS[res.metric],
                    res.prefix, s, {}, World(), rules=rules)
    assert st.extracted_ids.tolist() == [second]  # the same perfect copy, held to its class's bar


def test_rules_calibrated_once_judge_another_state_by_the_same_bars(data) -> None:
    ds, plan = data
    iar = _memorizer(ds, plan)
    s = STRONG.replace(calibrate=True)
    cal_ids = np.setdiff1d(np.arange(200, 230), plan.used_ids)

    def strong(rules: TryRules | None, calibration: np.ndarray, calls=()):  # noqa: ANN001, ANN202
        res = attack_ids(iar, ds, plan.planted_ids, None, s, heldout=plan.heldout_ids, calibration=calibration)
        is_cal = res.is_calibration if res.is_calibration is not None else np.zeros(len(res.ids), bool)
        return run_strong(iar, ds, res.ids, res.labels, ~res.is_candidate & ~is_cal, res.gt, res.ids,
                          METRICS[res.metric], res.prefix, s, {}, World(),
                          is_calibration=is_cal, rules=rules, default_calls=calls)

    first = strong(None, cal_ids, [(int(cal_ids[0]), int(cal_ids[1]), 1.0)])  # a default call on a calibration image
    assert first.rules is not None and first.extracted_ids.tolist() == sorted(plan.planted_ids.tolist())
    assert not np.isin(first.ids, cal_ids).any()  # calibration rows are neither targets nor controls
    iar.members = set()  # an "edit" that removes every copy
    after = strong(first.rules, np.zeros(0, dtype=np.int64))
    assert len(after.extracted_ids) == 0 and after.rules == first.rules
    assert [t["threshold"] for t in after.per_try] == list(first.rules.thresholds)
    # what the default attack calls extracted under its own bar counts as the default try's
    image, prompt = int(plan.planted_ids[0]), int(plan.planted_ids[1])
    merged = strong(first.rules, np.zeros(0, dtype=np.int64), [(image, prompt, 0.95)])
    assert merged.extracted_ids.tolist() == [image] and merged.via[image] == prompt
    assert merged.tries[merged.weakest[image]] == Try(default_prefix(iar))
    with pytest.raises(ValueError, match="calibrated tries"):
        strong(TryRules((0.5,), (0.1,), (0.9,), 0.01, 30, 15, 1.0, 0, 0), np.zeros(0, dtype=np.int64))


def test_the_repair_calibrates_once_and_judges_every_state_by_those_bars(data) -> None:
    ds, plan = data
    iar = _memorizer(ds, plan)
    targets = plan.planted_ids[:4]
    cal_ids = np.setdiff1d(np.arange(200, 230), plan.used_ids)
    pool = np.union1d(plan.planted_ids, plan.ordinary_ids)
    ctx = RepairContext(iar, ds, plan, targets, STRONG.replace(calibrate=True), pool, plan.heldout_ids,
                        fc1_scores(iar), None, None, 2, {}, World(), plan.ordinary_ids,  # type: ignore[arg-type]
                        batch_size=16, calibration=cal_ids)
    first = strong_leak(ctx)
    assert first["extracted"] == sorted(targets.tolist()) and first["rules"]["calibration"] == len(cal_ids)
    assert first["calibration_false_positives"] == 0 and first["heldout_false_positives"] == 0
    keep_bars(ctx, {"leak": first})
    iar.members = set()  # an "edit" that removes every copy
    after = strong_leak(ctx)
    assert after["extracted"] == [] and after["rules"] == first["rules"]
    assert after["calibration_false_positives"] is None  # not generated again
    assert [t["threshold"] for t in after["per_try"]] == [t["threshold"] for t in first["per_try"]]
    # the default attack's calls are judged by its rule on the unedited model too, not recalibrated per state
    assert ctx.default_rule is not None and ctx.default_rule.threshold == first["default_rule"]["threshold"]
    assert (ctx.default_rule.margin, ctx.default_rule.other_bar) == (first["default_rule"]["margin"],
                                                                     first["default_rule"]["other_bar"])
    ctx.default_rule = Decision(-1.0, "any", -math.inf, "none")  # a rule every generation passes
    assert strong_leak(ctx)["extracted"] == sorted(targets.tolist())  # ... is the one that judges the state
    keep_bars(ctx, {"leak": {k: v for k, v in first.items() if k != "rules"}})  # a journal from before
    assert ctx.rules is None and ctx.default_rule is None and len(ctx.calibration) == 0


def test_the_repair_holds_each_target_to_its_class_bar(data) -> None:
    from iarmem.mitigate.repair import target_probes

    ds, plan = data
    iar = _memorizer(ds, plan)
    targets = plan.planted_ids[:3]
    pool = np.union1d(plan.planted_ids, plan.ordinary_ids)
    cal_ids = np.setdiff1d(np.arange(200, 230), plan.used_ids)
    extra = outside_by_class(plan, ds.labels, ds.labels[targets], 8, 0, exclude=cal_ids)
    assert len(extra) == 24 and not np.isin(extra, np.union1d(plan.used_ids, cal_ids)).any()
    assert sorted(np.bincount(ds.labels[extra]).tolist())[-3:] == [8, 8, 8]
    ctx = RepairContext(iar, ds, plan, targets, STRONG.replace(calibrate=True), pool, plan.heldout_ids,
                        fc1_scores(iar), None, None, 2, {}, World(), plan.ordinary_ids,  # type: ignore[arg-type]
                        batch_size=16, calibration=cal_ids, class_calibration=extra)
    first = strong_leak(ctx)
    assert first["extracted"] == sorted(targets.tolist()) and first["rules"]["calibration"] == len(cal_ids) + 24
    rules = TryRules.from_dict(first["rules"])
    assert {c.label for c in rules.classes} >= {int(c) for c in ds.labels[targets]}
    t_KN = rules.bars(ds.labels[targets])[0]
    k = next(k for k, t in enumerate(rules.thresholds) if t == first["default_probe_bar"])
    assert [first["default_probe_bars"][str(i)] for i in targets.tolist()] == [float(t) for t in t_KN[k]]
    probes = target_probes({"leak": first}, targets.tolist(), [])
    assert [ps[0].bar for ps in probes.values()] == [float(t) for t in t_KN[k]]  # each its class's default bar
    keep_bars(ctx, {"leak": first})
    assert ctx.rules == rules


def test_a_target_copied_from_a_class_calibration_prompt_is_probed_at_that_prompt_s_class_bar(data) -> None:
    ds, plan = data
    iar = _memorizer(ds, plan)
    target = int(plan.planted_ids[0])
    cal_ids = np.setdiff1d(np.arange(200, 230), plan.used_ids)
    extra = outside_by_class(plan, ds.labels, ds.labels[[target]], 8, 0, exclude=cal_ids)
    with torch.no_grad():
        tok = iar.tokenize(load_views(iar, ds, np.array([target, int(extra[0])]), 0, 0)[0]).ids_BL
    iar.members.discard(int(tok[0].sum()))  # the target's own prompt no longer brings it out ...
    iar.redirect[int(tok[1].sum())] = tok[0]  # ... but a never-trained image of its class does
    pool = np.union1d(plan.planted_ids, plan.ordinary_ids)
    ctx = RepairContext(iar, ds, plan, np.array([target]), STRONG.replace(calibrate=True), pool, plan.heldout_ids,
                        fc1_scores(iar), None, None, 2, {}, World(), plan.ordinary_ids,  # type: ignore[arg-type]
                        batch_size=16, calibration=cal_ids, class_calibration=extra)
    first = strong_leak(ctx)
    assert first["extracted"] == [target] and first["calibration_false_positives"] == 0
    (probe,) = first["probes"]
    assert probe["prompt"] == int(extra[0])
    rules = TryRules.from_dict(first["rules"])
    k = next(k for k, t in enumerate(first["per_try"]) if t["try"] == first["weakest"][str(target)])
    assert probe["bar"] == float(rules.bars(ds.labels[[int(extra[0])]])[0][k, 0])
