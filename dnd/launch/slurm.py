"""The slurm backend: submitit jobs and job arrays, re-attached after an interruption, waited for.

One launcher call = at most one submission: a single job for `run_task`, one job array for the
missing shards of `map_shards`. Before submitting, the job records in the work area are checked
against `squeue`: a recorded job that is still pending or running is waited for, never submitted
again. While waiting, the jobs' logs are streamed to stderr (the rule's log); a job that ends
without its result raises `SlurmJobFailed` with its end state, its Python error and its log tail.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterator, Sequence, TextIO

from dnd.launch.calls import RecordedCall, ResultStore
from dnd.launch.follow import LogFollower, job_log_files, tail
from dnd.launch.records import JobRecords, Submission
from dnd.launch.settings import LaunchSettings
from dnd.launch.slurm_state import GONE, SlurmUnavailable, end_states, is_live, squeue_states

log = logging.getLogger("dnd.launch")

FILE_CHECK_S = 1.0  # finished tasks are seen by their result files, without asking SLURM
FAILURES_SHOWN = 3  # failed tasks whose logs go into the error message (the rest are listed)
DRAIN_S = 10.0  # after the last result, how long to wait for the jobs to end so their streamed logs are complete


class SlurmJobFailed(RuntimeError):
    """Some submitted tasks ended without a result; the message holds their state, error and logs."""


def require_slurm() -> None:
    missing = [command for command in ("sbatch", "squeue", "srun") if shutil.which(command) is None]
    if missing:
        raise RuntimeError(
            f"launch.backend=slurm needs SLURM's {', '.join(missing)} on PATH: run on the cluster's "
            "login node, or set launch.backend: local"
        )


@contextlib.contextmanager
def submission_env() -> Iterator[None]:
    """submitit's clean_env (no inherited SLURM_*/distributed variables), keeping SLURM_CONF:
    that one says where the cluster's config is, not which job we are in."""
    import submitit

    conf = os.environ.get("SLURM_CONF")
    with submitit.helpers.clean_env():
        if conf:
            os.environ["SLURM_CONF"] = conf
        yield


class SlurmLauncher:
    def __init__(self, stage: str, settings: LaunchSettings, work_dir: Path, store: ResultStore, out: TextIO | None = None):
        self.stage = stage
        self.settings = settings
        self.work_dir = Path(work_dir)
        self.store = store
        self.records = JobRecords(work_dir)
        self.folder = settings.job_folder(stage, work_dir)
        self.follower = LogFollower(out)

    def run(self, calls: Sequence[RecordedCall]) -> None:
        """Every call's result lands in the store, or SlurmJobFailed names the calls that failed."""
        require_slurm()
        pending = {call.key: call for call in calls if not self.store.has(call.key)}
        if not pending:
            return
        waiting = self._reattach(pending)
        to_submit = [call for key, call in pending.items() if key not in waiting]
        if to_submit:
            waiting.update(self._submit(to_submit))
        try:
            self._wait(waiting)
        except KeyboardInterrupt:
            log.warning("%s: stopped waiting; the SLURM job(s) keep running and a rerun re-attaches to them", self.stage)
            raise

    # ------------------------------------------------------------ before submitting
    def _reattach(self, pending: dict[str, RecordedCall]) -> dict[str, tuple[str, str]]:
        """Recorded tasks of these calls that SLURM still runs: key → (task job id, folder)."""
        recorded = self.records.tasks_for(pending)
        if not recorded:
            return {}
        listed = squeue_states()  # SlurmUnavailable propagates: never guess and submit twice
        attached = {key: task for key, task in recorded.items() if is_live(listed.get(task[0], GONE))}
        if attached:
            jobs = sorted({task_id.split("_")[0] for task_id, _ in attached.values()})
            log.info("%s: re-attaching to %d pending or running task(s) of SLURM job(s) %s", self.stage, len(attached), ", ".join(jobs))
        return attached

    def _submit(self, calls: Sequence[RecordedCall]) -> dict[str, tuple[str, str]]:
        import submitit

        executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=self.settings.max_requeues)
        executor.update_parameters(**self.settings.submitit_parameters(self.stage))
        with submission_env():
            jobs = [executor.submit(calls[0])] if len(calls) == 1 else executor.submit_array(list(calls))
        tasks = {job.job_id: call.key for job, call in zip(jobs, calls)}
        job_id = jobs[0].job_id.split("_")[0]
        self.records.add(Submission(job_id=job_id, stage=self.stage, folder=str(self.folder), tasks=tasks))
        kind = f" (array of {len(calls)} tasks)" if len(calls) > 1 else ""
        log.info("%s: submitted SLURM job %s%s; monitor: squeue -j %s; logs: %s", self.stage, job_id, kind, job_id, self.folder)
        return {key: (task_id, str(self.folder)) for task_id, key in tasks.items()}

    # ------------------------------------------------------------ waiting
    def _wait(self, waiting: dict[str, tuple[str, str]]) -> None:
        """Until every task has its result or has ended without one; the latter raise SlurmJobFailed.

        A task counts as failed only when two squeue answers at least `grace_s` apart both no longer
        list it as live (a requeue passes through short-lived states; a result file may appear late).
        """
        for task_id, folder in waiting.values():
            self.follower.follow(task_id, folder)
        remaining = dict(waiting)
        ended: dict[str, float] = {}  # key → when squeue first no longer listed its task as live
        failed: dict[str, tuple[str, str]] = {}
        grace_s = min(self.settings.poll_s, 10.0)
        listed: dict[str, str] = {}
        last_query = time.monotonic()
        while remaining:
            time.sleep(FILE_CHECK_S)
            self.follower.poll()
            for key in [key for key in remaining if self.store.has(key)]:
                del remaining[key]
                ended.pop(key, None)
                log.info("%s: %d/%d task(s) done", self.stage, len(waiting) - len(remaining) - len(failed), len(waiting))
            now = time.monotonic()
            expired = {key for key, since in ended.items() if now - since >= grace_s}
            if not remaining or (now - last_query < self.settings.poll_s and not expired):
                continue
            last_query = now
            try:
                listed = squeue_states()
            except SlurmUnavailable as err:
                log.warning("%s: %s; asking again in %.0f s", self.stage, err, self.settings.poll_s)
                continue
            for key, (task_id, _) in list(remaining.items()):
                if is_live(listed.get(task_id, GONE)):
                    ended.pop(key, None)
                elif key in expired and not self.store.has(key):
                    failed[key] = remaining.pop(key)
                    del ended[key]
                else:
                    ended.setdefault(key, now)
        self._drain([task_id for task_id, _ in waiting.values()])
        if failed:
            raise SlurmJobFailed(self._failure_report(failed, len(waiting), listed))

    def _drain(self, task_ids: list[str]) -> None:
        """A task writes its result just before it exits: keep streaming until SLURM lists none as live."""
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            try:
                listed = squeue_states()
            except SlurmUnavailable:
                break
            if not any(is_live(listed.get(task_id, GONE)) for task_id in task_ids):
                break
            self.follower.poll()
            time.sleep(FILE_CHECK_S)
        self.follower.poll()

    def _failure_report(self, failed: dict[str, tuple[str, str]], total: int, listed: dict[str, str]) -> str:
        states = end_states([task_id for task_id, _ in failed.values()], listed)
        lines = [f"{self.stage}: {len(failed)} of {total} SLURM task(s) ended without a result"]
        for index, (key, (task_id, folder)) in enumerate(sorted(failed.items(), key=lambda item: item[1][0])):
            if index == FAILURES_SHOWN:
                rest = [task for task, _ in list(failed.values())[FAILURES_SHOWN:]]
                lines.append(f"(and {len(rest)} more: {', '.join(rest)})")
                break
            lines.append(f"--- job {task_id} ({key}): {states[task_id]} ---")
            error = _python_error(folder, task_id)
            if error:
                lines.append(error.rstrip())
            for path in job_log_files(folder, task_id):
                lines.append(f"last lines of {path}:")
                lines.append(tail(path) or "(empty)")
        lines.append(f"Rerun to resubmit the failed tasks; finished ones are kept in {self.work_dir}.")
        return "\n".join(lines)


def _python_error(folder: str, task_id: str) -> str | None:
    """The traceback submitit saved for a task that raised, if any."""
    from submitit.core.utils import JobPaths, pickle_load

    path = JobPaths(folder, job_id=task_id, task_id=0).result_pickle
    if not path.exists():
        return None
    outcome, payload = pickle_load(path)
    return str(payload) if outcome == "error" else None
