"""VAR behind the IAR interface: tokens are 10 scales, bins are scales, units are blocks.N.ffn.fc1."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iarmem.models.base import IAR, Tokens, UnitLayer
from iarmem.models.registry import Preset
from iarmem.models.sampling import Rng, add_logit_noise, pick_tokens
from iarmem.models.var.transformer import VAR, KVCache, VARConfig
from iarmem.models.var.vqvae import VQVAE, VQVAEConfig

OFFICIAL_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def build_vae_var_kwargs(
    depth: int = 16,
    patch_nums: tuple[int, ...] = OFFICIAL_PATCH_NUMS,
    V: int = 4096,
    Cvae: int = 32,
    ch: int = 160,
    share_quant_resi: int = 4,
    num_classes: int = 1000,
    shared_aln: bool = False,
    attn_l2_norm: bool = True,
    flash_if_available: bool = True,
    fused_if_available: bool = True,
    **_init_kwargs: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (VQVAE, VAR) constructor kwargs that the official factory ``build_vae_var`` passes.

    The factory's init_* arguments only affect the random init, not the architecture.
    """
    tok = VQVAEConfig(vocab_size=V, z_channels=Cvae, ch=ch, test_mode=True, share_quant_resi=share_quant_resi,
                      v_patch_nums=tuple(patch_nums)).to_kwargs()
    mdl = VARConfig(num_classes=num_classes, depth=depth, embed_dim=64 * depth, num_heads=depth, mlp_ratio=4.0,
                    drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1 * depth / 24, norm_eps=1e-6,
                    shared_aln=shared_aln, cond_drop_rate=0.1, attn_l2_norm=attn_l2_norm,
                    patch_nums=tuple(patch_nums), flash_if_available=flash_if_available,
                    fused_if_available=fused_if_available).to_kwargs()
    return tok, mdl


class VARFamily(IAR):
    family = "var"
    pixel_range = (-1.0, 1.0)

    def __init__(self, vae_cfg: VQVAEConfig, var_cfg: VARConfig):
        super().__init__()
        if tuple(vae_cfg.v_patch_nums) != tuple(var_cfg.patch_nums):
            raise ValueError(f"tokenizer scales {vae_cfg.v_patch_nums} differ from model scales {var_cfg.patch_nums}")
        self.tokenizer = VQVAE(vae_cfg)
        self.model = VAR(var_cfg)
        self.image_size = vae_cfg.v_patch_nums[-1] * vae_cfg.downsample
        self.num_classes = var_cfg.num_classes
        self.vocab_size = vae_cfg.vocab_size

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_official(cls, tokenizer_kwargs: dict[str, Any], model_kwargs: dict[str, Any]) -> VARFamily:
        vae_cfg = VQVAEConfig.from_kwargs(tokenizer_kwargs)
        var_cfg = VARConfig.from_kwargs(model_kwargs, vocab_size=vae_cfg.vocab_size, Cvae=vae_cfg.z_channels)
        return cls(vae_cfg, var_cfg)

    def official_kwargs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.tokenizer.cfg.to_kwargs(), self.model.cfg.to_kwargs()

    @classmethod
    def describe_state_dict(cls, part: str, state_dict: dict[str, Tensor]) -> dict[str, Any]:
        if part == "tokenizer":
            emb = state_dict["quantize.embedding.weight"]
            return {"ch": int(state_dict["encoder.conv_in.weight"].shape[0]), "vocab_size": int(emb.shape[0]),
                    "z_channels": int(emb.shape[1]),
                    "num_scales": int(state_dict["quantize.ema_vocab_hit_SV"].shape[0])}
        depth = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
        return {"depth": depth, "embed_dim": int(state_dict["pos_start"].shape[-1]),
                "num_classes": int(state_dict["class_emb.weight"].shape[0]) - 1,
                "vocab_size": int(state_dict["head.weight"].shape[0]),
                "tokens": int(state_dict["pos_1LC"].shape[1])}

    # ---- layout ---------------------------------------------------------------------------
    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.model.patch_nums

    @property
    def grids(self) -> tuple[tuple[int, int], ...]:
        return tuple((pn, pn) for pn in self.patch_nums)

    @property
    def tap_slice(self) -> slice:
        return slice(0, self.seq_len)

    @property
    def default_num_bins(self) -> int:
        return len(self.patch_nums)

    def bins(self, num_bins: int | None = None) -> Tensor:
        """VAR's bins are its scales (``num_bins`` must be None or the number of scales)."""
        if num_bins not in (None, len(self.patch_nums)):
            raise ValueError(f"VAR bins are its {len(self.patch_nums)} scales; got num_bins={num_bins}")
        return self.model.lvl_1L[0].detach().to("cpu", torch.int64).clone()

    # ---- pipeline -------------------------------------------------------------------------
    def _as_tokens(self, tokens: Tokens | Tensor) -> Tokens:
        return tokens if isinstance(tokens, Tokens) else Tokens(tokens, self.grids)

    @torch.no_grad()
    def tokenize(self, images: Tensor, labels: Tensor | None = None) -> Tokens:
        return Tokens.from_scales(self.tokenizer.img_to_idxBl(images), self.grids)

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> Tensor:
        return self.tokenizer.idxBl_to_img(self._as_tokens(tokens).per_scale())

    def _teacher_forced(self, tokens: Tokens, labels: Tensor) -> Tensor:
        x_BLCv = self.tokenizer.quantize.idxBl_to_var_input(tokens.per_scale())
        return self.model(labels, x_BLCv)

    def logits(self, tokens: Tokens, labels: Tensor, *, unconditional: bool = False) -> Tensor:
        self.check_labels(labels)
        if unconditional:
            labels = torch.full_like(labels, self.num_classes)
        return self._teacher_forced(self._as_tokens(tokens), labels)

    def training_loss(self, tokens: Tokens | Tensor, labels: Tensor,
                      generator: torch.Generator | None = None) -> Tensor:
        tokens = self._as_tokens(tokens)
        drop = torch.rand(labels.shape[0], generator=generator, device=labels.device) < self.model.cfg.cond_drop_rate
        labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        with torch.no_grad():
            x_BLCv = self.tokenizer.quantize.idxBl_to_var_input(tokens.per_scale())
        logits_BLV = self.model(labels, x_BLCv)
        return F.cross_entropy(logits_BLV.reshape(-1, logits_BLV.shape[-1]), tokens.ids_BL.reshape(-1))

    def tokenizer_loss(self, images: Tensor) -> tuple[Tensor, Tensor]:
        rec, vq_loss = self.tokenizer(images)
        return F.l1_loss(rec, images) + F.mse_loss(rec, images) + vq_loss, rec

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
        """Next-scale generation; ``prefix_len`` whole scales are taken from ``prefix``.

        With ``cfg`` the official ramp applies: at scale si of K, t = cfg * si / (K-1) and
        logits = (1 + t) * cond - t * uncond (so the first scale is unguided).
        """
        m, q = self.model, self.tokenizer.quantize
        K, B = len(self.patch_nums), labels.shape[0]
        if not 0 <= prefix_len <= K:
            raise ValueError(f"VAR prefix_len counts scales: 0..{K}, got {prefix_len}")
        if prefix_len and (prefix is None or prefix.batch_size != B):
            raise ValueError("a prefix with one row per label is needed when prefix_len > 0")
        guided = cfg is not None
        lab = torch.cat((labels, torch.full_like(labels, self.num_classes))) if guided else labels
        cond_BD = m.class_emb(lab)
        lvl_pos = m.lvl_pos()
        H = self.patch_nums[-1]
        f_hat = cond_BD.new_zeros(B, m.Cvae, H, H)
        caches = [KVCache() for _ in m.blocks] if use_cache else None
        x_next = m.sos(cond_BD) + lvl_pos[:, : m.first_l]
        inputs, chosen, logits_out = [x_next], [], []
        for si, pn in enumerate(self.patch_nums):
            b, e = m.begin_ends[si]
            if use_cache:
                h_BlC = m.run_blocks(x_next, cond_BD, None, caches)
            else:
                h_BlC = m.run_blocks(torch.cat(inputs, 1), cond_BD, m.attn_bias_for_masking[:, :, :e, :e])[:, b:e]
            logits_BlV = m.get_logits(h_BlC, cond_BD)
            if guided:
                t = cfg * si / (K - 1)
                logits_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]
            if si < prefix_len:
                idx_Bl = prefix.scale(si).to(logits_BlV.device)
            else:
                logits_BlV = add_logit_noise(logits_BlV, logit_noise, generator)
                idx_Bl = pick_tokens(logits_BlV, greedy=greedy, temperature=temperature, top_k=top_k,
                                     top_p=top_p, generator=generator)
            chosen.append(idx_Bl)
            logits_out.append(logits_BlV)
            h_BChw = q.embedding(idx_Bl).transpose(1, 2).reshape(B, m.Cvae, pn, pn)
            f_hat, next_BChw = q.next_input(si, f_hat, h_BChw)
            if si != K - 1:
                pn_next = self.patch_nums[si + 1]
                x_next = m.word_embed(next_BChw.reshape(B, m.Cvae, -1).transpose(1, 2))
                x_next = x_next + lvl_pos[:, e: e + pn_next * pn_next]
                if guided:
                    x_next = x_next.repeat(2, 1, 1)
                inputs.append(x_next)
        tokens = Tokens.from_scales(chosen, self.grids)
        return (tokens, torch.cat(logits_out, 1)) if return_logits else tokens

    # ---- units ----------------------------------------------------------------------------
    def class_rows(self, labels: Tensor) -> tuple[nn.Parameter, Tensor]:
        return self.model.class_emb.weight, labels.to(torch.int64)

    def unit_layers(self, kinds: tuple[str, ...] = ("fc1",)) -> list[UnitLayer]:
        out = []
        C = self.model.C
        for i, blk in enumerate(self.model.blocks):
            p = f"blocks.{i}"
            for kind in kinds:
                if kind == "fc1":
                    out.append(UnitLayer(f"{p}.ffn.fc1", "fc1", i, blk.ffn.fc1.out_features, f"{p}.ffn.act", False,
                                         exact_params=((f"{p}.ffn.fc2.weight", 1),),
                                         paper_params=((f"{p}.ffn.fc1.weight", 0),),
                                         own_params=((f"{p}.ffn.fc1.weight", 0), (f"{p}.ffn.fc1.bias", 0),
                                                     (f"{p}.ffn.fc2.weight", 1))))
                elif kind in ("fc2", "attn.proj"):
                    mod = f"{p}.ffn.fc2" if kind == "fc2" else f"{p}.attn.proj"
                    out.append(UnitLayer(mod, kind, i, C, mod, False,
                                         exact_params=((f"{mod}.weight", 0), (f"{mod}.bias", 0)),
                                         paper_params=((f"{mod}.weight", 0),),
                                         own_params=((f"{mod}.weight", 0), (f"{mod}.bias", 0))))
                else:
                    raise ValueError(f"unknown unit kind {kind!r}; choose from fc1, fc2, attn.proj")
        return out


def _preset(depth: int, params: str) -> Preset:
    tok, mdl = build_vae_var_kwargs(depth=depth)
    return Preset(
        name=f"var-d{depth}", family="var", tokenizer_kwargs=tok, model_kwargs=mdl,
        description=f"VAR-d{depth}, ImageNet 256x256 class-conditional, 10 scales (680 tokens), vocab 4096",
        params=params, files=("vae_ch160v4096z32.pth", f"var_d{depth}.pth"), tags=("official",),
    )


def _tiny() -> Preset:
    tok, mdl = build_vae_var_kwargs(depth=4, patch_nums=(1, 2, 3, 4, 6, 8), V=512, Cvae=16, ch=32, num_classes=10)
    tok.update(ch_mult=[1, 2, 2], num_res_blocks=1, using_sa=False, using_mid_sa=False)
    mdl.update(embed_dim=128, num_heads=4, drop_path_rate=0.0)
    return Preset(
        name="tiny-var", family="var", tokenizer_kwargs=tok, model_kwargs=mdl,
        description="VAR for 32x32 MNIST-sized data: 6 scales up to 8x8 (130 tokens), vocab 512, depth 4, width 128",
        tags=("tiny", "trainable"),
    )


PRESETS: tuple[Preset, ...] = (
    _preset(16, "310M"), _preset(20, "600M"), _preset(24, "1.0B"), _preset(30, "2.0B"), _tiny(),
)
