"""The repair's parts on a model with a known copy (tests/trained.injected_var: one sequence learned through
known units): probes read the attack's tries, growing along a good ranking stops the copy where a random
one does not, pruning keeps it stopped with fewer units, and unit-local unlearning moves only those units."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from trained import injected_var

from iarmem.attack.generate import GREEDY, Decoding, agreements, default_prefix
from iarmem.attack.settings import AttackSettings
from iarmem.attack.strong import Try
from iarmem.distributed import World
from iarmem.mitigate import probe
from iarmem.mitigate.edit import temporary_edit, unit_masks
from iarmem.mitigate.probe import Probe
from iarmem.mitigate.repair import RepairContext, grow, probes_stopped, prune
from iarmem.mitigate.repair_run import fc1_scores
from iarmem.mitigate.unlearn import UnlearnConfig, restore, snapshot, unlearn
from iarmem.models.base import Tokens


@pytest.fixture(scope="module")
def ctx() -> RepairContext:
    inj = injected_var()
    iar = inj.iar
    c = RepairContext(iar, None, None, np.array([0]), AttackSettings(), np.array([0, 1]), np.zeros(0, np.int64),
                      fc1_scores(iar), None, None, 2, {}, World(), np.zeros(0, np.int64))  # type: ignore[arg-type]
    for i in (0, 1):
        c.tokens[i], c.labels[i] = inj.seqs.ids_BL[i], int(inj.labels[i])
    return c


def _default_probe(ctx: RepairContext, image: int, bar: float = 0.9) -> Probe:
    return Probe(image, image, Try(default_prefix(ctx.iar), GREEDY), bar)


def test_a_probe_measures_what_the_attack_does(ctx: RepairContext) -> None:
    inj = injected_var()
    want = agreements(ctx.iar, inj.seqs, inj.labels).numpy()
    got = probe.agreements(ctx.iar, [_default_probe(ctx, 0), _default_probe(ctx, 1)], ctx.tokens, ctx.labels)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[0] > 0.9 > got[1] + 0.3  # the injected copy comes out, the unseen sequence does not
    cross = probe.agreements(ctx.iar, [Probe(1, 0, Try(default_prefix(ctx.iar), GREEDY), 0.9)], ctx.tokens,
                             ctx.labels)
    assert cross[0] < 0.5  # prompt 0's generation is a copy of image 0, not of image 1
    p = Probe(3, 4, Try(2, GREEDY, trigger=True), 0.5)
    assert Probe.from_dict(p.as_dict()) == p


def test_growing_along_the_copy_s_units_stops_it_and_a_random_ranking_does_not(ctx: RepairContext) -> None:
    inj = injected_var()
    truth = ctx.scores.to_flat(inj.units)
    rest = np.setdiff1d(np.arange(len(ctx.scores.flat)), truth)
    rng = np.random.default_rng(0)
    good = np.concatenate([rng.permutation(truth), rng.permutation(rest)])
    probes = [_default_probe(ctx, 0)]
    grown = grow(ctx, [], lambda removed: good, probes, len(truth), budget=4 * len(truth), margin=0.1)
    assert grown is not None and grown[1]
    added = grown[0]
    assert sorted(added) == sorted(truth.tolist())  # the first doubling: the copy's own units
    assert probes_stopped(ctx, np.asarray(added), probes, 0.1)
    shuffled = rng.permutation(rest)
    # a random ranking fills the budget without stopping the probes: returned unconfirmed, for the attack to judge
    filled = grow(ctx, [], lambda removed: shuffled, probes, 1, budget=len(truth), margin=0.1)
    assert filled is not None and not filled[1] and filled[0] == shuffled[:len(truth)].tolist()
    assert grow(ctx, filled[0], lambda removed: shuffled, probes, 1, budget=len(truth), margin=0.1) is None  # full
    assert grow(ctx, [], lambda removed: shuffled, probes, 1, budget=len(truth), margin=0.1, fill=False) is None

    kept = prune(ctx, added, probes, 0.1, tries=16)
    assert set(kept) <= set(added) and len(kept) < len(added)
    assert probes_stopped(ctx, np.asarray(kept), probes, 0.1)
    with temporary_edit(ctx.iar, ctx.units(np.asarray(kept)), "exact", 0.0):  # the other sequence is not harmed
        other = probe.agreements(ctx.iar, [_default_probe(ctx, 1)], ctx.tokens, ctx.labels)
    before = probe.agreements(ctx.iar, [_default_probe(ctx, 1)], ctx.tokens, ctx.labels)
    assert abs(other[0] - before[0]) < 0.2


def test_unlearning_moves_only_the_units_and_stops_the_copy(ctx: RepairContext) -> None:
    inj = injected_var()
    iar = iar0 = ctx.iar
    before = {k: p.detach().clone() for k, p in iar.model.named_parameters()}
    saved = snapshot(iar, inj.units)
    masks = unit_masks(iar, inj.units)
    target = Tokens(inj.seqs.ids_BL[:1], iar.grids)
    try:
        keep = Tokens(inj.keep.ids_BL[:8], iar.grids)
        info = unlearn(iar, inj.units, target, inj.labels[:1], keep, inj.keep_labels[:8],
                       UnlearnConfig(steps=20, lr=3e-3))
        raised = info["target_loss_after"] - info["target_loss_before"]
        assert raised > 1.0 and raised > 3 * (info["keep_loss_after"] - info["keep_loss_before"]), info
        assert float(agreements(iar, target, inj.labels[:1])[0]) < 0.8
        moved = set()
        for k, p in iar.model.named_parameters():
            diff = p.detach() != before[k]
            if k in masks:
                assert not (diff & ~masks[k]).any(), k
            else:
                assert not diff.any(), k
            if diff.any():
                moved.add(k)
        assert moved and moved <= set(masks)
    finally:
        restore(iar0, saved)
    for k, p in iar.model.named_parameters():
        assert torch.equal(p.detach(), before[k]), k


def test_a_target_an_edit_brings_out_is_named_not_grown_and_the_repair_is_not_clean(ctx: RepairContext,
                                                                                    tmp_path) -> None:
    """A target the strong attack missed before can come out after a removal (removing units can undo another
    removal): it has no ranking to grow by (this crashed a repair with KeyError), and an edit that trades one
    leak for another is neither clean nor kept."""
    import json

    from iarmem.mitigate.repair import Journal, RepairConfig, run_repair

    def m(extracted: list[int], fid: float = 1.0) -> dict:
        return {"units": 1, "order": [5], "quality": {"fid": fid},
                "leak": {"extracted": extracted, "probes": [], "default_extracted": extracted}}

    before = m([1]) | {"units": 0}
    before["leak"] |= {"default_prefix": 2, "default_probe_bar": 0.9}
    (tmp_path / "steps.json").write_text(json.dumps({"round1": m([2])}))  # target 1 stopped, target 2 brought out

    def no_ranking(i: int):
        raise KeyError(i)  # what the localization says of an image it never ranked

    outcome, record = run_repair(ctx, RepairConfig(max_quality_loss=1.0), Journal(tmp_path / "steps.json", World()),
                                 {1: [5]}, no_ranking, before)
    assert outcome.status == "revealed" and "brings out 2" in outcome.message
    assert outcome.units == [] and outcome.final is None and record["grown"] == []


@pytest.mark.parametrize("pruned_fid, status", [(1.05, "clean"), (1.2, "quality")])
def test_a_round_that_stops_every_target_over_the_guard_is_pruned_before_it_is_refused(
        ctx: RepairContext, tmp_path: Path, pruned_fid: float, status: str) -> None:
    import json

    from iarmem.mitigate.repair import Journal, RepairConfig, run_repair

    def m(extracted: list[int], fid: float, order: list[int]) -> dict:
        return {"units": len(order), "order": order, "quality": {"fid": fid},
                "leak": {"extracted": extracted, "probes": [], "default_extracted": extracted}}

    before = m([1], 1.0, []) | {"units": 0}
    before["leak"] |= {"default_prefix": 2, "default_probe_bar": 0.9}
    steps = {"round1": m([], 1.5, [5, 6, 7]), "prune": [5], "pruned": m([], pruned_fid, [5])}
    (tmp_path / "steps.json").write_text(json.dumps(steps))  # round 1 stops target 1 at +50 % FID
    outcome, record = run_repair(ctx, RepairConfig(max_quality_loss=0.1, screen_tries=0),  # the prune, not the regrow
                                 Journal(tmp_path / "steps.json", World()), {1: [5, 6, 7]}, lambda i: None, before)
    assert outcome.status == status and record["pruned_units"] == 1
    if status == "clean":  # one unit of the three stops it within the guard: kept, and the message says how
        assert outcome.units == [5] and record["pruned_kept"] and "pruned from 3 to 1 units" in outcome.message
    else:  # still over the guard: refused, nothing kept
        assert outcome.units == [] and outcome.final is None and not record["pruned_kept"]


@pytest.mark.parametrize("round1_fid, past, status, rounds", [(1.15, 2.0, "clean", 2), (1.15, 0.0, "quality", 1),
                                                           (1.3, 2.0, "quality", 1)])
def test_a_refused_round_that_leaves_a_target_grows_on_while_near_the_guard(
        ctx: RepairContext, tmp_path: Path, round1_fid: float, past: float, status: str, rounds: int) -> None:
    """Round 1 costs +15 % FID and leaves target 1: refused, but within 2 x the guard, so target 1 grows; round 2
    stops both at +25 % and its prune to three units at +5 % is kept. Growing past the guard off, or a round 1
    over 2 x the bar (+30 %), stops at round 1 with nothing kept, as before."""
    import json

    from iarmem.mitigate.repair import Journal, RepairConfig, run_repair

    def m(extracted: list[int], fid: float, order: list[int]) -> dict:
        return {"units": len(order), "order": order, "quality": {"fid": fid},
                "leak": {"extracted": extracted, "probes": [], "default_extracted": extracted}}

    before = m([0, 1], 1.0, []) | {"units": 0}
    before["leak"] |= {"default_prefix": 2, "default_probe_bar": 0.9}
    grown = [5, 6, 7, 8, 9]
    steps = {"round1": m([1], round1_fid, [5, 6]), "grow1": {"order": grown, "added": {"1": [7, 8, 9]},
                                                                "failed": [], "unconfirmed": []},
             "round2": m([], 1.25, grown), "prune": [5, 7, 8], "pruned": m([], 1.05, [5, 7, 8])}
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    outcome, record = run_repair(ctx, RepairConfig(max_quality_loss=0.1, grow_past_guard=past, screen_tries=0),
                                 Journal(tmp_path / "steps.json", World()), {0: [5], 1: [6]}, lambda i: None, before)
    assert outcome.status == status and len(record["rounds"]) == rounds
    if status == "clean":
        assert outcome.units == [5, 7, 8] and record["pruned_kept"] and "pruned from 5 to 3 units" in outcome.message
    else:
        assert outcome.units == [] and outcome.final is None and "round 1 costs" in outcome.message


def test_a_round_that_costs_class_accuracy_is_refused_though_fid_passes(ctx: RepairContext, tmp_path: Path) -> None:
    """The issue's bar is FID and class accuracy: an edit that stops every target at +2 % FID but 6 points of
    accuracy is refused, and the refusal names the accuracy; with the accuracy guard off it is clean."""
    import json

    from iarmem.mitigate.repair import Journal, RepairConfig, run_repair

    def m(extracted: list[int], acc: list[float], order: list[int]) -> dict:
        q = {"fid": 1.0, "fid_draws": [1.0, 1.0, 1.06], "class_accuracy": acc[0], "class_accuracy_draws": acc}
        return {"units": len(order), "order": order, "quality": q,
                "leak": {"extracted": extracted, "probes": [], "default_extracted": extracted}}

    before = m([1], [0.8, 0.8, 0.8], []) | {"units": 0}
    before["leak"] |= {"default_prefix": 2, "default_probe_bar": 0.9}
    steps = {"round1": m([], [0.74, 0.74, 0.74], [5, 6]), "prune": [5, 6]}
    for drop, status in ((2.0, "quality"), (None, "clean")):
        (tmp_path / "steps.json").write_text(json.dumps(steps))
        outcome, _ = run_repair(ctx, RepairConfig(max_quality_loss=0.1, max_accuracy_drop=drop, screen_tries=0),
                                Journal(tmp_path / "steps.json", World()), {1: [5, 6]}, lambda i: None, before)
        assert outcome.status == status
        if status == "quality":
            assert "class accuracy" in outcome.message and outcome.units == [] and outcome.final is None
        else:
            assert outcome.units == [5, 6]


def test_a_pruned_edit_the_strong_attack_sees_through_is_pruned_again_holding_the_try_it_used(
        ctx: RepairContext, tmp_path: Path) -> None:
    """The first prune holds only the probes seen so far (here one every edit stops) and leaves one unit; the
    strong attack brings the copy back with the default greedy try, which then joins the probes, and the second
    prune keeps the copy's units: the kept edit stops that try on the real model."""
    import json

    from iarmem.mitigate.repair import Journal, RepairConfig, run_repair

    inj = injected_var()
    truth = ctx.scores.to_flat(inj.units).tolist()
    extra = np.setdiff1d(np.arange(len(ctx.scores.flat)), truth)[:6].tolist()
    grown = [int(u) for u in truth + extra]
    seen_through = _default_probe(ctx, 0)  # bar 0.9: the copy comes back at ~1.0 unless its units are gone

    def m(extracted: list[int], order: list[int], found: list[Probe] = ()) -> dict:  # type: ignore[assignment]
        return {"units": len(order), "order": order, "quality": {"fid": 1.0},
                "leak": {"extracted": extracted, "probes": [p.as_dict() for p in found],
                         "default_extracted": extracted}}

    before = m([0], []) | {"units": 0}
    before["leak"] |= {"default_prefix": default_prefix(ctx.iar), "default_probe_bar": 1.5}  # always "stopped"
    steps = {"round1": m([], grown), "pruned": m([0], [grown[0]], [seen_through]), "pruned2": m([], [])}
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    journal = Journal(tmp_path / "steps.json", World())
    outcome, record = run_repair(ctx, RepairConfig(prune_tries=len(grown)), journal, {0: grown}, lambda i: None,
                                 before)
    assert len(journal.steps["prune"]) == 1  # the first prune, held by a probe every edit stops
    assert outcome.status == "clean" and outcome.units == journal.steps["prune2"]
    assert outcome.message == (f"every target stopped after round 1, pruned from {len(grown)} to "
                               f"{len(outcome.units)} units")
    assert set(outcome.units) <= set(grown) and len(outcome.units) < len(grown)
    assert probes_stopped(ctx, np.asarray(outcome.units), [seen_through], 0.05)
    assert [a["kept"] for a in record["prune_attempts"]] == [False, True] and record["pruned_kept"]


@pytest.mark.parametrize("noise", [0.0, 2.0])
def test_a_probe_repeats_the_strong_attack_s_sampled_draw_of_an_image_in_any_batch(ctx: RepairContext,
                                                                                   noise: float) -> None:
    """A sampled try (or logit noise) draws per row, seeded by the image id: the probe of image 1 alone gives the
    generation the strong attack drew for it as the second row of a batch (with batch-seeded draws the probe
    screened a different sample, and the strong attack found the copy again)."""
    from iarmem.attack.strong import _generate

    inj = injected_var()
    sampled = Try(1, Decoding(greedy=False, seed=2))
    gt = torch.cat([inj.keep.ids_BL[:3], inj.seqs.ids_BL[1:2]]).to(torch.int32)
    ids = np.array([40, 41, 42, 1])  # image 1 is the fourth row of the attack's batch
    labels = np.array([0, 1, 2, int(inj.labels[1])])
    s = AttackSettings(batch_size=4, logit_noise=noise)
    gen = _generate(ctx.iar, gt, labels, sampled, s, World(), ids)
    tokens = {1: inj.seqs.ids_BL[1], 77: gen[3]}  # 77: the attack's own generation for image 1, as an "image"
    got = probe.agreements(ctx.iar, [Probe(77, 1, sampled, 0.9)], tokens, {1: int(inj.labels[1])}, noise=noise)
    assert got[0] == 1.0  # the probe from image 1's prompt draws exactly that generation
    alone = _generate(ctx.iar, gt[3:], labels[3:], sampled, s, World(), ids[3:])
    assert torch.equal(alone[0], gen[3])
    other = _generate(ctx.iar, gt[3:], labels[3:], sampled, s, World(), np.array([99]))  # another image's draw
    assert not torch.equal(other[0], gen[3])


def test_a_target_that_comes_back_after_a_grow_is_probed_by_every_try_at_its_class_bars(ctx: RepairContext) -> None:
    """Probes hold the tries seen so far; a target extracted in two rounds (it came back by another try) is held to
    every try of the strong attack from its own prompt, each at the bar its class is judged by."""
    import dataclasses

    from iarmem.attack.decide import METRICS
    from iarmem.attack.strong import strong_tries
    from iarmem.attack.union import union_rules
    from iarmem.mitigate.repair import RepairConfig, round_probes

    p = default_prefix(ctx.iar)
    tries = strong_tries(ctx.iar, p)
    rng = np.random.default_rng(0)
    own = rng.uniform(0.2, 0.6, (len(tries), 200))
    rules = union_rules(METRICS["tokens"], own, own - rng.uniform(0.0, 0.3, own.shape), 0.01)
    c = dataclasses.replace(ctx, rules=rules, tokens=dict(ctx.tokens), labels=dict(ctx.labels))
    before = {"leak": {"default_prefix": p, "default_probe_bar": 0.9, "metric": "tokens", "probes": [],
                       "extracted": [0]}}
    once, twice = [{"leak": {"extracted": [0], "probes": []}}], [{"leak": {"extracted": [0], "probes": []}}] * 2
    assert len(round_probes(c, RepairConfig(), before, [0], once)[0]) == 1  # the default try only
    probes = round_probes(c, RepairConfig(), before, [0], twice)[0]
    every = [q for q in probes if q.bar != 0.9]
    assert [q.attempt for q in every] == tries and all(q.prompt == q.image == 0 for q in every)
    np.testing.assert_allclose([q.bar for q in every], rules.bars(np.array([ctx.labels[0]]))[0][:, 0])
    np.testing.assert_allclose([q.gap_bar for q in every], rules.bars(np.array([ctx.labels[0]]))[1][:, 0])
    # a probe recorded before the joint rule (no margin bar) is read with its try's margin bar from the fixed bars
    (default,) = round_probes(c, RepairConfig(), before, [0], once)[0]
    k = tries.index(Try(p, GREEDY))
    assert default.gap_bar == pytest.approx(rules.bars(np.array([ctx.labels[0]]))[1][k, 0])
    assert round_probes(c, RepairConfig(probe_rule="agreement"), before, [0], once)[0][0].gap_bar is None
    assert len(round_probes(c, RepairConfig(every_try_after=0), before, [0], twice)[0]) == 1  # turned off
    other = {"leak": before["leak"] | {"metric": "ssim"}}  # bars in another metric do not bound token agreement
    assert len(round_probes(c, RepairConfig(), other, [0], twice)[0]) == 1
    assert len(round_probes(ctx, RepairConfig(), before, [0], twice)[0]) == 1  # no fixed bars: try by try


def test_a_prune_that_returns_a_set_already_seen_through_is_not_measured_again(ctx: RepairContext,
                                                                               tmp_path: Path) -> None:
    import json

    from iarmem.mitigate.repair import Journal, RepairConfig, run_repair

    def m(extracted: list[int], order: list[int], found: list[dict]) -> dict:
        return {"units": len(order), "order": order, "quality": {"fid": 1.0},
                "leak": {"extracted": extracted, "probes": found, "default_extracted": extracted}}

    sampled = Probe(1, 1, Try(2, Decoding(greedy=False, seed=1)), 0.7).as_dict()
    before = m([1], [], []) | {"units": 0}
    before["leak"] |= {"default_prefix": 2, "default_probe_bar": 0.9}
    steps = {"round1": m([], [5, 6, 7], []), "prune": [5], "pruned": m([1], [5], [sampled]), "prune2": [5]}
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    journal = Journal(tmp_path / "steps.json", World())
    outcome, record = run_repair(ctx, RepairConfig(), journal, {1: [5, 6, 7]}, lambda i: None, before)
    assert "pruned2" not in journal.steps and len(record["prune_attempts"]) == 1
    assert outcome.status == "clean" and outcome.units == [5, 6, 7]  # the grown round, confirmed, is kept


@pytest.mark.parametrize("fallback, left, fid, status", [("unlearn", [], 1.02, "clean"), ("none", [], 1.02, "quality"),
                                                         ("unlearn", [1], 1.02, "quality"),
                                                         ("unlearn", [], 1.3, "quality")])
def test_when_no_exact_removal_is_clean_the_last_round_s_units_are_fine_tuned_and_kept_if_both_checks_pass(
        ctx: RepairContext, tmp_path: Path, fallback: str, left: list[int], fid: float, status: str) -> None:
    """Round 1 stops the target at +50 % FID and its prune is no smaller: refused. The fallback fine-tunes round 1's
    units; it is the repair's edit only when the strong attack stops every target and the guard passes it."""
    import json

    from iarmem.mitigate.repair import Journal, RepairConfig, alternatives, run_repair
    from iarmem.mitigate.repair import fallback as fallback_

    def m(extracted: list[int], fid: float, order: list[int]) -> dict:
        return {"units": len(order), "order": order, "quality": {"fid": fid},
                "leak": {"extracted": extracted, "probes": [], "default_extracted": extracted}}

    before = m([1], 1.0, []) | {"units": 0}
    before["leak"] |= {"default_prefix": 2, "default_probe_bar": 0.9}
    tuned = m(left, fid, [5, 6, 7]) | {"edit": "unlearn"}
    steps = {"round1": m([], 1.5, [5, 6, 7]), "prune": [5, 6, 7], "fallback-unlearn": tuned}
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    journal = Journal(tmp_path / "steps.json", World())
    cfg = RepairConfig(max_quality_loss=0.1, fallback=fallback, screen_tries=0)
    outcome, record = run_repair(ctx, cfg, journal, {1: [5, 6, 7]}, lambda i: None, before)
    assert outcome.status == "quality"
    outcome = fallback_(ctx, cfg, journal, outcome, record, before)
    assert outcome.status == status
    if fallback == "none":
        assert "fallback" not in record
    elif status == "clean":
        assert outcome.edit == "unlearn" and outcome.units == [5, 6, 7] and outcome.final == tuned
        assert record["fallback"]["kept"] and "fine-tuning those 3 units instead" in outcome.message
        assert "round 1 costs" in outcome.message  # why exact removal was not enough
    else:
        assert outcome.edit == "exact" and outcome.units == [] and not record["fallback"]["kept"]
    if fallback == "unlearn":  # the unlearn alternative at the same units is that measurement, not another
        alt = alternatives(ctx, RepairConfig(alternatives=("unlearn",)), journal, record["rounds"][-1], before, None)
        assert alt[0]["leak"] == tuned["leak"] and "alt-unlearn-3" not in journal.steps


def test_the_model_written_holds_the_fallback_s_tuned_units_exactly(ctx: RepairContext, tmp_path: Path) -> None:
    """kept_edit puts the fallback's measured values on the model (read from their file, or tuned again, to the
    same bits, when the file is gone); the exact edit zeroes the units' readers instead."""
    import dataclasses

    from safetensors.torch import save

    from iarmem.fileio import write_bytes
    from iarmem.mitigate.repair import JOURNAL_FILE, Journal, RepairConfig, fallback_file, unlearn_units
    from iarmem.mitigate.repair_run import kept_edit
    from iarmem.mitigate.unlearn import unit_values

    inj = injected_var()
    keep = np.arange(100, 108)
    c = dataclasses.replace(ctx, keep=keep, tokens=dict(ctx.tokens), labels=dict(ctx.labels))
    for j, i in enumerate(keep.tolist()):
        c.tokens[i], c.labels[i] = inj.keep.ids_BL[j], int(inj.keep_labels[j])
    truth = [int(u) for u in c.scores.to_flat(inj.units)]
    chosen = c.units(np.asarray(truth))
    cfg = RepairConfig(unlearn=UnlearnConfig(steps=20, lr=3e-3))
    journal = Journal(tmp_path / JOURNAL_FILE, World())
    everything = {k: p.detach().clone() for k, p in c.iar.model.named_parameters()}
    saved = snapshot(c.iar, chosen)
    copy = [_default_probe(c, 0)]
    try:
        unlearn_units(c, cfg, chosen, [0])
        want = unit_values(c.iar, chosen)
        write_bytes(fallback_file(journal), save(want))
        restore(c.iar, saved)
        assert not probes_stopped(c, np.zeros(0, np.int64), copy, 0.05)  # the copy is back with the weights
        rec = kept_edit(c, {"edit": "unlearn", "extracted_before": [0]}, truth, cfg, fallback_file(journal))
        got = unit_values(c.iar, chosen)
        assert all(torch.equal(got[k], want[k]) for k in want) and rec.edit == "unlearn"
        assert rec.count == len(truth) and rec.as_dict()["detail"]["steps"] == 20
        assert probes_stopped(c, np.zeros(0, np.int64), copy, 0.05)  # the model as measured: the copy is gone
        restore(c.iar, saved)
        fallback_file(journal).unlink()  # no file: kept_edit tunes again
        kept_edit(c, {"edit": "unlearn", "extracted_before": [0]}, truth, cfg, fallback_file(journal))
        again = unit_values(c.iar, chosen)
        assert all(torch.equal(again[k], want[k]) for k in want)
        restore(c.iar, saved)
        kept_edit(c, {"edit": "exact", "extracted_before": [0]}, truth, cfg, fallback_file(journal))
        assert not all(torch.equal(unit_values(c.iar, chosen)[k], everything[k][m])
                       for k, m in unit_masks(c.iar, chosen).items())
    finally:
        restore(c.iar, saved)
    for k, p in c.iar.model.named_parameters():
        assert torch.equal(p.detach(), everything[k]), k


def test_a_joint_probe_is_stopped_when_the_copy_is_no_nearer_its_image_than_another_one(ctx: RepairContext) -> None:
    """The strong attack extracts an image only when the generation clears the try's bar *and* is nearer that image
    than any other pool image by the try's margin. A joint probe reads both: its gap is the attack's (agreement minus
    the nearest other pool image's), and a generation that copies an image another pool image duplicates is
    stopped though its agreement is 1.0; read by agreement alone it is not."""
    import dataclasses

    from iarmem.attack.neighbours import TokenCache, pool_tokens
    from iarmem.mitigate.repair import RepairConfig, ruled

    inj = injected_var()
    c = dataclasses.replace(ctx, pool=np.array([0, 1]), cache=TokenCache())
    c.cache.add(np.array([0, 1, 50]), torch.cat([inj.seqs.ids_BL, inj.seqs.ids_BL[:1]]))  # 50 duplicates image 0
    joint = dataclasses.replace(_default_probe(c, 0), gap_bar=0.1)
    assert Probe.from_dict(joint.as_dict()) == joint and joint.joint
    assert not dataclasses.replace(joint, prompt=1).joint  # another prompt's generation: the attack's other rule
    pool = (c.pool, pool_tokens(c.iar, None, 0, c.cache))  # type: ignore[arg-type]
    (sim,), (gap,) = probe.judge(c.iar, [joint], c.tokens, c.labels, pool=pool)
    gen = probe.agreements(c.iar, [dataclasses.replace(joint, image=1)], c.tokens, c.labels)[0]
    assert sim > 0.9 and gap == pytest.approx(sim - gen)  # nearest other: image 1, the only one
    none = np.zeros(0, np.int64)
    assert not probes_stopped(c, none, [joint], 0.05)  # far nearer its own image than image 1
    dup = dataclasses.replace(c, pool=np.array([0, 1, 50]))
    assert probes_stopped(dup, none, [joint], 0.05)  # as near another pool image: the attack would not call it
    before = {"leak": {"default_prefix": joint.attempt.prefix, "metric": "tokens"}}
    (agreement_only,) = ruled(c, RepairConfig(probe_rule="agreement"), before, [joint])
    assert agreement_only.gap_bar is None and not probes_stopped(dup, none, [agreement_only], 0.05)
    assert ruled(c, RepairConfig(), before, [joint]) == [joint]


def test_grow_serves_survivors_it_can_stop_first_and_lets_the_others_fill_what_is_left(ctx: RepairContext,
                                                                                      tmp_path: Path) -> None:
    """Two survivors of round 1, the first in line (5: the copy under another id) with a ranking that cannot stop it
    within the budget, the second (0) with its copy's own units first. Served in line order, 5 would take the whole
    budget and starve 0 (the tenth session's 916 / 1257 run); grow serves 0 first, then 5 fills what is left."""
    import dataclasses
    import json

    from iarmem.mitigate.repair import Journal, RepairConfig, run_repair

    inj = injected_var()
    c = dataclasses.replace(ctx, tokens=dict(ctx.tokens), labels=dict(ctx.labels))
    c.tokens[5], c.labels[5] = inj.seqs.ids_BL[0], int(inj.labels[0])
    truth = c.scores.to_flat(inj.units)
    rest = np.setdiff1d(np.arange(len(c.scores.flat)), truth)
    rng = np.random.default_rng(3)
    good = np.concatenate([rng.permutation(truth), rng.permutation(rest)])
    bad = rng.permutation(rest)
    rankings = {0: good, 5: bad}

    def m(extracted: list[int], order: list[int]) -> dict:
        return {"units": len(order), "order": order, "quality": {"fid": 1.0},
                "leak": {"extracted": extracted, "probes": [], "default_extracted": extracted}}

    before = m([5, 0], []) | {"units": 0}
    before["leak"] |= {"default_prefix": default_prefix(c.iar), "default_probe_bar": 0.9}
    steps = {"round1": m([5, 0], []), "round2": m([], [1, 2, 3]), "prune": [1, 2, 3]}
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    journal = Journal(tmp_path / "steps.json", World())
    cfg = RepairConfig(max_units=2.5 * len(truth) / len(c.scores.flat) * 100, every_try_after=0,
                       screen_tries=0)  # the order of service, not the screen (which needs generations)
    budget = int(cfg.max_units / 100 * len(c.scores.flat))
    outcome, _ = run_repair(c, cfg, journal, {0: [], 5: []}, lambda i: (lambda removed: rankings[i]), before)
    g = journal.steps["grow1"]
    assert outcome.status == "clean" and g["failed"] == []
    assert set(g["added"]["0"]) <= set(truth.tolist()) and g["added"]["0"]  # 0 grew along its copy's units
    assert g["order"][:len(g["added"]["0"])] == g["added"]["0"]  # and first, though 5 came first in line
    assert set(g["added"]["5"]) <= set(bad.tolist()) and len(g["order"]) <= budget


@pytest.mark.parametrize("cap, status", [(9, "clean"), (3, "quality")])
def test_a_verdict_the_seeds_could_flip_draws_more_paired_seeds_under_the_edit(
        ctx: RepairContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cap: int, status: str) -> None:
    """Round 1 stops the target at +11.3 % FID over three seeds (per-seed +20 / 0 / +14 %): a 10 % bar is inside
    its noise. Three more seeds for it and for the unedited model (the edited state reads +5 % on them) bring the
    mean under the bar; with the cap at three draws the round is refused as before. The draws are journalled, so a
    resumed repair reads them back and draws nothing."""
    import json

    from iarmem.mitigate import repair
    from iarmem.mitigate.repair import Journal, RepairConfig, run_repair

    unedited = sum(float(p.detach().abs().sum()) for p in ctx.iar.parameters())

    def fake_quality(c: RepairContext, noise: float = 0.0, seed: int | None = None) -> dict:
        edited = abs(sum(float(p.detach().abs().sum()) for p in c.iar.parameters()) - unedited) > 1e-3
        return {"fid": 3.15 if edited else 3.0, "class_accuracy": None}

    monkeypatch.setattr(repair, "quality", fake_quality)

    def m(extracted: list[int], fids: list[float], order: list[int]) -> dict:
        return {"units": len(order), "order": order, "quality": {"fid": fids[0], "fid_draws": fids},
                "leak": {"extracted": extracted, "probes": [], "default_extracted": extracted}}

    before = m([1], [3.0, 3.0, 3.0], []) | {"units": 0}
    before["leak"] |= {"default_prefix": 2, "default_probe_bar": 0.9}
    steps = {"round1": m([], [3.6, 3.0, 3.42], [5, 6, 7]), "prune": [5, 6, 7]}
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    cfg = RepairConfig(max_quality_loss=0.1, max_quality_draws=cap, fallback="none", screen_tries=0)
    outcome, record = run_repair(ctx, cfg, Journal(tmp_path / "steps.json", World()), {1: [5, 6, 7]},
                                 lambda i: None, before)
    assert outcome.status == status
    saved = json.loads((tmp_path / "steps.json").read_text())
    if cap == 3:
        assert set(saved) == {"round1", "prune"} and len(before["quality"]["fid_draws"]) == 3
        return
    assert outcome.units == [5, 6, 7] and len(outcome.final["quality"]["fid_draws"]) == 9
    assert saved["round1-draws6"]["fid_draws"] == [3.15] * 3  # drawn with the round's units removed
    assert saved["before-draws6"]["fid_draws"] == [3.0] * 3 and saved["before-draws9"]["start"] == 6
    assert before["quality"]["fid_draws"] == [3.0] * 9 and saved["round1"]["quality"]["fid_draws"] == [3.6, 3.0, 3.42]

    def no_draws(*args, **kwargs):
        raise AssertionError("a resumed repair must read its draws from the journal")

    monkeypatch.setattr(repair, "quality", no_draws)
    before["quality"]["fid_draws"] = [3.0] * 3
    again, _ = run_repair(ctx, cfg, Journal(tmp_path / "steps.json", World()), {1: [5, 6, 7]}, lambda i: None, before)
    assert again.status == "clean" and again.final["quality"]["fid_draws"] == outcome.final["quality"]["fid_draws"]


class _CostScreen:
    """A ``Screen`` whose draws cost +50 % FID when a costly unit is removed, +5 % otherwise."""

    @staticmethod
    def make(ctx: RepairContext, costly: set[int], tries: int, q0: dict | None = None, cap: int | None = None):
        from iarmem.mitigate.repair import Journal, RepairConfig, Screen

        class S(Screen):
            def quality(self, flat: list[int], seeds) -> dict:
                self.calls.append(list(flat))
                n = len(seeds)
                return {"fid_draws": [1.5 if costly & set(flat) else 1.05] * n, "class_accuracy_draws": [0.8] * n}

        ctx = dataclasses.replace(ctx, quality_seeds=(1, 2))  # three draws first, as a repair's measurements
        s = S(ctx, RepairConfig(screen_tries=tries, max_quality_draws=cap), Journal(Path("/nonexistent/steps.json"),
                                                                                   World()),
              q0 or {"fid_draws": [1.0] * 3, "class_accuracy_draws": [0.8] * 3})
        s.calls = []
        return s


def test_the_screen_reads_the_guard_paired_with_the_first_seeds_of_the_unedited_model(ctx: RepairContext) -> None:
    """The unedited model settled over six seeds (FID 1, 1, 1, then 2, 2, 2): a unit's three draws at 1.05 are +5 %
    against the first three, within the 10 % guard (against the mean of all six they would read -30 %); at 1.5,
    +50 %: refused. Class accuracy 8 points down is refused whatever FID reads. (No more draws: a cap of three;
    the unedited draws' spread would otherwise settle the +50 % with three more seeds.)"""
    q0 = {"fid_draws": [1.0] * 3 + [2.0] * 3, "class_accuracy_draws": [0.8] * 6}
    s = _CostScreen.make(ctx, {9}, tries=2, q0=q0, cap=3)
    assert s.passes([1, 2]) and not s.passes([1, 9])
    s.q0 = {"fid_draws": [1.4] * 3, "class_accuracy_draws": [0.8] * 3}  # 1.5 is +7 % of 1.4: passes
    assert s.passes([9])
    s.q0 = {"fid_draws": [1.0] * 3, "class_accuracy_draws": [0.88] * 3}
    assert not s.passes([1])


@pytest.mark.parametrize("tries, regrows", [(8, True), (0, False)])
def test_rounds_that_end_refused_grow_again_from_the_last_round_within_the_guard_with_the_screen(
        ctx: RepairContext, tmp_path: Path, tries: int, regrows: bool) -> None:
    """Round 1 (unit 5) leaves target 1 at +2 % FID; the grow adds 6 and 7 and round 2 stops it at +70 %, and its
    prune to 6 and 7 is seen through: refused. With the screen the repair goes back to round 1 and grows again (7
    screened out, 8 taken): round 3 stops it at +4 % and is kept. Without it (0 tries) round 2's refusal stands."""
    import json

    from iarmem.mitigate.repair import Journal, RepairConfig, run_repair

    def m(extracted: list[int], fid: float, order: list[int]) -> dict:
        return {"units": len(order), "order": order, "quality": {"fid": fid},
                "leak": {"extracted": extracted, "probes": [], "default_extracted": extracted}}

    before = m([1], 1.0, []) | {"units": 0}
    before["leak"] |= {"default_prefix": 2, "default_probe_bar": 0.9}
    steps = {"round1": m([1], 1.02, [5]), "grow1": {"order": [5, 6, 7], "added": {"1": [6, 7]}, "failed": [],
                                                     "unconfirmed": []},
             "round2": m([], 1.7, [5, 6, 7]), "prune": [6, 7], "pruned": m([1], 1.3, [6, 7]),
             "regrow1": {"order": [5, 6, 8], "added": {"1": [6, 8]}, "failed": [], "unconfirmed": [],
                         "screened_out": [7], "screen_seconds": 1.0},
             "round3": m([], 1.04, [5, 6, 8]), "screened-prune": [5, 6, 8]}
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    journal = Journal(tmp_path / "steps.json", World())
    outcome, record = run_repair(ctx, RepairConfig(max_quality_loss=0.1, screen_tries=tries, fallback="none"),
                                 journal, {1: [5]}, lambda i: None, before)
    if regrows:
        assert outcome.status == "clean" and outcome.units == [5, 6, 8] and len(record["rounds"]) == 3
        assert record["regrow"]["from_round"] == 1 and record["regrow"]["first_round"] == 3
        assert "grown again from round 1" in outcome.message and "round 2 costs 70.0 % FID" in outcome.message
        assert [g.get("screened_out") for g in record["grown"]] == [None, [7]]
    else:
        assert outcome.status == "quality" and outcome.units == [] and len(record["rounds"]) == 2
        assert "regrow" not in record and "round 2 costs 70.0 % FID" in outcome.message


def test_a_screened_grow_skips_a_unit_that_fails_the_guard_for_the_next_in_the_ranking(ctx: RepairContext) -> None:
    inj = injected_var()
    truth = ctx.scores.to_flat(inj.units)
    rest = np.setdiff1d(np.arange(len(ctx.scores.flat)), truth)
    rng = np.random.default_rng(0)
    good = np.concatenate([rng.permutation(truth), rng.permutation(rest)]).tolist()
    probes = [_default_probe(ctx, 0)]
    costly = {good[1]}
    screen = _CostScreen.make(ctx, costly, tries=4)
    grown = grow(ctx, [], lambda removed: np.asarray(good), probes, len(truth), budget=4 * len(truth), margin=0.1,
                 screen=screen)
    assert grown is not None and good[1] not in grown[0]
    assert screen.out == [good[1]]  # refused once, not offered again
    assert grown[0][:len(truth) - 1] == [u for u in good[:len(truth)] if u != good[1]]  # the ranking, less the one
    assert screen.calls[:2] == [[good[0]], [good[0], good[1]]] and all(not costly & set(c) for c in screen.calls[2:])
    # each unit is screened beside every unit taken before it
    assert all(len(c) == k + 1 for k, c in enumerate(x for x in screen.calls if good[1] not in x))
    # a screen that refuses every unit stops after its tries: nothing to add
    none = _CostScreen.make(ctx, set(good), tries=3)
    assert grow(ctx, [], lambda removed: np.asarray(good), probes, 1, budget=10, margin=0.1, fill=False,
                screen=none) is None
    assert none.out == good[:3]
    # the next grow (the next target's) has its own tries and is not offered the units refused before
    assert grow(ctx, [], lambda removed: np.asarray(good), probes, 1, budget=10, margin=0.1, fill=False,
                screen=none) is None
    assert none.out == good[:6]
    screen.calls = []
    assert grow(ctx, [], lambda removed: np.asarray(good), probes, len(truth), budget=4 * len(truth), margin=0.1,
                screen=screen) is not None
    assert screen.out == [good[1]] and all(good[1] not in c for c in screen.calls)


@pytest.mark.parametrize("tries", [8, 0])
def test_when_the_localizer_s_own_units_cross_the_guard_the_screened_grow_starts_from_the_unedited_model(
        ctx: RepairContext, tmp_path: Path, tries: int) -> None:
    """Round 1 (the localizer's units 5 and 6) stops the target at +50 % FID and nothing can be put back: there is
    no earlier round within the guard, so the repair grows again from the unedited model (``regrow0``: 6 screened
    out, 7 taken) and round 2 stops the target at +3 %: kept. With 0 tries round 1's refusal stands."""
    import json

    from iarmem.mitigate.repair import Journal, RepairConfig, run_repair

    def m(extracted: list[int], fid: float, order: list[int]) -> dict:
        return {"units": len(order), "order": order, "quality": {"fid": fid},
                "leak": {"extracted": extracted, "probes": [], "default_extracted": extracted}}

    before = m([1], 1.0, []) | {"units": 0}
    before["leak"] |= {"default_prefix": 2, "default_probe_bar": 0.9}
    steps = {"round1": m([], 1.5, [5, 6]), "prune": [5, 6],
             "regrow0": {"order": [5, 7], "added": {"1": [5, 7]}, "failed": [], "unconfirmed": [],
                         "screened_out": [6], "screen_seconds": 1.0},
             "round2": m([], 1.03, [5, 7]), "screened-prune": [5, 7]}
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    outcome, record = run_repair(ctx, RepairConfig(max_quality_loss=0.1, screen_tries=tries, fallback="none"),
                                 Journal(tmp_path / "steps.json", World()), {1: [5, 6]}, lambda i: None, before)
    if tries:
        assert outcome.status == "clean" and outcome.units == [5, 7] and len(record["rounds"]) == 2
        assert record["regrow"] == {"from_round": 0, "first_round": 2}
        assert "grown again from the unedited model" in outcome.message
        assert "round 1 costs 50.0 % FID" in outcome.message
    else:
        assert outcome.status == "quality" and outcome.units == [] and "regrow" not in record


def test_a_grow_from_the_unedited_model_starts_from_no_unit_and_serves_every_target(ctx: RepairContext,
                                                                                     tmp_path: Path) -> None:
    """``_Rounds.state(0)`` is the unedited model: a grow from it adds the target's ranking from nothing, not to the
    last round's units (which are not the copy's and would be kept), and serves every target the repair had."""
    from iarmem.mitigate.repair import Journal, RepairConfig, _Rounds

    inj = injected_var()
    truth = ctx.scores.to_flat(inj.units)
    rest = np.setdiff1d(np.arange(len(ctx.scores.flat)), truth)
    good = np.concatenate([np.random.default_rng(0).permutation(truth), rest]).tolist()
    leak = {"extracted": [0], "probes": [], "default_extracted": [0], "default_prefix": default_prefix(ctx.iar),
            "default_probe_bar": 0.9}
    before = {"units": 0, "order": [], "quality": {"fid": 1.0}, "leak": leak}
    run = _Rounds(ctx, RepairConfig(), Journal(tmp_path / "steps.json", World()), {0: [good[0]]},
                  lambda i: lambda removed: np.asarray(good), before, budget=4 * len(truth))
    run.rounds.append({"units": 2, "order": rest[:2].tolist(), "quality": {"fid": 1.5},
                       "leak": {"extracted": [], "probes": []}})  # round 1 stopped it through other units
    g = run.grow_step("regrow0", run.state(0), screen=False)
    assert g["failed"] == [] and set(g["order"]).isdisjoint(rest[:2].tolist())
    assert g["order"] == g["added"]["0"] and set(g["order"]) <= set(truth)
    assert run.state(1) is run.rounds[0]


@pytest.mark.parametrize("spread, later, passes, draws", [(0.04, 0.8, True, 9), (0.0, 0.8, False, 3),
                                                          (0.04, 0.74, False, 6)])
def test_a_screen_refusal_the_seeds_could_flip_draws_more_seeds_before_it_refuses(
        ctx: RepairContext, tmp_path: Path, spread: float, later: float, passes: bool, draws: int) -> None:
    """A unit's first three seeds read class accuracy -6, -6, -4 points (-5.3 +- 0.7: over the 2-point bar by six
    of its own standard errors). The unedited model's three draws spread 4 points, so one paired change spreads
    about 5.7 and three draws say little: the screen draws to nine seeds, where the later six read no change and
    the mean, -1.8, passes. With no spread in the unedited draws the first reading stands (refused, three draws);
    when the later seeds read -6 too, six draws refuse it (-5.7, clearly over). The unedited draws come from the
    journal."""
    import json

    from iarmem.mitigate.repair import Journal, RepairConfig, Screen

    acc0 = [0.8, 0.8 - spread, 0.8 + spread]
    (tmp_path / "steps.json").write_text(json.dumps({
        f"before-draws{k}": {"start": k - 3, "fid_draws": [1.0] * 3, "class_accuracy_draws": [0.8] * 3}
        for k in (6, 9)}))
    first = [a - d for a, d in zip(acc0, (0.06, 0.06, 0.04))]

    class S(Screen):
        def quality(self, flat: list[int], seeds) -> dict:
            self.calls.append(list(seeds))
            return {"fid_draws": [1.0] * len(seeds),
                    "class_accuracy_draws": [first[j] if j < 3 else later for j in seeds]}

    s = S(dataclasses.replace(ctx, quality_seeds=(1, 2)), RepairConfig(screen_tries=2),
          Journal(tmp_path / "steps.json", World()),
          {"fid_draws": [1.0] * 3, "class_accuracy_draws": list(acc0)})
    s.calls = []
    assert s.passes([4, 5]) is passes
    assert sum(len(c) for c in s.calls) == draws and s.calls[0] == [0, 1, 2]
    assert len(s.q0["class_accuracy_draws"]) == draws  # the unedited model paired seed for seed
    assert s.settled == ([5] if passes else [])
    calls = len(s.calls)  # the same state offered again (a grow retried with the budget filled): no more draws
    assert s.passes([5, 4]) is passes and len(s.calls) == calls
