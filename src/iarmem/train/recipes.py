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

RECIPES: dict[str, dict[str, TrainConfig]] = {
    "tiny-var": {"tokenizer": replace(DEFAULT["tokenizer"], steps=500),
                 "iar": replace(DEFAULT["iar"], steps=800)},
    "tiny-rar": {"tokenizer": replace(DEFAULT["tokenizer"], steps=500),
                 "iar": replace(DEFAULT["iar"], steps=800)},
    "tiny-llamagen": {"tokenizer": replace(DEFAULT["tokenizer"], steps=500),
                      "iar": replace(DEFAULT["iar"], steps=800)},
}


def recipe(preset: str, part: str) -> TrainConfig:
    return replace(RECIPES.get(preset, DEFAULT).get(part, DEFAULT[part]))
