"""Provenance records: every declared output can be traced to the code, packages, config and seed that made it."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from dnd.atomic import write_json

# Packages whose versions decide what the pipeline produces.
TRACKED_PACKAGES = (
    "torch", "torchvision", "pillow", "pymupdf", "pyarrow", "numpy", "mwparserfromhell",
    "snakemake", "submitit", "lpips", "einops", "rapidocr", "onnxruntime", "rouge-score", "torch-fidelity",
)
PROVENANCE_NAME = "provenance.json"


def config_hash(cfg: Any) -> str:
    """A short stable hash of a config subtree (key order does not matter)."""
    blob = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_commit(repo: Path | None = None) -> str | None:
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def slurm_job_ids() -> list[str]:
    job = os.environ.get("SLURM_JOB_ID")
    return [job] if job else []


def record(stage: str, cfg: Any, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "stage": stage,
        "config": cfg,
        "config_hash": config_hash(cfg),
        "seed": seed,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "command": sys.argv,
        "host": platform.node(),
        "slurm_job_ids": slurm_job_ids(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def write_provenance(target: Path, stage: str, cfg: Any, seed: int | None = None, **extra: Any) -> Path:
    """Write the record beside a file output (`x.csv` → `x.csv.provenance.json`) or inside a directory output."""
    target = Path(target)
    path = target / PROVENANCE_NAME if target.is_dir() else target.with_name(target.name + ".provenance.json")
    write_json(path, record(stage, cfg, seed, **extra))
    return path
