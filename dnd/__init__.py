"""dnd-pipeline: data, tokenizers, DnD-Transformers and evaluation for 2-D autoregressive image generation."""

__version__ = "0.1.0"
