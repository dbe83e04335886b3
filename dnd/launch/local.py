"""The local backend: calls run in this process, or in a process pool for sharded stages (the demo)."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Sequence

from dnd.launch.calls import RecordedCall
from dnd.launch.settings import LaunchSettings


def local_workers(settings: LaunchSettings) -> int:
    """`launch.workers`, else the threads Snakemake gave the rule (`DND_WORKERS`), else all cores."""
    workers = settings.workers or int(os.environ.get("DND_WORKERS", 0) or 0)
    return workers if workers > 0 else (os.cpu_count() or 1)


def run_local(calls: Sequence[RecordedCall], settings: LaunchSettings) -> None:
    """Run every call; each writes its own result. One process per call, at most `workers` at once."""
    workers = min(local_workers(settings), len(calls))
    if workers <= 1:
        for call in calls:
            call()
        return
    # "spawn", not fork: a parent that has used torch (OpenMP/MKL thread pools) can deadlock a forked child.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()
