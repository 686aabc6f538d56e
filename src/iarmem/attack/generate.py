"""Prefix-conditioned greedy generation: the attack's probe of what the model stores.

The paper prompts with the class label and a ground-truth prefix (VAR: the first 4 of 10 scales;
RAR: the first 30 of 256 raster tokens), decodes greedily on the conditional logits only, and
looks at what comes out. Shorter token layouts need a rule for the prefix (see ``default_prefix``).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from iarmem.errors import UserError
from iarmem.models.base import IAR, Tokens
from iarmem.models.sampling import Rng

PAPER_PREFIX_SCALES = 4  # of VAR's 10 scales
PAPER_PREFIX_TOKENS = 30  # of RAR's 16 x 16 raster tokens
PAPER_GRID_WIDTH = 16


def is_multiscale(iar: IAR) -> bool:
    return len(iar.grids) > 1


def default_prefix(iar: IAR) -> int:
    """The paper's prefix carried over to ``iar``'s layout, in generation steps.

    VAR: the paper's first 4 scales (1x1 to 4x4, 30 tokens), kept within 1..K-1; tiny-var's scales
    begin 1, 2, 3, 4 too, so it gets the same 30 tokens. The proportional 40 % of 6 scales (3, 14
    tokens) missed 4 and 3 of 20 planted images on two of three trained tiny-vars, continued
    greedily into other digits; 4 scales reproduce all 20 on all three (docs/RESULTS.md section 4).
    Raster: the same number of grid *rows* as the paper's 30 tokens of a 16-wide grid (1.875 rows),
    i.e. round(30 * width / 16) tokens (8x8 grid: 15). Scaling by rows rather than by sequence
    length keeps the prefix reaching into the image: on an 8x8 MNIST grid the length-proportional
    7.5 tokens are the first row, mostly background (DESIGN.md: class-only conditioning).
    """
    if is_multiscale(iar):
        K = len(iar.grids)
        return min(K - 1, PAPER_PREFIX_SCALES)
    _, w = iar.grids[0]
    return min(iar.seq_len - 1, max(1, int(PAPER_PREFIX_TOKENS * w / PAPER_GRID_WIDTH + 0.5)))


def check_prefix(iar: IAR, prefix: int) -> int:
    steps = iar.generation_steps
    if not 0 <= prefix < steps:
        unit = "scales" if is_multiscale(iar) else "tokens"
        raise UserError(f"--prefix counts {unit} and must lie in 0..{steps - 1} for this model, got {prefix}")
    return prefix


def prefix_tokens(iar: IAR, prefix: int) -> int:
    """How many token positions ``prefix`` generation steps cover."""
    if is_multiscale(iar):
        return sum(h * w for h, w in iar.grids[:prefix])
    return prefix


def describe_prefix(iar: IAR, prefix: int, default: bool) -> str:
    how = "default rule" if default else "--prefix"
    if is_multiscale(iar):
        sides = ", ".join(f"{h}x{w}" for h, w in iar.grids[:prefix]) or "none"
        return (f"first {prefix} of {len(iar.grids)} scales (sides {sides}; {prefix_tokens(iar, prefix)} of "
                f"{iar.seq_len} tokens; {how})")
    return f"first {prefix} of {iar.seq_len} raster tokens ({prefix / iar.grids[0][1]:.2f} rows; {how})"


def batch_seed(seed: int, batch_index: int) -> int:
    """The noise seed of one batch: a function of (seed, batch index) only, so shards agree."""
    packed = struct.pack("<2Q", int(seed) % 2**64, int(batch_index) % 2**64)
    return int.from_bytes(hashlib.blake2b(packed, digest_size=8, person=b"iarmem-noise").digest(), "little") >> 1


@dataclass(frozen=True)
class Decoding:
    """How tokens are chosen: the paper's greedy conditional decoding by default; sampled (temperature,
    top-k, a seed of its own) and classifier-free guidance are the strong attack's other tries."""

    greedy: bool = True
    cfg: float | None = None
    temperature: float = 1.0
    top_k: int = 0
    seed: int = 0

    def describe(self) -> str:
        how = "greedy" if self.greedy else f"sampled (T={self.temperature:g}, top-k {self.top_k or 'all'}, " \
                                            f"seed {self.seed})"
        return how + ("" if self.cfg is None else f", guidance {self.cfg:g}")


GREEDY = Decoding()


@torch.no_grad()
def generate_batch(iar: IAR, gt: Tokens, labels: Tensor, prefix: int, *, logit_noise: float = 0.0,
                   seed: int = 0, batch_index: int = 0, decoding: Decoding = GREEDY,
                   row_seeds: Sequence[int] | None = None) -> Tokens:
    """KV-cached generation from the first ``prefix`` steps of ``gt`` (default: greedy, conditional only).

    ``logit_noise`` > 0 adds N(0, std^2) to the logits before the token choice (the defense
    baseline). Noise and sampling draw from a generator seeded by (seed + decoding seed, batch
    index), so shards and reruns agree; with ``row_seeds`` (the attack passes image ids) from one
    generator per row, so a row's draw is the same whatever batch it sits in: the repair's probe of one
    image then regenerates exactly what the strong attack drew for it among hundreds.
    """
    gen: Rng = None
    if logit_noise > 0 or not decoding.greedy:
        keys = [batch_index] if row_seeds is None else [int(r) for r in row_seeds]
        gens = [torch.Generator(device=iar.device).manual_seed(batch_seed(seed + decoding.seed, k)) for k in keys]
        gen = gens[0] if row_seeds is None else gens
    out = iar.generate(labels.to(iar.device), prefix=gt.to(iar.device), prefix_len=prefix, greedy=decoding.greedy,
                       cfg=decoding.cfg, temperature=decoding.temperature, top_k=decoding.top_k,
                       logit_noise=logit_noise, generator=gen, use_cache=True)
    assert isinstance(out, Tokens)
    return out


@torch.no_grad()
def agreements(iar: IAR, targets: Tokens, labels: Tensor, prefix: int | None = None) -> Tensor:
    """[N]: token agreement of each greedy generation from its target's prefix with the target, after the prefix."""
    prefix = default_prefix(iar) if prefix is None else prefix
    start = prefix_tokens(iar, prefix)
    gen = generate_batch(iar, targets, labels, prefix).ids_BL.cpu()
    return (gen[:, start:] == targets.ids_BL.cpu()[:, start:]).float().mean(1)


def agreement(iar: IAR, target: Tokens, label: Tensor, prefix: int | None = None) -> float:
    """The agreement of one target (the mean over several)."""
    return float(agreements(iar, target, label, prefix).mean())
