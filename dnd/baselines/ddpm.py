"""The paper's DDPM baseline: an unconditional pixel-space diffusion model trained from scratch (diffusers).

A `UNet2DModel` learns to predict the noise (or v, or x0) added by a `DDPMScheduler`; the sampler is
the ancestral DDPM reverse process. Training follows the project's loop contract (see `dnd.training`):
`last.pt` in the stage's work area every `checkpoint_every` steps and on SIGTERM/SIGUSR1/SIGUSR2 (then
exit 128 + signal); a rerun resumes from it and reaches the same weights as an uninterrupted run,
because each step's batch, timesteps and noise depend on (seed, step) alone. The declared output
`model.pt` (config + EMA weights) is written last.

Sampling is a short hand loop over `scheduler.step` rather than `DDPMPipeline`: it runs the network
under bf16 autocast on GPU, converts to uint8 as the rest of the project does (`to_uint8`), and gives
every image its own generator seeded by (seed, image index), for its starting noise and for every
reverse step, so image i is the same whatever the batch size or the shard that draws it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from torch.utils.data import DataLoader

from dnd.modelfile import load_model_file, save_model_file
from dnd.data.images import ImageShardDataset, to_uint8
from dnd.device import default_device
from dnd.training import LoopConfig, RunInfo, StepBatchSampler, run_training, seed_everything

log = logging.getLogger("dnd.baselines.ddpm")


@dataclass
class DDPMConfig:
    # data
    resolution: int = 64  # images are resized to resolution×resolution
    channels: int = 1  # 1 = grayscale (pure-text pages), 3 = RGB
    # U-Net (Ho et al. 2020's architecture as built by diffusers)
    block_out_channels: tuple[int, ...] = (32, 64, 64, 128)  # one resolution level each, halving the side
    layers_per_block: int = 2  # residual blocks per level
    attention_resolutions: tuple[int, ...] = (16,)  # feature-map sides with self-attention; () = none (also none in the middle)
    norm_num_groups: int = 32  # GroupNorm groups; must divide every entry of block_out_channels
    dropout: float = 0.0
    # diffusion
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # diffusers name: linear (DDPM's 1e-4 → 0.02) | squaredcos_cap_v2 (cosine) | ...
    prediction_type: str = "epsilon"  # epsilon | v_prediction | sample
    # optimisation
    lr: float = 1e-4
    warmup_steps: int = 0  # linear lr warm-up
    batch_size: int = 16  # images per optimizer step
    micro_batch_size: int | None = None  # images per forward/backward (gradients accumulated); None = batch_size
    steps: int = 2000
    grad_clip: float | None = 1.0  # DDPM clips gradient norms at 1
    ema_decay: float = 0.9999  # capped early by (1 + step) / (10 + step), so short runs still average
    seed: int = 0
    checkpoint_every: int = 500
    num_workers: int = 0  # DataLoader worker processes
    # sampling
    num_inference_steps: int = 1000  # reverse steps; fewer skip timesteps (DDPMScheduler's spacing)

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(self.block_out_channels)
        self.attention_resolutions = tuple(self.attention_resolutions)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "DDPMConfig":
        """A config subtree, optionally `{preset: demo, <field>: <override>, ...}`."""
        raw = dict(raw)
        preset = raw.pop("preset", None)
        return ddpm_config(preset, **raw) if preset else cls(**raw)


@dataclass
class DDPMSamplingConfig:
    """`ddpm.<name>.sampling`: how many images `sample_ddpm` draws, and how."""

    n: int = 250  # the paper's PPL-OCR scores 250 images
    seed: int = 0  # image i is seeded by (seed, i)
    batch_size: int = 16
    num_inference_steps: int | None = None  # None: the model's own num_inference_steps


PRESETS: dict[str, DDPMConfig] = {
    # Unit tests: 16 px grayscale, two levels, no attention; ≈ 0.16M parameters.
    "tiny": DDPMConfig(resolution=16, block_out_channels=(16, 32), layers_per_block=1, attention_resolutions=(),
                       norm_num_groups=8, lr=2e-3, batch_size=4, steps=40, ema_decay=0.99, checkpoint_every=10,
                       num_inference_steps=10),
    # CPU demo: 64 px grayscale pages, attention at 16 px; ≈ 4.3M parameters.
    "demo": DDPMConfig(resolution=64, block_out_channels=(32, 64, 64, 128), layers_per_block=2,
                       attention_resolutions=(16,), norm_num_groups=32, lr=2e-4, batch_size=16, steps=2000,
                       ema_decay=0.999, checkpoint_every=250, num_inference_steps=250),
    # The paper's baseline: DDPM's 256 px (LSUN) network, ch 128, mult (1, 1, 2, 2, 4, 4), attention at
    # 16 px, lr 2e-5, batch 64, EMA 0.9999, 1000 sampling steps; RGB like the pages the DnD models see;
    # ≈ 114M parameters. A batch of 64 at 256 px does not fit an 80 GB GPU (bf16 autocast): 4 micro-batches.
    "paper": DDPMConfig(resolution=256, channels=3, block_out_channels=(128, 128, 256, 256, 512, 512),
                        layers_per_block=2, attention_resolutions=(16,), norm_num_groups=32, lr=2e-5,
                        warmup_steps=5000, batch_size=64, micro_batch_size=16, steps=500_000, ema_decay=0.9999, checkpoint_every=5000,
                        num_inference_steps=1000),
}


def ddpm_config(preset: str, **overrides) -> DDPMConfig:
    """A named preset with some fields replaced, e.g. `ddpm_config("demo", steps=500)`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown DDPM preset {preset!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[preset], **overrides)


def unet_block_types(cfg: DDPMConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Down and up block types: level i of the down path works at side resolution / 2**i, the up path mirrors it."""
    sides = [cfg.resolution // 2**level for level in range(len(cfg.block_out_channels))]
    attention = [side in cfg.attention_resolutions for side in sides]
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return down, up


def build_unet(cfg: DDPMConfig) -> UNet2DModel:
    down, up = unet_block_types(cfg)
    return UNet2DModel(
        sample_size=cfg.resolution,
        in_channels=cfg.channels,
        out_channels=cfg.channels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        add_attention=bool(cfg.attention_resolutions),
        attention_head_dim=None,  # one head of full width, as DDPM
        norm_num_groups=cfg.norm_num_groups,
        dropout=cfg.dropout,
    )


def make_scheduler(cfg: DDPMConfig) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type)


def derived_seed(*parts: int) -> int:
    """A 32-bit seed that mixes (seed, step) or (seed, image index) without collisions between neighbours."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def draw_noise(scheduler: DDPMScheduler, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A training timestep per image (B,) and Gaussian noise like `images`, drawn on CPU from `generator`."""
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (images.shape[0],), generator=generator)
    noise = torch.randn(images.shape, generator=generator)
    return timesteps.to(images.device), noise.to(images.device)


def diffusion_loss(model: UNet2DModel, scheduler: DDPMScheduler, images: torch.Tensor, timesteps: torch.Tensor,
                   noise: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the model's prediction; images and noise (B, C, H, W), images in [-1, 1]."""
    noisy = scheduler.add_noise(images, noise, timesteps)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=images.device.type == "cuda"):
        prediction = model(noisy, timesteps).sample  # (B, C, H, W)
    kind = scheduler.config.prediction_type
    target = {"epsilon": noise, "sample": images}.get(kind)
    if target is None:
        if kind != "v_prediction":
            raise ValueError(f"unknown prediction_type {kind!r} (setting prediction_type)")
        target = scheduler.get_velocity(images, noise, timesteps)
    return F.mse_loss(prediction.float(), target)


def accumulate_gradients(model: UNet2DModel, scheduler: DDPMScheduler, images: torch.Tensor, generator: torch.Generator,
                         micro_batch_size: int | None) -> float:
    """Backward the batch's mean loss in micro-batches; returns the loss.

    The noise is drawn for the whole batch first, so the micro-batch size changes memory, not the result.
    """
    timesteps, noise = draw_noise(scheduler, images, generator)
    size = micro_batch_size or len(images)
    total = 0.0
    for chunk in range(0, len(images), size):
        part = slice(chunk, chunk + size)
        loss = diffusion_loss(model, scheduler, images[part], timesteps[part], noise[part]) * (len(images[part]) / len(images))
        loss.backward()
        total += loss.item()
    return total


@torch.no_grad()
def update_ema(ema: UNet2DModel, model: UNet2DModel, decay: float) -> None:
    for averaged, current in zip(ema.parameters(), model.parameters()):
        averaged.lerp_(current, 1.0 - decay)


def save_ddpm(path: Path, ema: UNet2DModel, cfg: DDPMConfig, **extra: Any) -> None:
    save_model_file(path, cfg, ema.state_dict(), ema=True, **extra)


def load_ddpm(path: Path, device: str | torch.device = "cpu") -> tuple[UNet2DModel, DDPMConfig]:
    """The EMA network (in eval mode) and the config it was trained with."""
    model, payload = load_model_file(path, lambda config: build_unet(DDPMConfig(**config)), device)
    return model, DDPMConfig(**payload["config"])


class DDPMTrainer:
    """The DDPM's step and export for `dnd.training.run_training` (no validation: the last step is the result)."""

    def __init__(self, cfg: DDPMConfig, datasets: list[Path], work_dir: Path, device: torch.device):
        self.cfg, self.device = cfg, device
        seed_everything(cfg.seed)
        self.train_set = ImageShardDataset(datasets, "train", cfg.channels, cfg.resolution, cache_dir=work_dir / "images")
        self.scheduler = make_scheduler(cfg)
        self.model = build_unet(cfg).to(device)
        self.ema = build_unet(cfg).to(device).requires_grad_(False)
        self.ema.load_state_dict(self.model.state_dict())
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.batches = None  # the loader's iterator, from the first step trained (after a resume: its step)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
                "config": asdict(self.cfg)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        if self.batches is None:
            sampler = StepBatchSampler(len(self.train_set), cfg.batch_size, cfg.seed, step, cfg.steps)
            self.batches = iter(DataLoader(self.train_set, batch_sampler=sampler, num_workers=cfg.num_workers))
            self.model.train()
        images = next(self.batches)
        lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))  # a function of step: nothing to resume
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # each step's timesteps and noise come from (seed, step): the same whether or not the run was resumed
        generator = torch.Generator().manual_seed(derived_seed(cfg.seed, step))
        self.optimizer.zero_grad(set_to_none=True)
        loss = accumulate_gradients(self.model, self.scheduler, images.to(self.device, non_blocking=True), generator,
                                    cfg.micro_batch_size)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        update_ema(self.ema, self.model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        self.last_loss = loss
        return {"loss": loss, "lr": lr}

    def validate(self, step: int) -> None:
        return None

    def export(self, checkpoint: dict[str, Any], out: Path) -> dict[str, Any]:
        self.ema.load_state_dict(checkpoint["ema"])
        save_ddpm(out, self.ema, self.cfg, step=checkpoint["step"])
        return {"last_loss": getattr(self, "last_loss", None), "parameters": sum(p.numel() for p in self.model.parameters())}


def train_ddpm(cfg: DDPMConfig, datasets: list[Path], out: Path, work_dir: Path, should_stop: Callable[[], bool] = lambda: False,
               code_version: str | None = None, name: str = "ddpm") -> dict[str, Any] | None:
    """Train on the train split of `datasets`; write `out` (model.pt) and `train_summary.json` beside it."""
    device = default_device()
    trainer = DDPMTrainer(cfg, datasets, work_dir, device)
    loop = LoopConfig(steps=cfg.steps, checkpoint_every=cfg.checkpoint_every, seed=cfg.seed)
    run = RunInfo(name, "train_ddpm", asdict(cfg), device=device, code_version=code_version)
    return run_training(trainer, loop, run, work_dir, out, should_stop)


@torch.no_grad()
def sample_ddpm(model_path: Path, n: int, seed: int, batch_size: int = 16, num_inference_steps: int | None = None,
                start: int = 0, device: str | torch.device | None = None) -> np.ndarray:
    """Images start..start+n-1 of the sample stream of `seed`: uint8 (N, H, W, C).

    Image i depends on (seed, i) only, so shards drawn with different `start`s and batch sizes
    concatenate to the same images as one run.
    """
    device = torch.device(device) if device is not None else default_device()
    model, cfg = load_ddpm(model_path, device)
    scheduler = make_scheduler(cfg)
    scheduler.set_timesteps(num_inference_steps or cfg.num_inference_steps)
    shape = (cfg.channels, cfg.resolution, cfg.resolution)
    batches = []
    for first in range(start, start + n, batch_size):
        indices = range(first, min(first + batch_size, start + n))
        generators = [torch.Generator().manual_seed(derived_seed(seed, i)) for i in indices]
        images = randn_tensor((len(indices), *shape), generator=generators, device=device)  # (B, C, H, W)
        for t in scheduler.timesteps:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                prediction = model(images, t).sample
            images = scheduler.step(prediction.float(), t, images, generator=generators).prev_sample
        batches.append(to_uint8(images))
    return np.concatenate(batches) if batches else np.zeros((0, cfg.resolution, cfg.resolution, cfg.channels), np.uint8)
