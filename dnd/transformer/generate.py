"""Sampling code maps from a Transformer: prefill, decode one step, the loop; CFG by batch doubling.

One forward pass per spatial position yields all D codes: in "dnd" the code sampled at depth d is
embedded and added to the hidden stream before head d+1 inside the same pass; in "vertical" and
"parallel" the heads just read their blocks. The next position's input token is the sum of the
embeddings of the D sampled codes.

Classifier-free guidance doubles the batch (conditional rows first, null-class rows second), mixes
the two halves' logits at every head, `uncond + s·(cond − uncond)`, and feeds the guided code to both
halves. Sampling draws its randomness (Gumbel noise) from a seeded `torch.Generator` before each
pass, so the result is a function of (weights, labels, config) alone, cached or not.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor

from dnd.transformer.kv_cache import setup_caches
from dnd.transformer.model import Transformer


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # softmax temperature; 0 = greedy argmax
    top_k: int = 0  # keep the k most likely codes; 0 = off
    top_p: float = 1.0  # nucleus: keep the smallest set with this much probability; 1 = off
    cfg_scale: float = 1.0  # classifier-free guidance scale s; 1 = no guidance (no batch doubling)
    # "constant": s at every position (the authors). "linear": from 1 at the first position to s at the
    # last, s_p = 1 + (s − 1)·p / (P − 1) for position p of P.
    cfg_schedule: Literal["constant", "linear"] = "constant"
    temperature_per_depth: list[float] | None = None  # one per depth, overrides `temperature`
    top_k_per_depth: list[int] | None = None  # one per depth (0 = off there), overrides `top_k`
    seed: int = 0  # seeds the sampling generator: same seed, same codes

    def __post_init__(self) -> None:
        temperatures = self.temperature_per_depth or [self.temperature]
        if any(t < 0 for t in temperatures):
            raise ValueError(f"temperatures must be >= 0, got {temperatures}")
        if any(k < 0 for k in self.top_k_per_depth or [self.top_k]):
            raise ValueError("top_k must be >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.cfg_schedule not in ("constant", "linear"):
            raise ValueError(f"cfg_schedule must be 'constant' or 'linear', got {self.cfg_schedule!r}")

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    def depth_rules(self, depth: int) -> tuple[DepthRule, ...]:
        temperatures = self.temperature_per_depth or [self.temperature] * depth
        top_ks = self.top_k_per_depth or [self.top_k] * depth
        if len(temperatures) != depth or len(top_ks) != depth:
            raise ValueError(f"temperature_per_depth / top_k_per_depth need one value per depth ({depth})")
        return tuple(DepthRule(float(t), int(k), self.top_p) for t, k in zip(temperatures, top_ks))

    def cfg_scale_at(self, position: int, num_positions: int) -> float:
        if self.cfg_schedule == "constant" or num_positions == 1:
            return self.cfg_scale
        return 1.0 + (self.cfg_scale - 1.0) * position / (num_positions - 1)


@dataclass(frozen=True)
class DepthRule:
    """How the code of one depth is drawn from its (guided) logits."""

    temperature: float
    top_k: int
    top_p: float

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Set logits (B, V) outside the top-k / top-p set to -inf."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a code when the codes ranked above it already hold top_p: the first one always stays
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def sample_codes(logits: Tensor, rule: DepthRule, gumbel: Tensor | None) -> Tensor:
    """Draw one code per row of logits (B, V) using Gumbel noise (B, V) -> (B,).

    argmax(logits / T + g) with g ~ Gumbel(0, 1) is an exact draw from softmax(logits / T) (the
    Gumbel-max trick): no softmax, and none of the host synchronisation of torch.multinomial.
    """
    if rule.greedy:
        return logits.argmax(-1)
    if rule.temperature != 1.0:
        logits = logits / rule.temperature
    logits = filter_logits(logits, rule.top_k, rule.top_p)
    return (logits + gumbel).argmax(-1)


def apply_guidance(logits: Tensor, scale: Tensor) -> Tensor:
    """(2B, ..., V) logits, conditional rows first -> (B, ..., V) guided logits."""
    cond, uncond = logits.chunk(2)
    return uncond + scale * (cond - uncond)


def draw_gumbel(generator: torch.Generator, depth: int, batch: int, vocab: int, device: torch.device) -> Tensor:
    """(D, B, V) Gumbel(0, 1) draws for one position: -log(-log(u)), u ~ U(0, 1) kept away from 0.

    (Several times faster on CPU than drawing Exp(1) with `exponential_`.)
    """
    uniform = torch.rand(depth, batch, vocab, device=device, generator=generator)
    return uniform.clamp_min_(torch.finfo(uniform.dtype).tiny).log_().neg_().log_().neg_()


def forward_and_sample(
    model: Transformer,
    x: Tensor,
    known_codes: Tensor,
    input_pos: Tensor | None,
    gumbel: Tensor | None,
    scale: Tensor,
    rules: tuple[DepthRule, ...],
    guided: bool,
) -> Tensor:
    """One pass over input tokens x (B2, T, dim); sample the D codes of the position after the last.

    known_codes (B2, T-1, D) are the codes of the earlier positions in x (empty with the KV cache);
    in "dnd" they stand beside each new code when depth embeddings are added. Returns (B, D).
    """
    picked = []

    def choose_code(depth: int, logits: Tensor) -> Tensor:
        last = logits[:, -1]  # (B2, V)
        if guided:
            last = apply_guidance(last, scale)
        code = sample_codes(last, rules[depth], None if gumbel is None else gumbel[depth])  # (B,)
        picked.append(code)
        new = (torch.cat([code, code]) if guided else code)[:, None]  # (B2, 1)
        if known_codes.shape[1] == 0:  # x holds just this position's input token
            return new
        return torch.cat([known_codes[:, :, depth], new], dim=1)  # (B2, T)

    model.forward_tokens(x, choose_code, input_pos)
    return torch.stack(picked, dim=-1)


def prefill(
    model: Transformer,
    labels: Tensor,
    gumbel: Tensor | None,
    scale: Tensor,
    rules: tuple[DepthRule, ...],
    guided: bool,
) -> Tensor:
    """Fill the cache with the class tokens labels (B2,) and sample position 0 -> codes (B, D)."""
    x = model.embed_labels(labels)  # (B2, 1, dim)
    no_codes = x.new_empty(x.shape[0], 0, model.config.depth, dtype=torch.long)
    input_pos = torch.zeros(1, dtype=torch.long, device=x.device)
    return forward_and_sample(model, x, no_codes, input_pos, gumbel, scale, rules, guided)


def decode_one_step(
    model: Transformer,
    prev_codes: Tensor,
    input_pos: Tensor,
    gumbel: Tensor | None,
    scale: Tensor,
    rules: tuple[DepthRule, ...],
    guided: bool,
) -> Tensor:
    """Feed the previous position's codes (B, D) at sequence index input_pos (1,); sample the next (B, D)."""
    if guided:
        prev_codes = torch.cat([prev_codes, prev_codes])
    x = model.embed_codes(prev_codes)[:, None]  # (B2, 1, dim)
    no_codes = prev_codes.new_empty(prev_codes.shape[0], 0, prev_codes.shape[1])
    return forward_and_sample(model, x, no_codes, input_pos, gumbel, scale, rules, guided)


def recompute_step(
    model: Transformer,
    labels: Tensor,
    codes_so_far: Tensor,
    gumbel: Tensor | None,
    scale: Tensor,
    rules: tuple[DepthRule, ...],
    guided: bool,
) -> Tensor:
    """Without a cache: run the whole prefix (class token + codes_so_far (B, p, D)), sample position p."""
    if guided:
        codes_so_far = torch.cat([codes_so_far, codes_so_far])
    x = torch.cat([model.embed_labels(labels), model.embed_codes(codes_so_far)], dim=1)  # (B2, p+1, dim)
    return forward_and_sample(model, x, codes_so_far, None, gumbel, scale, rules, guided)


@functools.cache
def compiled_decode_step(device_type: str):
    """decode_one_step under torch.compile; CUDA graphs on GPU, where per-kernel launch cost dominates."""
    mode = "reduce-overhead" if device_type == "cuda" else None
    return torch.compile(decode_one_step, mode=mode, fullgraph=True)


def as_labels(model: Transformer, labels: Tensor | int) -> Tensor:
    """Class labels (B,) on the model's device; an int n asks for n unconditional samples."""
    device = model.tok_embeddings.weight.device
    if isinstance(labels, int):
        return torch.full((labels,), model.null_class, dtype=torch.long, device=device)
    labels = labels.to(device=device, dtype=torch.long)
    if labels.ndim != 1 or ((labels < 0) | (labels > model.null_class)).any():
        raise ValueError(f"labels must be a 1-D tensor of classes in [0, {model.null_class}] (the last = null)")
    return labels


@torch.no_grad()
def sample_sequence(
    model: Transformer,
    labels: Tensor | int,
    cfg: SamplingConfig | None = None,
    *,
    num_positions: int | None = None,
    use_cache: bool = True,
    compile: bool = False,
) -> Tensor:
    """Codes (B, P, D) of the first P raster positions (default all h·w), one forward pass per position."""
    cfg = cfg or SamplingConfig()
    config = model.config
    labels = as_labels(model, labels)
    batch, device = labels.shape[0], labels.device
    positions = num_positions or config.num_positions
    if not 1 <= positions <= config.num_positions:
        raise ValueError(f"num_positions must lie in [1, {config.num_positions}] (grid_size²), got {positions}")
    if cfg.guided and config.num_classes == 0:
        raise ValueError("cfg_scale != 1 needs a class-conditional model (num_classes > 0)")
    if compile and not use_cache:
        raise ValueError("compile=True applies to cached decoding only")
    rules = cfg.depth_rules(config.depth)
    guided = cfg.guided
    model_labels = torch.cat([labels, torch.full_like(labels, model.null_class)]) if guided else labels
    sampled = not all(rule.greedy for rule in rules)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    step = compiled_decode_step(device.type) if compile else decode_one_step
    # per-position inputs made once: no host-to-device copy inside the loop
    scales = torch.tensor([cfg.cfg_scale_at(p, positions) for p in range(positions)], device=device)
    input_positions = torch.arange(positions, device=device)

    was_training = model.training
    model.eval()
    if use_cache:
        setup_caches(model, model_labels.shape[0], positions)
    codes = torch.empty(batch, positions, config.depth, dtype=torch.long, device=device)
    for p in range(positions):
        gumbel = draw_gumbel(generator, config.depth, batch, config.vocab_size, device) if sampled else None
        if not use_cache:
            codes[:, p] = recompute_step(model, model_labels, codes[:, :p], gumbel, scales[p], rules, guided)
        elif p == 0:
            codes[:, p] = prefill(model, model_labels, gumbel, scales[p], rules, guided)
        else:
            codes[:, p] = step(model, codes[:, p - 1], input_positions[p : p + 1], gumbel, scales[p], rules, guided)
    model.train(was_training)
    return codes


def generate(
    model: Transformer, labels: Tensor | int, cfg: SamplingConfig | None = None, *, compile: bool = False
) -> Tensor:
    """Sample code maps (B, h, w, D) with the KV cache. labels: (B,) classes, or n for n unconditional."""
    codes = sample_sequence(model, labels, cfg, compile=compile)
    return rearrange(codes, "b (h w) d -> b h w d", h=model.config.grid_size)


def generate_uncached(model: Transformer, labels: Tensor | int, cfg: SamplingConfig | None = None) -> Tensor:
    """As `generate`, recomputing the whole prefix at every position (the reference for the cache)."""
    codes = sample_sequence(model, labels, cfg, use_cache=False)
    return rearrange(codes, "b (h w) d -> b h w d", h=model.config.grid_size)
