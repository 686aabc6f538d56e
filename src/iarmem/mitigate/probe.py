"""Probes: the cheap form of one strong-attack try, for the repair's inner loop.

The strong attack judges ~60 tries over every target and the held-out controls; the repair needs,
between two such verifications, hundreds of yes/no questions of the form "with these units removed,
does *this* try still bring *this* image back?". A probe answers one of them: it regenerates from
the prompt image's prefix under the try's decoding (a trigger try searches its trigger again) and
compares the generation with the copied image's tokens after the prefix. "Stopped" means token
agreement at most the try's calibrated threshold minus a margin, so a set that only just slips
under the bar is not taken (the refinement's lesson: such sets come back).

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

    def as_dict(self) -> dict[str, Any]:
        d = self.attempt.decoding
        return {"image": self.image, "prompt": self.prompt, "prefix": self.attempt.prefix,
                "trigger": self.attempt.trigger, "greedy": d.greedy, "cfg": d.cfg, "seed": d.seed, "bar": self.bar}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Probe:
        decoding = Decoding(greedy=bool(d["greedy"]), cfg=d["cfg"], seed=int(d["seed"]))
        return Probe(int(d["image"]), int(d["prompt"]), Try(int(d["prefix"]), decoding, bool(d["trigger"])),
                     float(d["bar"]))


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


def agreements(iar: IAR, probes: list[Probe], tokens: Mapping[int, Tensor], labels: Mapping[int, int], *,
               noise: float = 0.0, seed: int = 0, trigger_steps: int = 30) -> np.ndarray:
    """Token agreement (after the prefix) of every probe, the probes of one try generated as one batch.

    ``tokens``: id -> [L] eval-view tokens of every image a probe names; ``labels``: id -> class.
    """
    out = np.zeros(len(probes))
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
    return out


def stopped(iar: IAR, probes: list[Probe], tokens: Mapping[int, Tensor], labels: Mapping[int, int], margin: float,
            **kw: Any) -> bool:
    """Every probe's agreement at most its bar minus ``margin``."""
    if not probes:
        return True
    got = agreements(iar, probes, tokens, labels, **kw)
    return bool(np.all(got <= np.array([p.bar for p in probes]) - margin))
