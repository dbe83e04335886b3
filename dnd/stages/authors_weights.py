"""`import_authors_tokenizer` / `import_authors_transformer`: the authors' released checkpoints as our `model.pt`.

A tokenizer or transformer of the config with `pretrained: <local checkpoint>` is not trained: its checkpoint
goes through the authors'-checkpoint loaders (`dnd.tokenizer.authors_checkpoint`,
`dnd.transformer.authors_checkpoint`), which refuse any key, shape or layout they cannot represent exactly,
and is written as the same `model.pt` a training run writes, so tokenization, sampling, evaluation and
the tables take it like any other row. The file says where it came from (`source`, the checkpoint's path
and SHA-256), and so does its provenance record.

The authors' transformer checkpoints hold the raw weights under `model` and, when trained with EMA, the
EMA weights under `ema`; both are kept (the authors' sampler loads `model`: `sampling.<name>.weights: raw`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from dnd.modelfile import read_model_header
from dnd.provenance import file_sha256, write_provenance

log = logging.getLogger("dnd.authors_weights")

SOURCE = "authors' checkpoint"


def _origin(checkpoint: Path) -> dict[str, Any]:
    return {"source": SOURCE, "pretrained": str(checkpoint), "pretrained_sha256": file_sha256(checkpoint)}


def import_authors_tokenizer(name: str, checkpoint: Path, out: Path, config_path: Path | None = None) -> dict[str, Any]:
    """Their RQ-VAE checkpoint (config: `config_path`, else inside the file, else `config.yaml` beside it) -> `out`."""
    from dnd.tokenizer.authors_checkpoint import load_authors_rqvae
    from dnd.tokenizer.rqvae import save_tokenizer

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"tokenizers.{name}.pretrained: no file {checkpoint}")
    model = load_authors_rqvae(checkpoint, config_path)
    origin = _origin(checkpoint)
    save_tokenizer(out, model, name, **origin)
    summary = {"name": name, **origin, "depth": model.config.depth, "codebook_size": model.config.codebook_size,
               "downsample_factor": model.config.downsample_factor}
    write_provenance(out, "import_authors_tokenizer", {"pretrained": str(checkpoint), "config": str(config_path or "")},
                     summary=summary)
    log.info("%s: the authors' RQ-VAE %s (depth %d, %d codes)", name, checkpoint, model.config.depth, model.config.codebook_size)
    return summary


def import_authors_transformer(name: str, checkpoint: Path, out: Path, tokenizer: Path,
                               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Their DnD-Transformer checkpoint -> `out`, checked against the tokenizer it is sampled with.

    `overrides` (the config's `model`) may give `head_layers`, `variant` or `n_head` where the checkpoint's saved
    training args do not say them.
    """
    from dnd.transformer.authors_checkpoint import load_authors_checkpoint
    from dnd.transformer.model import save_transformer

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"transformers.{name}.pretrained: no file {checkpoint}")
    options = {key: value for key, value in (overrides or {}).items() if key in ("head_layers", "variant", "n_head")}
    model, config = load_authors_checkpoint(checkpoint, **options)
    tokenizer_config, _, _ = read_model_header(tokenizer)
    if (config.vocab_size, config.depth) != (tokenizer_config["codebook_size"], tokenizer_config["depth"]):
        raise ValueError(
            f"transformers.{name}.pretrained: {checkpoint} predicts {config.depth} code(s) of {config.vocab_size} per position, "
            f"its tokenizer {tokenizer} has depth {tokenizer_config['depth']} and {tokenizer_config['codebook_size']} codes")
    raw = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    step = raw.get("steps") if isinstance(raw, dict) else None
    weights: dict[str, Any] = {"raw": {"step": step, "val_loss": None}}
    extra: dict[str, Any] = {}
    if isinstance(raw, dict) and "ema" in raw:
        ema, _ = load_authors_checkpoint(checkpoint, use_ema=True, **options)
        extra["ema_state_dict"] = ema.state_dict()
        weights["ema"] = {"step": step, "val_loss": None}
    del raw
    origin = _origin(checkpoint)
    save_transformer(out, model, name, step=step, val_loss=None, tokenizer=str(tokenizer), weights=weights, **origin, **extra)
    summary = {"name": name, **origin, "variant": config.variant, "params": model.num_params(), "depth": config.depth,
               "head_layers": config.head_layers, "weights": weights}
    write_provenance(out, "import_authors_transformer", {"pretrained": str(checkpoint), "model": options}, summary=summary)
    log.info("%s: the authors' transformer %s (%s, %.1fM parameters)", name, checkpoint, config.variant, model.num_params() / 1e6)
    return summary
