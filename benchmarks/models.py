"""Models and device helpers the transformer benchmarks share (bench_sampling.py, gpu_check.py)."""

from __future__ import annotations

import torch

from dnd.transformer import Transformer, TransformerConfig


def sampling_ready_transformer(size: str, vocab: int, depth: int, grid: int, variant: str) -> Transformer:
    """A preset transformer with random heads: the trained model's zero-initialised heads would give flat
    logits, and sampling from flat logits is not what a real model's sampling costs."""
    config = TransformerConfig.preset(size, vocab_size=vocab, depth=depth, grid_size=grid, variant=variant)
    model = Transformer(config)
    for head in model.heads:
        torch.nn.init.normal_(head.output.weight, std=config.initializer_range)
    return model


def matmul_weights(model: Transformer) -> int:
    """Weights a forward multiplies per code position (all but the embedding tables): its FLOPs are ~2x this,
    so the ratio of two models' counts bounds their time ratio where matmuls dominate."""
    return model.num_params() - model.tok_embeddings.weight.numel() - model.class_embedding.weight.numel()


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a timer reads the work and not its launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
