"""The one training loop of the project (`run_training`) and what it rests on: deterministic data
order, checkpoints with every rank's RNG state, resume, best-by-validation selection, provenance.

A trainer (tokenizer, transformer, DDPM, classifier) supplies only its model's step, validation and
export (`Trainer`); the loop owns the rest, so the four cannot drift apart.

Resume is the same code path as start: `Checkpointer.load()` returns the last state or None. A run
killed at any point and restarted reaches the same step count with the same batches, because the
batch order is a pure function of (seed, step), never of how many times the run was restarted.
Signals are the launcher's business (`dnd.launch.TrainingTask`): a trainer takes a `should_stop()`
callable, checks it after each step, and returns None after saving its checkpoint once it is true;
under data parallelism every rank stops after the same step (`all_ranks_agree`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from dnd.atomic import atomic_path, write_json
from dnd.device import default_device
from dnd.provenance import write_provenance

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


def join_ranks(batch_size: int, setting: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process (rank 0 of 1 outside a multi-task job); the global
    batch `setting` must split evenly over the ranks."""
    from dnd.launch.distributed import init_distributed

    info = init_distributed()
    if batch_size % info.world_size:
        raise ValueError(f"{setting}={batch_size} must split evenly over {info.world_size} ranks")
    return info.rank, info.world_size, default_device(info.local_rank)


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


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's RNG streams: Python, NumPy, torch's CPU generator and its own GPU's (when it has one)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device is not None and device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):  # checkpoints written before per-rank states: every GPU of rank 0
        cuda = cuda[0] if cuda else None
    if cuda is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def gather_rng_states(world: int, device: torch.device) -> list[dict[str, Any]] | None:
    """Every rank's RNG state, in rank order, on rank 0 (None elsewhere): a collective under several ranks."""
    own = rng_state(device)
    if world == 1:
        return [own]
    states = [None] * world if torch.distributed.get_rank() == 0 else None
    torch.distributed.gather_object(own, states, dst=0)
    return states


def restore_rng_states(saved: Any, rank: int, world: int, device: torch.device, seed: int, step: int) -> None:
    """Rank `rank` takes back its own streams from a checkpoint's list of per-rank states.

    A checkpoint from another number of ranks has no state for some ranks: each rank then reseeds
    from (seed, rank, step), so ranks still differ, and says so (the run is no longer bit-identical
    to an uninterrupted one). Older checkpoints hold one state (rank 0's), which every rank takes.
    """
    if saved is None:
        log.warning("the checkpoint holds no RNG state: rank %d reseeds from (seed, rank, step)", rank)
        seed_everything(int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0]))
    elif isinstance(saved, dict):
        set_rng_state(saved, device)
    elif isinstance(saved, list) and len(saved) == world:
        set_rng_state(saved[rank], device)
    else:
        log.warning("the checkpoint holds RNG states of %s rank(s), this run has %d: rank %d reseeds from (seed, rank, step)",
                    len(saved) if isinstance(saved, list) else "no", world, rank)
        seed_everything(int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0]))


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

    def best_of(self, name: str) -> Path:
        """The best checkpoint of an extra selection (`LoopConfig.also_select`)."""
        return self.directory / f"best-{name}.pt"

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


# --------------------------------------------------------------------------------------------------
# The training loop every trainer runs


class CheckpointMismatch(RuntimeError):
    """The work area's checkpoint does not load into the model this code builds."""


class Trainer(Protocol):
    """What a model's trainer supplies to `run_training`; the loop owns everything else.

    Every method is called on every rank (each may be a collective, as under FSDP).
    """

    def state_dict(self) -> dict[str, Any]:
        """The full resumable state of the model(s) and optimizer(s) (rank 0's is saved)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint written by `state_dict` (raises when it does not fit)."""

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step on the batch of `step`; the figures to log (the global batch's)."""

    def validate(self, step: int) -> dict[str, float] | None:
        """Validation figures after `step` steps (rank 0's decide; other ranks may return None).
        `val/loss`, when present, selects the best checkpoint; without it the run keeps its last."""

    def export(self, checkpoint: dict[str, Any], out: Path) -> dict[str, Any]:
        """Rank 0: write the declared output from the chosen checkpoint; return summary figures.
        A trainer with extra selections (`LoopConfig.also_select`) takes them as `also={name: checkpoint}`."""


@dataclass
class LoopConfig:
    steps: int
    checkpoint_every: int
    eval_every: int | None = None  # None: never validate, the last checkpoint is the result
    seed: int = 0
    # Further best checkpoints, each chosen by its own validation figure: name -> key, e.g. {"ema": "val/ema/loss"}
    # (the EMA weights picked by the EMA weights' loss, the raw ones by `val/loss`). Each is `best-<name>.pt`.
    also_select: dict[str, str] = field(default_factory=dict)
    # Where the validation history (one row per validation: step and each `val/...` figure) is written as CSV
    # at the end; None = kept in the checkpoints only. Checkpoints carry it, so a resumed run writes the same file.
    history_csv: Path | None = None


def history_column(key: str) -> str:
    """A validation figure's CSV column: "val/loss_depth1" -> "loss_depth1", "val/ema/loss" -> "ema_loss"."""
    return key.removeprefix("val/").replace("/", "_")


def write_history(history: list[dict[str, float]], path: Path) -> None:
    """The validation history as CSV (step, then every figure in first-seen order), written atomically;
    without any validation, the header alone."""
    import csv

    columns = ["step", *dict.fromkeys(history_column(k) for row in history for k in row if k != "step")]
    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow({"step": row["step"], **{history_column(k): repr(v) for k, v in row.items() if k != "step"}})


@dataclass
class RunInfo:
    """Who runs the loop and what it records: not part of what it computes."""

    name: str  # the model's config name, in logs and summaries
    stage: str  # e.g. "train_tokenizer", in the provenance record
    config: Any  # the stage's config, in the provenance record
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    code_version: str | None = None  # recorded in every checkpoint; a resume across versions is logged
    progress_keys: tuple[str, ...] = ("loss",)  # train figures shown on the progress bar

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _broadcast_from_rank0(values: dict[str, float] | None, world: int) -> dict[str, float] | None:
    if world == 1:
        return values
    box = [values]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _load_checkpoint(trainer: Trainer, checkpoints: Checkpointer, loop: LoopConfig, run: RunInfo
                     ) -> tuple[int, float, dict[str, float], list[dict[str, float]]]:
    """Resume from the work area's last checkpoint if there is one: (first step, best validation loss,
    best figure of each extra selection, validation history)."""
    state = checkpoints.load("cpu")
    if state is None:
        return 0, math.inf, {name: math.inf for name in loop.also_select}, []
    saved_version = state.get("code_version")
    if saved_version != run.code_version:
        log.warning("resuming %s from a checkpoint of code version %s with code version %s (its state dict is loaded as is; "
                    "`--fresh` starts over)", run.name, saved_version, run.code_version)
    try:
        trainer.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointMismatch(
            f"{checkpoints.last} (code version {saved_version}) does not load into {run.name} as code version "
            f"{run.code_version} builds it: {str(err).splitlines()[0]}; rerun with --fresh to start over") from err
    restore_rng_states(state.get("rng"), run.rank, run.world, run.device, loop.seed, state["step"])
    saved_also = state.get("best_also", {})
    return (state["step"], state.get("best_val_loss", math.inf), {name: saved_also.get(name, math.inf) for name in loop.also_select},
            list(state.get("val_history", [])))


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value


def run_training(trainer: Trainer, loop: LoopConfig, run: RunInfo, work_dir: Path, out: Path,
                 should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any] | None:
    """Train from the last checkpoint (or from scratch) to `loop.steps`, then export the best one.

    Checkpoints go to `work_dir/checkpoints`: `last.pt` every `checkpoint_every` steps, at the end and
    after the step during which a stop was requested (then the run returns None: a rerun resumes);
    `best.pt` whenever validation improves `val/loss` (and `best-<name>.pt` for each of
    `loop.also_select`, by its own figure). A checkpoint holds the trainer's state, the step,
    the best loss, the code version and every rank's own RNG state, so a resumed run draws the same
    dropout masks on each rank as an uninterrupted one. Rank 0 logs, writes and exports; it writes the
    provenance record beside the output and `train_summary.json` in its folder.
    """
    checkpoints = Checkpointer(work_dir / "checkpoints")
    start, best, best_also, history = _load_checkpoint(trainer, checkpoints, loop, run)
    writer = None
    if run.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(work_dir / "tensorboard"))
    progress = Progress(loop.steps, start)

    def save(step: int, path: Path) -> None:
        state = trainer.state_dict()  # every rank: gathering a sharded model's state is a collective
        rng = gather_rng_states(run.world, run.device)
        if run.is_main:
            checkpoints.save({**state, "step": step, "best_val_loss": best, "best_also": dict(best_also), "rng": rng,
                              "code_version": run.code_version, "val_history": list(history)}, path)

    def close() -> None:
        progress.close()
        if writer is not None:
            writer.close()

    for step in range(start, loop.steps):
        metrics = trainer.train_step(step)
        done = step + 1
        if run.is_main:
            progress.update(done, {k: metrics[k] for k in run.progress_keys if k in metrics})
            for key, value in metrics.items():
                writer.add_scalar(f"train/{key}", value, done)
        if loop.eval_every and (done % loop.eval_every == 0 or done == loop.steps):
            val = _broadcast_from_rank0(trainer.validate(done), run.world)
            if run.is_main and val:
                for key, value in val.items():
                    writer.add_scalar(key, value, done)
                log.info("step %d validation %s", done, " ".join(f"{k}={v:.4g}" for k, v in val.items()))
            if val:
                history.append({"step": done, **val})
            if val and "val/loss" in val and val["val/loss"] < best:
                best = val["val/loss"]
                save(done, checkpoints.best)
            for name, key in loop.also_select.items():
                if val and key in val and val[key] < best_also[name]:
                    best_also[name] = val[key]
                    save(done, checkpoints.best_of(name))
        stopping = all_ranks_agree(should_stop(), run.world, run.device)  # every rank stops after the same step
        if done % loop.checkpoint_every == 0 or done == loop.steps or stopping:
            save(done, checkpoints.last)
        if stopping:
            wait_for_all_ranks(run.world, run.device)  # no rank leaves (and is requeued) before rank 0's checkpoint exists
            close()
            log.warning("stopped at step %d on a signal; its checkpoint resumes the run", done)
            return None
    close()
    if not run.is_main:
        return {"name": run.name, "rank": run.rank}

    chosen = checkpoints.best if checkpoints.best.exists() else checkpoints.last
    final = torch.load(chosen, map_location="cpu", weights_only=False)
    also, also_summary = {}, {}
    for name, key in loop.also_select.items():
        path = checkpoints.best_of(name) if checkpoints.best_of(name).exists() else checkpoints.last
        also[name] = torch.load(path, map_location="cpu", weights_only=False)
        also_summary[name] = {"step": also[name]["step"], "val_loss": _finite(also[name].get("best_also", {}).get(name, math.inf)),
                              "selected_by": key if path != checkpoints.last else "last step"}
    extra = trainer.export(final, out, also=also) if also else trainer.export(final, out)
    summary = {"name": run.name, "steps": loop.steps, "best_step": final["step"],
               "best_val_loss": _finite(final.get("best_val_loss", math.inf)),
               "selected_by": "val/loss" if chosen == checkpoints.best else "last step",
               **({"also_selected": also_summary} if also_summary else {}), **extra}
    write_json(out.parent / "train_summary.json", summary)
    if loop.history_csv is not None:
        write_history(history, loop.history_csv)
    write_provenance(out, run.stage, run.config, seed=loop.seed, code_version=run.code_version,
                     checkpoint_code_version=final.get("code_version"), summary=summary, world_size=run.world,
                     work_area=str(work_dir))
    log.info("trained %s: %s", run.name, json.dumps(summary, default=str))
    return summary
