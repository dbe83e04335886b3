"""`dnd train-transformer`: train a DnD-Transformer (or a baseline variant) on Arrow code maps.

Same contract as the tokenizer trainer: `last.pt` every `checkpoint_every` steps and on
SIGTERM/SIGUSR1/SIGUSR2 in the work area, `best.pt` by validation loss, batches a function of
(seed, step), RNG states in the checkpoint, so a killed run resumes to the same weights. Each validation's
loss and per-depth losses (raw weights, and EMA ones with `ema_decay`) go to `val_history.csv` beside
`model.pt` (kept in the checkpoints, so a resumed run writes the same file). The
declared output `model.pt` holds the config and the trained ("raw") weights of the step whose raw weights
validate best; with `ema_decay` it also holds the EMA weights of the step whose EMA weights validate best
(both figures are computed at every validation), so the sampler can take either (`sampling.<name>.weights`)
and each is chosen by the validation of the weights that will be sampled.
Over several ranks the model trains under DDP or, for the largest presets, FSDP (`parallel.py`);
checkpoints are the same full state dicts either way.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dnd.atomic import atomic_path
from dnd.data.codes import CodeMapDataset, code_shards, draw_crops
from dnd.transformer import parallel
from dnd.transformer.model import Transformer, TransformerConfig, code_cross_entropy, save_transformer
from dnd.training import LoopConfig, RunInfo, batch_indices, join_ranks, run_training, seed_everything

log = logging.getLogger("dnd.transformer.train")


@dataclass
class TransformerTrainConfig:
    batch_size: int = 32
    steps: int = 1000
    lr: float = 1e-4  # the paper: 1e-4 per batch of 256 (scale it with the batch); the authors' code 2e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05  # on weight matrices only (not norms, not embeddings' biases)
    grad_clip: float = 1.0
    warmup_steps: int = 0  # linear LR warm-up; constant after (the authors: constant)
    ema_decay: float | None = None  # e.g. 0.9999 (the authors' optional EMA, their sampler loads the raw weights); None = off
    checkpoint_every: int = 200
    eval_every: int = 500
    eval_batches: int = 4  # validation batches for the validation loss
    seed: int = 0
    # Over several ranks: ddp (a full replica each) or fsdp (weights, gradients and AdamW state
    # sharded); auto = fsdp for the XXL and XXXL presets, ddp otherwise. One process uses neither.
    parallelism: parallel.Parallelism = "auto"

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.parallelism not in parallel.PARALLELISMS:
            raise ValueError(f"parallelism must be one of {parallel.PARALLELISMS}, got {self.parallelism!r}")


@dataclass
class TransformerSpec:
    """One named model of the config (`transformers.<name>`); vocab/depth/grid come from its code maps."""

    name: str
    size: str
    model: dict[str, Any] = field(default_factory=dict)  # TransformerConfig overrides (variant, head_layers, dropouts…)
    train: TransformerTrainConfig = field(default_factory=TransformerTrainConfig)

    @classmethod
    def from_dict(cls, name: str, raw: dict[str, Any]) -> "TransformerSpec":
        return cls(name, raw.get("size", "demo"), dict(raw.get("model", {})), TransformerTrainConfig(**raw.get("train", {})))

    def model_config(self, dataset: CodeMapDataset, num_classes: int) -> TransformerConfig:
        info = dataset.info
        if info.height != info.width:
            raise ValueError(f"code maps must be square, got {info.height}x{info.width}")
        return TransformerConfig.preset(
            self.size, vocab_size=info.codebook_size, depth=info.depth, grid_size=info.height,
            num_classes=num_classes, **self.model,
        )


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value


def _num_classes(dataset: CodeMapDataset) -> int:
    """Classes of a labelled code-map set (labels 0..K-1); 0 for unlabelled sets (unconditional models)."""
    labels = np.concatenate([f.labels for f in dataset.files]).astype(float)
    labels = labels[~np.isnan(labels)]
    return int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0


def _param_groups(model: Transformer, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _batch(dataset: CodeMapDataset, indices: np.ndarray, device: torch.device, crops: np.ndarray | None = None
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Code maps and labels of `indices`; `crops` picks each one's crop in a ten-crop split (default: centre)."""
    items = [dataset[int(i)] for i in indices] if crops is None else [dataset.get(int(i), int(c)) for i, c in zip(indices, crops)]
    codes = torch.from_numpy(np.stack([c for c, _ in items])).to(device)
    labels = torch.tensor([label for _, label in items], device=device)
    return codes, (labels if bool((labels >= 0).all()) else None)


@torch.no_grad()
def validate(model: Transformer, dataset: CodeMapDataset, cfg: TransformerTrainConfig, device: torch.device) -> dict[str, float]:
    was_training = model.training
    model.eval()
    losses, per_depth = [], []
    for b in range(cfg.eval_batches):
        start = b * cfg.batch_size
        if start >= len(dataset):
            break
        indices = np.arange(start, min(start + cfg.batch_size, len(dataset)))
        codes, labels = _batch(dataset, indices, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, depth_losses = model.loss(codes, labels)
        losses.append(float(loss))
        per_depth.append(depth_losses.float().cpu().numpy())
    model.train(was_training)
    out = {"val/loss": float(np.mean(losses))}
    out |= {f"val/loss_depth{d + 1}": float(v) for d, v in enumerate(np.mean(per_depth, axis=0))}
    return out


class TransformerTrainer:
    """The transformer's step, validation and export for `dnd.training.run_training`."""

    def __init__(self, spec: TransformerSpec, codes_dir: Path, work_dir: Path, tokenizer: Path | None,
                 rank: int, world: int, device: torch.device):
        cfg = spec.train
        self.spec, self.cfg, self.work_dir, self.tokenizer = spec, cfg, work_dir, tokenizer
        self.rank, self.world, self.device, self.main = rank, world, device, rank == 0
        seed_everything(cfg.seed + rank)  # the ranks' dropout and label dropout differ; the data order is global
        self.train_set = CodeMapDataset(code_shards(codes_dir, "train"))
        val_shards = [p for p in code_shards(codes_dir, "val") if p.stat().st_size > 0]
        self.val_set = CodeMapDataset(val_shards) if val_shards else None
        self.num_classes = _num_classes(self.train_set)
        self.model = Transformer(spec.model_config(self.train_set, self.num_classes)).to(device)
        # DDP and FSDP average the gradients of the ranks' shares of each global batch (the forward must
        # go through `net`); FSDP shards `model` in place, its parameters become DTensors.
        self.mode = parallel.resolve_parallelism(cfg.parallelism, spec.size, world)
        self.net = parallel.parallelize(self.model, self.mode, device)
        self.ema = parallel.ema_copy(self.model, self.mode, device) if cfg.ema_decay else None
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                           fused=device.type == "cuda")
        info = self.train_set.info
        log.info("%s: %s, %.2fM parameters, %d classes, %d training code maps of %dx%dx%d, %d rank(s)%s",
                 spec.name, self.model.config.variant, self.model.num_params() / 1e6, self.num_classes, len(self.train_set),
                 info.height, info.width, info.depth, world, f" ({self.mode.upper()})" if world > 1 else "")
        self.model.train()

    def state_dict(self) -> dict[str, Any]:
        """Full state dicts; under FSDP every rank gathers, rank 0 gets the tensors."""
        mode = self.mode
        return {"model": parallel.full_model_state(self.model, mode),
                "optimizer": parallel.full_optimizer_state(self.model, self.optimizer, mode),
                "ema": parallel.full_model_state(self.ema, mode) if self.ema is not None else None,
                "config": asdict(self.model.config)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        parallel.load_full_model_state(self.model, state["model"], self.mode)
        parallel.load_full_optimizer_state(self.model, self.optimizer, state["optimizer"], self.mode)
        if self.ema is not None:
            parallel.load_full_model_state(self.ema, state["ema"], self.mode)

    def train_step(self, step: int) -> dict[str, float]:
        cfg, device, rank, world = self.cfg, self.device, self.rank, self.world
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        indices = batch_indices(len(self.train_set), cfg.batch_size, cfg.seed, step)
        crops = draw_crops(len(indices), self.train_set.crops, cfg.seed, step)  # of the global batch: same on every rank
        codes, labels = _batch(self.train_set, indices[rank::world], device, crops[rank::world])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, per_depth = code_cross_entropy(self.net(codes, labels), codes)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            with torch.no_grad():
                for target, source in zip(self.ema.parameters(), self.model.parameters()):
                    target.lerp_(source, 1.0 - cfg.ema_decay)
        metrics = {"loss": loss.detach().item(), "grad_norm": parallel.scalar(grad_norm), "lr": lr}
        return metrics | {f"loss_depth{d + 1}": v.item() for d, v in enumerate(per_depth.detach())}

    def validate(self, step: int) -> dict[str, float] | None:
        if self.val_set is None:
            return None
        # Rank 0 validates (under FSDP every rank, on the same batches: a sharded forward needs them all)
        if not (self.main or self.mode == "fsdp"):
            return None
        val = parallel.from_rank0(validate(self.model, self.val_set, self.cfg, self.device), self.mode, self.device)
        parallel.reshard(self.model, self.mode)
        evaluated = self.model
        if self.ema is not None:  # the EMA weights' own figures select the EMA weights' best step
            ema_val = parallel.from_rank0(validate(self.ema, self.val_set, self.cfg, self.device), self.mode, self.device)
            parallel.reshard(self.ema, self.mode)
            if ema_val is not None:
                val = (val or {}) | {key.replace("val/", "val/ema/", 1): value for key, value in ema_val.items()}
            evaluated = self.ema
        if self.tokenizer is not None:
            sampler = parallel.full_copy(evaluated, self.mode, self.device)  # None off rank 0
            if self.main:
                sample_grid(sampler, self.tokenizer, self.work_dir / "samples" / f"step-{step:07d}.png", self.cfg.seed)
            del sampler
        return val

    def export(self, checkpoint: dict[str, Any], out: Path, also: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """`model.pt`: the raw weights of `checkpoint` (best by `val/loss`) and, with EMA, the EMA weights of
        `also["ema"]` (best by `val/ema/loss`); `weights` records each set's step and validation loss."""
        model = Transformer(self.model.config)  # unsharded, on the CPU
        model.load_state_dict(checkpoint["model"])
        weights = {"raw": {"step": checkpoint["step"], "val_loss": _finite(checkpoint["best_val_loss"])}}
        extra: dict[str, Any] = {}
        if also and "ema" in also:
            ema = also["ema"]
            extra["ema_state_dict"] = ema["ema"]
            weights["ema"] = {"step": ema["step"], "val_loss": _finite(ema.get("best_also", {}).get("ema", math.inf))}
        save_transformer(out, model, self.spec.name, step=checkpoint["step"], val_loss=checkpoint["best_val_loss"],
                         tokenizer=str(self.tokenizer), weights=weights, **extra)
        return {"model": self.spec.name, "variant": model.config.variant, "params": model.num_params(),
                "head_layers": model.config.head_layers, "weights": weights}


def history_path(out: Path) -> Path:
    """`val_history.csv` beside `model.pt`: step, loss, loss_depth1..D (+ ema_... with EMA), one row per validation."""
    return Path(out).parent / "val_history.csv"


def train_transformer(spec: TransformerSpec, codes_dir: Path, out: Path, work_dir: Path, tokenizer: Path | None = None,
                      should_stop: Callable[[], bool] = lambda: False, code_version: str | None = None) -> dict[str, Any] | None:
    cfg = spec.train
    rank, world, device = join_ranks(cfg.batch_size, f"transformers.{spec.name}.train.batch_size")
    trainer = TransformerTrainer(spec, codes_dir, work_dir, tokenizer, rank, world, device)
    loop = LoopConfig(steps=cfg.steps, checkpoint_every=cfg.checkpoint_every,
                      eval_every=cfg.eval_every if trainer.val_set is not None else None, seed=cfg.seed,
                      also_select={"ema": "val/ema/loss"} if trainer.ema is not None else {},
                      history_csv=history_path(out))
    run = RunInfo(spec.name, "train_transformer", asdict(spec), rank, world, device, code_version)
    return run_training(trainer, loop, run, work_dir, out, should_stop)


@torch.no_grad()
def sample_grid(model: Transformer, tokenizer: Path, path: Path, seed: int, n: int = 8) -> None:
    """A PNG of a few samples during training (one per class for class-conditional models)."""
    from torchvision.utils import make_grid

    from dnd.data.images import to_pil, to_uint8
    from dnd.tokenizer.rqvae import load_tokenizer
    from dnd.transformer.generate import SamplingConfig, generate

    device = next(model.parameters()).device
    decoder = load_tokenizer(tokenizer, device)
    classes = model.config.num_classes
    labels = torch.arange(n, device=device) % classes if classes else n
    codes = generate(model, labels, SamplingConfig(seed=seed))
    images = decoder.decode(codes).clamp(-1, 1).float().cpu()
    grid = make_grid(images, nrow=n, padding=2, pad_value=1.0)
    with atomic_path(path) as tmp:
        to_pil(to_uint8(grid[None])[0]).save(tmp, format="PNG")
