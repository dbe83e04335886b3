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
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from dnd.atomic import atomic_path, write_json
from dnd.data.images import ImageShardDataset, to_pil, to_uint8
from dnd.launch.distributed import init_distributed
from dnd.tokenizer.losses import TokenizerLoss, TokenizerLossConfig
from dnd.tokenizer.rqvae import RQVAE, RQVAEConfig, rqvae_config
from dnd.training import (
    Checkpointer, Progress, StepBatchSampler, all_ranks_agree, default_device, rng_state, seed_everything, set_rng_state,
    wait_for_all_ranks,
)

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


def save_tokenizer(path: Path, model: RQVAE, name: str, **extra: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save({"name": name, "config": asdict(model.config), "state_dict": model.state_dict(), **extra}, tmp)


def load_tokenizer(path: Path, device: str | torch.device = "cpu") -> RQVAE:
    payload = torch.load(path, map_location=device, weights_only=False)
    model = RQVAE(RQVAEConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()


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


def train_tokenizer(spec: TokenizerSpec, datasets: list[Path], out: Path, work_dir: Path, should_stop: Callable[[], bool] = lambda: False
) -> dict[str, Any] | None:
    cfg = spec.train
    dist_info = init_distributed()  # rank 0 of 1 outside a multi-task job
    world, rank, main = dist_info.world_size, dist_info.rank, dist_info.is_main
    if cfg.batch_size % world:
        raise ValueError(f"tokenizers.{spec.name}.train.batch_size={cfg.batch_size} must split evenly over {world} ranks")
    device = default_device(dist_info.local_rank)
    # One seed for every rank: they draw the same random numbers (model init, codebook samples), so the
    # checkpoint's RNG state (rank 0's) resumes every rank. Dropout, off by default, then masks alike.
    seed_everything(cfg.seed)
    channels = spec.model.in_channels
    train_set = ImageShardDataset(datasets, "train", channels, cfg.resolution, cfg.crop, cache_dir=work_dir / "images")
    if main:
        val_set = ImageShardDataset(datasets, "val", channels, cfg.resolution, None, limit=cfg.eval_images)
        val_images = torch.stack([val_set[i] for i in range(len(val_set))]).to(device)

    model = RQVAE(spec.model).to(device)
    loss_fn = TokenizerLoss(spec.loss, channels).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    disc_optimizer = (
        torch.optim.Adam(loss_fn.discriminator.parameters(), lr=cfg.lr, betas=cfg.betas)
        if loss_fn.discriminator is not None else None
    )
    checkpoints = Checkpointer(work_dir / "checkpoints")
    state = checkpoints.load("cpu")  # RNG states must stay CPU tensors; load_state_dict moves the weights
    start, best = 0, math.inf
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if disc_optimizer is not None:
            loss_fn.discriminator.load_state_dict(state["discriminator"])
            disc_optimizer.load_state_dict(state["disc_optimizer"])
        start, best = state["step"], state["best_val_loss"]
        set_rng_state(state["rng"])
        if device.type == "cuda" and state["rng"].get("cuda"):
            # Rank 0 saved its own GPU's stream (GPU 0), which every rank's GPU follows (same seed, same draws).
            torch.cuda.set_rng_state(state["rng"]["cuda"][0], device)

    # The forwards go through DDP, whose backward averages the gradients of the ranks' shares. The
    # quantizer keeps its codebook buffers equal on every rank by itself: no buffer broadcast per step.
    # The generator loss calls the bare discriminator (the gradient it needs flows to the reconstruction;
    # the discriminator's own gradients there are discarded) and the discriminator's loss its DDP wrapper.
    net, disc_net = model, loss_fn.discriminator
    if world > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)
        if disc_net is not None:
            disc_net = torch.nn.parallel.DistributedDataParallel(disc_net, device_ids=device_ids)

    def snapshot(step: int) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "discriminator": loss_fn.discriminator.state_dict() if disc_optimizer is not None else None,
            "disc_optimizer": disc_optimizer.state_dict() if disc_optimizer is not None else None,
            "step": step,
            "best_val_loss": best,
            "rng": rng_state(),
            "config": dataclasses.asdict(spec.model),
        }

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(work_dir / "tensorboard")) if main else None
    if world > 1:
        log.info("rank %d of %d on %s: %d of each batch of %d", rank, world, device, cfg.batch_size // world, cfg.batch_size)
    # The loader gets a generator of its own: starting an iteration draws a seed from it, which must not
    # shift the global RNG stream (a resumed run would then diverge from an uninterrupted one).
    sampler = StepBatchSampler(len(train_set), cfg.batch_size, cfg.seed, start, cfg.steps, crop_seeds=True, rank=rank, world=world)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))
    progress = Progress(cfg.steps, start)
    model.train()
    step = start
    for step, images in enumerate(loader, start=start):
        images = images.to(device, non_blocking=True)
        quantize = step >= cfg.warmup_steps
        if quantize and spec.model.codebook_init == "depth_by_depth" and not bool(model.quantizer.initialized):
            model.init_codebook_depth_by_depth(images)  # every rank together: fitted to the gathered batch
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            recon, aux = net(images, quantize=quantize)
        loss, terms = loss_fn.generator_loss(images, recon.float(), aux.commitment_loss, model.last_layer, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if disc_optimizer is not None and loss_fn.gan_active(step):
            disc_loss, disc_terms = loss_fn.discriminator_loss(images, recon, step, disc_net)
            disc_optimizer.zero_grad(set_to_none=True)
            disc_loss.backward()
            disc_optimizer.step()
            terms |= disc_terms
        done = step + 1
        metrics = _mean_over_ranks(terms, world)
        if main:
            progress.update(done, {k: metrics[k] for k in ("total", "l2") if k in metrics})
            for key, value in metrics.items():
                writer.add_scalar(f"train/{key}", value, done)
        if main and (done % cfg.eval_every == 0 or done == cfg.steps):
            val = validate(model, loss_fn, val_images, done)
            for key, value in val.items():
                writer.add_scalar(key, value, done)
            log.info("step %d validation %s", done, " ".join(f"{k}={v:.4g}" for k, v in val.items()))
            recon_grid(model, val_images[:8], work_dir / "recon" / f"step-{done:07d}.png")
            if quantize and val["val/total"] < best:
                best = val["val/total"]
                checkpoints.save(snapshot(done), checkpoints.best)
        stopping = all_ranks_agree(should_stop(), world, device)  # every rank stops after the same step
        if main and (done % cfg.checkpoint_every == 0 or done == cfg.steps or stopping):
            checkpoints.save(snapshot(done))
        if stopping:
            wait_for_all_ranks(world, device)  # no rank leaves before rank 0's checkpoint is written
            progress.close()
            if writer is not None:
                writer.close()
            log.warning("stopped at step %d on a signal; its checkpoint resumes the run", done)
            return None
    progress.close()
    if writer is not None:
        writer.close()
    if not main:
        return {"tokenizer": spec.name, "rank": rank}

    final = torch.load(checkpoints.best if checkpoints.best.exists() else checkpoints.last, map_location="cpu", weights_only=False)
    model.load_state_dict(final["model"])
    save_tokenizer(out, model, spec.name, step=final["step"], val_loss=final["best_val_loss"])
    latest = sorted((work_dir / "recon").glob("step-*.png"))
    if latest:
        with atomic_path(out.parent / "recon.png") as tmp:
            tmp.write_bytes(latest[-1].read_bytes())
    summary = {"tokenizer": spec.name, "steps": cfg.steps, "best_step": final["step"], "best_val_loss": final["best_val_loss"],
               "parameters": sum(p.numel() for p in model.parameters())}
    write_json(out.parent / "train_summary.json", summary)
    log.info("trained %s: %s", spec.name, json.dumps(summary))
    return summary
