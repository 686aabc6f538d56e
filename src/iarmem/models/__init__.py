"""Model families behind one interface, a preset registry and safe checkpoint I/O."""

from iarmem.models.base import IAR, UNIT_KINDS, Tokens, UnitLayer
from iarmem.models.registry import Preset, build, family_class, from_official, get_preset, load_weights, presets
from iarmem.models.taps import tap

__all__ = [
    "IAR", "UNIT_KINDS", "Tokens", "UnitLayer", "Preset", "build", "family_class", "from_official",
    "get_preset", "load_weights", "presets", "tap",
]
