"""Property-based tests (hypothesis) of the option parsing and of the statistics behind the decisions.

Parsing: valid values are accepted (and mean what they say), invalid ones end as exit code 2 and one
`error:` line. Statistics: properties not covered by tests/test_localize_stats.py (bounds, permutation
invariance, single-image units) and tests/test_attack_decide.py (examples of calibration): UnitMem's
scale invariance and monotonicity, resume of the streaming statistics from a saved state at any point,
the chunked median, and the calibration's monotonicity, minimality and order invariance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from iarmem.attack.decide import calibrate, copies_other, extracted
from iarmem.commands.localize import parse_blocks
from iarmem.distributed import World
from iarmem.errors import UserError
from iarmem.localize.stats import UnitStats, mean_others, median_others, unitmem
from iarmem.plans import parse_ids

from .helpers import Result, run_cli

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MISSING = "/nonexistent/iarmem-fault-suite"  # an input that is never there: a valid option gets past its check


def _one_line(res: Result) -> str:
    assert res.code == 2, res.err
    assert len(res.err_lines) == 1 and res.err_lines[0].startswith("error: "), res.err
    assert "Traceback" not in res.err
    return res.err_lines[0]


# ---- the sweep's comma lists --------------------------------------------------------------------------
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
number_text = st.one_of(finite.map(repr), st.integers(-1000, 1000).map(str), finite.map(lambda x: f"{x:g}"))
junk = st.sampled_from(["abc", "1..2", "--", "x1", "1,2e", "ten", "0x1g", "1/2"])


def _sweep(capsys: pytest.CaptureFixture[str], **opts: str) -> Result:
    """`iarmem sweep` with options written --name=VALUE (a list starting with '-' needs that form in argparse)."""
    flags = [f"--{k}={v}" for k, v in opts.items()]
    return run_cli(["sweep", MISSING, "mnist", MISSING + "-loc", "--out", MISSING + "-out", *flags], capsys)


@FAST
@given(values=st.lists(number_text, max_size=5), spaces=st.booleans())
def test_sweep_comma_lists_parse_to_the_numbers(values: list[str], spaces: bool,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Any comma list of numbers parses; the values in (0, 100] pass --tops, the others are named."""
    text = (", " if spaces else ",").join(values)
    res = _sweep(capsys, tops=text, noise="1")
    nums = [float(v) for v in values]
    if all(0 < v <= 100 for v in nums):  # accepted: the run fails later, on the missing localization
        line = _one_line(res)
        assert "--tops" not in line, line
        assert ("not found" in line or "no-such" in line or MISSING in line), line
    else:
        line = _one_line(res)
        assert "--tops" in line and "(0, 100]" in line, line


@FAST
@given(values=st.lists(number_text, min_size=1, max_size=4), bad=junk, at=st.integers(0, 4))
def test_sweep_comma_lists_with_a_word_are_exit_2(values: list[str], bad: str, at: int,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    values.insert(min(at, len(values)), bad)
    line = _one_line(_sweep(capsys, factors=",".join(values)))
    assert "--factors" in line and "comma-separated numbers" in line


@FAST
@given(levels=st.lists(st.floats(min_value=-5, max_value=5, allow_nan=False), min_size=1, max_size=4))
def test_sweep_noise_levels_must_be_positive(levels: list[float], capsys: pytest.CaptureFixture[str]) -> None:
    res = _sweep(capsys, tops="", noise=",".join(map(repr, levels)))
    line = _one_line(res)
    assert ("--noise" in line) == any(not v > 0 for v in levels), line


# ---- id lists: mitigate --forget, extract --ids, localize --layers ------------------------------------
ids_lists = st.lists(st.integers(0, 10_000), min_size=1, max_size=20)
separators = st.sampled_from([",", ", ", " ", "\n", " ,\n"])


@FAST
@given(ids=ids_lists, sep=separators)
def test_forget_ids_parse_from_lists_and_files(ids: list[int], sep: str, tmp_path_factory: pytest.TempPathFactory,
                                               ) -> None:
    expect = np.unique(ids)
    if sep.strip() or "\n" not in sep:  # a comma list on the command line (no newlines)
        assert np.array_equal(parse_ids(sep.join(map(str, ids)), flag="--forget"), expect)
    d = tmp_path_factory.mktemp("ids")
    text_file = d / "ids.txt"
    text_file.write_text("# ids to forget\n" + sep.join(map(str, ids)) + "  # trailing comment\n")
    assert np.array_equal(parse_ids(str(text_file)), expect)
    json_file = d / "ids.json"
    json_file.write_text(json.dumps(ids))
    assert np.array_equal(parse_ids(str(json_file)), expect)


@FAST
@given(ids=ids_lists, bad=st.sampled_from(["-3", "1.5", "abc", "7e2", "0x10", "+4"]), at=st.integers(0, 20))
def test_forget_ids_refuse_anything_but_non_negative_integers(ids: list[int], bad: str, at: int) -> None:
    tokens = list(map(str, ids))
    tokens.insert(min(at, len(tokens)), bad)
    with pytest.raises(UserError) as e:
        parse_ids(",".join(tokens), flag="--forget")
    assert "--forget" in str(e.value) and "\n" not in str(e.value)


@FAST
@given(ids=ids_lists, n=st.integers(1, 20_000))
def test_extract_ids_are_checked_against_the_dataset(ids: list[int], n: int) -> None:
    text = ",".join(map(str, ids))
    if max(ids) < n:
        assert np.array_equal(parse_ids(text, n), np.unique(ids))
    else:
        with pytest.raises(UserError, match="not in the dataset"):
            parse_ids(text, n)


blocks = st.lists(st.one_of(st.integers(0, 40).map(lambda b: (b, b)),
                            st.tuples(st.integers(0, 40), st.integers(0, 10)).map(lambda t: (t[0], t[0] + t[1]))),
                  min_size=1, max_size=6)


@FAST
@given(parts=blocks)
def test_layers_parse_to_the_union_of_blocks_and_ranges(parts: list[tuple[int, int]]) -> None:
    text = ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)
    expect = tuple(sorted({b for lo, hi in parts for b in range(lo, hi + 1)}))
    assert parse_blocks(text) == expect
    assert parse_blocks(" all ") is None


@FAST
@given(a=st.integers(1, 40), d=st.integers(1, 10))
def test_layers_refuse_reversed_ranges_and_words(a: int, d: int) -> None:
    for text in (f"{a + d}-{a}", f"{a},x", "-1", ""):
        with pytest.raises(UserError, match="--layers"):
            parse_blocks(text)


# ---- train's numeric options ------------------------------------------------------------------------
TRAIN_OPTIONS = {  # option -> (strategy of values, is it valid)
    "--steps": (st.integers(-5, 10**6), lambda v: v >= 1),
    "--batch-size": (st.integers(-5, 4096), lambda v: v >= 1),
    "--ckpt-every": (st.integers(-5, 10**6), lambda v: v >= 1),
    "--warmup-steps": (st.integers(-5, 10**4), lambda v: v >= 0),
    "--lr": (st.one_of(st.floats(-1, 1), st.just(math.nan), st.just(math.inf)), lambda v: v > 0 and math.isfinite(v)),
    "--weight-decay": (st.one_of(st.floats(-1, 1), st.just(math.nan)), lambda v: v >= 0),
    "--ema": (st.one_of(st.floats(-1, 2), st.just(math.nan)), lambda v: 0 <= v < 1),
    "--grad-clip": (st.one_of(st.floats(-2, 10), st.just(math.nan)), lambda v: v >= 0),
}


@FAST
@given(data=st.data())
def test_train_numeric_options(data: st.DataObject, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid value gets past the option checks (the run then stops at the missing data); an invalid one is
    refused with one line naming the option, before any data is read."""
    opt = data.draw(st.sampled_from(sorted(TRAIN_OPTIONS)))
    strategy, valid = TRAIN_OPTIONS[opt]
    value = data.draw(strategy)
    res = run_cli(["train", "var", "--preset", "tiny-var", "--tokenizer", MISSING, "--data", MISSING,
                   "--out", MISSING + "-out", f"{opt}={value!r}"], capsys)
    line = _one_line(res)
    if valid(value):
        assert MISSING in line and opt not in line, line
    else:
        assert opt in line, line


@FAST
@given(text=st.text(alphabet="0123456789.-+eabx ", min_size=1, max_size=6))
def test_train_int_options_refuse_non_integers(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        int(text)
    except ValueError:
        pass
    else:
        assume(False)
    res = run_cli(["train", "var", "--preset", "tiny-var", "--out", MISSING, f"--steps={text}"], capsys)
    line = _one_line(res)
    assert "--steps" in line and ("invalid int value" in line or "expected one argument" in line), line


# ---- UnitMem ----------------------------------------------------------------------------------------
positive_mu = st.integers(2, 8).flatmap(
    lambda n: arrays(np.float64, (n, 3), elements=st.floats(0.01, 100, allow_subnormal=False)))


def _unitmem(mu: np.ndarray) -> np.ndarray:
    stats = UnitStats(mu.shape[1], lanes=2)
    stats.update(np.arange(len(mu)), np.arange(len(mu)), torch.from_numpy(mu.astype(np.float32)))
    return unitmem(stats.max_F, mean_others(stats.total_F(), stats.max_F, stats.count)).numpy()


@FAST
@given(mu=positive_mu, scale=st.floats(0.01, 100))
def test_unitmem_is_scale_invariant(mu: np.ndarray, scale: float) -> None:
    """UnitMem is a ratio: scaling every activation of a unit by c > 0 leaves it unchanged."""
    np.testing.assert_allclose(_unitmem(mu * scale), _unitmem(mu), atol=1e-5)


@FAST
@given(mu=positive_mu, boost=st.floats(0, 100))
def test_unitmem_grows_with_the_top_image(mu: np.ndarray, boost: float) -> None:
    """Raising the top image's activation (the others fixed) never lowers UnitMem."""
    top = mu.argmax(axis=0)
    more = mu.copy()
    more[top, np.arange(mu.shape[1])] += boost
    assert np.all(_unitmem(more) >= _unitmem(mu) - 1e-6)


@FAST
@given(mu=positive_mu, cut=st.integers(0, 8), lanes=st.integers(1, 4))
def test_resume_from_a_saved_state_is_bit_exact(mu: np.ndarray, cut: int, lanes: int) -> None:
    """Stop after any image, save the state, load it into fresh statistics, go on: the same bits."""
    n = len(mu)
    cut = min(cut, n)
    x = torch.from_numpy(mu.astype(np.float32))
    ids = np.arange(n) * 7 + 3
    whole = UnitStats(3, lanes)
    whole.update(np.arange(n), ids, x)
    first = UnitStats(3, lanes)
    first.update(np.arange(cut), ids[:cut], x[:cut])
    saved = {k: v.clone() for k, v in first.reduced(World()).state_dict().items()}
    resumed = UnitStats(3, lanes)
    resumed.load_reduced(saved, World())
    resumed.update(np.arange(cut, n), ids[cut:], x[cut:])
    assert torch.equal(resumed.total_F(), whole.total_F())
    assert torch.equal(resumed.max_F, whole.max_F) and torch.equal(resumed.argmax_F, whole.argmax_F)
    assert resumed.count == whole.count == n


@FAST
@given(values=st.integers(1, 9).flatmap(
    lambda n: arrays(np.float32, (n, 5), elements=st.floats(0, 50, width=32, allow_subnormal=False))),
       chunk=st.integers(4, 64))
def test_the_chunked_median_equals_numpy(values: np.ndarray, chunk: int) -> None:
    """The median of the others, read in column chunks of any size, is numpy's median without one maximum."""
    got = median_others(values, chunk_bytes=chunk)
    n = len(values)
    for j in range(values.shape[1]):
        col = np.sort(values[:, j].astype(np.float64))
        rest = col[:-1] if n > 1 else col
        assert got[j] == pytest.approx(np.median(rest), abs=1e-6)


# ---- the calibrated threshold -----------------------------------------------------------------------
sims = arrays(np.float64, st.integers(1, 60), elements=st.floats(0, 1, allow_nan=False))
rates = st.floats(0.001, 0.999)


@FAST
@given(s=sims, a=rates, b=rates)
def test_calibration_is_monotone_in_the_rate(s: np.ndarray, a: float, b: float) -> None:
    """A higher allowed false-positive rate never raises the threshold, and lets no fewer images pass."""
    lo_rate, hi_rate = sorted((a, b))
    strict, loose = calibrate(s, lo_rate), calibrate(s, hi_rate)
    assert loose.threshold <= strict.threshold
    assert extracted(s, loose.threshold).sum() >= extracted(s, strict.threshold).sum()


@FAST
@given(s=sims, rate=rates, seed=st.integers(0, 1000), nans=st.integers(0, 3))
def test_calibration_keeps_its_promise_is_minimal_and_ignores_order(s: np.ndarray, rate: float, seed: int,
                                                                    nans: int) -> None:
    cal = calibrate(s, rate, lo=0.0)
    passed = int(extracted(s, cal.threshold).sum())
    assert passed <= math.floor(rate * len(s) + 1e-9) == cal.allowed
    assert passed == cal.heldout_above
    if cal.threshold > 0.0:  # any lower threshold lets more than the allowed number through
        assert extracted(s, np.nextafter(cal.threshold, -np.inf)).sum() > cal.allowed
    shuffled = np.random.default_rng(seed).permutation(np.concatenate([s, np.full(nans, np.nan)]))
    again = calibrate(shuffled, rate, lo=0.0)
    assert again.threshold == cal.threshold and again.heldout == len(s)


@FAST
@given(s=sims, rate=rates, i=st.integers(0, 59), up=st.floats(0, 1))
def test_raising_a_heldout_similarity_never_lowers_the_threshold(s: np.ndarray, rate: float, i: int,
                                                                 up: float) -> None:
    higher = s.copy()
    higher[i % len(s)] = min(1.0, higher[i % len(s)] + up)
    assert calibrate(higher, rate).threshold >= calibrate(s, rate).threshold


@FAST
@given(own=sims, other=sims, t=st.floats(0, 1), t2=st.floats(0, 1), bump=st.floats(0, 1), nan_at=st.integers(0, 59))
def test_copies_other_is_antisymmetric_and_monotone(own: np.ndarray, other: np.ndarray, t: float, t2: float,
                                                   bump: float, nan_at: int) -> None:
    """Metamorphic properties of "the generation copies another image", not a restatement of it."""
    n = min(len(own), len(other))
    own, other = own[:n], other[:n]
    c = copies_other(own, other, t)
    assert not np.any(c & copies_other(other, own, t))  # never a copy of both the prompt and the other
    lo, hi = sorted((t, t2))
    assert np.all(copies_other(own, other, hi) <= copies_other(own, other, lo))  # a stricter bar flags less
    assert np.all(c <= copies_other(own, np.minimum(other + bump, 1.0), t))  # closer to the other: still a copy
    assert np.all(copies_other(np.minimum(own + bump, 1.0), other, t) <= c)  # closer to its own: less a copy
    assert not np.any(copies_other(own, np.minimum(own, other), t))  # no closer than its own: never a copy
    missing = own.copy()
    missing[nan_at % n] = np.nan  # no similarity to its own prompt (e.g. no reconstruction) counts as none
    assert np.all(c <= copies_other(missing, other, t))


def test_helper_paths_do_not_exist() -> None:
    assert not Path(MISSING).exists()
