"""The DnD-Transformer family: model, KV-cached sampling with CFG, the authors' checkpoint loader."""

from dnd.transformer.authors_checkpoint import load_authors_checkpoint
from dnd.transformer.generate import SamplingConfig, generate, generate_uncached, sample_sequence
from dnd.transformer.kv_cache import KVCache, remove_caches, reset_caches, setup_caches
from dnd.transformer.model import (
    PRESETS,
    Transformer,
    TransformerConfig,
    code_cross_entropy,
    default_head_layers,
)

__all__ = [
    "PRESETS",
    "KVCache",
    "SamplingConfig",
    "Transformer",
    "TransformerConfig",
    "code_cross_entropy",
    "default_head_layers",
    "generate",
    "generate_uncached",
    "load_authors_checkpoint",
    "remove_caches",
    "reset_caches",
    "sample_sequence",
    "setup_caches",
]
