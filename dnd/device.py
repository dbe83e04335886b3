"""Where a process computes: its GPU when it has one, else the CPU (the one place that decides)."""

from __future__ import annotations

import torch


def default_device(local_rank: int = 0) -> torch.device:
    """This process's device: GPU `local_rank` of its node (one process per GPU), else the CPU."""
    return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
