"""The work area: state that must survive a rerun (finished shards, checkpoints, job records).

Snakemake deletes a job's declared outputs before it reruns it, so anything a stage resumes from lives
here instead, under `<root>/<stage>/<name>-<hash>`, the hash covering the stage's config and the
*content* of its inputs (sha256, `dnd.digests`): a config edit or new input data gets a fresh folder;
an interrupted run with the same config and data finds its own again — also after a `touch`, a copy or
an rsync of the inputs, and after a code change (the code version is recorded in each checkpoint and
a resume across versions is logged; `--fresh` starts over). Each folder holds `key.json`, what it
was made for; `dnd clean-work` removes the folders no current config points to.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dnd.atomic import write_json
from dnd.digests import CACHE_DIR_NAME, input_digests
from dnd.provenance import config_hash

WORK_ROOT_ENV = "DND_WORK_DIR"
KEY_NAME = "key.json"


def work_root() -> Path:
    return Path(os.environ.get(WORK_ROOT_ENV, "work"))


def work_dir_for(stage: str, name: str, cfg: Any, inputs: list[Path] | None = None, root: Path | None = None
                 ) -> tuple[Path, dict[str, Any]]:
    """The folder `<root>/<stage>/<name>-<hash of (config, input digests)>` and the key it hashes (not created)."""
    root = root or work_root()
    key = cfg if inputs is None else {"config": cfg, "inputs": input_digests(inputs, root)}
    return root / stage / f"{name}-{config_hash(key)}", key


def stage_work_dir(stage: str, name: str, cfg: Any, inputs: list[Path] | None = None, root: Path | None = None) -> Path:
    """The stage's work area, created, with `key.json` saying what it is for."""
    path, key = work_dir_for(stage, name, cfg, inputs, root)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / KEY_NAME).exists():
        write_json(path / KEY_NAME, {"stage": stage, "name": name, "key": key,
                                     "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return path


def start_fresh(work_dir: Path, what: str = "checkpoints") -> bool:
    """`--fresh`: remove the resumable state under `work_dir` (a training run then starts at step 0)."""
    target = Path(work_dir) / what
    if target.exists():
        shutil.rmtree(target)
        return True
    return False


def work_folders(root: Path | None = None) -> list[Path]:
    """Every stage work folder under the root (`<root>/<stage>/<name>-<hash>`)."""
    root = root or work_root()
    if not root.is_dir():
        return []
    return sorted(p for stage in root.iterdir() if stage.is_dir() and stage.name != CACHE_DIR_NAME
                  for p in stage.iterdir() if p.is_dir())


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
