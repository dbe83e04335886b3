"""torch.distributed from submitit's job environment: one process per task (`tasks_per_node` × `nodes`).

Inside a multi-task submitit job, `init_distributed()` exports MASTER_ADDR/PORT, RANK, WORLD_SIZE
and LOCAL_RANK from the SLURM variables (submitit's TorchDistributedEnvironment: the first node of
the job is the master, the port is derived from the job id) and joins the process group (NCCL on
GPUs, Gloo on CPUs), each rank on GPU `local_rank`. A single process needs none of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistributedInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _job_environment():
    """submitit's JobEnvironment inside a submitit job, else None."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return None
    from submitit import JobEnvironment

    return JobEnvironment()


def init_distributed(backend: str | None = None) -> DistributedInfo:
    """Join the job's process group once; a no-op (rank 0 of 1) outside a multi-task job."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistributedInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    env = _job_environment()
    if env is None or env.num_tasks == 1:
        return DistributedInfo()
    from submitit.helpers import TorchDistributedEnvironment

    # Each task already sees its node's GPUs; it picks its own below instead of hiding the others.
    exported = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    info = DistributedInfo(exported.rank, exported.world_size, exported.local_rank)
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(
        backend or ("nccl" if torch.cuda.is_available() else "gloo"),
        init_method="env://", rank=info.rank, world_size=info.world_size,
    )
    return info
