"""The report's repair section: per repair run, what it stopped, with how many units, at what quality, and
what the alternatives cost at the same leak (from repair.json)."""

from __future__ import annotations

from typing import Any

from iarmem.quality_guard import mean_fid, mean_of, paired, relative_fid
from iarmem.report.discover import ModelGroup
from iarmem.report.fmt import DASH, as_dict, missing, num, run_label
from iarmem.report.html import esc, note, table

HEADERS = ["edit", "units (% of fc1)", "targets extracted (strong)", "default attack", "other training images",
           "held-out false pos.", "mean loss: targets / ordinary / held-out", "FID", "FID change", "class acc."]


def _row(name: str, m: dict[str, Any], n: int, q0: dict[str, Any], draws: int) -> list[str]:
    leak, q = as_dict(m.get("leak")), as_dict(m.get("quality"))
    fid = mean_fid(q) if isinstance(q.get("fid"), (int, float)) else None
    change = f"{100 * relative_fid(q, q0):+.1f} %" if fid is not None and q0.get("fid") else DASH
    seeds = len(paired(q, q0, "fid")[0])
    if change != DASH and seeds > draws:  # its verdict was near a bar: more paired seeds settled it
        change += f" ({seeds} seeds)"
    units = m.get("units", 0)
    frac = m.get("fraction")
    return [name, f"{num(units)} ({100 * frac:.2f} %)" if isinstance(frac, (int, float)) else num(units),
            f"{len(leak.get('extracted', []))} of {n}", f"{len(leak.get('default_extracted', []))} of {n}",
            num(len(leak.get("others", []))), num(leak.get("heldout_false_positives")), _losses(m), num(fid),
            change, num(mean_of(q, "class_accuracy"))]


def _losses(m: dict[str, Any]) -> str:
    """Mean teacher-forced loss per group under the edit: the membership signal an edit leaves behind."""
    loss = as_dict(as_dict(m.get("membership")).get("mean_loss"))
    if not loss:
        return DASH
    return " / ".join(num(loss.get(g)) for g in ("targets", "ordinary", "heldout"))


def _noise(r: dict[str, Any]) -> str:
    n = as_dict(r.get("quality_noise"))
    fids = n.get("fid") or []
    if len(fids) < 2:
        return ""
    return (f"FID of the unedited model under {len(fids)} sampling seeds (same reference images): "
            f"{', '.join(num(f) for f in fids)}, a relative std of {100 * n.get('relative_std', 0.0):.1f} %: an FID "
            "change within that moves with the seed alone."
            + (f" Class accuracy under the same seeds: {', '.join(num(a) for a in n['class_accuracy'])}, a std of "
               f"{float(n['class_accuracy_std_points']):.1f} points." if n.get("class_accuracy") else ""))


def _bars(r: dict[str, Any]) -> str:
    """How the strong attack's bars were set: once, on the unedited model, or try by try at every row."""
    rules = as_dict(as_dict(as_dict(r.get("before")).get("leak")).get("rules"))
    if not rules:
        return ("The strong attack's tries were calibrated one by one on the held-out controls at every row, so "
                "the held-out false positives are in sample.")
    bounds = as_dict(rules.get("class_bounds"))
    per_class = ("; each class has its own bar too, a never-trained image of class c passing with chance <= "
                 + ", ".join(f"{100 * float(b):.2f} % ({esc(c)})" for c, b in sorted(bounds.items())) if bounds else "")
    return (f"The strong attack's tries were calibrated together once, on the unedited model, on "
            f"{num(rules.get('calibration'))} never-trained images (a never-trained image passes some try with "
            f"chance <= {100 * float(rules.get('bound', 0.0)):.2f} %{per_class}), and every row is judged by those "
            f"bars; the held-out false positives are out of sample.")


def _regrow(r: dict[str, Any]) -> str:
    """Where the rounds went back and grew again, screened by the guard: the rows after it start from there."""
    back = as_dict(r.get("regrow"))
    if not back:
        return ""
    grown = [as_dict(g) for g in r.get("grown", []) if isinstance(g, dict) and "screened_out" in g]
    frm = int(back.get("from_round", 0))
    return (f"The rounds before round {num(back.get('first_round'))} ended refused by the quality guard, so the repair "
            f"went back to {f'round {frm}' if frm else 'the unedited model'} and grew again from it, each unit "
            f"added only if the state with it removed passed the guard first: "
            f"{num(sum(len(g.get('screened_out') or []) for g in grown))} units screened out "
            f"({sum(float(g.get('screen_seconds') or 0.0) for g in grown):.0f} s of draws).")


def repair_section(groups: list[ModelGroup]) -> str:
    parts = []
    for g in groups:
        for run in g.of("repair"):
            r = as_dict(run.json("repair.json"))
            s = as_dict(run.json("summary.json"))
            if not r:
                parts.append(f"<h3>{esc(g.label)} &middot; {run_label(run)}</h3>" + note("no repair.json yet"))
                continue
            before = as_dict(r.get("before"))
            q0 = as_dict(before.get("quality"))
            n = len(r.get("targets", []))
            draws = int(as_dict(r.get("config")).get("quality_draws") or 1)
            rows = [_row("unedited", before, n, q0, draws)]
            rows += [_row(f"round {k}", m, n, q0, draws) for k, m in enumerate(r.get("rounds", []), 1)]
            attempts = r.get("prune_attempts") or ([r["pruned"] | {"kept": r.get("pruned_kept")}] if r.get("pruned")
                                                   else [])
            rows += [_row("pruned" + (f", attempt {k}" if len(attempts) > 1 else "") + ("" if a.get("kept") else
                                                                                      " (not kept)"), a, n, q0, draws)
                     for k, a in enumerate(attempts, 1)]
            if fb := r.get("fallback"):
                rows.append(_row("fallback: the last round's units fine-tuned" + ("" if fb.get("kept") else
                                                                                   " (not kept)"), fb, n, q0, draws))
            rows += [_row(f"alternative: {esc(a.get('setting', a.get('name')))}", a, n, q0, draws)
                     for a in r.get("alternatives", [])]
            body = (f"<h3>{esc(g.label)} &middot; {run_label(run)}</h3><p>{esc(s.get('sentence', ''))}</p>"
                    + table(HEADERS, rows, numeric=[False] + [True] * (len(HEADERS) - 1), stack=True))
            body += note(esc(_bars(r)))
            if back := _regrow(r):
                body += note(esc(back))
            if extra := _noise(r):
                body += note(esc(extra))
            parts.append(body)
    if not parts:
        return missing("repair", "`iarmem repair MODEL DATA --leaked EXTRACT_RUN --out DIR` removes leaked images")
    return "".join(parts) + note(
        "Every row is attacked with the strong attack (every prefix, greedy / guided / sampled decoding and a "
        "trigger search) on the repair's targets and the held-out controls. Rounds remove the union of the targets' "
        "attack-checked units exactly (x0); alternatives are measured at the repair's leak: as many random units, "
        "the paper's top p % x 0.5, logit noise, and fine-tuning the same units. The mean teacher-forced loss of the "
        "targets, of ordinary training images and of the held-out images says what an edit leaves for membership "
        "inference: a target whose loss stays under the held-out images' is still recognisable as a member "
        "(none under logit noise, which leaves the weights as they are).")
