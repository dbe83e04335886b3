"""Baselines the paper compares against on rich-text generation: a pixel-space DDPM trained from scratch."""
