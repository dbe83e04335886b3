"""Multi-rank training of the transformer over two CPU processes (gloo): FSDP against one process, DDP with dropout resumed.

Kept apart from the stage tests so that the spawned ranks import little besides the trainer.
"""

import itertools
import os
import shutil
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dnd.data.codes import CodeMapDataset, CodeMapInfo, code_shards, write_code_shard
from dnd.transformer import parallel
from dnd.transformer.model import Transformer
from dnd.transformer.model import load_transformer
from dnd.transformer.train import TransformerSpec, train_transformer, validate

GRID, DEPTH, VOCAB, CLASSES = 4, 2, 16, 3
# No dropout (nothing random differs between the ranks and one process); EMA on and a clip norm that
# every step's gradients exceed, so both must behave the same when sharded.
RUN = {
    "tokenizer": "tok", "data": "classes", "size": "tiny",
    "model": {"variant": "dnd", "class_dropout": 0.0, "token_dropout": 0.0, "resid_dropout": 0.0, "ffn_dropout": 0.0},
    "train": {"batch_size": 8, "steps": 6, "lr": 3e-3, "eval_every": 2, "checkpoint_every": 3, "eval_batches": 1,
              "ema_decay": 0.5, "grad_clip": 0.05, "parallelism": "fsdp"},
}


@pytest.fixture
def codes(tmp_path):
    rng = np.random.default_rng(0)
    prototypes = rng.integers(0, VOCAB, (CLASSES, GRID, GRID, DEPTH))
    info = CodeMapInfo(GRID, GRID, DEPTH, VOCAB, "tok")
    for split, n in (("train", 24), ("val", 6)):
        labels = [i % CLASSES for i in range(n)]
        maps = prototypes[labels].copy()
        noise = rng.random(maps.shape) < 0.1
        maps[noise] = rng.integers(0, VOCAB, noise.sum())
        write_code_shard(tmp_path / "codes" / split / "shard-00000-of-00001.arrow", [f"{split}{i}" for i in range(n)],
                         maps, labels, info)
    return tmp_path / "codes"


@pytest.fixture
def tokenizer(tmp_path):
    """A tiny untrained tokenizer: the sample grids written during training decode through it."""
    from dnd.tokenizer.rqvae import RQVAE, rqvae_config
    from dnd.tokenizer.rqvae import save_tokenizer

    torch.manual_seed(0)
    model = RQVAE(rqvae_config("demo_f8", depth=DEPTH, codebook_size=VOCAB, ch=32, z_channels=8, embed_dim=8))
    save_tokenizer(tmp_path / "tokenizer.pt", model, "tok")
    return tmp_path / "tokenizer.pt"


def _fsdp_worker(rank: int, world: int, port: int, codes_dir, tokenizer, root) -> None:
    """Under FSDP: a whole run (with sample grids, drawn on rank 0 from the gathered weights); a run
    stopped after step 3 (its checkpoint copied aside), then resumed."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        spec = TransformerSpec.from_dict("t", RUN)
        train_transformer(spec, codes_dir, root / "fsdp" / "model.pt", root / "fsdp-work", tokenizer)
        calls = itertools.count(1)
        stopped = train_transformer(spec, codes_dir, root / "resumed" / "model.pt", root / "resumed-work",
                                    should_stop=lambda: next(calls) == 3)
        assert stopped is None
        if rank == 0:
            shutil.copytree(root / "resumed-work" / "checkpoints", root / "single-work" / "checkpoints")
        dist.barrier()
        train_transformer(spec, codes_dir, root / "resumed" / "model.pt", root / "resumed-work")
        _check_evaluation_leaves_shards(spec, codes_dir)
    finally:
        dist.destroy_process_group()


def _check_evaluation_leaves_shards(spec, codes_dir) -> None:
    """A forward without a backward (validation) leaves FSDP's root weights gathered; the EMA update
    after it needs the shards back. (In the runs above each validation improved and the best
    checkpoint's gathering happened to reshard; a validation that does not improve must not break.)"""
    from torch.distributed.tensor import DTensor

    val_set = CodeMapDataset(code_shards(codes_dir, "val"))
    model = Transformer(spec.model_config(val_set, CLASSES))
    device = torch.device("cpu")
    parallel.parallelize(model, "fsdp", device)
    ema = parallel.ema_copy(model, "fsdp", device)
    validate(ema, val_set, spec.train, device)
    parallel.reshard(ema, "fsdp")
    assert all(isinstance(p, DTensor) for p in ema.parameters())
    with torch.no_grad():
        for target, source in zip(ema.parameters(), model.parameters()):
            target.lerp_(source, 0.5)


def test_fsdp_over_two_ranks_equals_one_process_and_resumes_from_its_checkpoints(codes, tokenizer, tmp_path):
    """Sharded weights, gradients, AdamW state and EMA train what one process trains from the whole
    batch; the checkpoints are full state dicts that resume under FSDP and in one process alike."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_fsdp_worker, args=(2, port, codes, tokenizer, tmp_path), nprocs=2, join=True)
    assert (tmp_path / "fsdp-work" / "samples" / "step-0000006.png").stat().st_size > 0
    # one process, from the start and from the FSDP run's step-3 checkpoint (one process shards nothing)
    spec = TransformerSpec.from_dict("t", RUN)
    train_transformer(spec, codes, tmp_path / "one" / "model.pt", tmp_path / "one-work")
    train_transformer(spec, codes, tmp_path / "single" / "model.pt", tmp_path / "single-work")

    def checkpoint(run):
        return torch.load(tmp_path / f"{run}-work" / "checkpoints" / "last.pt", weights_only=False)

    one = checkpoint("one")
    for run in ("fsdp", "resumed", "single"):
        other = checkpoint(run)
        assert other["step"] == one["step"] == 6, run
        for part in ("model", "ema"):  # raw and averaged weights
            assert other[part].keys() == one[part].keys()
            for key, value in one[part].items():
                torch.testing.assert_close(other[part][key], value, rtol=1e-4, atol=1e-5, msg=f"{run} {part} {key}")
        # the optimizer state in one process's format: parameters by index, same groups, same moments
        assert other["optimizer"]["param_groups"] == one["optimizer"]["param_groups"], run
        assert other["optimizer"]["state"].keys() == one["optimizer"]["state"].keys(), run
        for index, moments in one["optimizer"]["state"].items():
            for name, value in moments.items():
                torch.testing.assert_close(other["optimizer"]["state"][index][name], value, rtol=1e-4, atol=1e-5,
                                           msg=f"{run} optimizer {index} {name}")
    reference = load_transformer(tmp_path / "one" / "model.pt").state_dict()
    for run in ("fsdp", "resumed"):
        model = load_transformer(tmp_path / run / "model.pt")  # the EMA weights of the best step, unsharded
        assert model.config.num_classes == CLASSES and model.config.depth == DEPTH
        for key, value in reference.items():
            torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=f"{run} {key}")


@pytest.mark.parametrize("size, world, parallelism, expected", [
    ("XXL", 8, "auto", "fsdp"), ("XXXL", 2, "auto", "fsdp"), ("XL", 8, "auto", "ddp"), ("XXL", 8, "ddp", "ddp"),
    ("tiny", 2, "fsdp", "fsdp"), ("XXXL", 1, "auto", "none"),
])
def test_auto_parallelism_shards_only_the_largest_presets_over_several_ranks(size, world, parallelism, expected):
    assert parallel.resolve_parallelism(parallelism, size, world) == expected


def test_unknown_parallelism_is_refused():
    with pytest.raises(ValueError, match="parallelism"):
        TransformerSpec.from_dict("t", {**RUN, "train": {"parallelism": "zero3"}})


# Dropout everywhere it exists: each rank draws its own masks, from its own RNG stream.
DROPOUT_RUN = {
    **RUN,
    "model": {"variant": "dnd", "class_dropout": 0.2, "token_dropout": 0.1, "resid_dropout": 0.1, "ffn_dropout": 0.1},
    "train": {**RUN["train"], "parallelism": "ddp"},
}


def _ddp_dropout_worker(rank: int, world: int, port: int, codes_dir, root) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        spec = TransformerSpec.from_dict("t", DROPOUT_RUN)
        train_transformer(spec, codes_dir, root / "whole" / "model.pt", root / "whole-work")
        calls = itertools.count(1)
        assert train_transformer(spec, codes_dir, root / "resumed" / "model.pt", root / "resumed-work",
                                 should_stop=lambda: next(calls) == 3) is None
        dist.barrier()
        train_transformer(spec, codes_dir, root / "resumed" / "model.pt", root / "resumed-work")
    finally:
        dist.destroy_process_group()


def test_two_ranks_with_dropout_stopped_and_resumed_equal_the_uninterrupted_run(codes, tmp_path):
    """Each rank saves and takes back its own RNG state, so after a stop at step 3 the ranks draw the
    dropout and label-dropout masks they would have drawn: weights and EMA equal the uninterrupted run
    exactly (same operations in the same order on the same CPU)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_ddp_dropout_worker, args=(2, port, codes, tmp_path), nprocs=2, join=True)
    whole = torch.load(tmp_path / "whole-work" / "checkpoints" / "last.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed-work" / "checkpoints" / "last.pt", weights_only=False)
    assert whole["step"] == resumed["step"] == DROPOUT_RUN["train"]["steps"]
    for key in ("model", "ema"):
        assert all(torch.equal(whole[key][name], resumed[key][name]) for name in whole[key]), key
    # the two ranks' streams differ (their masks are not correlated), and both are in the checkpoint
    assert len(resumed["rng"]) == 2 and not torch.equal(resumed["rng"][0]["torch"], resumed["rng"][1]["torch"])
