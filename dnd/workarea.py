"""The work area: state that must survive a rerun (finished shards, checkpoints, job records).

Snakemake deletes a job's declared outputs before it reruns it, so anything a stage resumes from lives
here instead, under a folder keyed by a hash of the stage's config subtree: a config edit gets a fresh
folder, an interrupted run with the same config finds its own again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dnd.provenance import config_hash

WORK_ROOT_ENV = "DND_WORK_DIR"


def work_root() -> Path:
    return Path(os.environ.get(WORK_ROOT_ENV, "work"))


def stage_work_dir(stage: str, name: str, cfg: Any, root: Path | None = None) -> Path:
    path = (root or work_root()) / stage / f"{name}-{config_hash(cfg)}"
    path.mkdir(parents=True, exist_ok=True)
    return path
