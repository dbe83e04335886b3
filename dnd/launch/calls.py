"""Launched calls and their results, kept in the stage's work area.

Every call the launcher runs (one shard, one training run) has a stable key and writes its return
value to `<work dir>/launch/results/<key>.pkl` when it finishes, wherever it ran. A finished shard is
therefore known without asking anybody, survives Snakemake deleting the declared outputs, and a
rerun launches only the shards without a result.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from submitit.helpers import Checkpointable, DelayedSubmission

from dnd.atomic import write_bytes


def callable_name(fn: Callable[..., Any]) -> str:
    """`module.qualname` of a function, a partial's function or a callable object's class."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{target.__module__}.{target.__qualname__}"


def shard_key(fn: Callable[..., Any], index: int, task: Any) -> str:
    """Stable across runs: the function, the shard's position and a digest of its task's pickle."""
    digest = hashlib.sha256(pickle.dumps(task, protocol=4)).hexdigest()[:12]
    return f"{callable_name(fn).rsplit('.', 1)[-1]}-{index:05d}-{digest}"


def task_key(fn: Callable[..., Any]) -> str:
    return callable_name(fn).rsplit(".", 1)[-1]


class ResultStore:
    """Return values of finished calls, one pickle per key."""

    def __init__(self, work_dir: Path):
        self.directory = Path(work_dir).absolute() / "launch" / "results"

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pkl"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def load(self, key: str) -> Any:
        return pickle.loads(self.path(key).read_bytes())

    def discard(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def _is_main_rank() -> bool:
    """Rank 0 of a multi-process submitit job; True outside one."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return True
    from submitit import JobEnvironment

    return JobEnvironment().global_rank == 0


@dataclass
class RecordedCall:
    """`fn(*args)`, with its return value written to `result_path` (by rank 0) once it finishes."""

    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    result_path: Path

    def __call__(self) -> Any:
        if "SUBMITIT_EXECUTOR" in os.environ:  # a job of its own: the stage's log lines go to the job's log
            from dnd.logs import setup_logging

            setup_logging()
        result = self.fn(*self.args)
        if _is_main_rank():
            write_bytes(self.result_path, pickle.dumps(result))
        return result


class RecordedCheckpointable(RecordedCall, Checkpointable):
    """A RecordedCall around a submitit-checkpointable callable: submitit sees the `checkpoint` method."""

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        inner = self.fn.checkpoint(*self.args)
        resumed = RecordedCheckpointable(self.key, inner.function, tuple(inner.args), self.result_path)
        return DelayedSubmission(resumed)


def recorded_call(key: str, fn: Callable[..., Any], args: tuple[Any, ...], store: ResultStore) -> RecordedCall:
    kind = RecordedCheckpointable if callable(getattr(fn, "checkpoint", None)) else RecordedCall
    return kind(key, fn, args, store.path(key))
