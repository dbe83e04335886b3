"""Fixtures for the SLURM tests: one real single-node cluster for the whole session, started on first use."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

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


# Shared by the FID and generation-evaluation tests.
@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    """torch-fidelity's Inception with random weights, saved as a state dict like the real weights file."""
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:
        # Build the bare network: skip the constructor's weight loading (it would download).
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        network = tf_inception.FeatureExtractorInceptionV3("random", ["2048"])
    for module in network.modules():
        if isinstance(module, nn.Conv2d):  # He init keeps activations alive through ~40 conv layers
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "inception-random.pth"
    torch.save(network.state_dict(), path)
    return path
