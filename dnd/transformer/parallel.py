"""Data parallelism for the transformer trainer: DDP replicas, or FSDP2 shards for the large presets.

DDP keeps a full copy of weights, gradients and AdamW moments on every rank: 16 bytes per parameter,
~23 GB for XXL and ~41 GB for XXXL before activations. FSDP (`fully_shard`) splits all three over the
ranks and all-gathers one block's weights at a time for its forward and backward; each transformer
block is a unit of its own and the root unit keeps the embeddings and prediction heads. Both average
the gradients of the ranks' shares of a global batch, so they train the same weights.

Checkpoints stay in the single-process format whatever the parallelism: full, unsharded `model` and
`optimizer` state dicts (parameters by index, as `optimizer.state_dict()`), gathered on rank 0. Every
rank loads the full state on resume and keeps its shard. Under FSDP gathering is a collective: every
rank calls the `full_*` functions at the same points; ranks other than 0 get empty dicts.

Under FSDP the EMA weights are a second sharded model, updated shard by shard and gathered like the
model at checkpoints; validation runs through the sharded model on every rank, while the sample
grids (whose decoding loop calls submodules directly) use an unsharded copy gathered on rank 0.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from dnd.transformer.model import Transformer

Parallelism = Literal["auto", "ddp", "fsdp"]
PARALLELISMS: tuple[str, ...] = ("auto", "ddp", "fsdp")
FSDP_SIZES = ("XXL", "XXXL")  # presets whose replicated training state crowds an 80 GB GPU


def resolve_parallelism(parallelism: str, size: str, world_size: int) -> Literal["none", "ddp", "fsdp"]:
    """What a run uses: nothing in one process; `auto` = FSDP for the XXL and XXXL presets, else DDP."""
    if parallelism not in PARALLELISMS:
        raise ValueError(f"parallelism must be one of {PARALLELISMS}, got {parallelism!r}")
    if world_size == 1:
        return "none"
    if parallelism == "auto":
        return "fsdp" if size in FSDP_SIZES else "ddp"
    return parallelism


def _shard(model: Transformer, mixed_precision: bool) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # bf16 weights in forward and backward, gradients reduced and kept in fp32 (as the fp32 master
    # weights and AdamW moments); on CPU everything stays fp32.
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision
              else MixedPrecisionPolicy())
    last = len(model.blocks) - 1
    for i, block in enumerate(model.blocks):
        # the last block's weights would be gathered again right away for the backward pass
        fully_shard(block, mp_policy=policy, reshard_after_forward=i < last)
    fully_shard(model, mp_policy=policy)


def parallelize(model: Transformer, mode: str, device: torch.device) -> nn.Module:
    """The module the training forward goes through: a DDP wrapper, or `model` itself sharded in place."""
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if mode == "fsdp":
        # fully_shard keeps each rank's own initialisation (DDP broadcasts rank 0's): start from rank 0's
        with torch.no_grad():
            for param in model.parameters():
                dist.broadcast(param, src=0)
        _shard(model, mixed_precision=device.type == "cuda")
    return model


def reshard(model: nn.Module, mode: str) -> None:
    """Put the shards back after an evaluation forward: without a backward to follow, FSDP leaves the
    root's and the last block's weights gathered, and the EMA update and optimizer step need shards."""
    if mode != "fsdp":
        return
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def ema_copy(model: Transformer, mode: str, device: torch.device) -> Transformer:
    """A frozen copy of the weights for their EMA; under FSDP sharded as `model`, so the update is per shard."""
    if mode != "fsdp":
        return copy.deepcopy(model).eval().requires_grad_(False)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # its init is overwritten
        ema = Transformer(model.config).to(device)
    _shard(ema, mixed_precision=device.type == "cuda")
    ema.eval().requires_grad_(False)
    with torch.no_grad():
        for target, source in zip(ema.parameters(), model.parameters(), strict=True):
            target.copy_(source)
    return ema


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module, mode: str) -> dict[str, Any]:
    if mode != "fsdp":
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())


def load_full_model_state(model: nn.Module, state: dict[str, Any], mode: str) -> None:
    if mode != "fsdp":
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_full_options())


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's order: index i of `optimizer.state_dict()` is names[i]."""
    names = {param: name for name, param in model.named_parameters()}
    return [names[param] for group in optimizer.param_groups for param in group["params"]]


def _rekey(state: dict[str, Any], keys: dict) -> dict[str, Any]:
    return {
        "state": {keys[k]: v for k, v in state["state"].items()},
        "param_groups": [{**group, "params": [keys[k] for k in group["params"]]} for group in state["param_groups"]],
    }


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, mode: str) -> dict[str, Any]:
    if mode != "fsdp":
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=_full_options())  # keyed by parameter name
    if not state:  # ranks other than 0
        return state
    return _rekey(state, {name: i for i, name in enumerate(_param_names(model, optimizer))})


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], mode: str) -> None:
    if mode != "fsdp":
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    by_name = _rekey(state, dict(enumerate(_param_names(model, optimizer))))
    set_optimizer_state_dict(model, optimizer, by_name, options=_full_options())
    for group, saved in zip(optimizer.param_groups, state["param_groups"], strict=True):
        # the loader hands hyperparameters back as lists (betas); keep the checkpoint's exact values
        group.update({key: value for key, value in saved.items() if key != "params"})


def full_copy(model: Transformer, mode: str, device: torch.device) -> Transformer | None:
    """An unsharded model on rank 0 (None elsewhere) for what runs outside the sharded forward:
    sampling (it calls the model's submodules directly). Under FSDP a collective."""
    if mode != "fsdp":
        return model
    state = full_model_state(model, mode)
    if dist.get_rank() != 0:
        return None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        plain = Transformer(model.config)
    plain.load_state_dict(state)
    return plain.to(device).eval()


def from_rank0(values: dict[str, float], mode: str, device: torch.device) -> dict[str, float]:
    """Rank 0's values on every rank: decisions taken on them (a new best checkpoint) are collectives under FSDP."""
    if mode != "fsdp":
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return dict(zip(keys, tensor.tolist()))


def scalar(value: torch.Tensor) -> float:
    """A reduced scalar as a float (`clip_grad_norm_` returns a replicated DTensor for sharded parameters)."""
    from torch.distributed.tensor import DTensor

    return float(value.full_tensor() if isinstance(value, DTensor) else value)
