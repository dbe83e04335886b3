"""RQ-VAE tokenizer: a VQGAN-style convolutional encoder and decoder around the residual quantizer.

Images are `(B, C, H, W)` in [-1, 1]; codes are `(B, H/f, W/f, D)` long, depth last (the order the
transformer reads them: all D codes of a position, then the next position). The layer layout follows
the authors' RQ-VAE (GroupNorm(32) + SiLU residual blocks, asymmetric-padded stride-2 downsampling,
nearest + conv upsampling, res-attention-res middle block), so their checkpoints load exactly
(`dnd.tokenizer.authors_checkpoint`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from dnd.modelfile import load_model_file, save_model_file
from dnd.tokenizer.quantizer import CODEBOOK_INITS, ResidualQuantizer

DOWNSAMPLE_FACTORS = (8, 16, 32)
STEMS = ("conv", "pixel_unshuffle")
NORM_GROUPS = 32


@dataclass
class RQVAEConfig:
    in_channels: int = 3  # image channels: 1 grayscale, 3 RGB
    # "conv": a 3×3 conv at full resolution, as in VQGAN / the authors. "pixel_unshuffle": fold
    # unshuffle_factor² pixels into channels first (F.pixel_unshuffle), then the same 3×3 conv; far cheaper,
    # and on small CPU budgets it learns text where the full-resolution conv stem did not.
    stem: str = "conv"
    unshuffle_factor: int = 8  # patch size of the pixel_unshuffle stem (the conv stem has none)
    ch: int = 128  # channels of the first stage; a multiple of 32 (GroupNorm groups)
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # one stage each, ch·mult channels, a 2× downsample between
    num_res_blocks: int = 2  # residual blocks per encoder stage; decoder stages get one more (VQGAN)
    attn_at_lowest: bool = True  # self-attention after each block of the lowest-resolution stage
    mid_block: bool = True  # residual block, attention, residual block between the stages and the latents
    dropout: float = 0.0
    z_channels: int = 256  # encoder output channels, mapped to embed_dim by a 1×1 conv
    embed_dim: int = 256  # dimension of the quantized vectors
    codebook_size: int = 16384  # one codebook shared by every depth
    depth: int = 4  # D codes per position
    ema_decay: float = 0.99  # codebook EMA decay
    laplace_eps: float = 1e-5  # Laplace smoothing of the EMA counts
    restart_threshold: float = 1.0  # codes whose EMA count falls below this restart from batch residuals
    dead_code_restart: bool = True
    # "restart": random codebook, replaced from the first training batch by dead-code restarts (authors).
    # "depth_by_depth": the first quantized training batch fits one slice of the codebook to each depth's
    # residuals (ResidualQuantizer.init_codebook_depth_by_depth); meant to follow a short warm-up as a plain
    # autoencoder (RQVAE.forward(..., quantize=False)). Deep codes (D = 8) trained stably only this way.
    codebook_init: str = "restart"

    def __post_init__(self) -> None:
        self.ch_mult = tuple(self.ch_mult)  # YAML gives lists
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.codebook_init not in CODEBOOK_INITS:
            raise ValueError(f"codebook_init must be one of {CODEBOOK_INITS}, got {self.codebook_init!r}")
        if not self.ch_mult:
            raise ValueError("ch_mult needs at least one stage")
        if any((self.ch * mult) % NORM_GROUPS for mult in self.ch_mult):
            raise ValueError(f"ch × each ch_mult must be a multiple of {NORM_GROUPS} (GroupNorm groups)")
        if self.downsample_factor not in DOWNSAMPLE_FACTORS:
            raise ValueError(
                f"downsample factor f = {self.downsample_factor} (stem {self.stem!r}, {len(self.ch_mult)} stages) "
                f"must be one of {DOWNSAMPLE_FACTORS}"
            )

    @property
    def stem_factor(self) -> int:
        return self.unshuffle_factor if self.stem == "pixel_unshuffle" else 1

    @property
    def downsample_factor(self) -> int:
        return self.stem_factor * 2 ** (len(self.ch_mult) - 1)


PRESETS: dict[str, RQVAEConfig] = {
    # The authors' tokenizer (PAPER.md §6): f=16, RGB; ≈ 71M parameters.
    "paper_f16": RQVAEConfig(),
    # CPU demo for grayscale text: unshuffle by 8, 3×3 convs, two residual blocks, no attention;
    # ≈ 1.7M parameters.
    "demo_f8": RQVAEConfig(
        in_channels=1,
        stem="pixel_unshuffle",
        unshuffle_factor=8,
        ch=128,
        ch_mult=(1,),
        num_res_blocks=2,
        attn_at_lowest=False,
        mid_block=False,
        z_channels=32,
        embed_dim=32,
        codebook_size=512,
        depth=8,
        codebook_init="depth_by_depth",
    ),
}


def rqvae_config(preset: str, **overrides) -> RQVAEConfig:
    """A named preset with some fields replaced, e.g. `rqvae_config("paper_f16", depth=8)`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown RQ-VAE preset {preset!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[preset], **overrides)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        q, k, v = (rearrange(proj(h), "b c h w -> b 1 (h w) c") for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C), scaled by 1/sqrt(C)
        return x + self.proj_out(rearrange(out, "b 1 (h w) c -> b c h w", h=x.shape[2]))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad right/bottom only, as the authors' checkpoints expect


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    """Residual blocks at one resolution (each followed by attention if asked), then a resampling."""

    def __init__(
        self, in_channels: int, out_channels: int, n_blocks: int, attention: bool, dropout: float, resample: nn.Module
    ):
        super().__init__()
        channels = [in_channels] + [out_channels] * n_blocks
        self.blocks = nn.ModuleList(ResBlock(c_in, out_channels, dropout) for c_in in channels[:-1])
        self.attentions = nn.ModuleList(AttnBlock(out_channels) for _ in range(n_blocks) if attention)
        self.resample = resample

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.attentions:
                x = self.attentions[i](x)
        return self.resample(x)


class MidBlock(nn.Module):
    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResBlock(channels, channels, dropout)
        self.attention = AttnBlock(channels)
        self.block_2 = ResBlock(channels, channels, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attention(self.block_1(x)))


def _mid(config: RQVAEConfig) -> nn.Module:
    return MidBlock(config.ch * config.ch_mult[-1], config.dropout) if config.mid_block else nn.Identity()


class Encoder(nn.Module):
    """(B, in_channels, H, W) -> (B, z_channels, H/f, W/f)."""

    def __init__(self, config: RQVAEConfig):
        super().__init__()
        r, n_stages = config.stem_factor, len(config.ch_mult)
        self.unshuffle = nn.PixelUnshuffle(r) if r > 1 else nn.Identity()
        self.conv_in = conv3x3(config.in_channels * r * r, config.ch)
        widths = [config.ch * mult for mult in (1, *config.ch_mult)]
        self.stages = nn.Sequential(
            *(
                Stage(
                    widths[i],
                    widths[i + 1],
                    config.num_res_blocks,
                    attention=config.attn_at_lowest and i == n_stages - 1,
                    dropout=config.dropout,
                    resample=Downsample(widths[i + 1]) if i < n_stages - 1 else nn.Identity(),
                )
                for i in range(n_stages)
            )
        )
        self.mid = _mid(config)
        self.norm_out = group_norm(widths[-1])
        self.conv_out = conv3x3(widths[-1], config.z_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.mid(self.stages(self.conv_in(self.unshuffle(x))))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z_channels, h, w) -> (B, in_channels, h·f, w·f). Stages run lowest resolution first."""

    def __init__(self, config: RQVAEConfig):
        super().__init__()
        r, n_stages = config.stem_factor, len(config.ch_mult)
        widths = [config.ch * mult for mult in config.ch_mult]
        self.conv_in = conv3x3(config.z_channels, widths[-1])
        self.mid = _mid(config)
        self.stages = nn.Sequential(
            *(
                Stage(
                    widths[min(level + 1, n_stages - 1)],
                    widths[level],
                    config.num_res_blocks + 1,
                    attention=config.attn_at_lowest and level == n_stages - 1,
                    dropout=config.dropout,
                    resample=Upsample(widths[level]) if level > 0 else nn.Identity(),
                )
                for level in reversed(range(n_stages))
            )
        )
        self.norm_out = group_norm(widths[0])
        self.conv_out = conv3x3(widths[0], config.in_channels * r * r)
        self.shuffle = nn.PixelShuffle(r) if r > 1 else nn.Identity()

    def forward(self, z: Tensor) -> Tensor:
        h = self.stages(self.mid(self.conv_in(z)))
        return self.shuffle(self.conv_out(F.silu(self.norm_out(h))))


@dataclass
class RQVAEAux:
    commitment_loss: Tensor  # () mean over depths of mse(z, partial_sum_d.detach()); 0 without quantization
    codes: Tensor | None  # (B, h, w, D) long; None when the quantizer was bypassed
    code_usage: Tensor | None  # (D, K) uses of each code at each depth in this batch


class RQVAE(nn.Module):
    def __init__(self, config: RQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.quantizer = ResidualQuantizer(
            codebook_size=config.codebook_size,
            embed_dim=config.embed_dim,
            depth=config.depth,
            ema_decay=config.ema_decay,
            laplace_eps=config.laplace_eps,
            restart_threshold=config.restart_threshold,
            dead_code_restart=config.dead_code_restart,
            codebook_init=config.codebook_init,
        )
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.decoder = Decoder(config)

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def last_layer(self) -> Tensor:
        """Weight of the decoder's output conv: the GAN loss's adaptive weight compares gradients there."""
        return self.decoder.conv_out.weight

    def encode_latents(self, images: Tensor) -> Tensor:
        """(B, C, H, W) in [-1, 1] -> continuous latents (B, embed_dim, H/f, W/f)."""
        f = self.downsample_factor
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"expected images (B, {self.config.in_channels}, H, W), got {tuple(images.shape)}")
        if images.shape[2] % f or images.shape[3] % f:
            raise ValueError(f"image size {tuple(images.shape[2:])} is not a multiple of the downsample factor {f}")
        return self.quant_conv(self.encoder(images))

    def decode_latents(self, latents: Tensor) -> Tensor:
        """(B, embed_dim, h, w) -> images (B, C, h·f, w·f)."""
        return self.decoder(self.post_quant_conv(latents))

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """(B, C, H, W) in [-1, 1] -> codes (B, H/f, W/f, D) long. Never changes the codebook."""
        return self.quantizer.assign(rearrange(self.encode_latents(images), "b c h w -> b h w c"))

    def embed_codes(self, codes: Tensor) -> Tensor:
        """(B, h, w, d) long -> the decoder input, the sum of the d code embeddings (B, embed_dim, h, w)."""
        return rearrange(self.quantizer.embed(codes), "b h w c -> b c h w")

    def decode(self, codes: Tensor, depth: int | None = None) -> Tensor:
        """(B, h, w, D) codes -> images (B, C, h·f, w·f); with `depth=d`, from the first d depths only."""
        if depth is not None:
            if not 1 <= depth <= codes.shape[-1]:
                raise ValueError(f"depth must be in [1, {codes.shape[-1]}], got {depth}")
            codes = codes[..., :depth]
        return self.decode_latents(self.embed_codes(codes))

    def forward(self, images: Tensor, quantize: bool = True) -> tuple[Tensor, RQVAEAux]:
        """images (B, C, H, W) -> reconstruction (B, C, H, W) and the quantizer's outputs.

        `quantize=False` bypasses the quantizer (plain autoencoder), for a warm-up before the codebook
        is initialised depth by depth.
        """
        latents = self.encode_latents(images)
        if not quantize:
            return self.decode_latents(latents), RQVAEAux(latents.new_zeros(()), None, None)
        out = self.quantizer(rearrange(latents, "b c h w -> b h w c"))
        recon = self.decode_latents(rearrange(out.quantized, "b h w c -> b c h w"))
        return recon, RQVAEAux(out.commitment_loss, out.codes, out.code_usage)

    @torch.no_grad()
    def init_codebook_depth_by_depth(self, images: Tensor, kmeans_iters: int = 10) -> None:
        """Initialise the codebook from these images' latents, one slice of codes per depth."""
        latents = rearrange(self.encode_latents(images), "b c h w -> b h w c")
        self.quantizer.init_codebook_depth_by_depth(latents, kmeans_iters)


def save_tokenizer(path: Path, model: RQVAE, name: str, **extra: Any) -> None:
    save_model_file(path, model.config, model.state_dict(), name=name, **extra)


def load_tokenizer(path: Path, device: str | torch.device = "cpu") -> RQVAE:
    return load_model_file(path, lambda config: RQVAE(RQVAEConfig(**config)), device)[0]
