"""The DnD-Transformer: a LLaMA-style decoder over a code map of shape (h, w, D).

One token per spatial position (the sum of the embeddings of its D codes, one shared table), a class
(or start) token in front, D prediction heads attached after chosen blocks. Reads top to bottom:
config, RMSNorm, 2-D rotary embedding, attention, MLP, block, prediction head, model, loss.

Variants (one config switch, `variant`):
- "1d": one head after the last block (depth 1): LlamaGen.
- "parallel": all D heads after the last block, read from the same hidden state.
- "vertical": head d after block `head_layers[d]`, no conditioning on the previous depth's code.
- "dnd": as vertical, and after head d the embedding of code d (teacher-forced in training, sampled
  at inference) is added to the hidden stream before the next blocks: autoregression along depth
  inside one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from dnd.modelfile import load_model_file, save_model_file
from dnd.transformer.kv_cache import KVCache

Variant = Literal["1d", "parallel", "vertical", "dnd"]
VARIANTS: tuple[str, ...] = ("1d", "parallel", "vertical", "dnd")

# Backbone sizes as in LlamaGen and the paper. Parameter counts with a 16384-code vocabulary,
# 1000 classes and two heads (`Transformer.num_params()`; one head adds dim·(vocab+1)).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(n_layer=2, n_head=2, dim=32),  # tests: 1.7M, nearly all of it vocabulary-sized tables
    "demo": dict(n_layer=4, n_head=4, dim=128),  # the demo workflow: 7.5M
    "B": dict(n_layer=12, n_head=12, dim=768),  # 124M
    "L": dict(n_layer=24, n_head=16, dim=1024),  # 360M
    "XL": dict(n_layer=36, n_head=20, dim=1280),  # 796M
    "XXL": dict(n_layer=48, n_head=24, dim=1536),  # 1.44B
    "XXXL": dict(n_layer=48, n_head=32, dim=2048),  # 2.57B
}


def default_head_layers(n_layer: int, depth: int) -> list[int]:
    """Blocks after which the D heads sit, the deepest code at the last block.

    The authors' 48-layer settings space heads 8 blocks apart for two heads ([39, 47]) and 3 apart
    for four or eight ([38, 41, 44, 47], [26, 29, ..., 47]); other sizes scale that gap by
    n_layer / 48 (at least 1, and shrunk so that the first head still fits).
    """
    if depth < 1 or n_layer < depth:
        raise ValueError(f"need 1 <= depth <= n_layer, got depth={depth}, n_layer={n_layer}")
    if depth == 1:
        return [n_layer - 1]
    gap_at_48 = 8 if depth == 2 else 3
    gap = max(1, round(gap_at_48 * n_layer / 48))
    gap = min(gap, (n_layer - 1) // (depth - 1))
    return [n_layer - 1 - gap * (depth - 1 - d) for d in range(depth)]


@dataclass
class TransformerConfig:
    vocab_size: int = 16384  # codebook size of the tokenizer
    depth: int = 2  # D codes per spatial position (= number of prediction heads)
    grid_size: int = 16  # h = w of the code map; sequence length N = grid_size**2
    n_layer: int = 12
    n_head: int = 12
    dim: int = 768
    ffn_multiple: int = 256  # SwiGLU hidden size int(8·dim/3) rounded up to this multiple (LlamaGen)
    ffn_dim: int | None = None  # explicit SwiGLU hidden size; None = the rounding above
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    num_classes: int = 1000  # 0 = unconditional: a single learned start token
    class_dropout: float = 0.1  # share of training labels replaced by the null class (for CFG)
    token_dropout: float = 0.1  # dropout on the input token embeddings
    resid_dropout: float = 0.1  # dropout on the attention output projection
    ffn_dropout: float = 0.1  # dropout on the MLP output
    attn_dropout: float = 0.0  # dropout on attention weights
    variant: Variant = "dnd"
    # 0-based block index each head sits after, one per depth; None = all after the last block for
    # "parallel", else `default_head_layers(n_layer, depth)`.
    head_layers: list[int] | None = None
    initializer_range: float = 0.02  # std of the normal init of linears and embeddings

    def __post_init__(self) -> None:
        if self.head_layers is None:
            if self.variant == "parallel":
                self.head_layers = [self.n_layer - 1] * self.depth
            else:
                self.head_layers = default_head_layers(self.n_layer, self.depth)
        self.head_layers = [int(i) for i in self.head_layers]
        self.validate()

    def validate(self) -> None:
        layers = self.head_layers
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.dim % self.n_head or (self.dim // self.n_head) % 4:
            raise ValueError(
                f"dim={self.dim} must split into n_head={self.n_head} heads of a size divisible by 4 "
                "(2-D rotary rotates pairs along rows and columns)"
            )
        if self.depth < 1 or self.vocab_size < 1 or self.grid_size < 1 or self.num_classes < 0:
            raise ValueError("depth, vocab_size and grid_size must be positive, num_classes >= 0")
        if len(layers) != self.depth:
            raise ValueError(f"head_layers={layers} must hold one block index per depth ({self.depth})")
        if not all(0 <= i < self.n_layer for i in layers):
            raise ValueError(f"head_layers={layers} must lie in [0, n_layer={self.n_layer})")
        if layers[-1] != self.n_layer - 1:
            raise ValueError(
                f"head_layers={layers}: the last head must sit after the last block ({self.n_layer - 1}); "
                "blocks after it would never be used"
            )
        if self.variant == "1d" and self.depth != 1:
            raise ValueError(f"variant '1d' predicts one code per position: depth must be 1, got {self.depth}")
        if self.variant == "parallel" and any(i != self.n_layer - 1 for i in layers):
            raise ValueError(f"variant 'parallel' puts every head after the last block, got head_layers={layers}")
        if self.variant in ("vertical", "dnd") and any(a >= b for a, b in zip(layers, layers[1:])):
            raise ValueError(f"variant {self.variant!r} needs strictly increasing head_layers, got {layers}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def num_positions(self) -> int:
        return self.grid_size**2

    @property
    def hidden_dim(self) -> int:
        if self.ffn_dim is not None:
            return self.ffn_dim
        hidden = int(2 * 4 * self.dim / 3)
        return -(-hidden // self.ffn_multiple) * self.ffn_multiple

    @classmethod
    def preset(cls, name: str, **overrides) -> TransformerConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown transformer size {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # normalise in fp32 also under bf16, scale after casting back (as LlamaGen)
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


def precompute_rotary_2d(grid_size: int, head_dim: int, base: float) -> Tensor:
    """(1 + grid_size², head_dim/2, 2) cos/sin table: row 0 for the prefix token, then raster order.

    The first half of the rotated pairs turns with the row index, the second half with the column
    index, each with frequencies base^(-2i / (head_dim/2)). The prefix row is all zeros (cos = sin = 0),
    as in LlamaGen: the class token's query and key vanish and it acts through its value only. Kept
    so that checkpoints trained that way load unchanged.
    """
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2).float() / half))  # (head_dim/4,)
    angles = torch.outer(torch.arange(grid_size).float(), freqs)  # (grid, head_dim/4)
    rows = angles[:, None, :].expand(grid_size, grid_size, -1)
    cols = angles[None, :, :].expand(grid_size, grid_size, -1)
    grid = torch.cat([rows, cols], dim=-1)  # (grid, grid, head_dim/2)
    table = torch.stack([grid.cos(), grid.sin()], dim=-1).flatten(0, 1)  # (grid², head_dim/2, 2)
    return torch.cat([torch.zeros(1, half, 2), table])


def apply_rotary(x: Tensor, rotary: Tensor) -> Tensor:
    """Rotate adjacent pairs of x (B, T, ..., hd) by the angles in rotary (T, hd/2, 2)."""
    real, imag = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, T, ..., hd/2) each
    cos, sin = (rotary[..., i].view(1, rotary.shape[0], *[1] * (x.ndim - 3), -1) for i in (0, 1))
    rotated = torch.stack([real * cos - imag * sin, imag * cos + real * sin], dim=-1)
    return rotated.flatten(-2).type_as(x)


def decoding_mask(input_pos: Tensor, cache_len: int) -> Tensor:
    """(T, S) boolean mask: the token at sequence index input_pos[t] sees cache slots up to it."""
    return torch.arange(cache_len, device=input_pos.device) <= input_pos[:, None]


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_head, self.head_dim, self.dim = config.n_head, config.head_dim, config.dim
        self.wqkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.attn_dropout = config.attn_dropout
        self.resid_dropout = nn.Dropout(config.resid_dropout)
        self.kv_cache: KVCache | None = None  # set by kv_cache.setup_caches for decoding

    def forward(self, x: Tensor, rotary: Tensor, input_pos: Tensor | None, mask: Tensor | None) -> Tensor:
        # x: (B, T, dim). Decoding: input_pos (T,) sequence indexes and mask (T, S) over the KV cache;
        # both None: x is the whole sequence, plain causal attention.
        qkv = rearrange(self.wqkv(x), "b t (three h d) -> b t three h d", three=3, h=self.n_head)
        qk = apply_rotary(qkv[:, :, :2], rotary)  # queries and keys in one go
        q, k, v = (rearrange(t, "b t h d -> b h t d") for t in (qk[:, :, 0], qk[:, :, 1], qkv[:, :, 2]))
        if input_pos is not None:
            if self.kv_cache is None:
                raise RuntimeError("input_pos given but no KV cache: call kv_cache.setup_caches(model, ...) first")
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, H, S, hd)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=self.attn_dropout if self.training else 0.0
        )
        return self.resid_dropout(self.wo(rearrange(out, "b h t d -> b t (h d)")))


class FeedForward(nn.Module):
    """SwiGLU MLP."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.w3 = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.w2 = nn.Linear(config.hidden_dim, config.dim, bias=False)
        self.dropout = nn.Dropout(config.ffn_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x: Tensor, rotary: Tensor, input_pos: Tensor | None, mask: Tensor | None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), rotary, input_pos, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class PredictionHead(nn.Module):
    """RMSNorm + linear to code logits; zero-initialised so training starts from uniform predictions."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        return self.output(self.norm(h)).float()  # (B, T, V), fp32 for the softmax


# Called after head d with its logits (B, T, V); returns the codes (B, T) taken at depth d: the
# ground truth in training, the sampled codes at inference. In "dnd" their embedding is added to the
# hidden stream before the next blocks.
ChooseCode = Callable[[int, Tensor], Tensor]


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.null_class = config.num_classes  # also the start token when num_classes == 0
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)  # shared by all depths
        self.class_embedding = nn.Embedding(config.num_classes + 1, config.dim)  # last row: null class
        self.token_dropout = nn.Dropout(config.token_dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.heads = nn.ModuleList(PredictionHead(config) for _ in range(config.depth))
        rotary = precompute_rotary_2d(config.grid_size, config.head_dim, config.rope_base)
        self.register_buffer("rotary", rotary, persistent=False)  # (1 + N, hd/2, 2)
        # Blocks run before each head: head d reads the stream after block head_layers[d].
        bounds = [0, *(i + 1 for i in config.head_layers)]
        self.head_segments = tuple(zip(bounds[:-1], bounds[1:]))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        for head in self.heads:
            nn.init.zeros_(head.output.weight)

    def _apply(self, fn, recurse: bool = True):
        # Casting the model (e.g. to bf16) moves the rotary table but keeps it fp32, as LlamaGen's.
        rotary = self.rotary
        super()._apply(fn, recurse)
        self.rotary = rotary.to(self.rotary.device)
        return self

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- inputs -------------------------------------------------------------------------------
    def embed_labels(self, labels: Tensor | None, batch_size: int | None = None) -> Tensor:
        """(B, 1, dim) prefix token; None = the null class (unconditional, or the start token)."""
        if labels is None:
            if batch_size is None:
                raise ValueError("embed_labels needs labels or batch_size")
            labels = torch.full((batch_size,), self.null_class, device=self.class_embedding.weight.device)
        elif self.training and self.config.class_dropout > 0 and self.config.num_classes > 0:
            dropped = torch.rand(labels.shape, device=labels.device) < self.config.class_dropout
            labels = torch.where(dropped, torch.full_like(labels, self.null_class), labels)
        return self.class_embedding(labels)[:, None]

    def embed_codes(self, codes: Tensor) -> Tensor:
        """(..., D) codes of one position each -> (..., dim): the sum of their embeddings."""
        return self.tok_embeddings(codes).sum(-2)

    # -- the pass -----------------------------------------------------------------------------
    def forward_tokens(self, x: Tensor, choose_code: ChooseCode, input_pos: Tensor | None = None) -> list[Tensor]:
        """Run input tokens x (B, T, dim) through blocks and heads; one (B, T, V) logits per depth.

        input_pos (T,) gives the sequence indexes of x when decoding with the KV cache; None means x is
        the whole sequence from index 0.
        """
        if input_pos is None:
            rotary, mask = self.rotary[: x.shape[1]], None
        else:
            cache = self.blocks[0].attention.kv_cache
            cache_len = cache.k_cache.shape[2] if cache is not None else 0
            rotary, mask = self.rotary[input_pos], decoding_mask(input_pos, cache_len)
        h = self.token_dropout(x)
        logits_per_depth = []
        for depth, (start, end) in enumerate(self.head_segments):
            for block in self.blocks[start:end]:
                h = block(h, rotary, input_pos, mask)
            logits = self.heads[depth](h)
            logits_per_depth.append(logits)
            codes = choose_code(depth, logits)
            if self.config.variant == "dnd" and depth + 1 < self.config.depth:
                h = h + self.tok_embeddings(codes)
        return logits_per_depth

    def forward(self, codes: Tensor, labels: Tensor | None = None) -> Tensor:
        """Teacher-forced logits (B, N, D, V) for code maps (B, h, w, D) and class labels (B,)."""
        expected = (self.config.grid_size, self.config.grid_size, self.config.depth)
        if tuple(codes.shape[1:]) != expected:
            raise ValueError(f"code maps must have shape (B, h, w, D) = (B, *{expected}), got {tuple(codes.shape)}")
        seq = rearrange(codes, "b h w d -> b (h w) d")
        x = torch.cat([self.embed_labels(labels, seq.shape[0]), self.embed_codes(seq[:, :-1])], dim=1)
        logits = self.forward_tokens(x, lambda depth, _: seq[:, :, depth])
        return torch.stack(logits, dim=2)

    def loss(self, codes: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean cross-entropy over all positions and depths, and the per-depth means (D,)."""
        return code_cross_entropy(self(codes, labels), codes)


def code_cross_entropy(logits: Tensor, codes: Tensor) -> tuple[Tensor, Tensor]:
    """logits (B, N, D, V), codes (B, h, w, D) -> (mean loss, per-depth loss (D,))."""
    flat_logits = rearrange(logits, "b n d v -> (b n d) v")
    per_code = F.cross_entropy(flat_logits, codes.flatten(), reduction="none")  # (B·N·D,), raster then depth
    per_depth = rearrange(per_code, "(bn d) -> bn d", d=codes.shape[-1]).mean(0)
    return per_depth.mean(), per_depth  # every depth has B·N codes, so this is the plain mean


def save_transformer(path: Path, model: Transformer, name: str, **extra: Any) -> None:
    save_model_file(path, model.config, model.state_dict(), name=name, **extra)


# The weight sets a model file may hold: the trained weights themselves, and their exponential moving average
# when training kept one (`train.ema_decay`). Each is the one of its own best validation step.
WEIGHT_SETS = {"raw": "state_dict", "ema": "ema_state_dict"}


def load_transformer(path: Path, device: str | torch.device = "cpu", weights: str = "raw") -> Transformer:
    """The model of `path` with its `weights` ("raw" or "ema") in eval mode."""
    if weights not in WEIGHT_SETS:
        raise ValueError(f"weights must be one of {sorted(WEIGHT_SETS)}, got {weights!r}")
    try:
        return load_model_file(path, lambda config: Transformer(TransformerConfig(**config)), device, WEIGHT_SETS[weights])[0]
    except KeyError as err:
        if weights == "ema":
            raise ValueError(f"{path} holds no EMA weights (trained without train.ema_decay): sample it with weights: raw") from err
        raise
