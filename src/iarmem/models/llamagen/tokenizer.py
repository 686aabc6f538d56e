"""LlamaGen's VQ tokenizer (``tokenizer/tokenizer_image/vq_model.py``), state-dict compatible.

A taming-style conv encoder/decoder with an L2-normalised codebook: both the codebook and the
encoder output are projected onto the unit sphere before the nearest-code search and before
decoding. Unlike the official ``VQModel`` (which hard-codes ch=128 and two residual blocks per
level), ``ch`` and ``num_res_blocks`` are configurable so tiny tokenizers come from the same code.
Key names follow the official ones: ``conv_blocks.{i}.res/attn/downsample|upsample``, ``mid``,
``norm_out``, ``conv_out``; in the decoder ``conv_blocks.0`` is the LOWEST resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CODEBOOK_USAGE_WINDOW = 65536  # length of the official `codebook_used` buffer, whatever the codebook size


@dataclass
class VQArgs:
    """The official VQ ``ModelArgs`` plus the Encoder/Decoder knobs the official VQModel hard-codes.

    ``ch``/``num_res_blocks`` configure the encoder and, unless ``decoder_ch`` /
    ``decoder_num_res_blocks`` are given, the decoder too (the decoder has one more residual block
    per level than ``num_res_blocks``, as in the official code).
    """

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    encoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    decoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    z_channels: int = 256
    dropout_p: float = 0.0
    ch: int = 128
    num_res_blocks: int = 2
    decoder_ch: int | None = None
    decoder_num_res_blocks: int | None = None

    def __post_init__(self) -> None:
        self.encoder_ch_mult = list(self.encoder_ch_mult)
        self.decoder_ch_mult = list(self.decoder_ch_mult)
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult):
            raise ValueError("encoder_ch_mult and decoder_ch_mult must have the same length")
        for name, c in (("ch", self.ch), ("decoder_ch", self.decoder_ch)):
            if c is not None and c % 32:
                raise ValueError(f"{name}={c}: GroupNorm with 32 groups needs a multiple of 32")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = group_norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels, with separate q/k/v 1x1 convs."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = group_norm(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q_BNC = self.q(h).reshape(B, C, H * W).permute(0, 2, 1)
        k_BCN = self.k(h).reshape(B, C, H * W)
        v_BCN = self.v(h).reshape(B, C, H * W)
        attn_BNN = torch.softmax(torch.bmm(q_BNC, k_BCN) * (int(C) ** -0.5), dim=2)
        out = torch.bmm(v_BCN, attn_BNN.permute(0, 2, 1)).reshape(B, C, H, W)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as the official code


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: residual blocks, optional attention after each, optional resampling."""

    def __init__(self, c_in: int, c_out: int, n_res: int, attn: bool, dropout: float) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out, dropout) for i in range(n_res))
        self.attn = nn.ModuleList(AttnBlock(c_out) for _ in range(n_res if attn else 0))

    def forward(self, h: Tensor) -> Tensor:
        for i, res in enumerate(self.res):
            h = res(h)
            if len(self.attn):
                h = self.attn[i](h)
        for name in ("downsample", "upsample"):
            if hasattr(self, name):
                h = getattr(self, name)(h)
        return h


def middle(c: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(c, c, dropout), AttnBlock(c), ResnetBlock(c, c, dropout)])


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: list[int], num_res_blocks: int, z_channels: int,
                 dropout: float = 0.0, in_channels: int = 3) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        widths_in = [ch] + [ch * m for m in ch_mult[:-1]]
        last = len(ch_mult) - 1
        self.conv_blocks = nn.ModuleList()
        for i, (c_in, m) in enumerate(zip(widths_in, ch_mult, strict=True)):
            level = Level(c_in, ch * m, num_res_blocks, attn=i == last, dropout=dropout)
            if i != last:
                level.downsample = Downsample(ch * m)
            self.conv_blocks.append(level)
        c = ch * ch_mult[-1]
        self.mid = middle(c, dropout)
        self.norm_out = group_norm(c)
        self.conv_out = nn.Conv2d(c, z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult: list[int], num_res_blocks: int, z_channels: int,
                 dropout: float = 0.0, out_channels: int = 3) -> None:
        super().__init__()
        c = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c, 3, padding=1)
        self.mid = middle(c, dropout)
        self.conv_blocks = nn.ModuleList()
        for depth, m in enumerate(reversed(ch_mult)):  # lowest resolution first
            level = Level(c, ch * m, num_res_blocks + 1, attn=depth == 0, dropout=dropout)
            c = ch * m
            if depth != len(ch_mult) - 1:
                level.upsample = Upsample(c)
            self.conv_blocks.append(level)
        self.norm_out = group_norm(c)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-code lookup on the unit sphere (when ``l2_norm``), straight-through in training."""

    def __init__(self, n_e: int, e_dim: int, beta: float, entropy_loss_ratio: float,
                 l2_norm: bool, show_usage: bool) -> None:
        super().__init__()
        self.n_e, self.e_dim = n_e, e_dim
        self.beta, self.entropy_loss_ratio = beta, entropy_loss_ratio
        self.l2_norm, self.show_usage = l2_norm, show_usage
        self.embedding = nn.Embedding(n_e, e_dim)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / n_e, 1.0 / n_e)
            if l2_norm:
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, p=2, dim=-1))
        if show_usage:  # a rolling window of recent code ids, kept in checkpoints
            self.register_buffer("codebook_used", torch.zeros(CODEBOOK_USAGE_WINDOW))

    def codebook(self) -> Tensor:
        w = self.embedding.weight
        return F.normalize(w, p=2, dim=-1) if self.l2_norm else w

    def codes(self, z_BChw: Tensor) -> Tensor:
        """[B, C, h, w] latents -> [B, h, w] nearest-code ids (the official distance formula)."""
        B, C, h, w = z_BChw.shape
        z_Nd = z_BChw.permute(0, 2, 3, 1).reshape(-1, C)
        if self.l2_norm:
            z_Nd = F.normalize(z_Nd, p=2, dim=-1)
        e_Vd = self.codebook()
        dist_NV = (z_Nd ** 2).sum(dim=1, keepdim=True) + (e_Vd ** 2).sum(dim=1) - 2 * (z_Nd @ e_Vd.t())
        return dist_NV.argmin(dim=1).view(B, h, w)

    def lookup(self, ids_Bhw: Tensor) -> Tensor:
        """[B, h, w] ids -> [B, C, h, w] (normalised) code vectors."""
        return self.codebook()[ids_Bhw].permute(0, 3, 1, 2).contiguous()

    def forward(self, z_BChw: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Quantise with a straight-through gradient; returns (z_q, ids [B, h, w], training losses)."""
        ids_Bhw = self.codes(z_BChw)
        z = F.normalize(z_BChw, p=2, dim=1) if self.l2_norm else z_BChw
        z_q = self.lookup(ids_Bhw)
        losses: dict[str, Tensor] = {}
        if self.training:
            if self.entropy_loss_ratio > 0:
                raise NotImplementedError("codebook entropy loss (entropy_loss_ratio > 0) is not implemented")
            losses["vq_loss"] = torch.mean((z_q - z.detach()) ** 2)
            losses["commit_loss"] = self.beta * torch.mean((z_q.detach() - z) ** 2)
            if self.show_usage:
                flat = ids_Bhw.flatten().to(self.codebook_used.dtype)[-CODEBOOK_USAGE_WINDOW:]
                n = flat.numel()
                self.codebook_used.copy_(torch.cat([self.codebook_used[n:], flat]))
        return z + (z_q - z).detach(), ids_Bhw, losses


class VQModel(nn.Module):
    def __init__(self, args: VQArgs) -> None:
        super().__init__()
        self.args = args
        self.encoder = Encoder(args.ch, args.encoder_ch_mult, args.num_res_blocks, args.z_channels,
                               args.dropout_p)
        dec_ch = args.ch if args.decoder_ch is None else args.decoder_ch
        dec_nres = args.num_res_blocks if args.decoder_num_res_blocks is None else args.decoder_num_res_blocks
        self.decoder = Decoder(dec_ch, args.decoder_ch_mult, dec_nres, args.z_channels, args.dropout_p)
        self.quantize = VectorQuantizer(args.codebook_size, args.codebook_embed_dim, args.commit_loss_beta,
                                        args.entropy_loss_ratio, args.codebook_l2_norm,
                                        args.codebook_show_usage)
        self.quant_conv = nn.Conv2d(args.z_channels, args.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(args.codebook_embed_dim, args.z_channels, 1)

    def encode_latent(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> pre-quantisation latent [B, codebook_embed_dim, h, w]."""
        return self.quant_conv(self.encoder(images))

    def encode_ids(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> token ids [B, h, w]."""
        return self.quantize.codes(self.encode_latent(images))

    def decode_latent(self, z_q: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z_q))

    def decode_code(self, ids_Bhw: Tensor) -> Tensor:
        """Token ids [B, h, w] -> images, not clamped (as the official ``decode_code``)."""
        return self.decode_latent(self.quantize.lookup(ids_Bhw))

    def forward(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Reconstruction and quantiser losses (tokenizer training)."""
        z_q, _, losses = self.quantize(self.encode_latent(images))
        return self.decode_latent(z_q), losses
