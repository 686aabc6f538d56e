"""Probes: the cheap form of one strong-attack try, for the repair's inner loop.

The strong attack judges ~60 tries over every target and the held-out controls; the repair needs,
between two such verifications, hundreds of yes/no questions of the form "with these units removed,
does *this* try still bring *this* image back?". A probe answers one of them: it regenerates from
the prompt image's prefix under the try's decoding (a trigger try searches its trigger again) and
compares the generation with the copied image's tokens after the prefix. "Stopped" means token
agreement at most the try's calibrated threshold minus a margin, so a set that only just slips
under the bar is not taken (the refinement's lesson: such sets come back). A probe that carries its
try's margin bar (``gap_bar``) is judged by the attack's joint rule instead: the try extracts only
when the agreement clears its bar *and* exceeds the nearest other pool image's by the margin, so the
probe is stopped when either falls under its bar (minus the same safety margin).

Probes are a screen, never the verdict: the repair re-runs the strong attack on every edit it keeps.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from iarmem.attack.generate import Decoding, generate_batch, prefix_tokens
from iarmem.attack.neighbours import Loader, nearest_other, token_similarity
from iarmem.attack.strong import Try, trigger_rounds
from iarmem.attack.trigger import generate_with_trigger, optimise_trigger
from iarmem.models.base import IAR, Tokens


@dataclass(frozen=True)
class Probe:
    """Whether generating from ``prompt``'s prefix with ``attempt`` reproduces ``image`` above ``bar``."""

    image: int
    prompt: int
    attempt: Try
    bar: float  # the try's threshold (token agreement after the prefix)
    # the try's margin over the nearest other pool image (the joint rule); None: agreement alone (also for a
    # probe whose prompt is another image: the attack reads that generation as a copy of the other image)
    gap_bar: float | None = None

    def as_dict(self) -> dict[str, Any]:
        d = self.attempt.decoding
        return {"image": self.image, "prompt": self.prompt, "prefix": self.attempt.prefix,
                "trigger": self.attempt.trigger, "greedy": d.greedy, "cfg": d.cfg, "seed": d.seed, "bar": self.bar,
                **({"gap_bar": self.gap_bar} if self.gap_bar is not None else {})}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Probe:
        decoding = Decoding(greedy=bool(d["greedy"]), cfg=d["cfg"], seed=int(d["seed"]))
        gap = d.get("gap_bar")
        return Probe(int(d["image"]), int(d["prompt"]), Try(int(d["prefix"]), decoding, bool(d["trigger"])),
                     float(d["bar"]), None if gap is None else float(gap))

    @property
    def joint(self) -> bool:
        """Judged by the joint rule: a margin bar, and the generation is the image's own prompt's."""
        return self.gap_bar is not None and self.prompt == self.image


@torch.no_grad()
def _generate(iar: IAR, attempt: Try, gt: Tensor, labels: Tensor, noise: float, seed: int,
              trigger_steps: int, prompts: list[int]) -> Tensor:
    """[N, L] generations of one try from the prompts ``gt`` of images ``prompts`` (their draws seeded by id, as
    the strong attack's are; triggers searched per class round)."""
    if not attempt.trigger:
        return generate_batch(iar, Tokens(gt, iar.grids), labels, attempt.prefix, logit_noise=noise, seed=seed,
                              decoding=attempt.decoding, row_seeds=prompts).ids_BL.cpu()
    out = torch.empty_like(gt)
    for rows in trigger_rounds(labels.numpy()):
        target, lab = Tokens(gt[rows], iar.grids), labels[rows]
        with torch.enable_grad():
            found, _ = optimise_trigger(iar, target, lab, trigger_steps)
        out[rows] = generate_with_trigger(iar, target, lab, found, attempt.prefix).ids_BL.cpu()
    return out


Pool = tuple[np.ndarray, Loader]  # the images a generation's nearest other is searched in, and their tokens


def judge(iar: IAR, probes: list[Probe], tokens: Mapping[int, Tensor], labels: Mapping[int, int], *,
          pool: Pool | None = None, noise: float = 0.0, seed: int = 0, trigger_steps: int = 30,
          ) -> tuple[np.ndarray, np.ndarray]:
    """Token agreement (after the prefix) of every probe, the probes of one try generated as one batch; and for the
    ``joint`` probes (given a ``pool``) the gap to the nearest other pool image, as the attack measures it (NaN
    for the rest).

    ``tokens``: id -> [L] eval-view tokens of every image a probe names; ``labels``: id -> class.
    """
    out, gaps = np.zeros(len(probes)), np.full(len(probes), np.nan)
    by_try: dict[Try, list[int]] = defaultdict(list)
    for i, p in enumerate(probes):
        by_try[p.attempt].append(i)
    for attempt, rows in by_try.items():
        prompts = sorted({probes[i].prompt for i in rows})
        gt = torch.stack([tokens[j] for j in prompts]).long().to(iar.device)
        lab = torch.tensor([labels[j] for j in prompts])
        gen = _generate(iar, attempt, gt, lab, noise, seed, trigger_steps, prompts)
        start = prefix_tokens(iar, attempt.prefix)
        where = {j: k for k, j in enumerate(prompts)}
        for i in rows:
            p = probes[i]
            same = gen[where[p.prompt], start:] == tokens[p.image][start:].cpu()
            out[i] = float(same.float().mean())
        ask = [i for i in rows if probes[i].joint] if pool is not None else []
        if ask:
            assert pool is not None
            own = np.array([probes[i].image for i in ask], dtype=np.int64)
            near, _ = nearest_other(own, pool[0], pool[1], token_similarity(gen[[where[j] for j in own]], start))
            gaps[ask] = out[ask] - near
    return out, gaps


def agreements(iar: IAR, probes: list[Probe], tokens: Mapping[int, Tensor], labels: Mapping[int, int],
               **kw: Any) -> np.ndarray:
    """Token agreement (after the prefix) of every probe (see :func:`judge`)."""
    return judge(iar, probes, tokens, labels, **kw)[0]


def stopped(iar: IAR, probes: list[Probe], tokens: Mapping[int, Tensor], labels: Mapping[int, int], margin: float,
            **kw: Any) -> bool:
    """Every probe's agreement at most its bar minus ``margin``; or, for a ``joint`` probe given the pool, its gap to
    the nearest other image at most its margin bar minus ``margin`` (the attack needs both above their bars)."""
    if not probes:
        return True
    got, gaps = judge(iar, probes, tokens, labels, **kw)
    under = got <= np.array([p.bar for p in probes]) - margin
    gap_bars = np.array([np.inf if p.gap_bar is None else p.gap_bar for p in probes])
    under_gap = ~np.isnan(gaps) & (gaps <= gap_bars - margin)
    return bool(np.all(under | under_gap))
