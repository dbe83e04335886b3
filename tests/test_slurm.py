"""The launcher against a real single-node SLURM cluster (tests/slurm_cluster.py; skipped with the reason
when it cannot start): job arrays, failures with their logs, torch.distributed over two tasks,
checkpointed training surviving scancel / scontrol requeue / a time-out, and Snakemake with the
`slurm` profile, also interrupted mid-job and re-attaching without a second submission."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from submitit.slurm.slurm import SlurmJob

from dnd.launch import SlurmJobFailed, map_shards, run_task
from dnd.launch.calls import ResultStore, shard_key
from dnd.launch.records import JobRecords
from dnd.launch.settings import LAUNCH_ENV
from test_launch import CountingTask, all_reduce_ranks, fail_on_odd, rank_one_fails, square_and_log, starts_of, wait_for_step
from testdata import DEMO_DUMP, REPO

pytestmark = pytest.mark.slurm

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def launch(slurm, tmp_path, monkeypatch) -> Path:
    """backend: slurm with test-sized timings; the test callables importable in the jobs. Returns the work dir."""
    fast = {"backend": "slurm", "poll_s": 1, "time_min": 10, "slurm_signal_delay_s": 5,
            "log_folder": str(tmp_path / "slurm" / "{stage}" / "%j"), "stages": {"distributed": {"tasks_per_node": 2}}}
    monkeypatch.setenv(LAUNCH_ENV, json.dumps(fast))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    work = tmp_path / "work"
    work.mkdir()
    return work


class Background(threading.Thread):
    """Runs a launcher call while the test acts on the cluster; keeps its result or error."""

    def __init__(self, call: Callable[[], Any]):
        super().__init__(daemon=True)
        self.call, self.result, self.error = call, None, None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            self.error = err

    def outcome(self, timeout_s: float) -> Any:
        self.join(timeout_s)
        assert not self.is_alive(), f"the launcher still waits after {timeout_s} s"
        return self.result


# ---------------------------------------------------------------- stages through the launcher
def test_sharded_stage_is_one_job_array_and_a_rerun_submits_only_missing_shards(launch, slurm, capfd):
    runs = launch / "runs.txt"
    tasks = [(i, str(runs)) for i in range(3)]
    assert map_shards("render", square_and_log, tasks, launch) == [0, 1, 4]
    (first,) = JobRecords(launch).load()
    assert sorted(first.tasks) == [f"{first.job_id}_{i}" for i in range(3)]
    assert slurm.jobs()[f"{first.job_id}_2"] == ("dnd-render", "COMPLETED")
    assert f"[slurm {first.job_id}_1 out] shard 1 on job" in capfd.readouterr().err  # the job's log, streamed

    assert map_shards("render", square_and_log, tasks, launch) == [0, 1, 4]  # all kept: nothing submitted
    ResultStore(launch).discard(shard_key(square_and_log, 1, tasks[1]))
    assert map_shards("render", square_and_log, tasks, launch) == [0, 1, 4]
    submissions = JobRecords(launch).load()
    assert len(submissions) == 2 and list(submissions[1].tasks.values()) == [shard_key(square_and_log, 1, tasks[1])]
    assert sorted(runs.read_text().split()) == ["0", "1", "1", "2"]


def test_a_failed_task_shows_its_python_error_and_slurm_log(launch):
    with pytest.raises(SlurmJobFailed) as failure:
        map_shards("render", fail_on_odd, [(i, "") for i in range(2)], launch)
    message = str(failure.value)
    assert "1 of 2 SLURM task(s)" in message and "FAILED" in message
    assert "ValueError: shard 1 cannot be rendered" in message and "shard 1 starting" in message
    assert ResultStore(launch).has(shard_key(fail_on_odd, 0, (0, "")))  # the good shard is kept for the rerun


def test_torch_distributed_spans_the_tasks_of_a_job(launch, slurm):
    assert run_task("distributed", all_reduce_ranks, launch) == {"world_size": 2, "rank": 0, "sum": 3}


def test_one_rank_failing_ends_the_whole_job_instead_of_hanging(launch, slurm):
    """SLURM ends the other tasks when one exits with an error (srun --kill-on-bad-exit): rank 0, waiting in a
    collective for the rank that died, does not hold its GPUs until the process group times out."""
    waiting = Background(lambda: run_task("distributed", rank_one_fails, launch))
    waiting.outcome(120)
    assert isinstance(waiting.error, SlurmJobFailed), waiting.error


# ---------------------------------------------------------------- checkpointed training
def _job_id(work: Path, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while not (ids := JobRecords(work).job_ids()):
        assert time.monotonic() < deadline, "no job recorded"
        time.sleep(0.1)
    return ids[-1]


def test_training_cancelled_by_scancel_resumes_when_run_again(launch, slurm):
    waiting = Background(lambda: run_task("train", CountingTask(launch, total=20, step_s=0.1), launch))
    wait_for_step(launch, 3, 60)
    slurm.command("scancel", _job_id(launch))
    waiting.outcome(60)
    assert isinstance(waiting.error, SlurmJobFailed), waiting.error
    assert "CANCELLED" in str(waiting.error) and "stopped on SIGTERM" in str(waiting.error)

    result = run_task("train", CountingTask(launch, total=20, step_s=0.1), launch)
    starts = starts_of(launch)
    assert len(starts) == 2 and 3 <= starts[1] < 20  # saved on SIGTERM, resumed from there
    assert result == {"step": 20, "starts": starts}
    assert len(JobRecords(launch).load()) == 2


def test_training_requeued_by_scontrol_resumes_in_the_same_job(launch, slurm):
    before = slurm.next_job_id()
    waiting = Background(lambda: run_task("train", CountingTask(launch, total=20, step_s=0.1), launch))
    wait_for_step(launch, 3, 60)
    slurm.command("scontrol", "requeue", _job_id(launch))
    result = waiting.outcome(90)
    assert waiting.error is None, waiting.error
    starts = starts_of(launch)
    assert len(starts) == 2 and 3 <= starts[1] < 20
    assert result == {"step": 20, "starts": starts}
    assert slurm.next_job_id() - before == 1 and len(JobRecords(launch).load()) == 1  # one submission


def test_time_limit_warning_checkpoints_and_requeues(launch, slurm, tmp_path):
    """submitit's interrupt helper sends the USR2 that SLURM sends `slurm_signal_delay_s` before the limit."""
    before = slurm.next_job_id()
    waiting = Background(lambda: run_task("train", CountingTask(launch, total=20, step_s=0.1), launch))
    wait_for_step(launch, 3, 60)
    (submission,) = JobRecords(launch).load()
    SlurmJob(folder=submission.folder, job_id=submission.job_id)._interrupt(timeout=True)
    result = waiting.outcome(90)
    assert waiting.error is None, waiting.error
    starts = starts_of(launch)
    assert len(starts) == 2 and 3 <= starts[1] < 20
    assert result == {"step": 20, "starts": starts}
    assert slurm.next_job_id() - before == 1
    log = "".join(p.read_text() for p in (tmp_path / "slurm" / "train").rglob("*_log.*"))
    assert "Calling checkpoint method" in log and "Requeued job" in log


# ---------------------------------------------------------------- Snakemake with the slurm profile
def _workflow_dir(root: Path) -> Path:
    """A working directory laid out like the repo root: config/, demo/, the slurm/ profile, a micro run config."""
    if not DEMO_DUMP.exists():
        pytest.skip(f"the demo dump {DEMO_DUMP} is absent")
    root.mkdir()
    for name in ("config", "demo", "slurm"):
        (root / name).symlink_to(REPO / name)
    (root / "run.yaml").write_text((REPO / "config" / "micro.yaml").read_text())
    return root


def _snakemake(*targets: str) -> list[str]:
    """`snakemake --profile slurm` as a user types it in the repo root (with the micro config)."""
    return [sys.executable, "-m", "snakemake", *targets, "-s", str(REPO / "Snakefile"), "--profile", "slurm", "--configfile", "run.yaml"]


def _render_work(workdir: Path) -> Path | None:
    found = sorted((workdir / "work" / "render_text_images").glob("*/jobs.json"))
    return found[0].parent if found else None


def test_the_text_dag_runs_with_the_slurm_profile(slurm, tmp_path):
    workdir = _workflow_dir(tmp_path / "run")
    run = subprocess.run(_snakemake("make_text256"), cwd=workdir, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]
    assert (workdir / "results" / "data" / "text256" / "manifest.json").exists()
    assert (workdir / "results" / "data" / "text_image" / "provenance.json").exists()
    shards = yaml.safe_load((workdir / "run.yaml").read_text())["data"]["text_image"]["shards"]
    submissions = JobRecords(_render_work(workdir)).load()
    assert len(submissions) == 2  # the layout pass and the drawing pass: one array each
    assert all(len(s.tasks) == shards for s in submissions)
    assert {slurm.jobs()[task][0] for s in submissions for task in s.tasks} == {"dnd-render_text_images"}
    log = (workdir / "logs" / "render_text_images.log").read_text()
    assert f"(array of {shards} tasks)" in log and f"[slurm {submissions[1].job_id}_0 " in log
    assert list((workdir / "logs" / "slurm" / "render_text_images").glob("*/*_log.out"))


def test_an_interrupted_run_reattaches_to_its_job_instead_of_submitting_again(slurm, tmp_path):
    workdir = _workflow_dir(tmp_path / "run")
    first_id = slurm.next_job_id()
    blocker = slurm.command("sbatch", "--parsable", "--exclusive", "--job-name=blocker", f"--output={tmp_path}/blocker.out", "--wrap=sleep 300").stdout.strip()
    slurm.wait_until(lambda: slurm.jobs()[blocker][1] == "RUNNING", 30, "the blocking job")
    # Its own session, so that Ctrl-C can be played as a terminal does: SIGINT to the whole process group.
    first = subprocess.Popen(_snakemake("make_text256"), cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        slurm.wait_until(lambda: _render_work(workdir) is not None, 120, "the render stage to submit its array")
        (submitted,) = JobRecords(_render_work(workdir)).job_ids()
        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C while the array waits behind the blocker
        first.wait(180)  # 15 s alone; late in the whole suite the cluster answers more slowly
    finally:
        first.kill()
    assert first.returncode != 0
    assert {state for i, (_, state) in slurm.jobs().items() if i.startswith(f"{submitted}_")} == {"PENDING"}

    second_log = tmp_path / "second.log"
    with open(second_log, "w") as output:
        second = subprocess.Popen(_snakemake("make_text256"), cwd=workdir, stdout=output, stderr=subprocess.STDOUT)
    try:
        render_log = workdir / "logs" / "render_text_images.log"
        slurm.wait_until(lambda: render_log.exists() and "re-attaching" in render_log.read_text(), 120, "the rerun to re-attach")
        slurm.command("scancel", blocker)
        second.wait(180)
    finally:
        second.kill()
    assert second.returncode == 0, second_log.read_text()[-4000:]
    submissions = JobRecords(_render_work(workdir)).load()
    assert [s.job_id for s in submissions][0] == submitted and len(submissions) == 2  # layout array once, drawing array once
    ours = {i.split("_")[0] for i, (name, _) in slurm.jobs().items() if name == "dnd-render_text_images" and int(i.split("_")[0]) >= first_id}
    assert ours == {s.job_id for s in submissions}  # what SLURM saw: no second layout array
    assert (workdir / "results" / "data" / "text256" / "manifest.json").exists()
