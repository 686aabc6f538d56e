"""The extraction attack of Kowalczuk et al. (2025): score, select, generate, decide.

``run_attack`` is the whole stage (the CLI's ``iarmem extract`` and the mitigation sweep call it);
``attack_ids`` judges a fixed list of images without scoring or selection.
"""

from iarmem.attack.pipeline import AttackResult, attack_ids, run_attack, score_images
from iarmem.attack.settings import AttackSettings, load_extractors

__all__ = ["AttackResult", "AttackSettings", "attack_ids", "load_extractors", "run_attack", "score_images"]
