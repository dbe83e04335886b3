"""Load RQ-VAE checkpoints of the authors' codebase (Lee et al. 2022's rq-vae-transformer, used by DnD).

Their checkpoint is a torch file holding `state_dict` (or the bare state dict), and its training config
is `config.yaml` beside it (`arch.hparams` + `arch.ddconfig`), or a `config` entry inside the file, or a
file named by `config_path`. Their layer layout is ours; only names differ:

| theirs                                     | ours                                             |
|--------------------------------------------|--------------------------------------------------|
| encoder.down.{i}.block.{j}.*               | encoder.stages.{i}.blocks.{j}.*                  |
| encoder.down.{i}.attn.{j}.*                | encoder.stages.{i}.attentions.{j}.*              |
| encoder.down.{i}.downsample.conv.*         | encoder.stages.{i}.resample.conv.*               |
| decoder.up.{i}.block.{j}.*                 | decoder.stages.{L-1-i}.blocks.{j}.* (ours run lowest resolution first) |
| decoder.up.{i}.attn.{j}.*                  | decoder.stages.{L-1-i}.attentions.{j}.*          |
| decoder.up.{i}.upsample.conv.*             | decoder.stages.{L-1-i}.resample.conv.*           |
| {encoder,decoder}.mid.attn_1.*             | {encoder,decoder}.mid.attention.*                |
| *.nin_shortcut.*                           | *.shortcut.*                                     |
| quantizer.codebooks.{d}.weight (K+1, C)    | quantizer.codebook (K, C): their last row is an unused padding code |
| quantizer.codebooks.{d}.cluster_size_ema   | quantizer.ema_cluster_size                       |
| quantizer.codebooks.{d}.embed_ema          | quantizer.ema_embed_sum                          |

Every other name (conv_in, mid.block_1/2, norm_out, conv_out, norm1/2, conv1/2, q/k/v/proj_out,
quant_conv, post_quant_conv) is the same. With a shared codebook their ModuleList repeats one module,
so `codebooks.{d}` is the same tensor for every depth d. Their EMA buffers follow the same update rule
as ours, so training can go on from a loaded checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from dnd.tokenizer.rqvae import RQVAE, RQVAEConfig

# Patterns applied in order to each of their key names; the decoder's stage index is reversed apart.
RENAMES = (
    (re.compile(r"^encoder\.down\.(\d+)\.block\."), r"encoder.stages.\1.blocks."),
    (re.compile(r"^encoder\.down\.(\d+)\.attn\."), r"encoder.stages.\1.attentions."),
    (re.compile(r"^encoder\.down\.(\d+)\.downsample\."), r"encoder.stages.\1.resample."),
    (re.compile(r"\.mid\.attn_1\."), ".mid.attention."),
    (re.compile(r"\.nin_shortcut\."), ".shortcut."),
)
DECODER_STAGE = re.compile(r"^decoder\.up\.(\d+)\.(block|attn|upsample)\.")
DECODER_PARTS = {"block": "blocks", "attn": "attentions", "upsample": "resample"}
CODEBOOK_KEY = re.compile(r"^quantizer\.codebooks\.(\d+)\.(weight|cluster_size_ema|embed_ema)$")
CODEBOOK_BUFFERS = {"weight": "codebook", "cluster_size_ema": "ema_cluster_size", "embed_ema": "ema_embed_sum"}


class AuthorsCheckpointError(ValueError):
    """The checkpoint or its config is not an RQ-VAE our model can represent exactly."""


def rqvae_config_from_authors(config: Mapping[str, Any]) -> RQVAEConfig:
    """Our config from theirs: `{arch: {hparams, ddconfig}}` (their config.yaml) or flat hparams with `ddconfig`."""
    hparams = config["arch"]["hparams"] if "arch" in config else config
    ddconfig = config["arch"]["ddconfig"] if "arch" in config else config["ddconfig"]
    if hparams.get("bottleneck_type", "rq") != "rq":
        raise AuthorsCheckpointError(f"only residual quantization is supported, not {hparams['bottleneck_type']!r}")
    if not hparams["shared_codebook"]:
        raise AuthorsCheckpointError("the checkpoint has one codebook per depth; our tokenizer shares one codebook")
    code_h, code_w, depth = hparams["code_shape"]
    latent_shape = hparams.get("latent_shape")
    if latent_shape is not None and list(latent_shape[:2]) != [code_h, code_w]:
        raise AuthorsCheckpointError(
            f"latent_shape {latent_shape} stacks several latents per code ({hparams['code_shape']})"
        )
    if ddconfig.get("double_z", False) or not ddconfig.get("resamp_with_conv", True):
        raise AuthorsCheckpointError("double_z or resampling without convs is not an RQ-VAE layout we support")
    if ddconfig["out_ch"] != ddconfig["in_channels"]:
        raise AuthorsCheckpointError(f"out_ch {ddconfig['out_ch']} differs from in_channels {ddconfig['in_channels']}")
    n_stages, resolution = len(ddconfig["ch_mult"]), ddconfig["resolution"]
    attention_levels = [i for i in range(n_stages) if resolution // 2**i in ddconfig["attn_resolutions"]]
    if attention_levels not in ([], [n_stages - 1]):
        raise AuthorsCheckpointError(f"attention at stages {attention_levels}; we support the lowest resolution only")
    return RQVAEConfig(
        in_channels=ddconfig["in_channels"],
        stem="conv",
        ch=ddconfig["ch"],
        ch_mult=tuple(ddconfig["ch_mult"]),
        num_res_blocks=ddconfig["num_res_blocks"],
        attn_at_lowest=bool(attention_levels),
        mid_block=True,
        dropout=ddconfig.get("dropout", 0.0),
        z_channels=ddconfig["z_channels"],
        embed_dim=hparams["embed_dim"],
        codebook_size=hparams["n_embed"],
        depth=depth,
        ema_decay=hparams.get("decay", 0.99),
        dead_code_restart=hparams.get("restart_unused_codes", True),
        codebook_init="restart",
    )


def _our_key(key: str, n_stages: int) -> str:
    for pattern, replacement in RENAMES:
        key = pattern.sub(replacement, key)
    match = DECODER_STAGE.match(key)
    if match:
        stage = n_stages - 1 - int(match[1])
        key = f"decoder.stages.{stage}.{DECODER_PARTS[match[2]]}." + key[match.end() :]
    return key


def convert_authors_state_dict(state: Mapping[str, Tensor], config: RQVAEConfig) -> dict[str, Tensor]:
    """Their state dict -> ours (see the module docstring's table)."""
    ours: dict[str, Tensor] = {}
    codebook_tensors: dict[str, list[Tensor]] = {name: [] for name in CODEBOOK_BUFFERS}
    for key, value in state.items():
        key = key.removeprefix("module.")  # saved from a DistributedDataParallel wrapper
        match = CODEBOOK_KEY.match(key)
        if match:
            codebook_tensors[match[2]].append(value)
        else:
            ours[_our_key(key, len(config.ch_mult))] = value
    for name, tensors in codebook_tensors.items():
        if len(tensors) != config.depth:
            raise AuthorsCheckpointError(
                f"expected quantizer.codebooks.{{0..{config.depth - 1}}}.{name}, got {len(tensors)}"
            )
        if any(not torch.equal(tensors[0], other) for other in tensors[1:]):
            raise AuthorsCheckpointError(
                f"quantizer.codebooks.*.{name} differ between depths: the codebook is not shared"
            )
    weight = codebook_tensors["weight"][0]
    if weight.shape != (config.codebook_size + 1, config.embed_dim):
        raise AuthorsCheckpointError(
            f"codebook weight {tuple(weight.shape)}, "
            f"expected ({config.codebook_size} codes + 1 padding, {config.embed_dim})"
        )
    ours["quantizer.codebook"] = weight[:-1]
    ours["quantizer.ema_cluster_size"] = codebook_tensors["cluster_size_ema"][0]
    ours["quantizer.ema_embed_sum"] = codebook_tensors["embed_ema"][0]
    ours["quantizer.initialized"] = torch.tensor(True)  # a trained codebook needs no initialisation
    return ours


def _read_config(checkpoint: Mapping[str, Any], path: Path, config_path: Path | None) -> Mapping[str, Any]:
    if config_path is not None:
        return yaml.safe_load(Path(config_path).read_text())
    if "config" in checkpoint:
        return checkpoint["config"]
    beside = path.parent / "config.yaml"
    if beside.is_file():
        return yaml.safe_load(beside.read_text())
    raise AuthorsCheckpointError(f"no config for {path}: no `config` entry, no {beside}, and no config_path given")


def load_authors_rqvae(path: Path, config_path: Path | None = None) -> RQVAE:
    """The authors' RQ-VAE checkpoint at `path` as our `RQVAE`, in eval mode, on the CPU.

    Refuses (AuthorsCheckpointError) a per-depth codebook, a layout we cannot represent, and any key that
    is missing or left over after the mapping.
    """
    path = Path(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    config = rqvae_config_from_authors(_read_config(checkpoint, path, config_path))
    state = convert_authors_state_dict(checkpoint.get("state_dict", checkpoint), config)
    model = RQVAE(config)
    expected = model.state_dict()
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    if unknown or missing:
        raise AuthorsCheckpointError(f"{path}: unknown keys {unknown}, missing keys {missing}")
    model.load_state_dict(state)
    return model.eval()
