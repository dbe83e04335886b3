"""Fixtures for the SLURM tests: one real single-node cluster for the whole session, started on first use."""

from __future__ import annotations

import os

import pytest

from slurm_cluster import ClusterUnavailable, SlurmCluster, start_cluster


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The running cluster, with SLURM_CONF exported for the client commands; skipped with the reason
    when it cannot start (packages missing, not root, a daemon failing)."""
    try:
        cluster = start_cluster()
    except ClusterUnavailable as err:
        pytest.skip(f"SLURM test cluster unavailable: {err}")
    previous = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env)
    try:
        yield cluster
    finally:
        cluster.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> SlurmCluster:
    """The cluster with no job left alive by the previous test."""
    slurm_cluster.cancel_all()
    return slurm_cluster
