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


def stage_work_dir(stage: str, name: str, cfg: Any, inputs: Any = None, root: Path | None = None) -> Path:
    """`<root>/<stage>/<name>-<hash>`: the hash covers the config subtree and a fingerprint of the inputs,
    so neither a config edit nor changed input data can ever resume from stale state."""
    key = cfg if inputs is None else {"config": cfg, "inputs": inputs}
    path = (root or work_root()) / stage / f"{name}-{config_hash(key)}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def input_fingerprint(paths: list[Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of each input file or of every file under an input folder: cheap, and it
    changes whenever an input is rewritten (Snakemake's own notion of an updated input)."""
    entries = []
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            stat = file.stat()
            entries.append((str(file), stat.st_size, stat.st_mtime_ns))
    return entries
