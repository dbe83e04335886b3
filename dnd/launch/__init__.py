"""How a stage runs: in-process / a local process pool (default), or on SLURM through submitit.

Stages never know how they were launched: they hand the launcher plain picklable callables.
The launch settings come from the `launch:` config key, which Snakemake passes through the
`DND_LAUNCH` environment variable (never through `params:`: changing resources reruns nothing).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")
LAUNCH_ENV = "DND_LAUNCH"


def launch_settings() -> dict[str, Any]:
    raw = os.environ.get(LAUNCH_ENV)
    return json.loads(raw) if raw else {"backend": "local"}


def stage_settings(stage: str, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults merged with the stage's own overrides (`launch.stages.<stage>`)."""
    settings = settings if settings is not None else launch_settings()
    merged = {k: v for k, v in settings.items() if k != "stages"}
    merged.update(settings.get("stages", {}).get(stage, {}))
    return merged


def local_workers(settings: dict[str, Any]) -> int:
    """`launch.workers`, else the threads Snakemake gave the rule (`DND_WORKERS`), else all cores."""
    workers = int(settings.get("workers", 0) or 0) or int(os.environ.get("DND_WORKERS", 0) or 0)
    return workers if workers > 0 else (os.cpu_count() or 1)


def map_shards(stage: str, fn: Callable[..., T], tasks: Sequence[Any], work_dir: Path) -> list[T]:
    """Run `fn(task)` for every task: one process per task locally, one job array on SLURM."""
    settings = stage_settings(stage)
    if settings.get("backend", "local") == "local":
        workers = min(local_workers(settings), len(tasks))
        if workers <= 1:
            return [fn(task) for task in tasks]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(fn, tasks))
    raise ValueError(f"launch.backend={settings.get('backend')!r} is not supported (use 'local' or 'slurm')")
