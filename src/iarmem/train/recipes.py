"""Training recipes of the presets meant to be trained here (sized for a 2-core CPU).

Anything not listed falls back to ``DEFAULT``; every number can be overridden on the command line.
"""

from __future__ import annotations

from dataclasses import replace

from iarmem.train.loop import TrainConfig

DEFAULT = {
    "tokenizer": TrainConfig(steps=600, batch_size=32, lr=2e-3, weight_decay=0.0, warmup_steps=30, ema=0.0),
    "iar": TrainConfig(steps=800, batch_size=64, lr=2e-3, weight_decay=0.05, warmup_steps=50, ema=0.0),
}

# Measured (docs/RESULTS.md): with 20 planted images x 30 copies among 1000 ordinary ones every
# planted image reaches teacher-forced top-1 1.0 and the attack copies 60-95 % (VAR, by seed; the
# rest are near copies), 100 % (RAR) and 90 % (LlamaGen) of them, and no held-out or ordinary one.
# RAR's random-order training needs more steps (at 500 it copied only 50-85 %); LlamaGen at 800
# steps also reproduced 73 % of the ordinary images, so it stops earlier.
RECIPES: dict[str, dict[str, TrainConfig]] = {
    "tiny-var": {"tokenizer": replace(DEFAULT["tokenizer"], steps=400),
                 "iar": replace(DEFAULT["iar"], steps=500)},
    "tiny-rar": {"tokenizer": replace(DEFAULT["tokenizer"], steps=400),
                 "iar": replace(DEFAULT["iar"], steps=700)},
    "tiny-llamagen": {"tokenizer": replace(DEFAULT["tokenizer"], steps=400),
                      "iar": replace(DEFAULT["iar"], steps=400)},
}


def recipe(preset: str, part: str) -> TrainConfig:
    return replace(RECIPES.get(preset, DEFAULT).get(part, DEFAULT[part]))
