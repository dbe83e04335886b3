"""Data-parallel tokenizer training: two gloo ranks on CPU against one process with the same global batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dnd.tokenizer.train as tokenizer_train
from dnd.data import shards
from dnd.data.render import PageLayout, RenderConfig
from dnd.tokenizer.losses import adaptive_gan_weight
from dnd.tokenizer.train import TokenizerSpec, train_tokenizer
from dnd.training import StepBatchSampler, seed_everything

SENTENCES = ["Residual codes for every patch", "one codebook shared by depths", "deeper stacks keep more detail",
             "and text stays sharp to read", "ranks split the global batch", "and average their gradients"]

# Depth-by-depth codebook init after a warm-up, dead-code restarts on (a tiny batch leaves codes with
# EMA counts below 1): every collective of the quantizer runs. Validation only at the end, so best.pt
# holds the final weights. ch=64 gives GroupNorm(32) two channels a group: with one, every conv bias
# before a norm has an exactly-zero gradient, which Adam turns into steps of pure rounding noise.
L2 = {
    "model": {"preset": "demo_f8", "depth": 2, "ch": 64, "z_channels": 8, "embed_dim": 8, "codebook_size": 32},
    "loss": {"perceptual_weight": 0.0, "gan_weight": 0.0},
    "train": {"resolution": 64, "crop": 32, "batch_size": 4, "steps": 6, "lr": 2e-3, "warmup_steps": 2,
              "eval_every": 6, "checkpoint_every": 3, "eval_images": 2},
}
GAN = {
    "model": {**L2["model"], "ch": 32},
    "loss": {"perceptual_weight": 0.0, "gan_weight": 0.75, "disc_filters": 8},
    "train": {**L2["train"], "steps": 8, "eval_every": 8},
}
CASES = {"l2": L2, "gan": GAN}
WORLD = 2
STOP_AT = 4  # after the codebook init, off the checkpoint_every grid


def _tiny_adaptive_weight(rows: slice) -> torch.Tensor:
    """The adaptive GAN weight of a linear 'decoder' on some rows of a fixed batch of 8."""
    generator = torch.Generator().manual_seed(0)
    layer = torch.randn(3, 4, generator=generator).requires_grad_()
    inputs, targets = torch.randn(8, 4, generator=generator)[rows], torch.randn(8, 3, generator=generator)[rows]
    out = inputs @ layer.T
    return adaptive_gan_weight((out - targets).pow(2).mean(), -out.tanh().mean(), layer, 1e4)


def _worker(rank: int, port: int, dataset, root) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two ranks on two cores
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    built = {}  # the trainer's model and loss modules on this rank, to compare the ranks' final weights

    class RecordedRQVAE(tokenizer_train.RQVAE):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built["model"] = self

    class RecordedLoss(tokenizer_train.TokenizerLoss):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built["loss"] = self

    tokenizer_train.RQVAE, tokenizer_train.TokenizerLoss = RecordedRQVAE, RecordedLoss
    try:
        for name, raw in CASES.items():
            train_tokenizer(TokenizerSpec.from_dict(name, raw), [dataset], root / name / "two" / "model.pt", root / name / "two-work")
            disc = built["loss"].discriminator
            torch.save({"model": built["model"].state_dict(), "discriminator": disc.state_dict() if disc is not None else None},
                       root / name / f"rank{rank}.pt")
        # The l2 run again, signalled on rank 1 alone after step STOP_AT, then restarted: both ranks stop
        # there, and resume from rank 0's checkpoint.
        calls = iter(range(1, 100))
        stopped = train_tokenizer(TokenizerSpec.from_dict("l2", L2), [dataset], root / "l2" / "resumed" / "model.pt",
                                  root / "l2" / "resumed-work", should_stop=lambda: rank == 1 and next(calls) == STOP_AT)
        stopped_at = torch.load(root / "l2" / "resumed-work" / "checkpoints" / "last.pt", weights_only=False)["step"]
        torch.save({"returned": stopped, "step": stopped_at}, root / "l2" / f"stopped{rank}.pt")
        train_tokenizer(TokenizerSpec.from_dict("l2", L2), [dataset], root / "l2" / "resumed" / "model.pt", root / "l2" / "resumed-work")
        try:  # a global batch the ranks cannot share evenly
            odd = {**L2, "train": {**L2["train"], "batch_size": 3}}
            train_tokenizer(TokenizerSpec.from_dict("odd", odd), [dataset], root / "odd" / "model.pt", root / "odd-work")
        except ValueError as err:
            (root / f"odd{rank}.txt").write_text(str(err))
        share = 8 // WORLD
        torch.save(_tiny_adaptive_weight(slice(rank * share, (rank + 1) * share)), root / f"adaptive{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both cases trained by two gloo ranks (one spawn runs both), the l2 case also by one process."""
    root = tmp_path_factory.mktemp("ddp")
    layout = PageLayout(RenderConfig(size=64, font_size=8, margin=3))
    for split in ("train", "val"):
        records = [{"id": f"{split}-{i}", "png": shards.encode_png(layout.draw(layout.lines(text))), "text": text,
                    "title": "t", "split": split} for i, text in enumerate(SENTENCES)]
        shards.write_shard(root / "data" / split / shards.shard_name(0, 1), records, shards.image_schema())
    train_tokenizer(TokenizerSpec.from_dict("l2", L2), [root / "data"], root / "l2" / "one" / "model.pt", root / "l2" / "one-work")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(port, root / "data", root), nprocs=WORLD, join=True)
    return root


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)["state_dict"]


def test_two_ranks_train_the_weights_of_one_process_with_the_same_global_batch(runs):
    """l2 loss, depth-by-depth codebook init after a warm-up, dead-code restarts: DDP's averaged
    gradients and the quantizer's whole-batch codebook updates reproduce the single process.

    Compared by how far each tensor moved in training, not element by element: the ranks sum their
    gradients in another order than one process, and Adam divides each gradient by its own magnitude,
    so a rare element whose gradient is near zero gets a full learning-rate step of either sign (a few
    of 37K per tensor here, 1e-3 apart). The runs agree to ~0.1% of each tensor's training update;
    drawing restarts from rank 0's share alone, or fitting the initial codebook to it, is 10-80% off.
    """
    spec = TokenizerSpec.from_dict("l2", L2)
    seed_everything(spec.train.seed)  # the trainer's first random draws build the model
    initial = tokenizer_train.RQVAE(spec.model).state_dict()
    one, two = _weights(runs / "l2" / "one" / "model.pt"), _weights(runs / "l2" / "two" / "model.pt")
    assert bool(one["quantizer.initialized"]) and bool(two["quantizer.initialized"]) and set(one) == set(two)
    for key, value in one.items():
        if value.dtype.is_floating_point:
            moved, gap = (value - initial[key]).norm(), (two[key] - value).norm()
            assert gap <= 0.01 * moved, f"{key}: the runs differ by {gap:.3g}, training moved it by {moved:.3g}"
    rank0, rank1 = (torch.load(runs / "l2" / f"rank{r}.pt", weights_only=False)["model"] for r in range(WORLD))
    for key, value in rank0.items():
        assert torch.equal(rank1[key], value), f"the ranks disagree on {key}"


def test_a_signal_on_one_rank_stops_all_and_the_run_resumes_exactly(runs):
    for rank in range(WORLD):
        assert torch.load(runs / "l2" / f"stopped{rank}.pt", weights_only=False) == {"returned": None, "step": STOP_AT}
    resumed, uninterrupted = _weights(runs / "l2" / "resumed" / "model.pt"), _weights(runs / "l2" / "two" / "model.pt")
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6, msg=key)


def test_a_batch_the_ranks_cannot_share_is_refused_naming_the_setting(runs):
    for rank in range(WORLD):
        assert "tokenizers.odd.train.batch_size=3 must split evenly over 2 ranks" in (runs / f"odd{rank}.txt").read_text()


def test_the_ranks_shares_make_the_global_batch_with_its_crop_seeds():
    whole = list(StepBatchSampler(10, 6, seed=1, start=2, steps=5, crop_seeds=True))
    shares = [list(StepBatchSampler(10, 6, seed=1, start=2, steps=5, crop_seeds=True, rank=r, world=3)) for r in range(3)]
    assert [sum((share[step] for share in shares), []) for step in range(3)] == whole
    with pytest.raises(ValueError, match="split evenly"):
        StepBatchSampler(10, 6, seed=1, start=0, steps=5, rank=0, world=4)


def test_gan_training_keeps_the_ranks_identical_and_learns(runs):
    """With the PatchGAN on, the two ranks end with identical weights and the loss falls.

    Not compared with the single process: the discriminator's BatchNorm normalises each rank's share
    with that share's own statistics (as multi-GPU GAN training does), so the discriminator's outputs,
    and with them every GAN gradient, differ from one process normalising the whole batch.
    """
    ranks = [torch.load(runs / "gan" / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for part in ("model", "discriminator"):
        for key, value in ranks[0][part].items():
            if "running_" in key or "num_batches" in key:
                continue  # BatchNorm running statistics are each rank's own (never used: always train mode)
            assert torch.equal(ranks[1][part][key], value), f"the ranks disagree on {part} {key}"
    torch.testing.assert_close(ranks[0]["model"], _weights(runs / "gan" / "two" / "model.pt"), rtol=0, atol=0)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs / "gan" / "two-work" / "tensorboard"))
    events.Reload()
    l2 = [event.value for event in events.Scalars("train/l2")]
    assert len(l2) == GAN["train"]["steps"] and "train/discriminator" in events.Tags()["scalars"]
    assert l2[-1] < 0.5 * l2[0], l2


def test_adaptive_gan_weight_averages_the_ranks_gradients(runs):
    """Each rank's weight from its half of a batch equals the weight of the whole batch in one process."""
    whole = _tiny_adaptive_weight(slice(None))
    for rank in range(WORLD):
        torch.testing.assert_close(torch.load(runs / f"adaptive{rank}.pt"), whole, rtol=1e-6, atol=0)
