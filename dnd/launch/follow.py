"""Stream SLURM jobs' log files into the launcher's own output (the Snakemake rule's `log:`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from submitit.core.utils import JobPaths


def job_log_files(folder: str, job_id: str) -> list[Path]:
    """Every rank's stdout and stderr of one job (or array task), as submitit names them."""
    directory = JobPaths(folder, job_id=job_id).folder
    return sorted(directory.glob(f"{job_id}_*_log.*"))


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class LogFollower:
    """Copies new complete lines of each followed job's logs, prefixed with the job id."""

    def __init__(self, out: TextIO | None = None):
        self.out = out or sys.stderr
        self.jobs: dict[str, str] = {}  # job id → submitit folder
        self.offsets: dict[Path, int] = {}

    def follow(self, job_id: str, folder: str) -> None:
        self.jobs[job_id] = folder

    def poll(self) -> None:
        for job_id, folder in self.jobs.items():
            for path in job_log_files(folder, job_id):
                self._copy_new_lines(job_id, path)
        self.out.flush()

    def _copy_new_lines(self, job_id: str, path: Path) -> None:
        offset = self.offsets.get(path, 0)
        with open(path, "rb") as file:
            file.seek(offset)
            chunk = file.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a partial last line waits for its newline
        if not complete:
            return
        self.offsets[path] = offset + len(complete)
        stream = path.suffix.lstrip(".")  # out / err
        for line in complete.decode(errors="replace").splitlines():
            self.out.write(f"[slurm {job_id} {stream}] {line}\n")
