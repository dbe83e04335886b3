"""How a stage runs: in this process / a local process pool (default), or on SLURM through submitit.

Stages never know how they were launched: they hand the launcher plain picklable callables.
- `map_shards(stage, fn, tasks, work_dir)`: `fn(task)` for every shard; locally a process pool, on
  SLURM one job array. Each finished shard's return value is kept in the work area, so a rerun
  launches only the missing shards (shard functions write into the work area, never into declared
  outputs; the stage publishes those after the launcher returns).
- `run_task(stage, fn, work_dir)`: `fn()` once; on SLURM one job (a `CheckpointableTask` is requeued
  on time-out and preemption and resumes from its checkpoint).
On SLURM the submitted job ids go to `work_dir/jobs.json` first: a rerun after an interruption
re-attaches to a job still running instead of submitting again. The settings come from the `launch:`
config key, passed by Snakemake through the `DND_LAUNCH` environment variable (never through
`params:`: changing resources reruns nothing); see settings.py for every key.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from dnd.launch.calls import RecordedCall, ResultStore, recorded_call, shard_key, task_key
from dnd.launch.checkpointable import CheckpointableTask, Interrupted, TrainingTask
from dnd.launch.distributed import DistributedInfo, init_distributed
from dnd.launch.local import run_local
from dnd.launch.settings import LAUNCH_ENV, LaunchSettings, launch_settings, settings_for, stage_settings
from dnd.launch.slurm import SlurmJobFailed, SlurmLauncher

__all__ = [
    "LAUNCH_ENV", "CheckpointableTask", "DistributedInfo", "Interrupted", "LaunchSettings", "SlurmJobFailed", "TrainingTask",
    "init_distributed", "launch_settings", "map_shards", "run_task", "stage_settings",
]

T = TypeVar("T")
log = logging.getLogger("dnd.launch")


def _launch(stage: str, settings: LaunchSettings, calls: Sequence[RecordedCall], work_dir: Path, store: ResultStore) -> None:
    if not calls:
        return
    if settings.backend == "slurm":
        SlurmLauncher(stage, settings, work_dir, store).run(calls)
    else:
        run_local(calls, settings)


def map_shards(stage: str, fn: Callable[[Any], T], tasks: Sequence[Any], work_dir: Path) -> list[T]:
    """`fn(task)` for every task, results in task order: a process per task locally, one job array on SLURM."""
    settings = settings_for(stage)
    store = ResultStore(work_dir)
    calls = [recorded_call(shard_key(fn, index, task), fn, (task,), store) for index, task in enumerate(tasks)]
    missing = [call for call in calls if not store.has(call.key)]
    if len(missing) < len(calls):
        log.info("%s: %d of %d shard(s) already done (kept in %s)", stage, len(calls) - len(missing), len(calls), store.directory)
    _launch(stage, settings, missing, Path(work_dir), store)
    return [store.load(call.key) for call in calls]


def run_task(stage: str, fn: Callable[[], T], work_dir: Path) -> T:
    """`fn()` once: in this process locally, one SLURM job (re-attached to if already running) on SLURM."""
    settings = settings_for(stage)
    if settings.backend != "slurm":
        return fn()
    store = ResultStore(work_dir)
    call = recorded_call(task_key(fn), fn, (), store)
    if store.has(call.key):
        log.info("%s: the job finished while nobody was waiting; using its result", stage)
    _launch(stage, settings, [call], Path(work_dir), store)
    result = store.load(call.key)
    store.discard(call.key)  # a later run of the stage runs the task again (it resumes from its checkpoint)
    return result
