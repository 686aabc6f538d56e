"""LlamaGen (class-conditional, raster order) behind the family-independent :class:`IAR` interface.

The GPT sees ``[cls(label), t0 .. t_{L-2}]`` (L positions) and position ``i`` predicts ``t_i``, so
teacher-forced logits and taps need no shifting. Guidance follows the official sampler: a
``[cond; uncond]`` batch (uncond label = ``num_classes``) and
``uncond + (cond - uncond) * cfg`` at every step, the prefill step included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iarmem.errors import UserError
from iarmem.models.base import IAR, UNIT_KINDS, Tokens, UnitLayer
from iarmem.models.llamagen.tokenizer import VQArgs, VQModel
from iarmem.models.llamagen.transformer import GPTArgs, Transformer
from iarmem.models.registry import Preset
from iarmem.models.sampling import Rng, add_logit_noise, pick_tokens


def _unwrap(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Accept ``{...}``, ``{"ModelArgs": {...}}`` or ``{"config": {"ModelArgs": {...}}}`` (fixture layout)."""
    out: Any = kwargs
    while isinstance(out, Mapping) and len(out) == 1 and next(iter(out)) in ("config", "ModelArgs"):
        out = next(iter(out.values()))
    return dict(out)


def _make_args(cls: type, kwargs: Mapping[str, Any], what: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise UserError(f"unknown LlamaGen {what} argument(s) {unknown}; accepted: {sorted(names)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"invalid LlamaGen {what} arguments: {e}") from e


def _find(constructors: Mapping[str, Any], class_name: str) -> Mapping[str, Any] | None:
    for key, value in constructors.items():
        if key.split(".")[-1] == class_name:
            return value
    return None


class LlamaGenFamily(IAR):
    """VQ tokenizer (``tokenizer``, official ``VQModel`` keys) + c2i GPT (``model``, ``Transformer`` keys)."""

    family = "llamagen"
    pixel_range = (-1.0, 1.0)

    def __init__(self, tokenizer: VQModel, model: Transformer) -> None:
        super().__init__()
        if tokenizer.args.codebook_size != model.args.vocab_size:
            raise UserError(f"LlamaGen tokenizer codebook_size {tokenizer.args.codebook_size} differs from "
                            f"the GPT vocab_size {model.args.vocab_size}")
        self.tokenizer = tokenizer
        self.model = model
        self.num_classes = model.args.num_classes
        self.vocab_size = model.args.vocab_size
        self.image_size = model.args.grid_size * tokenizer.args.downsample

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_official(cls, tokenizer_kwargs: dict[str, Any], model_kwargs: dict[str, Any]) -> LlamaGenFamily:
        """``tokenizer_kwargs``: the VQ ``ModelArgs`` fields plus optional ``ch``/``num_res_blocks``
        (official VQModel: 128 and 2) and ``decoder_ch``/``decoder_num_res_blocks``;
        ``model_kwargs``: the GPT ``ModelArgs`` fields. Either may be nested as
        ``{"config": {"ModelArgs": {...}}}`` as in the reference JSON."""
        vq = _make_args(VQArgs, _unwrap(tokenizer_kwargs), "tokenizer")
        gpt = _make_args(GPTArgs, _unwrap(model_kwargs), "GPT")
        return cls(VQModel(vq), Transformer(gpt))

    @staticmethod
    def kwargs_from_constructors(constructors: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(tokenizer, model) kwargs from a reference JSON's ``constructors`` section, which records the
        ``VQModel`` config, the ``Encoder``/``Decoder`` arguments and the GPT ``Transformer`` config."""
        vq_entry, gpt_entry = _find(constructors, "VQModel"), _find(constructors, "Transformer")
        if vq_entry is None or gpt_entry is None:
            raise UserError(f"constructors hold no VQModel/Transformer entry: {sorted(constructors)}")
        tok = _unwrap(vq_entry)
        enc, dec = _find(constructors, "Encoder"), _find(constructors, "Decoder")
        for part, entry, io in (("Encoder", enc, "in_channels"), ("Decoder", dec, "out_channels")):
            if entry is None:
                continue
            rgb = entry.get(io, 3) == 3
            if not (rgb and entry.get("norm_type", "group") == "group"
                    and entry.get("resamp_with_conv", True)):
                raise UserError(f"unsupported LlamaGen {part} arguments {dict(entry)} (RGB, group norm and "
                                f"conv resampling only)")
        if enc is not None:
            tok["ch"], tok["num_res_blocks"] = enc["ch"], enc["num_res_blocks"]
        if dec is not None:
            if dec["ch"] != tok.get("ch", 128):
                tok["decoder_ch"] = dec["ch"]
            if dec["num_res_blocks"] != tok.get("num_res_blocks", 2):
                tok["decoder_num_res_blocks"] = dec["num_res_blocks"]
        return tok, _unwrap(gpt_entry)

    def official_kwargs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        tok = dataclasses.asdict(self.tokenizer.args)
        for key in ("decoder_ch", "decoder_num_res_blocks"):
            if tok[key] is None:
                del tok[key]
        return tok, dataclasses.asdict(self.model.args)

    @staticmethod
    def clean_state_dict(part: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Drop entries the official GPT writes that are not weights: ``freqs_cis`` (older
        checkpoints) and ``layers.*.attention.kv_cache.*`` (a model saved after ``generate()``)."""
        if part != "model":
            return dict(state_dict)
        return {k: v for k, v in state_dict.items() if k != "freqs_cis" and ".kv_cache." not in k}

    @classmethod
    def describe_state_dict(cls, part: str, state_dict: dict[str, Tensor]) -> dict[str, Any]:
        """Sizes read off tensor shapes. ``num_classes`` assumes the null-class row that every
        official c2i checkpoint has (class_dropout_prob > 0)."""
        sd = state_dict
        if part == "model":
            tok = sd["tok_embeddings.weight"]
            layers = {int(k.split(".")[1]) for k in sd if k.startswith("layers.")}
            return {
                "dim": int(tok.shape[1]),
                "n_layer": len(layers),
                "vocab_size": int(tok.shape[0]),
                "num_classes": int(sd["cls_embedding.embedding_table.weight"].shape[0]) - 1,
                "ffn_hidden_dim": int(sd["layers.0.feed_forward.w1.weight"].shape[0]),
                "qkv_dim": int(sd["layers.0.attention.wqkv.weight"].shape[0]),
            }
        if part == "tokenizer":
            emb = sd["quantize.embedding.weight"]
            ch = int(sd["encoder.conv_in.weight"].shape[0])
            n_levels = len({int(k.split(".")[2]) for k in sd if k.startswith("encoder.conv_blocks.")})
            n_res = len({k.split(".")[4] for k in sd if k.startswith("encoder.conv_blocks.0.res.")})
            return {
                "codebook_size": int(emb.shape[0]),
                "codebook_embed_dim": int(emb.shape[1]),
                "z_channels": int(sd["quant_conv.weight"].shape[1]),
                "ch": ch,
                "encoder_ch_mult": [int(sd[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0]) // ch
                                    for i in range(n_levels)],
                "num_res_blocks": n_res,
            }
        raise ValueError(f"part must be 'tokenizer' or 'model', got {part!r}")

    # ---- layout -------------------------------------------------------------------------
    @property
    def grids(self) -> tuple[tuple[int, int], ...]:
        g = self.model.args.grid_size
        return ((g, g),)

    @property
    def tap_slice(self) -> slice:
        return slice(0, self.seq_len)

    @property
    def default_num_bins(self) -> int:
        return min(16, self.seq_len)

    def bins(self, num_bins: int | None = None) -> Tensor:
        """Equal runs of raster positions: ``bins[i] = i * n // L``."""
        L = self.seq_len
        n = self.default_num_bins if num_bins is None else num_bins
        if not 1 <= n <= L:
            raise ValueError(f"num_bins must lie in [1, {L}], got {n}")
        return torch.arange(L, dtype=torch.int64) * n // L

    # ---- the pipeline -------------------------------------------------------------------
    def tokenize(self, images: Tensor, labels: Tensor | None = None) -> Tokens:
        """Images in [-1, 1], [B, 3, S, S] with S = ``image_size`` -> raster token ids."""
        S = self.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, S, S):
            raise ValueError(f"expected images of shape [B, 3, {S}, {S}], got {tuple(images.shape)}")
        w = self.tokenizer.quant_conv.weight
        ids_Bhw = self.tokenizer.encode_ids(images.to(device=w.device, dtype=w.dtype))
        return Tokens(ids_Bhw.flatten(1), self.grids)

    def decode(self, tokens: Tokens) -> Tensor:
        """Raster ids -> images in nominal [-1, 1], NOT clamped (official ``decode_code``)."""
        (h, w), = self.grids
        ids = tokens.ids_BL.to(self.tokenizer.quant_conv.weight.device)
        return self.tokenizer.decode_code(ids.view(-1, h, w))

    def logits(self, tokens: Tokens, labels: Tensor, *, unconditional: bool = False) -> Tensor:
        self.check_labels(labels)
        if unconditional:
            labels = torch.full_like(labels, self.num_classes)
        ids_BL = tokens.ids_BL.to(self.device)
        return self.model(ids_BL[:, :-1], labels.to(self.device), train=False)

    def _guide(self, logits_BTV: Tensor, cfg: float | None) -> Tensor:
        if cfg is None:
            return logits_BTV
        cond, uncond = logits_BTV.chunk(2, dim=0)
        return uncond + (cond - uncond) * cfg

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
    ) -> Tokens | tuple[Tokens, Tensor]:
        """Raster decoding; the first ``prefix_len`` tokens are copied from ``prefix``.

        Without ``use_cache`` every step recomputes the whole sequence (a check on the KV cache).
        """
        self.check_labels(labels)
        L, B, device = self.seq_len, labels.shape[0], self.device
        if not 0 <= prefix_len <= L:
            raise ValueError(f"prefix_len must lie in [0, {L}], got {prefix_len}")
        ids_BL = torch.zeros(B, L, dtype=torch.long, device=device)
        if prefix_len:
            if prefix is None:
                raise ValueError("prefix_len > 0 needs prefix tokens")
            if prefix.batch_size != B:
                raise ValueError(f"prefix holds {prefix.batch_size} images but there are {B} labels")
            ids_BL[:, :prefix_len] = prefix.ids_BL[:, :prefix_len].to(device)
        labels = labels.to(device)
        cond_B = labels if cfg is None else torch.cat([labels, torch.full_like(labels, self.num_classes)])

        def feed(ids: Tensor) -> Tensor:  # the unconditional half sees the same tokens
            return ids if cfg is None else torch.cat([ids, ids])

        caches = self.model.new_caches(cond_B.shape[0]) if use_cache else None
        out_BLV = torch.empty(B, L, self.vocab_size, device=device) if return_logits else None
        first = min(prefix_len, L - 1)  # tokens fed with the class token in the first pass
        logits = self._guide(
            self.model(feed(ids_BL[:, :first]) if first else None, cond_B, caches=caches, train=False), cfg)
        if out_BLV is not None:
            out_BLV[:, :first] = logits[:, :first]
        last_B1V = logits[:, -1:]
        for i in range(first, L):  # last_B1V predicts token i
            if i >= prefix_len:
                last_B1V = add_logit_noise(last_B1V, logit_noise, generator)
                ids_BL[:, i:i + 1] = pick_tokens(last_B1V, greedy=greedy, temperature=temperature,
                                                 top_k=top_k, top_p=top_p, generator=generator)
            if out_BLV is not None:
                out_BLV[:, i:i + 1] = last_B1V
            if i == L - 1:
                break
            if caches is not None:
                step = self.model(feed(ids_BL[:, i:i + 1]), None, caches=caches, train=False)
            else:
                step = self.model(feed(ids_BL[:, :i + 1]), cond_B, train=False)[:, -1:]
            last_B1V = self._guide(step, cfg)
        tokens = Tokens(ids_BL, self.grids)
        return (tokens, out_BLV) if out_BLV is not None else tokens

    def training_loss(self, tokens: Tensor | Tokens, labels: Tensor,
                      generator: torch.Generator | None = None) -> Tensor:
        """The official c2i objective: labels dropped to the null class with ``class_dropout_prob``,
        next-token cross-entropy averaged over the L targets. Label dropout always applies (it is
        part of the objective); token/residual/FFN dropout and drop-path follow ``self.training``."""
        ids_BL = (tokens.ids_BL if isinstance(tokens, Tokens) else tokens).to(self.device)
        self.check_labels(labels)
        labels = self.model.cls_embedding.drop(labels.to(self.device), generator)
        logits_BLV = self.model(ids_BL[:, :-1], labels, generator=generator)
        return F.cross_entropy(logits_BLV.reshape(-1, logits_BLV.shape[-1]), ids_BL.reshape(-1))

    def tokenizer_loss(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Pixel L1 + L2 plus the quantizer's codebook and commitment terms (in train mode); the
        official perceptual, GAN and entropy terms are left out."""
        recon, losses = self.tokenizer(images)
        loss = F.l1_loss(recon, images) + F.mse_loss(recon, images)
        for term in losses.values():
            loss = loss + term
        return loss, recon

    # ---- localization / mitigation hooks -----------------------------------------------
    def class_rows(self, labels: Tensor) -> tuple[nn.Parameter, Tensor]:
        return self.model.cls_embedding.embedding_table.weight, labels.to(torch.int64)

    def unit_layers(self, kinds: tuple[str, ...] = ("fc1",)) -> list[UnitLayer]:
        """Per block, in block order, the requested kinds.

        ``fc1`` is the SwiGLU hidden unit ``silu(w1 x)_u * (w3 x)_u``, read as the input of ``w2``
        and named after ``w3`` (a state-dict prefix, like VAR's ``ffn.fc1``). The exact edit scales
        column u of ``w2``, the layer that reads the unit. The paper's edit (fc1 row, bias kept)
        maps to row u of ``w3``: LlamaGen has no biases and the unit is linear in ``w3 x``, so here
        it scales the unit by exactly the factor too (scaling ``w1`` would act through the SiLU).
        ``fc2`` is the output of ``w2`` and ``attn.proj`` the output of ``attention.wo`` (width dim;
        both edits scale their output rows, there being no bias).
        """
        unknown = set(kinds) - set(UNIT_KINDS)
        if unknown:
            raise ValueError(f"unknown unit kinds {sorted(unknown)}; choose from {UNIT_KINDS}")
        a = self.model.args
        out = []
        for i in range(a.n_layer):
            ff, attn = f"layers.{i}.feed_forward", f"layers.{i}.attention"
            for kind in kinds:
                if kind == "fc1":
                    out.append(UnitLayer(f"{ff}.w3", "fc1", i, a.ffn_hidden_dim, f"{ff}.w2", True,
                                         exact_params=((f"{ff}.w2.weight", 1),),
                                         paper_params=((f"{ff}.w3.weight", 0),),
                                         own_params=((f"{ff}.w1.weight", 0), (f"{ff}.w3.weight", 0),
                                                     (f"{ff}.w2.weight", 1))))
                else:
                    mod = f"{ff}.w2" if kind == "fc2" else f"{attn}.wo"
                    out.append(UnitLayer(mod, kind, i, a.dim, mod, False,
                                         exact_params=((f"{mod}.weight", 0),), paper_params=((f"{mod}.weight", 0),),
                                         own_params=((f"{mod}.weight", 0),)))
        return out


# ---- presets -------------------------------------------------------------------------------
VQ16_KWARGS: dict[str, Any] = {
    "codebook_size": 16384, "codebook_embed_dim": 8, "codebook_l2_norm": True, "codebook_show_usage": True,
    "commit_loss_beta": 0.25, "entropy_loss_ratio": 0.0, "encoder_ch_mult": [1, 1, 2, 2, 4],
    "decoder_ch_mult": [1, 1, 2, 2, 4], "z_channels": 256, "dropout_p": 0.0,
}
_SIZES = (  # name, n_layer, n_head, dim, params, official file stem
    ("b", 12, 12, 768, "111M", "B"),
    ("l", 24, 16, 1024, "343M", "L"),
    ("xl", 36, 20, 1280, "775M", "XL"),
    ("xxl", 48, 24, 1536, "1.4B", "XXL"),
)
_RELEASED = {256: {"B", "L"}, 384: {"B", "L", "XL", "XXL"}}  # official c2i weights per image size


def _preset(size: str, n_layer: int, n_head: int, dim: int, params: str, stem: str, px: int) -> Preset:
    grid = px // 16
    released = stem in _RELEASED[px]
    note = "" if released else f"; no official {px} px weights (use llamagen-{size}-384)"
    return Preset(
        name=f"llamagen-{size}" + ("" if px == 256 else f"-{px}"),
        family="llamagen",
        tokenizer_kwargs=dict(VQ16_KWARGS),
        model_kwargs={"dim": dim, "n_layer": n_layer, "n_head": n_head, "vocab_size": 16384,
                      "block_size": grid * grid, "num_classes": 1000, "cls_token_num": 1,
                      "model_type": "c2i"},
        description=f"LlamaGen GPT-{stem} class-conditional ImageNet {px} px ({grid}x{grid} tokens, "
                    f"VQ-16 tokenizer){note}",
        params=params,
        files=("vq_ds16_c2i.pt", f"c2i_{stem}_{px}.pt" if released else ""),
        tags=("c2i", f"{px}px"),
    )


TINY = Preset(
    name="tiny-llamagen", family="llamagen",
    tokenizer_kwargs={**VQ16_KWARGS, "codebook_size": 512, "encoder_ch_mult": [1, 2, 2], "decoder_ch_mult": [1, 2, 2],
                      "z_channels": 32, "ch": 32, "num_res_blocks": 1},
    model_kwargs={"dim": 128, "n_layer": 4, "n_head": 4, "multiple_of": 64, "vocab_size": 512, "block_size": 64,
                  "num_classes": 10, "cls_token_num": 1, "model_type": "c2i", "token_dropout_p": 0.0,
                  "resid_dropout_p": 0.0, "ffn_dropout_p": 0.0},
    description="LlamaGen for 32x32 MNIST-sized data: 8x8 raster tokens, vocab 512, 4 layers, width 128",
    tags=("tiny", "trainable"),
)

PRESETS: tuple[Preset, ...] = (TINY,) + tuple(_preset(*s, px=px) for px in (256, 384) for s in _SIZES)
