"""Job states from SLURM: `squeue` for what is alive, `sacct` (when accounting is on) for how it ended.

squeue is authoritative for liveness: a job it does not list is not pending or running, so deciding
"re-attach or submit" never needs accounting. sacct only names the end state in error messages.
"""

from __future__ import annotations

import subprocess
from typing import Iterable

# States in which a job may still produce its result (a requeued job passes through several).
LIVE_STATES = frozenset(
    {
        "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
        "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "POWER_UP_NODE",
    }
)
GONE = "GONE"  # neither squeue nor sacct knows the job (finished long ago, accounting off)


class SlurmUnavailable(RuntimeError):
    """The SLURM controller did not answer: nothing can be decided about jobs now."""


def _run(command: list[str], timeout_s: float = 60) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SlurmUnavailable(f"{' '.join(command)}: {err}") from err
    if done.returncode != 0:
        raise SlurmUnavailable(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def parse_states(text: str) -> dict[str, str]:
    """`id|state` lines (squeue `%i|%T`, sacct `-P JobID,State`) → job id → state's first word
    ("CANCELLED by 0" → "CANCELLED")."""
    states = {}
    for line in text.splitlines():
        if "|" in line:
            job_id, state = line.split("|", 1)
            states[job_id.strip()] = state.strip().split()[0] if state.strip() else "UNKNOWN"
    return states


def squeue_states() -> dict[str, str]:
    """Every job of this user that SLURM still lists, array tasks one per line: job id → state."""
    return parse_states(_run(["squeue", "--me", "--noheader", "--array", "--states=all", "--format=%i|%T"]))


def sacct_states(job_ids: Iterable[str]) -> dict[str, str]:
    """End states from accounting; empty when accounting is off or unreachable."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    try:
        return parse_states(_run(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State", "--jobs", ",".join(ids)]))
    except SlurmUnavailable:
        return {}


def end_states(job_ids: Iterable[str], listed: dict[str, str]) -> dict[str, str]:
    """The state of each job: from squeue's listing, else from sacct, else GONE."""
    ids = list(job_ids)
    missing = [job_id for job_id in ids if job_id not in listed]
    accounted = sacct_states(missing)
    return {job_id: listed.get(job_id) or accounted.get(job_id) or GONE for job_id in ids}


def is_live(state: str) -> bool:
    return state in LIVE_STATES
