"""RAR (randomized autoregressive) behind the family-independent :class:`~iarmem.models.base.IAR` interface.

The tokenizer is MaskGIT-VQGAN (:mod:`.tokenizer`), the generator the RAR transformer
(:mod:`.transformer`). Everything outside ``training_loss`` runs in raster order; sampling follows
the official cosine-power guidance schedule. ``from_official`` accepts the constructor arguments
in the layouts recorded by the reference fixtures (see :func:`tokenizer_config`, :func:`model_config`).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iarmem.errors import UserError
from iarmem.models.base import IAR, UNIT_KINDS, Tokens, UnitLayer
from iarmem.models.rar.tokenizer import MaskGitVQGAN, VQGANConfig
from iarmem.models.rar.transformer import TIMESTEP_EXTRA_ROWS, KVCache, RARConfig, RARTransformer
from iarmem.models.registry import Preset
from iarmem.models.sampling import Rng, add_logit_noise, pick_tokens

ENCODER_KEY = "modeling.modules.maskgit_vqgan.Encoder"
DECODER_KEY = "modeling.modules.maskgit_vqgan.Decoder"
QUANTIZER_KEY = "modeling.modules.maskgit_vqgan.VectorQuantizer"
RAR_KEY = "modeling.rar.RAR"
QUANTIZER_ARGS = ("num_embeddings", "embedding_dim", "commitment_cost")
REQUIRED_GENERATOR_ARGS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_seq_len",
    "condition_num_classes",
)


# ---- official kwargs -> configs -----------------------------------------------------------
def tokenizer_config(kwargs: Mapping[str, Any]) -> VQGANConfig:
    """MaskGIT-VQGAN kwargs in any recorded layout -> :class:`VQGANConfig`.

    Accepted layouts:

    * ``{"config": {<Encoder/Decoder config>},
      "quantizer": {num_embeddings, embedding_dim, commitment_cost}}`` (canonical; what
      ``official_kwargs`` returns and ``official_shapes.json`` records);
    * the fixture ``constructors`` dict: ``{"modeling.modules.maskgit_vqgan.Encoder": {"config": ...},
      "...Decoder": {"config": ...}, "...VectorQuantizer": {...}}`` (other keys are ignored);
    * one flat dict holding the config entries and the quantizer entries side by side.
    """
    if ENCODER_KEY in kwargs:
        config = dict(kwargs[ENCODER_KEY]["config"])
        if DECODER_KEY in kwargs and dict(kwargs[DECODER_KEY]["config"]) != config:
            raise ValueError("the Encoder and Decoder configs differ; MaskGIT-VQGAN uses one config for both")
        quantizer = dict(kwargs.get(QUANTIZER_KEY, {}))
    elif "config" in kwargs:
        config, quantizer = dict(kwargs["config"]), dict(kwargs.get("quantizer", {}))
    else:
        config = {k: v for k, v in kwargs.items() if k not in QUANTIZER_ARGS}
        quantizer = {k: v for k, v in kwargs.items() if k in QUANTIZER_ARGS}
    known = set(VQGANConfig.__dataclass_fields__)
    unknown = sorted(set(config) - known) + sorted(set(quantizer) - set(QUANTIZER_ARGS))
    if unknown:
        raise ValueError(f"unknown MaskGIT-VQGAN arguments {unknown}; known: {sorted(known)}")
    if "channel_mult" in config:
        config["channel_mult"] = tuple(int(m) for m in config["channel_mult"])
    if "num_resolutions" not in config and "channel_mult" in config:
        config["num_resolutions"] = len(config["channel_mult"])
    if "embedding_dim" not in quantizer and "z_channels" in config:
        quantizer["embedding_dim"] = config["z_channels"]
    return VQGANConfig(**config, **quantizer)


def model_config(kwargs: Mapping[str, Any]) -> RARConfig:
    """RAR kwargs in any recorded layout -> :class:`RARConfig`.

    Accepted layouts (``g`` is ``config.model.generator``, ``K`` the codebook size):

    * ``{"config": {"model": {"generator": g, "vq_model": {"codebook_size": K, ...}}}}`` (canonical:
      the keyword ``config`` of the official ``RAR(config)``, as in the fixture
      ``constructors["modeling.rar.RAR"]``);
    * the same without the outer ``config`` key, or the whole fixture ``constructors`` dict;
    * ``{"config.model.generator": g, "config.model.vq_model.codebook_size": K}`` (``official_shapes.json``);
    * ``{"generator": g, "codebook_size": K}`` or ``g`` itself with a ``codebook_size`` entry.

    Generator entries that do not shape the model or its sampling (e.g. ``type``) are ignored.
    """
    if RAR_KEY in kwargs:
        return model_config(kwargs[RAR_KEY])
    if "config" in kwargs:
        return model_config(kwargs["config"])
    if "model" in kwargs:
        gen, codebook = kwargs["model"]["generator"], kwargs["model"]["vq_model"]["codebook_size"]
    elif "config.model.generator" in kwargs:
        gen, codebook = kwargs["config.model.generator"], kwargs["config.model.vq_model.codebook_size"]
    elif "generator" in kwargs:
        gen, codebook = kwargs["generator"], kwargs["codebook_size"]
    else:
        gen, codebook = kwargs, kwargs.get("codebook_size")
    missing = [k for k in REQUIRED_GENERATOR_ARGS if k not in gen]
    if codebook is None:
        missing.append("codebook_size")
    if missing:
        raise ValueError(f"RAR arguments lack {missing}")
    known = set(RARConfig.__dataclass_fields__) - {"codebook_size"}
    return RARConfig(**{k: v for k, v in gen.items() if k in known}, codebook_size=int(codebook))


def model_kwargs_of(cfg: RARConfig) -> dict[str, Any]:
    """The canonical model kwargs of a config (the keyword ``config`` of the official ``RAR``)."""
    model = {"generator": cfg.generator_dict(), "vq_model": {"codebook_size": cfg.codebook_size}}
    return {"config": {"model": model}}


ANNEAL_PER_MILLE = (500, 750)  # official randomness_anneal_start/end of max_train_steps 250k


def annealed_random_ratio(step: int, start: int, end: int) -> float:
    """The official schedule: 1 before ``start``, linear down to 0 at ``end``, 0 after."""
    if step < start:
        return 1.0
    if step >= end:
        return 0.0
    return 1.0 - (step - start) / (end - start)


def guidance_scales(cfg: float, power: float, seq_len: int) -> Tensor:
    """[L] float32 CFG scale of every step: (cfg-1)*(1-cos((s/L)^power*pi))/2 + 1.

    Computed step by step on 1-element float32 tensors, exactly as the official sampler does, so
    greedy choices near ties match it bit for bit.
    """
    pow_1 = torch.ones(1) * power
    steps = [(1 - torch.cos(((s / seq_len) ** pow_1) * torch.pi)) * 1 / 2 for s in range(seq_len)]
    return torch.cat([(cfg - 1) * st + 1 for st in steps])


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run without dropout, then restore every submodule's train/eval flag."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform draws from ``generator`` (on its own device), moved to ``device``."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


# ---- the family ---------------------------------------------------------------------------
class RARFamily(IAR):
    """MaskGIT-VQGAN tokenizer + RAR transformer; raster order everywhere except ``training_loss``."""

    family = "rar"
    pixel_range = (0.0, 1.0)

    def __init__(self, tokenizer_cfg: VQGANConfig, model_cfg: RARConfig) -> None:
        super().__init__()
        L = model_cfg.image_seq_len
        side = math.isqrt(L)
        if side * side != L:
            raise ValueError(f"image_seq_len ({L}) must be a square number (a side x side token grid)")
        if model_cfg.codebook_size != tokenizer_cfg.num_embeddings:
            raise ValueError(
                f"the generator's codebook_size ({model_cfg.codebook_size}) differs from the tokenizer's "
                f"num_embeddings ({tokenizer_cfg.num_embeddings})"
            )
        self.tokenizer = MaskGitVQGAN(tokenizer_cfg)
        self.model = RARTransformer(model_cfg)
        self.image_size = side * tokenizer_cfg.downsample
        self.num_classes = model_cfg.condition_num_classes
        self.vocab_size = model_cfg.codebook_size
        self._grid = (side, side)

    @property
    def cfg(self) -> RARConfig:
        return self.model.cfg

    # ---- layout -------------------------------------------------------------------------
    @property
    def grids(self) -> tuple[tuple[int, int], ...]:
        return (self._grid,)

    @property
    def tap_slice(self) -> slice:
        # sequence [cls, cond, t_0 .. t_{L-1}]: position i+1 predicts token i
        return slice(1, self.seq_len + 1)

    @property
    def default_num_bins(self) -> int:
        return min(16, self.seq_len)

    def bins(self, num_bins: int | None = None) -> Tensor:
        n, L = num_bins or self.default_num_bins, self.seq_len
        if not 1 <= n <= L:
            raise ValueError(f"num_bins must lie in [1, {L}], got {n}")
        return torch.arange(L, dtype=torch.int64) * n // L

    # ---- random order -------------------------------------------------------------------
    @property
    def random_ratio(self) -> float:
        return self.model.random_ratio

    def set_random_ratio(self, ratio: float) -> None:
        """Probability of a random token order per sample in ``training_loss`` (0 = raster)."""
        self.model.set_random_ratio(ratio)

    def random_ratio_at(self, step: int) -> float:
        """The official annealed ratio at a training step (needs randomness_anneal_start/end)."""
        start, end = self.cfg.randomness_anneal_start, self.cfg.randomness_anneal_end
        if start is None or end is None:
            raise ValueError("this RAR config sets no randomness_anneal_start/randomness_anneal_end")
        return annealed_random_ratio(step, start, end)

    def set_training_progress(self, fraction: float) -> None:
        """The official anneal, as fractions of training: random order until half-way (125k of 250k
        steps), then linearly down to raster order at three quarters (187.5k)."""
        self.set_random_ratio(annealed_random_ratio(round(fraction * 1000), *ANNEAL_PER_MILLE))

    def tokenizer_loss(self, images: Tensor) -> tuple[Tensor, Tensor]:
        rec, vq_loss = self.tokenizer(images)
        return F.l1_loss(rec, images) + F.mse_loss(rec, images) + vq_loss, rec

    def sample_orders(self, batch: int, generator: torch.Generator | None = None) -> Tensor | None:
        """[B, L] token orders for training (None = raster for all): each sample is a uniform random
        permutation with probability ``random_ratio``, else raster."""
        ratio = self.model.random_ratio
        if ratio <= 0.0:
            return None
        L, device = self.seq_len, self.device
        random_B = _rand((batch,), generator, device) < ratio
        perm_BL = _rand((batch, L), generator, device).argsort(dim=1)
        raster_BL = torch.arange(L, device=device).expand(batch, -1)
        return torch.where(random_B[:, None], perm_BL, raster_BL)

    # ---- the pipeline -------------------------------------------------------------------
    def _ids(self, tokens: Tensor | Tokens) -> Tensor:
        ids = tokens.ids_BL if isinstance(tokens, Tokens) else tokens
        if ids.dim() != 2 or ids.shape[1] != self.seq_len:
            raise ValueError(f"expected token ids [B, {self.seq_len}], got shape {tuple(ids.shape)}")
        return ids.to(self.device, torch.int64)

    def _labels(self, labels: Tensor) -> Tensor:
        self.check_labels(labels)
        return labels.to(self.device, torch.int64)

    @torch.no_grad()
    def tokenize(self, images: Tensor, labels: Tensor | None = None) -> Tokens:
        s = self.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"expected images [B, 3, {s}, {s}] in [0, 1], got shape {tuple(images.shape)}")
        p = next(self.tokenizer.parameters())
        return Tokens(self.tokenizer.encode(images.to(p.device, p.dtype)), self.grids)

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> Tensor:
        return self.tokenizer.decode(self._ids(tokens), self._grid)

    def official_logits(self, tokens: Tensor | Tokens, labels: Tensor, *, unconditional: bool = False) -> Tensor:
        """[B, L+1, V] teacher-forced logits as the official forward returns them (last row: no target)."""
        ids_BL, labels_B = self._ids(tokens), self._labels(labels)
        cond_B = self.model.condition_ids(labels_B)
        if unconditional:
            cond_B = torch.full_like(cond_B, self.cfg.none_condition_id)
        with eval_mode(self.model):
            return self.model(ids_BL, cond_B)

    def logits(self, tokens: Tensor | Tokens, labels: Tensor, *, unconditional: bool = False) -> Tensor:
        return self.official_logits(tokens, labels, unconditional=unconditional)[:, : self.seq_len]

    def training_loss(
        self, tokens: Tensor | Tokens, labels: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Official objective: label dropout, random order with ``random_ratio``, CE mean over L targets."""
        ids_BL, labels_B = self._ids(tokens), self._labels(labels)
        B = ids_BL.shape[0]
        cond_B = self.model.condition_ids(labels_B)
        p_drop = self.cfg.class_label_dropout
        if p_drop > 0:
            dropped_B = _rand((B,), generator, self.device) < p_drop
            cond_B = torch.where(dropped_B, torch.full_like(cond_B, self.cfg.none_condition_id), cond_B)
        orders_BL = self.sample_orders(B, generator)
        logits_BLV = self.model(ids_BL, cond_B, orders_BL)[:, : self.seq_len]
        targets_BL = ids_BL if orders_BL is None else ids_BL.gather(1, orders_BL)
        return F.cross_entropy(logits_BLV.reshape(-1, logits_BLV.shape[-1]).float(), targets_BL.reshape(-1))

    @torch.no_grad()
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
        cfg_power: float | None = None,
    ) -> Tokens | tuple[Tokens, Tensor]:
        """Raster-order generation. ``cfg`` is RAR's guidance scale with the cosine-power schedule
        (power ``cfg_power``, default the config's ``guidance_scale_pow``); None = conditional only.
        Returned logits are those handed to the token choice (guided, plus noise); prefix positions
        hold the guided logits of the forced pass."""
        labels_B = self._labels(labels)
        B, L, device = labels_B.shape[0], self.seq_len, self.device
        if not 0 <= prefix_len <= L:
            raise ValueError(f"prefix_len must lie in [0, {L}], got {prefix_len}")
        ids_BL = torch.zeros(B, L, dtype=torch.int64, device=device)
        if prefix_len:
            if prefix is None:
                raise ValueError("prefix_len > 0 needs a prefix")
            if prefix.batch_size != B:
                raise ValueError(f"prefix holds {prefix.batch_size} images but labels {B}")
            ids_BL[:, :prefix_len] = self._ids(prefix)[:, :prefix_len]
        cond_B = self.model.condition_ids(labels_B)
        scales_L = None
        if cfg is not None:
            cond_B = torch.cat([cond_B, torch.full_like(cond_B, self.cfg.none_condition_id)])
            power = self.cfg.guidance_scale_pow if cfg_power is None else cfg_power
            scales_L = guidance_scales(float(cfg), float(power), L).to(device)
        caches: list[KVCache] | None = self.model.new_caches() if use_cache else None
        out_BLV = torch.zeros(B, L, self.vocab_size, device=device) if return_logits else None

        def guided(raw_BrV: Tensor, first: int) -> Tensor:
            """Guided logits of the rows that predict tokens first, first+1, ..."""
            if scales_L is None:
                return raw_BrV
            cond, uncond = raw_BrV[:B], raw_BrV[B:]
            scale_r = scales_L[first:first + raw_BrV.shape[1]].to(raw_BrV.dtype)
            return uncond + (cond - uncond) * scale_r[None, :, None]

        def forward(n: int, caches: list[KVCache] | None) -> Tensor:
            """Raw logits given tokens 0..n-1: [2B or B, n+1, V], or [., 1, V] once the caches are filled."""
            ids = ids_BL[:, :n] if scales_L is None else ids_BL[:, :n].repeat(2, 1)
            return self.model(ids, cond_B, caches=caches)

        with eval_mode(self.model):
            for n in range(prefix_len, L):
                raw = forward(n, caches)
                if out_BLV is not None and n == prefix_len:
                    out_BLV[:, :n] = guided(raw[:, :n], 0)
                logits_B1V = add_logit_noise(guided(raw[:, -1:], n), logit_noise, generator)
                ids_BL[:, n] = pick_tokens(logits_B1V, greedy=greedy, temperature=temperature, top_k=top_k,
                                           top_p=top_p, generator=generator)[:, 0]
                if out_BLV is not None:
                    out_BLV[:, n] = logits_B1V[:, 0]
            if out_BLV is not None and prefix_len == L:
                out_BLV[:] = guided(forward(L, None)[:, :L], 0)
        tokens = Tokens(ids_BL, self.grids)
        return (tokens, out_BLV) if out_BLV is not None else tokens

    # ---- localization / mitigation hooks -----------------------------------------------
    def class_rows(self, labels: Tensor) -> tuple[nn.Parameter, Tensor]:
        return self.model.embeddings.weight, self.model.condition_ids(labels.to(torch.int64))

    def unit_layers(self, kinds: tuple[str, ...] = ("fc1",)) -> list[UnitLayer]:
        bad = [k for k in kinds if k not in UNIT_KINDS]
        if bad:
            raise ValueError(f"unknown unit kinds {bad}; choose from {UNIT_KINDS}")
        C, U = self.cfg.hidden_size, self.cfg.intermediate_size
        out = []
        for i in range(self.cfg.num_hidden_layers):
            b = f"blocks.{i}"
            for kind in kinds:
                if kind == "fc1":
                    out.append(UnitLayer(
                        name=f"{b}.mlp.fc1", kind="fc1", block=i, width=U, tap_module=f"{b}.mlp.act",
                        tap_input=False, exact_params=((f"{b}.mlp.fc2.weight", 1),),
                        paper_params=((f"{b}.mlp.fc1.weight", 0),),
                        own_params=((f"{b}.mlp.fc1.weight", 0), (f"{b}.mlp.fc1.bias", 0), (f"{b}.mlp.fc2.weight", 1))))
                else:
                    mod = f"{b}.mlp.fc2" if kind == "fc2" else f"{b}.attn.proj"
                    out.append(UnitLayer(
                        name=mod, kind=kind, block=i, width=C, tap_module=mod, tap_input=False,
                        exact_params=((f"{mod}.weight", 0), (f"{mod}.bias", 0)), paper_params=((f"{mod}.weight", 0),),
                        own_params=((f"{mod}.weight", 0), (f"{mod}.bias", 0))))
        return out

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_official(cls, tokenizer_kwargs: dict[str, Any], model_kwargs: dict[str, Any]) -> RARFamily:
        """Build from MaskGIT-VQGAN and RAR kwargs in any layout :func:`tokenizer_config` and
        :func:`model_config` accept; arguments that do not form a valid model raise a UserError."""
        try:
            tok_cfg, model_cfg = tokenizer_config(tokenizer_kwargs), model_config(model_kwargs)
            return cls(tok_cfg, model_cfg)
        except (ValueError, TypeError, KeyError) as e:
            raise UserError(f"invalid RAR arguments: {e}") from e

    @staticmethod
    def kwargs_from_constructors(constructors: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Canonical (tokenizer, model) kwargs from a reference JSON's ``constructors`` section."""
        tok_cfg, model_cfg = tokenizer_config(constructors), model_config(constructors)
        return tok_cfg.official_kwargs(), model_kwargs_of(model_cfg)

    def official_kwargs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return copy.deepcopy(self.tokenizer.cfg.official_kwargs()), copy.deepcopy(model_kwargs_of(self.cfg))

    @classmethod
    def describe_state_dict(cls, part: str, state_dict: dict[str, Tensor]) -> dict[str, Any]:
        sd = state_dict
        if part == "model":
            hidden = int(sd["cls_token"].shape[-1])
            codebook = int(sd["lm_head.weight"].shape[0])
            return {
                "hidden_size": hidden,
                "num_hidden_layers": len({k.split(".")[1] for k in sd if k.startswith("blocks.")}),
                "num_attention_heads": hidden // int(sd["blocks.0.attn.q_norm.weight"].shape[0]),
                "intermediate_size": int(sd["blocks.0.mlp.fc1.weight"].shape[0]),
                "image_seq_len": int(sd["timesteps_embeddings"].shape[1]) - TIMESTEP_EXTRA_ROWS,
                "condition_num_classes": int(sd["embeddings.weight"].shape[0]) - codebook - 2,
                "codebook_size": codebook,
            }
        if part == "tokenizer":
            hidden = int(sd["encoder.conv_in.weight"].shape[0])
            levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down.")})
            widths = [int(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in levels]
            return {
                "hidden_channels": hidden,
                "channel_mult": [w // hidden for w in widths],
                "num_res_blocks": len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")}),
                "num_channels": int(sd["encoder.conv_in.weight"].shape[1]),
                "z_channels": int(sd["encoder.conv_out.weight"].shape[0]),
                "codebook_size": int(sd["quantize.embedding.weight"].shape[0]),
                "embedding_dim": int(sd["quantize.embedding.weight"].shape[1]),
            }
        raise ValueError(f"part must be 'tokenizer' or 'model', got {part!r}")


# ---- presets -------------------------------------------------------------------------------
MASKGIT_VQGAN_F16_256: dict[str, Any] = VQGANConfig().official_kwargs()


def _rar_kwargs(hidden: int, layers: int, intermediate: int) -> dict[str, Any]:
    """Official ``configs/training/generator/rar_*.yaml`` generator settings at one size."""
    generator = {
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 16,
        "intermediate_size": intermediate, "dropout": 0.1, "attn_drop": 0.1, "class_label_dropout": 0.1,
        "image_seq_len": 256, "condition_num_classes": 1000, "randomize_temperature": 1.0,
        "guidance_scale": 16.0, "guidance_scale_pow": 2.75, "use_checkpoint": False,
        "randomness_anneal_start": 125_000, "randomness_anneal_end": 187_500,
    }
    return {"config": {"model": {"generator": generator, "vq_model": {"codebook_size": 1024}}}}


def _preset(size: str, hidden: int, layers: int, intermediate: int, params: str) -> Preset:
    return Preset(
        name=f"rar-{size}", family="rar", tokenizer_kwargs=copy.deepcopy(MASKGIT_VQGAN_F16_256),
        model_kwargs=_rar_kwargs(hidden, layers, intermediate),
        description=f"RAR-{size.upper()} ({params}): ImageNet 256px class-conditional, MaskGIT-VQGAN tokens",
        params=params, files=("maskgit-vqgan-imagenet-f16-256.bin", f"rar_{size}.bin"), tags=("official",),
    )


def _tiny() -> Preset:
    tok = VQGANConfig(channel_mult=(1, 1, 2), num_resolutions=3, hidden_channels=32, num_res_blocks=1,
                      resolution=32, z_channels=16, num_embeddings=512, embedding_dim=16).official_kwargs()
    mdl = _rar_kwargs(128, 4, 512)
    mdl["config"]["model"]["generator"].update(num_attention_heads=4, image_seq_len=64, condition_num_classes=10,
                                               dropout=0.0, attn_drop=0.0)
    mdl["config"]["model"]["vq_model"]["codebook_size"] = 512
    return Preset(
        name="tiny-rar", family="rar", tokenizer_kwargs=tok, model_kwargs=mdl,
        description="RAR for 32x32 MNIST-sized data: 8x8 raster tokens, vocab 512, 4 layers, width 128",
        tags=("tiny", "trainable"),
    )


PRESETS: tuple[Preset, ...] = (
    _tiny(),
    _preset("b", 768, 24, 3072, "261M"),
    _preset("l", 1024, 24, 4096, "462M"),
    _preset("xl", 1280, 32, 5120, "955M"),
    _preset("xxl", 1408, 40, 6144, "1499M"),
)
