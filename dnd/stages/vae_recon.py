"""Reconstruction metrics of a pretrained continuous VAE: the paper's SDXL-VAE and SD3-VAE rows of Table 1.

Any `diffusers.AutoencoderKL` saved with `save_pretrained` (SDXL's `vae/`, SD3's `vae/`, ...) is read from a
local folder, never downloaded: `evaluation.recon.reference_vaes.<name>: {path, subfolder}`. Each test image
(in [-1, 1]) is encoded, its latent taken as the posterior's mode (or a seeded sample), and decoded; a
grayscale test set is repeated to the VAE's 3 channels and the reconstruction averaged back to one, so L2
and rOCR compare like with like. The metrics JSON is the RQ-VAE rows' (`dnd.stages.recon`): L2, rOCR, rFID
and a recon grid; code usage is n/a, the latents being continuous.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from dnd.atomic import write_json
from dnd.config import ConfigError
from dnd.data import shards
from dnd.data.images import ImageShardDataset
from dnd.provenance import record
from dnd.metrics.ocr import check_ocr_backend
from dnd.stages.recon import GRID_IMAGES, ReconBatch, ReconEvalConfig, measure_reconstruction
from dnd.device import default_device

log = logging.getLogger("dnd.recon.vae")

CONFIG_KEY = "evaluation.recon.reference_vaes"
VAE_CLASS = "AutoencoderKL"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL modes with one colour channel


@dataclass
class ReferenceVAEConfig:
    path: str  # local folder written by save_pretrained (or a pipeline folder, with subfolder: vae)
    subfolder: str | None = None  # e.g. "vae" inside a full SDXL / SD3 pipeline folder
    latent: str = "mode"  # "mode": the posterior's mean (deterministic); "sample": a seeded draw
    seed: int = 0  # for latent: sample
    dtype: str = "float32"  # float16 is faster on GPU, but SDXL's original VAE overflows in it (NaN images)
    batch_size: int | None = None  # None: evaluation.recon.batch_size

    def __post_init__(self) -> None:
        if self.latent not in ("mode", "sample"):
            raise ConfigError(f"{CONFIG_KEY}.*.latent: {self.latent!r} is not 'mode' or 'sample'")
        if self.dtype not in DTYPES:
            raise ConfigError(f"{CONFIG_KEY}.*.dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")


    @classmethod
    def from_params(cls, params: dict[str, Any], name: str) -> "ReferenceVAEConfig":
        """This VAE's settings: the rule passes them as `vae` (its own rerun trigger); a config file lists
        them all under evaluation.recon.reference_vaes."""
        vae = params["vae"] if "vae" in params else params.get("recon", {}).get("reference_vaes", {}).get(name)
        if vae is None:
            raise ConfigError(f"config key {CONFIG_KEY}.{name} is missing")
        return cls(**vae)


def check_vae_folder(name: str, cfg: ReferenceVAEConfig) -> Path:
    """The model folder, or a ConfigError naming the setting when it is not a diffusers AutoencoderKL."""
    key = f"{CONFIG_KEY}.{name}.path"
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{key}: {cfg.path} is not a folder (expected a diffusers {VAE_CLASS} saved with save_pretrained)")
    folder = root / cfg.subfolder if cfg.subfolder else root
    config_file = folder / "config.json"
    if not config_file.is_file():
        hint = "" if cfg.subfolder else f" (a full pipeline folder? set {CONFIG_KEY}.{name}.subfolder: vae)"
        raise ConfigError(f"{key}: no config.json in {folder}: not a diffusers {VAE_CLASS} folder{hint}")
    class_name = json.loads(config_file.read_text()).get("_class_name")
    if class_name != VAE_CLASS:
        raise ConfigError(f"{key}: {config_file} describes a {class_name!r}, not a diffusers {VAE_CLASS}")
    return root


def load_reference_vae(name: str, cfg: ReferenceVAEConfig, device: torch.device) -> Any:
    from diffusers import AutoencoderKL  # diffusers takes seconds to import: only here

    root = check_vae_folder(name, cfg)
    try:
        vae = AutoencoderKL.from_pretrained(str(root), subfolder=cfg.subfolder, local_files_only=True,
                                            dtype=DTYPES[cfg.dtype])
    except (OSError, ValueError) as err:  # weights missing or not matching the config
        raise ConfigError(f"{CONFIG_KEY}.{name}.path: cannot load a {VAE_CLASS} from {root}: {err}") from err
    return vae.to(device).eval()


def _reconstruct(vae: Any, images: torch.Tensor, cfg: ReferenceVAEConfig, generator: torch.Generator | None) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] → the VAE's reconstruction, same shape and channels, float32."""
    gray = images.shape[1] == 1 and vae.config.in_channels == 3
    x = (images.repeat(1, 3, 1, 1) if gray else images).to(vae.dtype)
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
        latents = posterior.mode() if cfg.latent == "mode" else posterior.sample(generator=generator)
        recon = vae.decode(latents).sample.float().clamp(-1, 1)
    if recon.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"the VAE maps {tuple(images.shape[-2:])} images to {tuple(recon.shape[-2:])}: the test "
                         f"images' sides must be multiples of its downsampling factor")
    return recon.mean(1, keepdim=True) if gray else recon  # (B, C, H, W)


def evaluate_vae_reconstruction(name: str, vae_cfg: ReferenceVAEConfig, testset: Path, out: Path, cfg: ReconEvalConfig,
                                testset_name: str) -> dict[str, Any]:
    """L2, rOCR, rFID of the VAE `name` on the test split of `testset` → `out` (+ a recon grid beside it)."""
    check_ocr_backend(cfg.ocr, "metrics.ocr")
    device = default_device()
    vae = load_reference_vae(name, vae_cfg, device)
    first = next(shards.iter_records(testset, "test", columns=["png"]), None)
    if first is None:
        raise ValueError(f"no test images in {testset}")
    channels = 1 if shards.decode_png(first["png"]).mode in GRAY_MODES else 3  # the test set's own channels: L2 on those
    data = ImageShardDataset([testset], "test", channels, resolution=None, limit=cfg.max_images)
    generator = torch.Generator("cpu").manual_seed(vae_cfg.seed) if vae_cfg.latent == "sample" else None  # same draws on any device

    def reconstruct(batch: torch.Tensor, with_grid: bool) -> ReconBatch:
        recon = _reconstruct(vae, batch, vae_cfg, generator)
        return ReconBatch(recon, grid_rows=[recon[:GRID_IMAGES]] if with_grid else [])

    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    result: dict[str, Any] = {
        "tokenizer": name,
        "testset": testset_name,
        "kind": "continuous_vae",
        "latent_channels": vae.config.latent_channels,
        "downsample_factor": factor,
        "latent": vae_cfg.latent,
        "code_usage": None,
        "code_usage_na_reason": "continuous latents: no codebook",
    }
    result |= measure_reconstruction(reconstruct, data, vae_cfg.batch_size or cfg.batch_size, device, None, cfg, out)
    result["grid"] = "originals, then the VAE's reconstruction"
    result["provenance"] = record("evaluate_vae_reconstruction", {"recon": asdict(cfg), "vae": asdict(vae_cfg)},
                                  vae=name, testset=str(testset), vae_class=VAE_CLASS, vae_dtype=vae_cfg.dtype)
    write_json(out, result)
    log.info("%s on %s: l2=%.4g rocr=%s rfid=%s", name, testset_name, result["l2"], result.get("rocr"), result.get("rfid"))
    return result
