"""Job records: which SLURM job runs which call, in `<work dir>/jobs.json`.

Written right after every submission (atomically), read before submitting anything: a rerun after
Snakemake was interrupted finds the still-running job here and waits for it instead of submitting
the same work again. The records live in the work area, not beside the declared outputs, because
Snakemake deletes those before it reruns a job.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from dnd.atomic import write_json

RECORDS_NAME = "jobs.json"


@dataclass
class Submission:
    job_id: str  # the sbatch job id (an array's id for job arrays)
    stage: str
    folder: str  # submitit's folder, `%j` unexpanded: pickles and SLURM logs
    tasks: dict[str, str]  # SLURM job id of each task ("123" or "123_4") → the call's key
    submitted: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


class JobRecords:
    def __init__(self, work_dir: Path):
        self.path = Path(work_dir) / RECORDS_NAME

    def load(self) -> list[Submission]:
        if not self.path.exists():
            return []
        return [Submission(**entry) for entry in json.loads(self.path.read_text())["submissions"]]

    def add(self, submission: Submission) -> None:
        submissions = self.load() + [submission]
        write_json(self.path, {"submissions": [asdict(s) for s in submissions]})

    def tasks_for(self, keys: Iterable[str]) -> dict[str, tuple[str, str]]:
        """For each key, its latest recorded task: key → (task job id, submitit folder)."""
        wanted = set(keys)
        latest: dict[str, tuple[str, str]] = {}
        for submission in self.load():
            for task_id, key in submission.tasks.items():
                if key in wanted:
                    latest[key] = (task_id, submission.folder)
        return latest

    def job_ids(self) -> list[str]:
        return [s.job_id for s in self.load()]
