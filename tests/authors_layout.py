"""The authors' DnD-Transformer as their published code defines it (src/dnd_transformer/gpt_multitoken_v3.py),
restated for the parity tests without any of our model code: their state-dict layout and their teacher-forced
forward pass, on their key names. Nothing here imports `dnd.transformer`.

Their forward (class Transformer, the training path `forward(idx, cond_idx, targets=...)`):
- input: the class token `cls_embedding.embedding_table[cond]`, then per position the sum over depths of
  `tok_embeddings[idx]` (idx = the code map without its last position); token dropout (0 here);
- positions: LlamaGen's 2-D rotary table, `head_dim // 4` frequencies `base^(-2j / (head_dim/2))` applied to
  the row index for the first half of the rotated pairs and to the column index for the second half, and
  all-zero rows (cos = sin = 0) for the class token; adjacent channel pairs rotate as complex numbers;
- blocks: pre-norm RMSNorm (x·rsqrt(mean(x²) + eps), in float, times the weight), causal attention from a
  fused wqkv projection split [q, k, v], then `wo`; SwiGLU `w2(silu(w1 x) · w3 x)`; two residual adds;
- heads: after the block whose 0-based index is `pred_head_positions[d]`, logits_d = output.d(norm.d(h)); for
  every head but the last, h += tok_embeddings[targets[..., d]] before the next blocks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

FIXTURE = Path(__file__).parent / "fixtures" / "authors_dnd_tiny_state_dict.json"


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


def authors_shapes(dim: int, n_layer: int, vocab: int, num_classes: int, heads: int, class_dropout: bool = True,
                   multiple_of: int = 256) -> dict[str, tuple[int, ...]]:
    """Their state dict's keys and shapes for one ModelArgs (n_kv_head = n_head)."""
    hidden = find_multiple(int(2 * 4 * dim / 3), multiple_of)
    shapes = {"tok_embeddings.weight": (vocab, dim), "cls_embedding.embedding_table.weight": (num_classes + class_dropout, dim)}
    for i in range(n_layer):
        shapes |= {f"layers.{i}.attention.wqkv.weight": (3 * dim, dim), f"layers.{i}.attention.wo.weight": (dim, dim),
                   f"layers.{i}.feed_forward.w1.weight": (hidden, dim), f"layers.{i}.feed_forward.w3.weight": (hidden, dim),
                   f"layers.{i}.feed_forward.w2.weight": (dim, hidden), f"layers.{i}.attention_norm.weight": (dim,),
                   f"layers.{i}.ffn_norm.weight": (dim,)}
    for d in range(heads):
        shapes |= {f"norm.{d}.weight": (dim,), f"output.{d}.weight": (vocab, dim)}
    return shapes


def fixture() -> dict:
    return json.loads(FIXTURE.read_text())


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of those shapes with every tensor mattering: norms near 1 (not exactly), matrices N(0, 0.1²)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in sorted(shapes.items()):
        noise = torch.randn(shape, generator=generator)
        state[key] = 1.0 + 0.1 * noise if len(shape) == 1 else 0.1 * noise
    return state


def rotary_2d(grid: int, head_dim: int, base: float, cls_tokens: int = 1) -> torch.Tensor:
    """(cls_tokens + grid², head_dim / 2, 2) cos/sin table, the class rows zero."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    angles_1d = torch.outer(torch.arange(grid).float(), freqs)  # (grid, head_dim / 4)
    rows = angles_1d[:, None, :].expand(grid, grid, -1)
    cols = angles_1d[None, :, :].expand(grid, grid, -1)
    angles = torch.cat([rows, cols], dim=-1).reshape(grid * grid, -1)  # (grid², head_dim / 2)
    table = torch.stack([angles.cos(), angles.sin()], dim=-1)
    return torch.cat([torch.zeros(cls_tokens, half, 2), table])


def rotate(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, hd): pairs (x[2j], x[2j+1]) times cos + i·sin of table (T, hd/2, 2)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    real = pairs[..., 0] * cos - pairs[..., 1] * sin
    imag = pairs[..., 1] * cos + pairs[..., 0] * sin
    return torch.stack([real, imag], dim=-1).flatten(3).type_as(x)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def authors_forward(state: dict[str, torch.Tensor], codes: torch.Tensor, labels: torch.Tensor, n_head: int,
                    head_positions: list[int], rope_base: float = 10000.0) -> torch.Tensor:
    """Teacher-forced logits (B, D, N, V) of code maps `codes` (B, N, D) (raster order) and class labels (B,)."""
    emb = state["tok_embeddings.weight"]
    dim = emb.shape[1]
    head_dim = dim // n_head
    n_layer = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers."))
    grid = math.isqrt(codes.shape[1])
    idx, targets = codes[:, :-1], codes
    h = torch.cat([state["cls_embedding.embedding_table.weight"][labels][:, None], emb[idx].sum(-2)], dim=1)
    batch, seq, _ = h.shape
    table = rotary_2d(grid, head_dim, rope_base)[:seq]
    logits = []
    for i in range(n_layer):
        p = f"layers.{i}."
        x = rms_norm(h, state[p + "attention_norm.weight"])
        q, k, v = (x @ state[p + "attention.wqkv.weight"].T).split([dim, dim, dim], dim=-1)
        q, k, v = (t.view(batch, seq, n_head, head_dim) for t in (q, k, v))
        q, k = rotate(q, table), rotate(k, table)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        h = h + out.transpose(1, 2).reshape(batch, seq, dim) @ state[p + "attention.wo.weight"].T
        x = rms_norm(h, state[p + "ffn_norm.weight"])
        gated = F.silu(x @ state[p + "feed_forward.w1.weight"].T) * (x @ state[p + "feed_forward.w3.weight"].T)
        h = h + gated @ state[p + "feed_forward.w2.weight"].T
        if i in head_positions:
            d = head_positions.index(i)
            logits.append((rms_norm(h, state[f"norm.{d}.weight"]) @ state[f"output.{d}.weight"].T).float())
            if d != len(head_positions) - 1:
                h = h + emb[targets[:, :, d]]
    return torch.stack(logits, dim=1)
