"""Launch settings: how a stage runs (backend and SLURM resources), never what it computes.

They come from the `launch:` config key, which Snakemake hands to the stages through the `DND_LAUNCH`
environment variable (never through `params:`, so changing resources reruns nothing). Per-stage
overrides live under `launch.stages.<rule name>`; keys a stage leaves out come from `launch:`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dnd.config import ConfigError

LAUNCH_ENV = "DND_LAUNCH"
BACKENDS = ("local", "slurm")


@dataclass(frozen=True)
class LaunchSettings:
    backend: str = "local"  # local: in-process / a process pool; slurm: submitit jobs and job arrays
    workers: int = 0  # local processes for sharded stages; 0 = the rule's threads (DND_WORKERS), else all cores
    partition: str | None = None  # SLURM partition; None = the cluster's default
    account: str | None = None  # SLURM account charged; None = the user's default
    qos: str | None = None  # quality of service; None = the partition's default
    nodes: int = 1  # nodes per job (multi-node training)
    gpus_per_node: int = 0  # GPUs per node (--gpus-per-node)
    tasks_per_node: int | None = None  # processes per node; None = one per GPU (at least one): torch.distributed ranks
    cpus_per_task: int = 1  # CPU cores per process (data loader workers + 1)
    mem_gb: float | None = None  # memory per node in GB; None = the partition's default
    time_min: int = 60  # wall-clock limit per job (each requeue starts a new limit)
    constraint: str | None = None  # node features (--constraint), e.g. "a100|h100"
    sbatch_extra: dict[str, Any] = field(default_factory=dict)  # more sbatch flags, e.g. {"mail-type": "FAIL"}
    setup: tuple[str, ...] = ()  # shell lines run in the job before Python (module load, conda activate)
    array_parallelism: int = 256  # array tasks running at once (%N of --array)
    slurm_signal_delay_s: int = 120  # USR2 this long before the time limit: checkpoint, then requeue
    max_requeues: int = 3  # time-outs after which a checkpointable job is no longer requeued
    log_folder: str | None = None  # submitit pickles + SLURM logs; %j = job id, {stage} = rule name; None = <work dir>/slurm/%j
    poll_s: float = 30.0  # seconds between squeue queries while waiting (finished tasks are seen within a second)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "LaunchSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known - {"stages"})
        if unknown:
            raise ConfigError(f"unknown launch key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(known))})")
        values = {k: v for k, v in raw.items() if k in known}
        if "setup" in values:
            values["setup"] = tuple(values["setup"] or ())
        if "sbatch_extra" in values:
            values["sbatch_extra"] = dict(values["sbatch_extra"] or {})
        settings = cls(**values)
        if settings.backend not in BACKENDS:
            raise ConfigError(f"launch.backend={settings.backend!r} is not supported (use one of {', '.join(BACKENDS)})")
        return settings

    @property
    def ranks_per_node(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)

    def submitit_parameters(self, stage: str) -> dict[str, Any]:
        """The SlurmExecutor parameters (sbatch flags) of one stage's jobs."""
        params: dict[str, Any] = {
            "job_name": f"dnd-{stage}",
            "nodes": self.nodes,
            "ntasks_per_node": self.ranks_per_node,
            "cpus_per_task": self.cpus_per_task,
            "time": self.time_min,
            "signal_delay_s": self.slurm_signal_delay_s,
            "array_parallelism": self.array_parallelism,
            # One task failing ends the job's other tasks: ranks waiting in a collective for a rank that died
            # would otherwise hang until the process group's timeout (half an hour), holding every GPU.
            "srun_args": ["--kill-on-bad-exit=1"],
        }
        optional = {
            "partition": self.partition,
            "account": self.account,
            "qos": self.qos,
            "constraint": self.constraint,
            "gpus_per_node": self.gpus_per_node or None,
            "mem": f"{int(self.mem_gb * 1024)}MB" if self.mem_gb else None,
            "setup": list(self.setup) or None,
            "additional_parameters": dict(self.sbatch_extra) or None,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        return params

    def job_folder(self, stage: str, work_dir: Path) -> Path:
        """Where submitit keeps a job's pickles and SLURM logs (`%j` becomes the job id), as an absolute path."""
        folder = Path(self.log_folder.format(stage=stage)) if self.log_folder else Path(work_dir) / "slurm" / "%j"
        return folder.expanduser().absolute()


def launch_settings() -> dict[str, Any]:
    """The whole `launch:` config as Snakemake passed it; the local backend when run outside Snakemake."""
    raw = os.environ.get(LAUNCH_ENV)
    return json.loads(raw) if raw else {"backend": "local"}


def stage_settings(stage: str, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """`launch:` merged with the stage's own overrides (`launch.stages.<stage>`)."""
    settings = settings if settings is not None else launch_settings()
    merged = {k: v for k, v in settings.items() if k != "stages"}
    merged.update((settings.get("stages") or {}).get(stage, {}))
    return merged


def settings_for(stage: str) -> LaunchSettings:
    return LaunchSettings.from_dict(stage_settings(stage))


def restore_launch_types(launch: dict[str, Any], launch_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Give `launch:` values set by a profile's `config:` (or `--config`) their types back.

    Snakemake turns nested values of those into strings ("2", "None", "True"); each is converted to
    the type the config schema gives its key, so `nodes: 2` in a profile means the number 2.
    """
    if launch_schema is None:
        from dnd.config import load_schema

        launch_schema = load_schema()["properties"]["launch"]
    keys = launch_schema.get("properties", {})
    restored = {}
    for key, value in launch.items():
        if key == "stages" and isinstance(value, dict):
            restored[key] = {
                stage: {k: _restore(v, keys.get(k)) for k, v in overrides.items()} if isinstance(overrides, dict) else overrides
                for stage, overrides in value.items()
            }
        else:
            restored[key] = _restore(value, keys.get(key))
    return restored


def _restore(value: Any, spec: dict[str, Any] | None) -> Any:
    if not isinstance(value, str) or spec is None:
        return value
    types = spec.get("type", [])
    types = [types] if isinstance(types, str) else types
    if "null" in types and value in ("None", "null", "~", ""):
        return None
    if "boolean" in types and value in ("True", "true", "False", "false"):
        return value in ("True", "true")
    for name, convert in (("integer", int), ("number", float)):
        if name in types:
            try:
                return convert(value)
            except ValueError:
                pass
    return value
