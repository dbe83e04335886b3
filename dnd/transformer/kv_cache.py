"""Static key/value cache for decoding one position at a time (as in gpt-fast and LlamaGen).

Buffers are allocated once per (batch, length, dtype, device), written in place at the decoded
sequence indexes, and never saved with the model (non-persistent).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class KVCache(nn.Module):
    def __init__(
        self, max_batch_size: int, max_seq_len: int, n_head: int, head_dim: int, dtype: torch.dtype, device
    ):
        super().__init__()
        shape = (max_batch_size, n_head, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H, T, hd) at sequence indexes input_pos (T,); return the full caches (B, H, S, hd)."""
        self.k_cache.index_copy_(2, input_pos, k.to(self.k_cache.dtype))
        self.v_cache.index_copy_(2, input_pos, v.to(self.v_cache.dtype))
        return self.k_cache, self.v_cache

    def reset(self) -> None:
        self.k_cache.zero_()
        self.v_cache.zero_()

    def matches(self, max_batch_size: int, max_seq_len: int, dtype: torch.dtype, device: torch.device) -> bool:
        b, _, s, _ = self.k_cache.shape
        return (b, s, self.k_cache.dtype, self.k_cache.device) == (max_batch_size, max_seq_len, dtype, device)


def setup_caches(
    model: nn.Module,
    max_batch_size: int,
    max_seq_len: int,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> None:
    """Give every attention layer of `model` a cache; reuse (and reset) caches of the same shape.

    The length is rounded up to a multiple of 8 (friendlier attention kernels; the causal mask hides
    the padding). dtype and device default to the model's token-embedding weight.
    """
    weight = model.tok_embeddings.weight
    dtype = dtype or weight.dtype
    device = torch.device(device) if device is not None else weight.device
    max_seq_len = -(-max_seq_len // 8) * 8
    config = model.config
    for block in model.blocks:
        cache = block.attention.kv_cache
        if cache is not None and cache.matches(max_batch_size, max_seq_len, dtype, device):
            cache.reset()
        else:
            shape = (max_batch_size, max_seq_len, config.n_head, config.head_dim)
            block.attention.kv_cache = KVCache(*shape, dtype, device)


def reset_caches(model: nn.Module) -> None:
    for block in model.blocks:
        if block.attention.kv_cache is not None:
            block.attention.kv_cache.reset()


def remove_caches(model: nn.Module) -> None:
    """Drop the caches (frees their memory; training never uses them)."""
    for block in model.blocks:
        block.attention.kv_cache = None
