"""The one interface every IAR family implements; localize, attack and mitigate see only this.

An :class:`IAR` owns two official modules: ``tokenizer`` (the image tokenizer) and ``model``
(the transformer). Their ``state_dict()`` keys are exactly the official ones, so official
checkpoint files load with strict matching and edited models save back into files the
official code loads.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from iarmem.models.sampling import Rng


@dataclass(frozen=True)
class Tokens:
    """Token ids of a batch of images and the grids they live on.

    ``ids_BL`` concatenates the token maps in ``grids`` order, each row-major. VAR has one grid
    per scale (1x1 ... 16x16); raster families (RAR, LlamaGen) have a single grid.
    """

    ids_BL: Tensor
    grids: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if self.ids_BL.dim() != 2:
            raise ValueError(f"ids_BL must be [B, L], got shape {tuple(self.ids_BL.shape)}")
        total = sum(h * w for h, w in self.grids)
        if self.ids_BL.shape[1] != total:
            raise ValueError(f"ids_BL has {self.ids_BL.shape[1]} tokens but the grids hold {total}")

    @property
    def batch_size(self) -> int:
        return self.ids_BL.shape[0]

    @property
    def begin_ends(self) -> list[tuple[int, int]]:
        return grid_begin_ends(self.grids)

    def scale(self, i: int) -> Tensor:
        """Ids of grid ``i`` as [B, h*w]."""
        b, e = self.begin_ends[i]
        return self.ids_BL[:, b:e]

    def per_scale(self) -> list[Tensor]:
        return [self.ids_BL[:, b:e] for b, e in self.begin_ends]

    def to(self, device: torch.device | str) -> Tokens:
        return Tokens(self.ids_BL.to(device), self.grids)

    def index(self, idx: Tensor | slice | list[int]) -> Tokens:
        """A sub-batch."""
        return Tokens(self.ids_BL[idx], self.grids)

    @staticmethod
    def cat(items: list[Tokens]) -> Tokens:
        grids = items[0].grids
        if any(t.grids != grids for t in items):
            raise ValueError("cannot concatenate tokens of different layouts")
        return Tokens(torch.cat([t.ids_BL for t in items]), grids)

    @staticmethod
    def from_scales(scales: list[Tensor], grids: tuple[tuple[int, int], ...]) -> Tokens:
        return Tokens(torch.cat(scales, dim=1), grids)


def grid_begin_ends(grids: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    out, cur = [], 0
    for h, w in grids:
        out.append((cur, cur + h * w))
        cur += h * w
    return out


@dataclass(frozen=True)
class UnitLayer:
    """A layer of units that localization taps and mitigation edits (a TransformerLens-style hook point).

    ``name`` is the layer's prefix in the official state dict (``blocks.3.ffn.fc1``). The unit
    value is the output (or, with ``tap_input``, the input) of the submodule ``tap_module`` of
    ``IAR.model``. Both edit lists hold ``(state-dict key, unit axis)``; editing unit ``u`` scales
    slice ``u`` along that axis:

    - ``exact_params``: scaling these by f multiplies the unit's contribution to the rest of the
      network by exactly f, for every input (fc1 units: the column of the layer that reads them;
      fc2 / attn.proj channels: the weight row and its bias). f = 0 removes the unit.
    - ``paper_params``: the paper's edit, the weight row that writes the unit, bias kept (for a
      GELU unit this is not a linear scaling: factor 0 leaves GELU(bias)).
    - ``own_params``: every slice that belongs to unit u alone (what writes it and what reads it:
      fc1 row and bias plus the reading column; LlamaGen's w1 and w3 rows plus the w2 column).
      Unit-level injection fine-tunes exactly these; empty where a family does not say.
    """

    name: str
    kind: str
    block: int
    width: int
    tap_module: str
    tap_input: bool
    exact_params: tuple[tuple[str, int], ...]
    paper_params: tuple[tuple[str, int], ...]
    own_params: tuple[tuple[str, int], ...] = ()


UNIT_KINDS = ("fc1", "fc2", "attn.proj")


class IAR(nn.Module, abc.ABC):
    """A tokenizer plus a token-predicting transformer, behind one family-independent interface.

    Labels are class ids in ``[0, num_classes)``; each family handles its own "no class" id for
    classifier-free guidance. Images are float NCHW RGB in the family's ``pixel_range``.
    """

    family: ClassVar[str]
    pixel_range: ClassVar[tuple[float, float]]

    tokenizer: nn.Module
    model: nn.Module
    image_size: int
    num_classes: int
    vocab_size: int

    # ---- layout -------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def grids(self) -> tuple[tuple[int, int], ...]:
        """Token grids of one image, in sequence order."""

    @property
    def seq_len(self) -> int:
        return sum(h * w for h, w in self.grids)

    @property
    def generation_steps(self) -> int:
        """Autoregressive steps of one image: scales for VAR, tokens for raster families.

        ``generate``'s ``prefix_len`` counts these steps.
        """
        return len(self.grids) if len(self.grids) > 1 else self.seq_len

    @property
    def class_only_positions(self) -> int:
        """How many leading token positions are predicted from the class alone (no image token yet).

        Their activations are the same for every image of a class, so they say nothing about one
        image: VAR's first scale (1x1), the first position of RAR and LlamaGen. Localization leaves
        them out of its bins by default.
        """
        h, w = self.grids[0]
        return h * w if len(self.grids) > 1 else 1

    @property
    @abc.abstractmethod
    def tap_slice(self) -> slice:
        """Positions of the transformer's sequence whose outputs predict tokens 0..L-1, in order."""

    @property
    @abc.abstractmethod
    def default_num_bins(self) -> int:
        """Number of granularity bins used by default (VAR: the scales)."""

    @abc.abstractmethod
    def bins(self, num_bins: int | None = None) -> Tensor:
        """[L] int64: the granularity bin of every token position."""

    # ---- the pipeline -------------------------------------------------------------------
    @abc.abstractmethod
    def tokenize(self, images: Tensor, labels: Tensor | None = None) -> Tokens:
        """Encode images (native pixel range) into tokens."""

    @abc.abstractmethod
    def decode(self, tokens: Tokens) -> Tensor:
        """Decode tokens into images in the native pixel range."""

    @abc.abstractmethod
    def logits(self, tokens: Tokens, labels: Tensor, *, unconditional: bool = False) -> Tensor:
        """Teacher-forced, conditional logits [B, L, V]; ``logits[:, i]`` predicts ``ids_BL[:, i]``.

        Label dropout (and RAR's random order) happen only in ``training_loss``; this pass is
        deterministic in both train and eval mode. With ``unconditional`` the class is replaced by
        the family's "no class" id (the unconditional branch of classifier-free guidance); ``labels``
        still give the batch size and must be valid.
        """

    @abc.abstractmethod
    def generate(
        self,
        labels: Tensor,
        prefix: Tokens | None = None,
        prefix_len: int = 0,
        *,
        greedy: bool = True,
        cfg: float | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.0,
        logit_noise: float = 0.0,
        generator: Rng = None,
        use_cache: bool = True,
        return_logits: bool = False,
    ) -> Tokens | tuple[Tokens, Tensor]:
        """Autoregressive generation; the first ``prefix_len`` steps are copied from ``prefix``.

        ``prefix_len`` counts whole scales for VAR and tokens for the raster families.
        ``cfg=None`` uses conditional logits only (no unconditional pass); a number applies the
        family's own guidance rule. ``logit_noise`` adds N(0, s^2) to the final logits (the
        defense baseline of Kowalczuk et al.). With ``return_logits`` the [B, L, V] logits that
        chose each token are returned too (prefix positions hold the logits of the forced pass).
        Families may add keyword-only options of their own (RAR: ``cfg_power``).
        """

    @abc.abstractmethod
    def training_loss(self, tokens: Tensor | Tokens, labels: Tensor,
                      generator: torch.Generator | None = None) -> Tensor:
        """The family's training objective (label dropout; RAR: random order), mean over tokens."""

    def tokenizer_loss(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Tokenizer training objective on native-range images: (loss, reconstruction).

        Pixel L1 + L2 plus the quantizer's codebook and commitment terms; the perceptual and GAN
        losses of the official recipes need pretrained networks and are left out.
        """
        raise NotImplementedError(f"{self.family} tokenizer training is not available")

    def set_training_progress(self, fraction: float) -> None:
        """Called before each training step with step / total (RAR anneals its random order)."""

    @abc.abstractmethod
    def class_rows(self, labels: Tensor) -> tuple[nn.Parameter, Tensor]:
        """The embedding table that holds the class conditioning, and the row each label reads.

        The strong attack's trigger search optimises such a row (the conditioning input) to make a
        target image likely, then generates from it.
        """

    # ---- localization / mitigation hooks -----------------------------------------------
    @abc.abstractmethod
    def unit_layers(self, kinds: tuple[str, ...] = ("fc1",)) -> list[UnitLayer]:
        """Tappable, editable unit layers, block order, for the given kinds (see UNIT_KINDS)."""

    # ---- construction -------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def from_official(cls, tokenizer_kwargs: dict[str, Any], model_kwargs: dict[str, Any]) -> IAR:
        """Build from the keyword arguments of the official constructors (see shared/reference)."""

    @abc.abstractmethod
    def official_kwargs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The (tokenizer, model) official keyword arguments that rebuild this architecture."""

    @classmethod
    @abc.abstractmethod
    def describe_state_dict(cls, part: str, state_dict: dict[str, Tensor]) -> dict[str, Any]:
        """Architecture numbers read off a checkpoint (``part`` is "tokenizer" or "model"),
        comparable with ``official_kwargs`` values; used to name the preset a file fits."""

    @classmethod
    def clean_state_dict(cls, part: str, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Drop entries that official files may carry but that are not weights (default: none)."""
        return dict(state_dict)

    # ---- helpers shared by all families ---------------------------------------------------
    def to_unit_range(self, images: Tensor) -> Tensor:
        """Native pixel range -> [0, 1]."""
        lo, hi = self.pixel_range
        return (images - lo) / (hi - lo)

    def from_unit_range(self, images01: Tensor) -> Tensor:
        """[0, 1] -> native pixel range."""
        lo, hi = self.pixel_range
        return images01 * (hi - lo) + lo

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def unit_layer(self, name: str) -> UnitLayer:
        for layer in self.unit_layers(UNIT_KINDS):
            if layer.name == name:
                return layer
        raise KeyError(f"no unit layer named {name!r}")

    def check_labels(self, labels: Tensor) -> None:
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"class labels must lie in [0, {self.num_classes}); got {int(labels.min())}..{int(labels.max())}"
            )


LogitFn = Callable[[Tensor], Tensor]
