"""Everything that shapes an attack's result, in one checked record (run.json stores it)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from iarmem.attack.decide import DEFAULT_BUILTIN, METRICS, NEEDS_EXTRACTOR, check_threshold
from iarmem.attack.select import SCORES
from iarmem.attack.similarity import Embedder
from iarmem.errors import UserError
from iarmem.plans import SUBSETS

STRENGTHS = ("default", "strong")


@dataclass(frozen=True)
class AttackSettings:
    """Options of the extraction attack; None means "the documented default for this model / data"."""

    subset: str | None = None  # images scored: "train" when a plan exists, else "all"
    fraction: float | None = None  # thin the subset to a class-balanced fraction ...
    per_class_subset: int | None = None  # ... or to this many images per class
    ids: tuple[int, ...] | None = None  # explicit candidates (no selection)
    top: int = 5  # candidates per class (or overall with per_class=False)
    per_class: bool = True
    score_by: str = "top1"  # candidate ranking: top1 | gt_prob | loss
    last: int | None = None  # raster: tokens scored at the end (default 99/256 of them)
    prefix: int | None = None  # generation steps copied from the ground truth (default: see generate.py)
    logit_noise: float = 0.0  # std of the Gaussian logit noise (defense baseline)
    metric: str | None = None  # decision metric (default: sscd, else features, else tokens)
    threshold: float | None = None  # fixed threshold (default: calibrated on held-out images, else the metric's)
    margin: float | None = None  # fixed margin over the nearest other image (-inf: none, the absolute rule)
    calibrate: bool | None = None  # threshold and margin from the held-out images (None: when there are any)
    fpr: float = 0.01  # calibration: allowed fraction of held-out images counted as extracted
    calibration: int = 200  # never-trained images outside the plan that calibrate (0: the plan's held-out set)
    class_calibration: int = 0  # strong attack: never-trained images per target class, for per-class bars too
    sscd: str | None = None  # SSCD TorchScript file
    features: str | None = None  # TorchScript feature extractor, or "trained:PATH"
    features_size: int = 224  # input side of a --features TorchScript file
    batch_size: int = 32
    seed: int = 0
    figure_pairs: int = 32  # pairs shown in extracted.png
    membership: bool = True  # membership-inference scores from the scoring pass (one more, unconditional pass)
    strength: str = "default"  # "strong": also every prefix, decoding, guidance and a trigger search (strong.py)
    trigger_steps: int = 30  # Adam steps of the strong attack's trigger search

    def validate(self) -> AttackSettings:
        """Raise a one-line UserError for any option outside its range."""
        if self.subset is not None and self.subset not in SUBSETS:
            raise UserError(f"unknown --subset {self.subset!r}; choose one of {', '.join(SUBSETS)}")
        if self.ids is not None and (self.subset, self.fraction, self.per_class_subset) != (None, None, None):
            raise UserError("--ids names the images to attack; drop --subset / --fraction / --per-class-subset")
        if self.ids is not None and len(self.ids) == 0:
            raise UserError("--ids lists no image ids")
        if self.fraction is not None and self.per_class_subset is not None:
            raise UserError("give --fraction or --per-class-subset, not both")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise UserError(f"--fraction must lie in (0, 1], got {self.fraction}")
        if self.per_class_subset is not None and self.per_class_subset < 1:
            raise UserError(f"--per-class-subset must be >= 1, got {self.per_class_subset}")
        if self.top < 1:
            raise UserError(f"--top must be >= 1, got {self.top}")
        if self.score_by not in SCORES:
            raise UserError(f"unknown --score {self.score_by!r}; choose one of {', '.join(SCORES)}")
        if self.last is not None and self.last < 1:
            raise UserError(f"--last must be >= 1, got {self.last}")
        if self.prefix is not None and self.prefix < 0:
            raise UserError(f"--prefix must be >= 0, got {self.prefix}")
        if not (self.logit_noise >= 0 and math.isfinite(self.logit_noise)):
            raise UserError(f"--logit-noise must be a finite std >= 0, got {self.logit_noise}")
        if self.metric is not None and self.metric not in METRICS:
            raise UserError(f"unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}")
        if self.metric in NEEDS_EXTRACTOR and getattr(self, self.metric) is None:
            raise UserError(f"--metric {self.metric} needs {NEEDS_EXTRACTOR[self.metric]}")
        if self.threshold is not None:
            if self.calibrate:
                raise UserError("give --threshold or --calibrate, not both")
            check_threshold(METRICS[self.metric or self.default_metric()], self.threshold)
        if self.margin is not None and (math.isnan(self.margin) or self.margin == math.inf):
            raise UserError(f"--margin must be a number (or 'none' for no margin), got {self.margin}")
        if not 0 < self.fpr < 1:
            raise UserError(f"--fpr must lie in (0, 1), got {self.fpr}")
        if self.calibration < 0:
            raise UserError(f"--calibration-images must be >= 0 (0: calibrate on the plan's held-out images), "
                            f"got {self.calibration}")
        if self.class_calibration < 0:
            raise UserError(f"--class-calibration-images must be >= 0 (0: one bar for every class), "
                            f"got {self.class_calibration}")
        if self.class_calibration > 0 and self.strength != "strong":
            raise UserError("--class-calibration-images sets the strong attack's per-class bars; add --strength strong "
                            "or drop it")
        if self.class_calibration > 0 and self.calibration == 0:
            raise UserError("--class-calibration-images joins the tries' joint calibration, which "
                            "--calibration-images 0 turns off; give --calibration-images N > 0 or drop it")
        if self.features_size < 1:
            raise UserError(f"--features-size must be >= 1, got {self.features_size}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.strength not in STRENGTHS:
            raise UserError(f"unknown --strength {self.strength!r}; choose one of {', '.join(STRENGTHS)}")
        if self.trigger_steps < 1:
            raise UserError(f"--trigger-steps must be >= 1, got {self.trigger_steps}")
        if self.figure_pairs < 1:
            raise UserError(f"--figure-pairs must be >= 1 (pairs shown in the figure), got {self.figure_pairs}")
        for flag, path in (("--sscd", self.sscd), ("--features", self._features_path())):
            if path is not None and not Path(path).is_file():
                raise UserError(f"{flag} file not found: {path} (check the path)")
        return self

    def calibrates(self, heldout: int) -> bool:
        """Whether threshold and margin are calibrated: as asked, else whenever there are held-out images
        and no --threshold."""
        return self.calibrate if self.calibrate is not None else (heldout > 0 and self.threshold is None)

    def default_metric(self) -> str:
        return "sscd" if self.sscd else "features" if self.features else DEFAULT_BUILTIN

    def _features_path(self) -> str | None:
        return _feature_spec(self)[1] if self.features is not None else None

    def replace(self, **changes: Any) -> AttackSettings:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ids"] = list(self.ids) if self.ids is not None else None
        return d


def load_extractors(s: AttackSettings, device: torch.device | str = "cpu") -> dict[str, Embedder]:
    """The feature extractors the settings name, keyed by the metric they feed ("sscd", "features").

    ``--features`` takes a TorchScript file (input side ``--features-size``), ``trained:PATH`` (the
    CNN of ``features.train_feature_extractor``) or the ``torchscript:PATH[:SIZE]`` / ``sscd:PATH``
    forms the quality stage uses.
    """
    if s.sscd is None and s.features is None:
        return {}
    try:
        from iarmem import features as fx
    except ImportError as e:
        raise UserError(f"--sscd / --features need iarmem.features, which this install lacks ({e})") from e
    out: dict[str, Embedder] = {}
    try:
        if s.sscd is not None:
            out["sscd"] = fx.sscd(s.sscd, device=device)
        if s.features is not None:
            kind, path, size = _feature_spec(s)
            if kind == "trained":
                out["features"] = fx.load_trained(path, device=device)
            elif kind == "sscd":
                out["features"] = fx.sscd(path, device=device)
            else:
                out["features"] = fx.load_torchscript(path, size or s.features_size, device=device)
    except UserError:
        raise
    except (OSError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot load the feature extractor: {str(e).splitlines()[0][:200]}") from e
    return out


def _feature_spec(s: AttackSettings) -> tuple[str, str, int | None]:
    """(kind, path, size) of ``--features``: a bare file is TorchScript of side ``--features-size``."""
    text = s.features or ""
    kind, _, rest = text.partition(":")
    if kind in ("trained", "sscd") and rest:
        return kind, rest, None
    if kind == "torchscript" and rest:
        head, _, tail = rest.rpartition(":")
        return ("torchscript", head, int(tail)) if head and tail.isdigit() else ("torchscript", rest, None)
    return "torchscript", text, None
