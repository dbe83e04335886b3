"""The launcher without a cluster: settings, local runs, kept shards, job records, re-attach decisions,
the wait loop's failure report, log streaming, and checkpoint/requeue/resume under submitit's local executor.

The job callables here are also what test_slurm.py submits to the real cluster (picklable, importable).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import time
from pathlib import Path

import pytest
import submitit

import dnd.launch.slurm as slurm_backend
from dnd.config import ConfigError, check_config, with_defaults
from dnd.launch import CheckpointableTask, Interrupted, init_distributed, map_shards, run_task
from dnd.launch.calls import RecordedCheckpointable, ResultStore, recorded_call, shard_key
from dnd.launch.follow import LogFollower
from dnd.launch.records import JobRecords, Submission
from dnd.launch.settings import LAUNCH_ENV, LaunchSettings, restore_launch_types, stage_settings
from dnd.launch.slurm_state import parse_states

TESTS = Path(__file__).resolve().parent


# ---------------------------------------------------------------- job callables (also used on SLURM)
def square_and_log(task: tuple[int, str]) -> int:
    """A shard: records that it ran (one line per run), prints, returns index²."""
    index, runs_file = task
    with open(runs_file, "a") as runs:
        runs.write(f"{index}\n")
    print(f"shard {index} on job {os.environ.get('SLURM_JOB_ID', 'local')}", flush=True)
    return index * index


def fail_on_odd(task: tuple[int, str]) -> int:
    index, _ = task
    print(f"shard {index} starting", flush=True)
    if index % 2:
        raise ValueError(f"shard {index} cannot be rendered")
    return index


def all_reduce_ranks(_: None = None) -> dict[str, int]:
    """Sum of (rank + 1) over the job's processes, via torch.distributed set up by the launcher."""
    import torch
    import torch.distributed as dist

    info = init_distributed()
    total = torch.tensor([info.rank + 1.0])
    if info.world_size > 1:
        dist.all_reduce(total)
        dist.destroy_process_group()
    return {"world_size": info.world_size, "rank": info.rank, "sum": int(total.item())}


def rank_one_fails(_: None = None) -> None:
    """Rank 1 raises while rank 0 waits for it. Gloo notices a dead peer at once; NCCL does not (its
    collectives wait for their timeout), so rank 0 here waits the way an NCCL collective does: blindly."""
    info = init_distributed()
    if info.rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    time.sleep(300)


class CountingTask(CheckpointableTask):
    """A training-like task: `total` steps of `step_s` seconds; saves `checkpoint.pt` every
    `checkpoint_every` steps and when stopped; notes each (re)start step in starts.txt."""

    def __init__(self, work_dir: Path, total: int, step_s: float, checkpoint_every: int = 1000, sigterm_at: int | None = None):
        super().__init__(work_dir)
        self.total, self.step_s, self.checkpoint_every, self.sigterm_at = total, step_s, checkpoint_every, sigterm_at

    def run(self) -> dict[str, int | list[int]]:
        state = self.load_checkpoint() or {"step": 0}
        with open(self.work_dir / "starts.txt", "a") as starts:
            starts.write(f"{state['step']}\n")
        while state["step"] < self.total:
            time.sleep(self.step_s)
            state["step"] += 1
            (self.work_dir / "progress.txt").write_text(f"{state['step']} {os.getpid()}")
            if state["step"] == self.sigterm_at:
                os.kill(os.getpid(), signal.SIGTERM)
            if state["step"] % self.checkpoint_every == 0 or self.stop_requested:
                self.save_checkpoint(state)
            if self.stop_requested:
                return {"step": state["step"], "stopped": 1}
        self.save_checkpoint(state)
        return {"step": state["step"], "starts": starts_of(self.work_dir)}


def progress_of(work_dir: Path) -> tuple[int, int]:
    """(last step done, pid of the process doing it); (0, 0) before the first step."""
    path = Path(work_dir) / "progress.txt"
    text = path.read_text() if path.exists() else ""
    return tuple(map(int, text.split())) if len(text.split()) == 2 else (0, 0)


def wait_for_step(work_dir: Path, step: int, timeout_s: float, why=lambda: "") -> int:
    """Wait until the task reached `step`; returns the pid of the process running it."""
    deadline = time.monotonic() + timeout_s
    while progress_of(work_dir)[0] < step:
        assert time.monotonic() < deadline, f"step {step} not reached in {timeout_s} s {why()}"
        time.sleep(0.05)
    return progress_of(work_dir)[1]


def starts_of(work_dir: Path) -> list[int]:
    path = Path(work_dir) / "starts.txt"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def use_launch(monkeypatch: pytest.MonkeyPatch, **launch) -> None:
    monkeypatch.setenv(LAUNCH_ENV, json.dumps(launch))


# ---------------------------------------------------------------- settings
def test_stage_overrides_take_precedence_over_launch_keys():
    launch = {"backend": "slurm", "partition": "cpu", "time_min": 60, "stages": {"train": {"partition": "gpu", "gpus_per_node": 8}}}
    merged = LaunchSettings.from_dict(stage_settings("train", launch))
    assert (merged.partition, merged.gpus_per_node, merged.time_min, merged.ranks_per_node) == ("gpu", 8, 60, 8)
    assert LaunchSettings.from_dict(stage_settings("render", launch)).partition == "cpu"
    with pytest.raises(ConfigError, match="gpus"):
        LaunchSettings.from_dict({"gpus": 8})
    with pytest.raises(ConfigError, match="backend"):
        LaunchSettings.from_dict({"backend": "kubernetes"})


def test_profile_strings_get_their_schema_types_back():
    # What Snakemake makes of a profile's nested `config: launch:` mapping.
    raw = {"backend": "slurm", "nodes": "2", "partition": "None", "mem_gb": "1.5", "account": "12345",
           "stages": {"train": {"time_min": "30", "qos": "null"}}, "setup": ["module load cuda"]}
    restored = restore_launch_types(raw)
    assert restored == {"backend": "slurm", "nodes": 2, "partition": None, "mem_gb": 1.5, "account": "12345",
                        "stages": {"train": {"time_min": 30, "qos": None}}, "setup": ["module load cuda"]}
    check_config({"launch": restored})
    assert with_defaults({"launch": restored})["launch"]["poll_s"] == 30


def test_sbatch_script_carries_every_resource(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    settings = LaunchSettings(
        backend="slurm", partition="gpu", account="proj", qos="high", nodes=2, gpus_per_node=4, cpus_per_task=8,
        mem_gb=64, time_min=2880, constraint="a100", sbatch_extra={"mail-type": "FAIL"}, setup=("module load cuda",),
        array_parallelism=16, slurm_signal_delay_s=90,
    )
    params = settings.submitit_parameters("train_tokenizer")
    script = _make_sbatch_string(command="python -m x", folder=tmp_path, map_count=100, **params)
    for flag in ("--partition=gpu", "--account=proj", "--qos=high", "--nodes=2", "--gpus-per-node=4",
                 "--ntasks-per-node=4", "--cpus-per-task=8", "--mem=65536MB", "--time=2880", "--constraint=a100",
                 "--mail-type=FAIL", "--signal=USR2@90", "--array=0-99%16", "--job-name=dnd-train_tokenizer"):
        assert f"#SBATCH {flag}\n" in script, flag
    assert "module load cuda" in script
    assert settings.job_folder("train_tokenizer", tmp_path) == tmp_path.absolute() / "slurm" / "%j"
    custom = LaunchSettings(log_folder="logs/slurm/{stage}/%j").job_folder("render", tmp_path)
    assert custom == Path("logs/slurm/render/%j").absolute()


# ---------------------------------------------------------------- local backend, kept shards
def test_local_map_shards_runs_only_missing_shards(tmp_path, monkeypatch):
    use_launch(monkeypatch, backend="local", workers=2)
    runs = tmp_path / "runs.txt"
    tasks = [(i, str(runs)) for i in range(4)]
    assert map_shards("stage", square_and_log, tasks, tmp_path) == [0, 1, 4, 9]
    assert sorted(runs.read_text().split()) == ["0", "1", "2", "3"]
    assert map_shards("stage", square_and_log, tasks, tmp_path) == [0, 1, 4, 9]
    assert len(runs.read_text().split()) == 4  # nothing ran again
    ResultStore(tmp_path).discard(shard_key(square_and_log, 2, tasks[2]))
    assert map_shards("stage", square_and_log, tasks, tmp_path) == [0, 1, 4, 9]
    assert runs.read_text().split()[4:] == ["2"]


def test_shard_keys_are_stable_and_tell_tasks_and_functions_apart():
    task = (1, "x")
    assert shard_key(square_and_log, 1, task) == shard_key(square_and_log, 1, (1, "x"))
    assert len({shard_key(square_and_log, 1, task), shard_key(square_and_log, 1, (1, "y")),
                shard_key(fail_on_odd, 1, task), shard_key(square_and_log, 2, task)}) == 4


def test_local_run_task_runs_in_process(tmp_path, monkeypatch):
    use_launch(monkeypatch, backend="local")
    assert run_task("train", CountingTask(tmp_path, total=3, step_s=0), tmp_path) == {"step": 3, "starts": [0]}


# ---------------------------------------------------------------- records and SLURM decisions (no cluster)
def test_job_records_round_trip_and_latest_task_per_key(tmp_path):
    records = JobRecords(tmp_path)
    records.add(Submission(job_id="10", stage="s", folder="f/%j", tasks={"10_0": "a", "10_1": "b"}))
    records.add(Submission(job_id="12", stage="s", folder="f/%j", tasks={"12": "b"}))
    assert records.job_ids() == ["10", "12"]
    assert records.tasks_for(["a", "b", "c"]) == {"a": ("10_0", "f/%j"), "b": ("12", "f/%j")}
    assert json.loads((tmp_path / "jobs.json").read_text())["submissions"][1]["tasks"] == {"12": "b"}


def test_squeue_and_sacct_lines_parse_to_states():
    assert parse_states("7_0|RUNNING\n7_1|PENDING\n8|CANCELLED by 0\n\n") == {"7_0": "RUNNING", "7_1": "PENDING", "8": "CANCELLED"}


def _launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, states: dict[str, str]) -> tuple[slurm_backend.SlurmLauncher, list]:
    """A SlurmLauncher whose squeue answers `states` and whose submissions are only recorded."""
    monkeypatch.setattr(slurm_backend, "require_slurm", lambda: None)
    monkeypatch.setattr(slurm_backend, "squeue_states", lambda: dict(states))
    monkeypatch.setattr(slurm_backend, "sacct_states", lambda ids: {}, raising=False)
    monkeypatch.setattr(slurm_backend, "FILE_CHECK_S", 0.01)
    submitted: list = []

    def fake_submit(self, calls):
        submitted.append([call.key for call in calls])
        return {call.key: (f"99_{call.key[1:]}", str(tmp_path / "%j")) for call in calls}  # key k<i> → task 99_<i>

    monkeypatch.setattr(slurm_backend.SlurmLauncher, "_submit", fake_submit)
    settings = LaunchSettings(backend="slurm", poll_s=0.01)
    return slurm_backend.SlurmLauncher("stage", settings, tmp_path, ResultStore(tmp_path)), submitted


def test_a_rerun_reattaches_to_live_tasks_and_submits_only_dead_ones(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    calls = [recorded_call(f"k{i}", square_and_log, ((i, str(tmp_path / "runs")),), store) for i in range(3)]
    JobRecords(tmp_path).add(Submission(job_id="5", stage="stage", folder=str(tmp_path / "%j"), tasks={"5_0": "k0", "5_1": "k1", "5_2": "k2"}))
    launcher, submitted = _launcher(tmp_path, monkeypatch, {"5_0": "RUNNING", "5_1": "FAILED"})  # 5_2: gone
    attached = launcher._reattach({call.key: call for call in calls})
    assert attached == {"k0": ("5_0", str(tmp_path / "%j"))}
    for call in calls:  # the jobs finish
        call()
    launcher.run(calls)
    assert submitted == []  # every result is there: nothing to submit or wait for


def test_a_task_that_ends_without_result_fails_with_its_log(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    calls = [recorded_call(f"k{i}", square_and_log, ((i, str(tmp_path / "runs")),), store) for i in range(2)]
    launcher, submitted = _launcher(tmp_path, monkeypatch, {"99_0": "COMPLETED", "99_1": "CANCELLED"})
    calls[0]()  # task 0 succeeded; task 1 was cancelled after printing
    log_dir = tmp_path / "99_1"
    log_dir.mkdir()
    (log_dir / "99_1_0_log.err").write_text("loading shard 1\nslurmstepd: *** JOB 99 CANCELLED ***\n")
    with pytest.raises(slurm_backend.SlurmJobFailed) as failure:
        launcher.run(calls)
    assert submitted == [["k1"]]  # the finished shard is not submitted
    message = str(failure.value)
    assert "1 of " in message and "99_1" in message and "CANCELLED" in message and "loading shard 1" in message


def test_submitting_from_inside_a_job_drops_its_slurm_variables_but_not_the_cluster_config(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/slurm.conf")
    with slurm_backend.submission_env():
        assert "SLURM_JOB_ID" not in os.environ and "SLURM_CPUS_PER_TASK" not in os.environ
        assert os.environ["SLURM_CONF"] == "/etc/slurm/slurm.conf"
    assert os.environ["SLURM_JOB_ID"] == "41"


def test_log_follower_copies_complete_lines_once(tmp_path):
    import io

    folder = tmp_path / "%j"
    (tmp_path / "3_0").mkdir()
    out_log = tmp_path / "3_0" / "3_0_0_log.out"
    out_log.write_text("first\nsec")
    stream = io.StringIO()
    follower = LogFollower(stream)
    follower.follow("3_0", str(folder))
    follower.poll()
    with open(out_log, "a") as log:
        log.write("ond\n")
    follower.poll()
    follower.poll()
    assert stream.getvalue() == "[slurm 3_0 out] first\n[slurm 3_0 out] second\n"


# ---------------------------------------------------------------- checkpointable tasks
def test_sigterm_checkpoints_at_a_step_boundary_and_a_rerun_resumes(tmp_path):
    task = CountingTask(tmp_path, total=6, step_s=0, sigterm_at=3)
    with pytest.raises(Interrupted, match="SIGTERM"):
        task()
    assert task.load_checkpoint() == {"step": 3}  # saved on the signal, not by the periodic rule
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handler is back
    resumed = CountingTask(tmp_path, total=6, step_s=0)
    assert resumed() == {"step": 6, "starts": [0, 3]}
    assert "_signals" not in pickle.loads(pickle.dumps(resumed)).__getstate__()


def test_recorded_call_keeps_the_checkpoint_protocol(tmp_path):
    store = ResultStore(tmp_path)
    call = recorded_call("train", CountingTask(tmp_path, total=2, step_s=0), (), store)
    assert isinstance(call, RecordedCheckpointable)
    resubmission = call.checkpoint()
    assert isinstance(resubmission.function, RecordedCheckpointable) and resubmission.function.key == "train"
    assert submitit.DebugExecutor(tmp_path / "debug").submit(call).result() == {"step": 2, "starts": [0]}
    assert store.load("train") == {"step": 2, "starts": [0]}


def test_preemption_signal_checkpoints_requeues_and_resumes_under_submitit(tmp_path, monkeypatch):
    """submitit's local executor: USR2 (its timeout/preemption signal, sent to the task as SLURM would)
    → checkpoint at the step boundary → submitit requeues → the new process resumes."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    executor = submitit.LocalExecutor(tmp_path / "jobs")
    executor.update_parameters(timeout_min=5)
    store = ResultStore(tmp_path)
    job = executor.submit(recorded_call("train", CountingTask(tmp_path, total=12, step_s=0.05), (), store))
    pid = wait_for_step(tmp_path, 3, 20, job.stderr)
    os.kill(pid, signal.SIGUSR2)
    result = job.result()
    starts = starts_of(tmp_path)
    assert len(starts) == 2 and starts[0] == 0 and 3 <= starts[1] < 12, (starts, job.stderr())
    assert result == {"step": 12, "starts": starts} == store.load("train")


def test_init_distributed_outside_a_job_is_a_single_process():
    info = init_distributed()
    assert (info.rank, info.world_size, info.is_main) == (0, 1, True)
