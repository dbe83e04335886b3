"""Load the authors' released DnD-Transformer checkpoints (LlamaGen layout) into our Transformer.

Key map, theirs -> ours:

    tok_embeddings.weight                     -> tok_embeddings.weight (one table for every depth)
    cls_embedding.embedding_table.weight      -> class_embedding.weight (last row: null class)
    layers.{i}.attention.wqkv.weight          -> blocks.{i}.attention.wqkv.weight
    layers.{i}.attention.wo.weight            -> blocks.{i}.attention.wo.weight
    layers.{i}.feed_forward.w{1,2,3}.weight   -> blocks.{i}.feed_forward.w{1,2,3}.weight
    layers.{i}.attention_norm.weight          -> blocks.{i}.attention_norm.weight
    layers.{i}.ffn_norm.weight                -> blocks.{i}.ffn_norm.weight
    norm.{d}.weight                           -> heads.{d}.norm.weight
    output.{d}.weight                         -> heads.{d}.output.weight
    norm.weight, output.weight                -> heads.0.* (a one-head LlamaGen checkpoint: variant "1d")

Derived tensors some checkpoints carry (freqs_cis, causal_mask, attention kv_cache buffers) are
recomputed here and skipped; the prefixes `module.` (DDP) and `_orig_mod.` (torch.compile) are
stripped. Anything else unknown, missing or of the wrong shape is an error.

The state dict holds no head count, grid size or head layer indexes: they come from keyword
arguments, else from the training `args` saved beside the weights, else from defaults (64-wide
attention heads as in every LlamaGen size; the authors' head spacing, `default_head_layers`).
"""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor

from dnd.transformer.model import PRESETS, Transformer, TransformerConfig, default_head_layers

# (pattern on their key, replacement giving ours)
KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"^tok_embeddings\.weight$", "tok_embeddings.weight"),
    (r"^cls_embedding\.embedding_table\.weight$", "class_embedding.weight"),
    (r"^layers\.(\d+)\.attention\.(wqkv|wo)\.weight$", r"blocks.\1.attention.\2.weight"),
    (r"^layers\.(\d+)\.feed_forward\.(w[123])\.weight$", r"blocks.\1.feed_forward.\2.weight"),
    (r"^layers\.(\d+)\.(attention_norm|ffn_norm)\.weight$", r"blocks.\1.\2.weight"),
    (r"^norm\.(\d+)\.weight$", r"heads.\1.norm.weight"),
    (r"^output\.(\d+)\.weight$", r"heads.\1.output.weight"),
    (r"^norm\.weight$", "heads.0.norm.weight"),
    (r"^output\.weight$", "heads.0.output.weight"),
)
DERIVED_KEYS = re.compile(r"^(freqs_cis|causal_mask|layers\.\d+\.attention\.kv_cache\.[kv]_cache)$")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
HEAD_WIDTH = 64  # attention head size of every LlamaGen preset


def map_key(key: str) -> str | None:
    """Our name for one of their keys; None for keys outside the map."""
    for pattern, replacement in KEY_MAP:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def read_checkpoint(path: str | Path, use_ema: bool = False) -> tuple[dict[str, Tensor], dict]:
    """(their state dict, training args as a dict) from a checkpoint file of any of their containers."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if use_ema:
        if "ema" not in checkpoint:
            raise KeyError(f"{path}: use_ema=True but the checkpoint holds no 'ema' weights")
        state = checkpoint["ema"]
    else:
        container = next((k for k in ("model", "module", "state_dict") if k in checkpoint), None)
        state = checkpoint[container] if container else checkpoint  # FSDP exports are the bare dict
    args = checkpoint.get("args")  # their argparse Namespace, saved beside the weights
    args = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, dict) else {}
    return {strip_wrappers(k): v for k, v in state.items()}, args


def infer_config(
    state: dict[str, Tensor],
    args: dict,
    *,
    grid_size: int | None,
    n_head: int | None,
    head_layers: list[int] | None,
    variant: str | None,
) -> TransformerConfig:
    """Our config from tensor shapes, then keyword arguments, then their training args."""
    required = (
        "tok_embeddings.weight",
        "cls_embedding.embedding_table.weight",
        "layers.0.attention.wqkv.weight",
        "layers.0.feed_forward.w1.weight",
    )
    for key in required:
        if key not in state:
            raise KeyError(f"not an authors' transformer checkpoint: no {key!r}")
    if args.get("gpt_type", "c2i") != "c2i" or int(args.get("cls_token_num", 1)) != 1:
        raise ValueError("only class-conditional checkpoints with one class token (gpt_type c2i) are supported")
    vocab_size, dim = state["tok_embeddings.weight"].shape
    n_layer = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"^layers\.(\d+)\.", k)))
    one_head = "output.weight" in state
    depth = 1 if one_head else len([k for k in state if re.match(r"^output\.\d+\.weight$", k)])
    if depth == 0:
        raise KeyError("no prediction heads found (expected output.{d}.weight or output.weight)")
    if state["layers.0.attention.wqkv.weight"].shape != (3 * dim, dim):
        raise ValueError("grouped-query attention (n_kv_head != n_head) is not supported")

    if n_head is None:
        preset = str(args.get("gpt_model", "")).removeprefix("GPT-")
        n_head = PRESETS[preset]["n_head"] if preset in PRESETS else dim // HEAD_WIDTH
    if grid_size is None:
        if "image_size" not in args or "downsample_size" not in args:
            raise ValueError("the checkpoint holds no training args: pass grid_size (e.g. 16 for 256 px, f=16)")
        grid_size = int(args["image_size"]) // int(args["downsample_size"])
    if head_layers is None:
        positions = args.get("pred_head_positions")
        if positions is not None and not one_head:
            head_layers = [int(i) for i in str(positions).split(",")][:depth]
        else:
            head_layers = default_head_layers(n_layer, depth)
    num_classes = state["cls_embedding.embedding_table.weight"].shape[0] - 1
    if "num_classes" in args and int(args["num_classes"]) == num_classes + 1:
        num_classes += 1  # trained without class dropout: no null row (added by load_authors_checkpoint)
    return TransformerConfig(
        vocab_size=vocab_size,
        depth=depth,
        grid_size=grid_size,
        n_layer=n_layer,
        n_head=n_head,
        dim=dim,
        ffn_dim=state["layers.0.feed_forward.w1.weight"].shape[0],
        num_classes=num_classes,
        variant=variant or ("1d" if one_head else "dnd"),
        head_layers=head_layers,
    )


def convert_state_dict(state: dict[str, Tensor], model: Transformer) -> dict[str, Tensor]:
    """Rename their tensors to ours; error on unknown, missing or misshapen tensors."""
    ours, unknown = {}, []
    for key, value in state.items():
        if DERIVED_KEYS.match(key):
            continue
        mapped = map_key(key)
        if mapped is None:
            unknown.append(key)
        else:
            ours[mapped] = value
    expected = model.state_dict()
    table = ours.get("class_embedding.weight")
    if table is not None and table.shape[0] + 1 == expected["class_embedding.weight"].shape[0]:
        warnings.warn("checkpoint trained without class dropout: null class set to zeros, CFG is meaningless")
        ours["class_embedding.weight"] = torch.cat([table, table.new_zeros(1, table.shape[1])])
    missing = sorted(set(expected) - set(ours))
    unknown += sorted(k for k in ours if k not in expected)
    if unknown or missing:
        raise KeyError(f"checkpoint does not match the model: unknown keys {unknown[:8]}, missing keys {missing[:8]}")
    wrong = [f"{k}: {tuple(v.shape)}, want {tuple(expected[k].shape)}" for k, v in ours.items()
             if v.shape != expected[k].shape]  # fmt: skip
    if wrong:
        raise ValueError(f"checkpoint tensors of the wrong shape: {wrong[:8]}")
    return ours


def load_authors_checkpoint(
    path: str | Path,
    *,
    grid_size: int | None = None,
    n_head: int | None = None,
    head_layers: list[int] | None = None,
    variant: str | None = None,
    use_ema: bool = False,
) -> tuple[Transformer, TransformerConfig]:
    """(model in eval mode on CPU, its config) from one of the authors' transformer checkpoints."""
    state, args = read_checkpoint(path, use_ema)
    config = infer_config(state, args, grid_size=grid_size, n_head=n_head, head_layers=head_layers, variant=variant)
    model = Transformer(config)
    model.load_state_dict(convert_state_dict(state, model))
    return model.eval(), config
