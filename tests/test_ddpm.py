"""The DDPM baseline: loss, training, resume after a stop signal, deterministic sampling (tiny, CPU)."""

from __future__ import annotations

import dataclasses
import math
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from dnd.launch import Interrupted, TrainingTask
from dnd.baselines import ddpm
from dnd.baselines.ddpm import (
    DDPMConfig,
    accumulate_gradients,
    build_unet,
    ddpm_config,
    diffusion_loss,
    draw_noise,
    load_ddpm,
    make_scheduler,
    sample_ddpm,
    train_ddpm,
    unet_block_types,
)
from dnd.data import shards
from dnd import training
from dnd.training import Progress

TINY = ddpm_config("tiny")


def page(index: int) -> Image.Image:
    """A 16 px 'text page': dark strokes on white, different for each index."""
    image = Image.new("L", (16, 16), 255)
    draw = ImageDraw.Draw(image)
    for line in range(3):
        y = 2 + 5 * line
        draw.line([(2 + index, y), (13 - line, y)], fill=0, width=2)
    return image


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("pages")
    records = [{"id": f"p-{i}", "png": shards.encode_png(page(i)), "text": "", "title": "P", "split": "train"} for i in range(4)]
    shards.write_shard(root / "train" / shards.shard_name(0, 1), records, shards.image_schema())
    return root


def batch_of_pages() -> torch.Tensor:
    from dnd.data.images import to_tensor

    return torch.stack([to_tensor(page(i), 1) for i in range(4)])  # (4, 1, 16, 16)


def mean_loss(model, cfg: DDPMConfig, draws: int = 8) -> float:
    """The diffusion loss on the four pages, averaged over fixed timestep/noise draws."""
    scheduler, images = make_scheduler(cfg), batch_of_pages()
    with torch.no_grad():
        losses = [diffusion_loss(model, scheduler, images, *draw_noise(scheduler, images, torch.Generator().manual_seed(k)))
                  for k in range(draws)]
    return float(np.mean([loss.item() for loss in losses]))


def test_presets_and_config_from_dict():
    cfg = DDPMConfig.from_dict({"preset": "demo", "steps": 10, "block_out_channels": [32, 64, 64, 128]})
    assert cfg.steps == 10 and cfg.resolution == 64 and cfg.block_out_channels == (32, 64, 64, 128)
    down, up = unet_block_types(ddpm_config("paper"))
    assert down == ("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D")  # attention at 256 / 2**4 = 16 px
    assert up == tuple(reversed([kind.replace("Down", "Up") for kind in down]))
    assert unet_block_types(TINY)[0] == ("DownBlock2D", "DownBlock2D")
    with pytest.raises(ValueError, match="unknown DDPM preset"):
        ddpm_config("huge")


def test_one_step_has_a_finite_loss_and_gradients():
    torch.manual_seed(0)
    for prediction_type in ("epsilon", "v_prediction", "sample"):
        cfg = dataclasses.replace(TINY, prediction_type=prediction_type)
        model = build_unet(cfg)
        loss = accumulate_gradients(model, make_scheduler(cfg), batch_of_pages(), torch.Generator().manual_seed(0), None)
        assert math.isfinite(loss)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_micro_batches_give_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model, scheduler = build_unet(TINY), make_scheduler(TINY)
    results = []
    for micro_batch_size in (None, 1, 3):
        model.zero_grad()
        loss = accumulate_gradients(model, scheduler, batch_of_pages(), torch.Generator().manual_seed(0), micro_batch_size)
        results.append((loss, [p.grad.clone() for p in model.parameters()]))
    for loss, grads in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-5)
        torch.testing.assert_close(grads, results[0][1], rtol=1e-4, atol=1e-6)


def test_training_lowers_the_loss_and_sampling_is_deterministic(dataset, tmp_path):
    cfg = dataclasses.replace(TINY, steps=60, checkpoint_every=30)
    torch.manual_seed(cfg.seed)  # train_ddpm seeds the same way: the same initial network
    before = mean_loss(build_unet(cfg), cfg)
    summary = train_ddpm(cfg, [dataset], tmp_path / "out" / "model.pt", tmp_path / "work")
    model, loaded_cfg = load_ddpm(tmp_path / "out" / "model.pt")
    assert loaded_cfg == cfg and summary["steps"] == 60
    after = mean_loss(model, cfg)
    assert after < 0.5 * before, (before, after)  # measured: 1.20 → 0.07

    path = tmp_path / "out" / "model.pt"
    images = sample_ddpm(path, n=3, seed=1, batch_size=2, num_inference_steps=4, device="cpu")
    assert images.shape == (3, 16, 16, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, sample_ddpm(path, n=3, seed=1, batch_size=2, num_inference_steps=4, device="cpu"))
    # Image i depends on (seed, i) only: other batch sizes and shards give the same images.
    np.testing.assert_array_equal(images, sample_ddpm(path, n=3, seed=1, batch_size=3, num_inference_steps=4, device="cpu"))
    np.testing.assert_array_equal(images[1:], sample_ddpm(path, n=2, seed=1, start=1, num_inference_steps=4, device="cpu"))
    assert not np.array_equal(images, sample_ddpm(path, n=3, seed=2, num_inference_steps=4, device="cpu"))


class StopAt(Progress):
    """Sends this process SIGTERM once the given step is done, as SLURM does before a time limit."""

    stop_step = 7

    def update(self, step: int, metrics: dict[str, float]) -> None:
        super().update(step, metrics)
        if step == self.stop_step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_resume_after_a_stop_signal_equals_an_uninterrupted_run(dataset, tmp_path, monkeypatch):
    cfg = dataclasses.replace(TINY, steps=12, checkpoint_every=5)
    train_ddpm(cfg, [dataset], tmp_path / "a" / "model.pt", tmp_path / "work-a")

    # Through the launcher's task wrapper, as `dnd train-ddpm` runs it: the signal becomes a flag, the
    # trainer checkpoints after the step and returns, and the task reports the interruption.
    task = TrainingTask(train_ddpm, (cfg, [dataset], tmp_path / "b" / "model.pt", tmp_path / "work-b"), tmp_path / "work-b")
    with monkeypatch.context() as patch:
        patch.setattr(training, "Progress", StopAt)  # the one loop reports progress
        with pytest.raises(Interrupted) as stopped:
            task()
    assert stopped.value.signals == [signal.SIGTERM]
    assert not (tmp_path / "b" / "model.pt").exists()
    assert torch.load(tmp_path / "work-b" / "checkpoints" / "last.pt", weights_only=False)["step"] == StopAt.stop_step

    train_ddpm(cfg, [dataset], tmp_path / "b" / "model.pt", tmp_path / "work-b")
    uninterrupted = torch.load(tmp_path / "work-a" / "checkpoints" / "last.pt", weights_only=False)
    resumed = torch.load(tmp_path / "work-b" / "checkpoints" / "last.pt", weights_only=False)
    for key in ("model", "ema"):
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.load(tmp_path / "b" / "model.pt", weights_only=False)["state_dict"],
                               torch.load(tmp_path / "a" / "model.pt", weights_only=False)["state_dict"], rtol=1e-6, atol=1e-7)
