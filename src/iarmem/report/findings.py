"""The report's first section: per model, the answers a reader needs before any table.

Does the model leak (default and strong attack, membership), where (UnitMem), what fixed it and at
what quality (repair, the paper's edit, the sweep), against which control (random units, unlearning)?
Every sentence is computed from the runs' own summaries; a question without a run says which command
answers it.
"""

from __future__ import annotations

from typing import Any

from iarmem.report.discover import UNEDITED, ModelGroup, Run
from iarmem.report.fmt import DASH, as_dict, num, rate, run_label
from iarmem.report.html import esc, note, table
from iarmem.report.sections import sweep_headline
from iarmem.report.sentences import where_sentence

ROLES = ("unedited", "mitigated", "random")


def _first(g: ModelGroup, kind: str, role: str) -> Run | None:
    return next((r for r in g.of(kind) if (r.variant or UNEDITED).role == role), None)


def _summary(r: Run | None, name: str = "summary.json") -> dict[str, Any]:
    return as_dict(r.json(name)) if r else {}


def _ext_cell(s: dict[str, Any]) -> str:
    if not s:
        return DASH
    planted = as_dict(s.get("rates")).get("planted")
    extra = f" (planted {rate(planted)})" if planted is not None else ""
    return f"{num(s.get('extracted'))}/{num(s.get('candidates'))}{extra}"


def _by_role(g: ModelGroup) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Each variant's extract summary and FID, read once for the sentences and the table."""
    ext = {k: _summary(_first(g, "extract", k)) for k in ROLES}
    fid = {k: _summary(_first(g, "evaluate", k), "metrics.json").get("fid") for k in ROLES}
    return ext, fid


def leak_sentence(s: dict[str, Any]) -> str:
    """Default attack, strong attack and membership of one unedited model, in one sentence."""
    by = as_dict(s.get("by_group"))
    planted = as_dict(by.get("planted"))
    text = f"<b>{num(s.get('extracted'))}</b> training images extracted by the default attack"
    if planted.get("in_plan"):
        text += (f" ({num(planted.get('images_extracted'))} of {num(planted.get('in_plan'))} planted; precision "
                 f"{rate(s.get('precision'))}; held-out false positives {num(s.get('heldout_false_positives'))})")
    st = as_dict(s.get("strong"))
    if st:
        text += (f"; the strong attack ({num(st.get('tries'))} tries per image) finds {num(st.get('extracted'))}, "
                 f"{len(st.get('beyond_default') or [])} the default missed")
    loss = as_dict(as_dict(s.get("membership")).get("mia_loss"))
    if loss:
        auc = {k: as_dict(loss.get(k)).get("auc") for k in ("planted", "ordinary")}
        text += (f"; membership (loss) AUC against held-out images: planted {num(auc['planted'], 3)}, ordinary "
                 f"{num(auc['ordinary'], 3)}")
    return text + "."


def _relative(a: Any, b: Any) -> str:
    ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and a
    return f"{100 * (b - a) / a:+.0f} %" if ok else DASH


def mitigation_sentence(ext: dict[str, dict[str, Any]], fid: dict[str, Any]) -> str | None:
    """The paper's edit against its random control: leak and FID, each against the unedited model."""
    if not ext["unedited"] or not ext["mitigated"]:
        return None
    text = (f"The paper's edit leaves {num(ext['mitigated'].get('extracted'))} extracted (unedited "
            f"{num(ext['unedited'].get('extracted'))}) at FID {_relative(fid['unedited'], fid['mitigated'])}")
    if ext["random"]:
        text += (f"; the same number of random units leaves {num(ext['random'].get('extracted'))} at FID "
                 f"{_relative(fid['unedited'], fid['random'])}")
    return text + "."


def _alt_change(s: dict[str, Any], a: dict[str, Any]) -> str:
    """An alternative's FID change, paired with the unedited model's draws of the same seeds (summaries before
    2026-12-03: against the repair's FID before, which a settled verdict reads over more seeds)."""
    rel = a.get("relative_fid")
    return f"{100 * rel:+.0f} %" if isinstance(rel, (int, float)) else _relative(s.get("fid_before"), a.get("fid"))


def repair_sentence(s: dict[str, Any]) -> str:
    """What the repair stopped, at what quality, and what its alternatives did at the same leak."""
    text = esc(s.get("sentence", "repair: no summary yet"))
    alts = [f"{esc(a.get('setting') or a.get('name'))}: cleaned {num(a.get('cleaned'))} of {num(a.get('of'))} at "
            f"FID {_alt_change(s, a)}" for a in s.get("alternatives") or []]
    return text + (". Beside it: " + "; ".join(alts) if alts else "") + "."


def _answers(g: ModelGroup, ext: dict[str, dict[str, Any]], fid: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if ext["unedited"]:
        out.append(("Does it leak?", leak_sentence(ext["unedited"])))
    loc = _summary(_first(g, "localize", "unedited"))
    where = where_sentence(loc, g.label) if loc else None
    if where:
        out.append(("Where?", esc(where)))
    fixes = [repair_sentence(s) for s in map(_summary, g.of("repair")) if s]
    mit = mitigation_sentence(ext, fid)
    fixes += [mit] if mit else []
    fixes += [sweep_headline(s) for s in map(_summary, g.of("sweep")) if s]
    if fixes:
        out.append(("What fixed it, at what quality, against which control?", " ".join(f for f in fixes if f)))
    return out


def findings_section(groups: list[ModelGroup], runs: list[Run]) -> str:
    blocks, rows = [], []
    for g in groups:
        ext, fid = _by_role(g)
        answers = _answers(g, ext, fid)
        if answers:
            items = "".join(f"<dt>{esc(q)}</dt><dd>{a}</dd>" for q, a in answers)
            blocks.append(f'<h3>{esc(g.label)}</h3><dl class="answers">{items}</dl>')
        if g.of("extract", "evaluate"):
            rows.append([f"<b>{esc(g.label)}</b>", *[_ext_cell(ext[k]) for k in ROLES],
                         *[num(fid[k], 3) for k in ROLES]])
    body = "".join(blocks)
    if rows:
        body += table(["model", "extracted: unedited", "mitigated", "random control", "FID: unedited", "mitigated",
                       "random control"], rows, id_="findings", numeric=[False] + [True] * 6)
    unfinished = [r for r in runs if not r.finished]
    if unfinished:
        body += ('<p class="warn">Unfinished runs (shown where they have files, marked): '
                 + ", ".join(run_label(r) for r in unfinished) + "</p>")
    return body or note("Nothing to summarise yet: no localize, extract or evaluate run among the folders.")
