"""`dnd train-tokenizer`: train an RQ-VAE on image shards, resumable, with validation and recon grids.

Checkpoints (`last.pt` every `checkpoint_every` steps and on SIGTERM/SIGUSR1/SIGUSR2, `best.pt` by
validation loss) live in the stage's work area; the declared output `model.pt` is the best weights
and the config, written last. A killed run restarted with the same config resumes from `last.pt`
and reaches the same weights as an uninterrupted one: batches and crops depend on (seed, step) only,
and the RNG states travel in the checkpoint.

Data parallel (DDP) when launched as several processes (a SLURM job with `tasks_per_node` × `nodes`
> 1; `dnd.launch.distributed.init_distributed`): each rank trains on its contiguous share of every
global batch `train.batch_size` on GPU `local_rank`; DDP averages the RQ-VAE's and the discriminator's
gradients, the quantizer updates its codebook from the whole batch (`ResidualQuantizer`), and the GAN
loss's adaptive weight averages its gradients over the ranks, so N ranks train the weights one process
would on the same global batch (up to float rounding; the PatchGAN's BatchNorm normalises each rank's
share on its own, as in the authors' multi-GPU training). Rank 0 logs, validates and writes every file.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from dnd.atomic import atomic_path
from dnd.data.images import ImageShardDataset, to_pil, to_uint8
from dnd.tokenizer.losses import TokenizerLoss, TokenizerLossConfig
from dnd.tokenizer.rqvae import RQVAE, RQVAEConfig, rqvae_config, save_tokenizer
from dnd.training import LoopConfig, RunInfo, StepBatchSampler, join_ranks, run_training, seed_everything

log = logging.getLogger("dnd.tokenizer.train")


@dataclass
class TokenizerTrainConfig:
    resolution: int = 256  # images are resized to resolution×resolution first (the tokenizer's training size)
    crop: int | None = 64  # then a random crop of this side per sample; None = the whole image
    batch_size: int = 16
    steps: int = 2000
    lr: float = 4e-5  # the authors: Adam 4e-5, betas (0.5, 0.9), batch 256
    betas: tuple[float, float] = (0.5, 0.9)
    warmup_steps: int = 0  # plain-autoencoder steps before quantization (precedes a depth-by-depth codebook init)
    checkpoint_every: int = 200
    eval_every: int = 500
    eval_images: int = 8  # validation images (whole, at `resolution`) for the loss and the recon grid
    seed: int = 0
    num_workers: int = 0  # DataLoader worker processes
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)


@dataclass
class TokenizerSpec:
    """One named tokenizer of the config (`tokenizers.<name>`)."""

    name: str
    model: RQVAEConfig
    loss: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)
    train: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)

    @classmethod
    def from_dict(cls, name: str, raw: dict[str, Any]) -> "TokenizerSpec":
        model = dict(raw.get("model", {}))
        preset = model.pop("preset", None)
        config = rqvae_config(preset, **model) if preset else RQVAEConfig(**model)
        return cls(name, config, TokenizerLossConfig(**raw.get("loss", {})), TokenizerTrainConfig(**raw.get("train", {})))


@torch.no_grad()
def validate(model: RQVAE, loss_fn: TokenizerLoss, images: torch.Tensor, step: int) -> dict[str, float]:
    was_training = model.training
    model.eval()
    recon, aux = model(images)
    _, terms = loss_fn.generator_loss(images, recon, aux.commitment_loss, model.last_layer, step)
    model.train(was_training)
    return {f"val/{k}": float(v) for k, v in terms.items()}


@torch.no_grad()
def recon_grid(model: RQVAE, images: torch.Tensor, path: Path) -> None:
    """Originals on top, then the reconstruction from the first d depths for d = 1, 2, 4, … D (coarse to fine)."""
    from torchvision.utils import make_grid

    was_training = model.training
    model.eval()
    codes = model.encode(images)
    depths = sorted({d for d in (1, 2, 4, 8, 16, model.config.depth) if d <= model.config.depth})
    rows = [images] + [model.decode(codes, depth=d) for d in depths]
    model.train(was_training)
    grid = make_grid(torch.cat(rows).clamp(-1, 1), nrow=images.shape[0], padding=2, pad_value=1.0)
    with atomic_path(path) as tmp:
        to_pil(to_uint8(grid[None])[0]).save(tmp, format="PNG")


def _mean_over_ranks(terms: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    """The logged terms of the whole global batch: each rank's share averaged (equal shares)."""
    if world == 1 or not terms:
        return {key: float(value) for key, value in terms.items()}
    values = torch.stack([value.float() for value in terms.values()])
    torch.distributed.all_reduce(values)
    return dict(zip(terms, (values / world).tolist()))


class TokenizerTrainer:
    """The RQ-VAE's step, validation and export for `dnd.training.run_training`."""

    def __init__(self, spec: TokenizerSpec, datasets: list[Path], work_dir: Path, rank: int, world: int, device: torch.device):
        cfg = spec.train
        self.spec, self.cfg, self.work_dir = spec, cfg, work_dir
        self.rank, self.world, self.device, self.main = rank, world, device, rank == 0
        # One seed for every rank: they draw the same random numbers (model init, codebook samples), which
        # the quantizer needs to keep its codebook equal on every rank. Dropout, off by default, then masks alike.
        seed_everything(cfg.seed)
        channels = spec.model.in_channels
        self.train_set = ImageShardDataset(datasets, "train", channels, cfg.resolution, cfg.crop, cache_dir=work_dir / "images")
        if self.main:
            val_set = ImageShardDataset(datasets, "val", channels, cfg.resolution, None, limit=cfg.eval_images)
            self.val_images = torch.stack([val_set[i] for i in range(len(val_set))]).to(device)
        self.model = RQVAE(spec.model).to(device)
        self.loss_fn = TokenizerLoss(spec.loss, channels).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.disc_optimizer = (
            torch.optim.Adam(self.loss_fn.discriminator.parameters(), lr=cfg.lr, betas=cfg.betas)
            if self.loss_fn.discriminator is not None else None
        )
        # The forwards go through DDP, whose backward averages the gradients of the ranks' shares. The
        # quantizer keeps its codebook buffers equal on every rank by itself: no buffer broadcast per step.
        # The generator loss calls the bare discriminator (the gradient it needs flows to the reconstruction;
        # the discriminator's own gradients there are discarded) and the discriminator's loss its DDP wrapper.
        self.net, self.disc_net = self.model, self.loss_fn.discriminator
        if world > 1:
            device_ids = [device.index] if device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids, forward_sync_buffers=False)
            if self.disc_net is not None:
                self.disc_net = torch.nn.parallel.DistributedDataParallel(self.disc_net, device_ids=device_ids)
            log.info("rank %d of %d on %s: %d of each batch of %d", rank, world, device, cfg.batch_size // world, cfg.batch_size)
        self.batches = None  # the loader's iterator, from the first step trained (after a resume: its step)
        self.quantize = False

    def state_dict(self) -> dict[str, Any]:
        gan = self.disc_optimizer is not None
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "discriminator": self.loss_fn.discriminator.state_dict() if gan else None,
            "disc_optimizer": self.disc_optimizer.state_dict() if gan else None,
            "config": dataclasses.asdict(self.spec.model),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.disc_optimizer is not None:
            self.loss_fn.discriminator.load_state_dict(state["discriminator"])
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])

    def _next_batch(self, step: int) -> torch.Tensor:
        if self.batches is None:
            cfg = self.cfg
            # The loader gets a generator of its own: starting an iteration draws a seed from it, which must not
            # shift the global RNG stream (a resumed run would then diverge from an uninterrupted one).
            sampler = StepBatchSampler(len(self.train_set), cfg.batch_size, cfg.seed, step, cfg.steps, crop_seeds=True,
                                       rank=self.rank, world=self.world)
            loader = DataLoader(self.train_set, batch_sampler=sampler, num_workers=cfg.num_workers,
                                generator=torch.Generator().manual_seed(cfg.seed))
            self.batches = iter(loader)
            self.model.train()
        return next(self.batches).to(self.device, non_blocking=True)

    def train_step(self, step: int) -> dict[str, float]:
        images = self._next_batch(step)
        model, device = self.model, self.device
        self.quantize = step >= self.cfg.warmup_steps
        if self.quantize and self.spec.model.codebook_init == "depth_by_depth" and not bool(model.quantizer.initialized):
            model.init_codebook_depth_by_depth(images)  # every rank together: fitted to the gathered batch
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            recon, aux = self.net(images, quantize=self.quantize)
        loss, terms = self.loss_fn.generator_loss(images, recon.float(), aux.commitment_loss, model.last_layer, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        if self.disc_optimizer is not None and self.loss_fn.gan_active(step):
            disc_loss, disc_terms = self.loss_fn.discriminator_loss(images, recon, step, self.disc_net)
            self.disc_optimizer.zero_grad(set_to_none=True)
            disc_loss.backward()
            self.disc_optimizer.step()
            terms |= disc_terms
        return _mean_over_ranks(terms, self.world)

    def validate(self, step: int) -> dict[str, float] | None:
        if not self.main:
            return None
        val = validate(self.model, self.loss_fn, self.val_images, step)
        recon_grid(self.model, self.val_images[:8], self.work_dir / "recon" / f"step-{step:07d}.png")
        if self.quantize:  # only a quantizing model can be the result
            val["val/loss"] = val["val/total"]
        return val

    def export(self, checkpoint: dict[str, Any], out: Path) -> dict[str, Any]:
        self.model.load_state_dict(checkpoint["model"])
        save_tokenizer(out, self.model, self.spec.name, step=checkpoint["step"], val_loss=checkpoint["best_val_loss"])
        latest = sorted((self.work_dir / "recon").glob("step-*.png"))
        if latest:
            with atomic_path(out.parent / "recon.png") as tmp:
                tmp.write_bytes(latest[-1].read_bytes())
        return {"tokenizer": self.spec.name, "parameters": sum(p.numel() for p in self.model.parameters())}


def train_tokenizer(spec: TokenizerSpec, datasets: list[Path], out: Path, work_dir: Path,
                    should_stop: Callable[[], bool] = lambda: False, code_version: str | None = None) -> dict[str, Any] | None:
    cfg = spec.train
    rank, world, device = join_ranks(cfg.batch_size, f"tokenizers.{spec.name}.train.batch_size")
    trainer = TokenizerTrainer(spec, datasets, work_dir, rank, world, device)
    loop = LoopConfig(steps=cfg.steps, checkpoint_every=cfg.checkpoint_every, eval_every=cfg.eval_every, seed=cfg.seed)
    run = RunInfo(spec.name, "train_tokenizer", dataclasses.asdict(spec), rank, world, device, code_version,
                  progress_keys=("total", "l2"))
    return run_training(trainer, loop, run, work_dir, out, should_stop)
