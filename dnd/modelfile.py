"""The declared `model.pt` of every trained model: its config, its weights and a few figures, in one file.

One format for the tokenizer, the transformer and the DDPM, so every loader reads it the same way:
`{"config": dataclasses.asdict(config), "state_dict": ..., **extra}`, written atomically. A file may hold
further weight sets of the same model under other `*state_dict` keys (the transformer's EMA weights:
`ema_state_dict`); a loader names the one it wants.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from dnd.atomic import atomic_path

Model = TypeVar("Model", bound=nn.Module)


def save_model_file(path: Path, config: Any, state_dict: dict[str, Any], **extra: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save({"config": asdict(config), "state_dict": state_dict, **extra}, tmp)


def _weight_sets(payload: dict[str, Any]) -> list[str]:
    return [key for key in payload if key.endswith("state_dict")]


def load_model_file(path: Path, build: Callable[[dict[str, Any]], Model], device: str | torch.device = "cpu",
                    state_key: str = "state_dict") -> tuple[Model, dict[str, Any]]:
    """The model `build(config dict)` makes, with the file's weights `state_key`, on `device` in eval mode; and
    the file's other entries. Read onto the CPU first: a file written on one GPU loads on any device."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if state_key not in payload:
        raise KeyError(f"{path} holds no {state_key!r} (its weight sets: {_weight_sets(payload)})")
    model = build(payload["config"])
    model.load_state_dict(payload[state_key])
    for key in _weight_sets(payload):
        del payload[key]
    return model.to(device).eval(), payload


def read_model_header(path: Path) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """A model file's config dict, parameter count and other entries, without reading its weights: the file
    is memory-mapped and only the tensors' shapes are looked at (an XXXL checkpoint is ~10 GB)."""
    payload = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    state = payload["state_dict"]
    params = sum(tensor.numel() for tensor in state.values())
    for key in _weight_sets(payload):
        del payload[key]
    return payload.pop("config"), params, payload
