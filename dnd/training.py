"""What every training loop of the project shares: deterministic data order, checkpoints, resume.

Resume is the same code path as start: `Checkpointer.load()` returns the last state or None. A run
killed at any point and restarted reaches the same step count with the same batches, because the
batch order is a pure function of (seed, step), never of how many times the run was restarted.
Signals are the launcher's business (`dnd.launch.TrainingTask`): a trainer takes a `should_stop()`
callable, checks it after each step, and returns None after saving its checkpoint once it is true;
under data parallelism every rank stops after the same step (`all_ranks_agree`).
"""

from __future__ import annotations

import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnd.atomic import atomic_path

log = logging.getLogger("dnd.training")


def batch_indices(n_items: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The indices of batch `step`: epochs are seeded permutations, batches consecutive slices (wrapping)."""
    if n_items <= 0:
        raise ValueError("cannot draw batches from an empty data set")
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_items)
        order = np.random.default_rng([seed, epoch]).permutation(n_items)
        out.extend(order[offset : offset + batch_size - len(out)].tolist())
    return np.asarray(out)


class StepBatchSampler(torch.utils.data.Sampler):
    """The batches of steps start..steps-1 for a DataLoader: a function of (seed, step) only.

    With `crop_seeds`, each index comes as `(index, (seed, step, position))`, a seed for the sample's
    random crop, so crops too are the same whether or not the run was interrupted. Under data
    parallelism (`world` > 1) rank `rank` gets the contiguous slice rank·B/world … (rank+1)·B/world of
    each global batch B: the ranks' shares concatenated in rank order are the global batch, and a
    sample keeps the crop seed of its position in the global batch.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, start: int, steps: int, crop_seeds: bool = False,
                 rank: int = 0, world: int = 1):
        if batch_size % world or not 0 <= rank < world:
            raise ValueError(f"rank {rank} of {world}: the batch size {batch_size} must split evenly over the ranks")
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.start, self.steps, self.crop_seeds = start, steps, crop_seeds
        share = batch_size // world
        self.positions = range(rank * share, (rank + 1) * share)

    def __iter__(self):
        for step in range(self.start, self.steps):
            indices = batch_indices(self.n_items, self.batch_size, self.seed, step).tolist()
            if self.crop_seeds:
                yield [(indices[k], (self.seed, step, k)) for k in self.positions]
            else:
                yield [indices[k] for k in self.positions]

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


def default_device(local_rank: int = 0) -> torch.device:
    """This process's device: GPU `local_rank` of its node (one process per GPU), else the CPU."""
    return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")


def all_ranks_agree(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank once any rank saw it (SLURM signals all tasks, but not at the same instant)."""
    if world == 1:
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return bool(tensor.item())


def wait_for_all_ranks(world: int, device: torch.device) -> None:
    """Return once every rank got here, e.g. after rank 0 wrote the checkpoint a restarted run reads."""
    if world > 1:
        torch.distributed.all_reduce(torch.zeros(1, device=device))  # a barrier on the ranks' own devices


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """`last.pt` (resume point, written every N steps and on a stop signal) and `best.pt` (by validation loss)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def last(self) -> Path:
        return self.directory / "last.pt"

    @property
    def best(self) -> Path:
        return self.directory / "best.pt"

    def save(self, state: dict[str, Any], path: Path | None = None) -> Path:
        target = path or self.last
        with atomic_path(target) as tmp:
            torch.save(state, tmp)
        return target

    def load(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        if not self.last.exists():
            return None
        # mmap: the ranks of a node share the file's pages instead of each holding a copy (XXXL + EMA ≈ 40 GB)
        state = torch.load(self.last, map_location=map_location, weights_only=False, mmap=True)
        log.info("resuming from %s at step %d", self.last, state["step"])
        return state


@dataclass
class Progress:
    """A tqdm bar on a terminal, periodic log lines in batch jobs."""

    total: int
    start: int
    every: int = 50

    def __post_init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, initial=self.start, disable=not sys.stderr.isatty(), dynamic_ncols=True)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if not self.bar.disable:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)
        elif step % self.every == 0 or step == self.total:
            log.info("step %d/%d %s", step, self.total, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

    def close(self) -> None:
        self.bar.close()
