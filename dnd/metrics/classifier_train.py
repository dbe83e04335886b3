"""Training the demo's weight-free classifier (`dnd.metrics.classifier`) with the project's one loop."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from dnd.atomic import atomic_path
from dnd.data.images import ImageShardDataset
from dnd.data.shards import read_manifest
from dnd.metrics.classifier import DESCRIPTION, ClassifierConfig, SmallCNN, _image_shape, _split_scores, split_features
from dnd.training import LoopConfig, RunInfo, batch_indices, run_training, seed_everything

log = logging.getLogger("dnd.classifier")


class ClassifierTrainer:
    """The small CNN's step and export for `dnd.training.run_training` (the last step is the result)."""

    def __init__(self, dataset_dir: Path, cfg: ClassifierConfig, work_dir: Path):
        self.dataset_dir, self.cfg = Path(dataset_dir), cfg
        self.classes = read_manifest(self.dataset_dir)["classes"]
        self.image_shape = _image_shape(self.dataset_dir, "train")
        channels = self.image_shape[2]
        # The training images are memory-mapped from Arrow copies in the work area (ImageNet's ~150 GB of
        # PNGs never sit in memory); only the first `score_images` test images are read.
        self.train = ImageShardDataset([self.dataset_dir], "train", channels, resolution=None, columns=("label",),
                                       cache_dir=Path(work_dir) / "images")
        self.test = ImageShardDataset([self.dataset_dir], "test", channels, resolution=None, columns=("label",),
                                      limit=cfg.score_images)
        seed_everything(cfg.seed)
        self.network = SmallCNN(channels, len(self.classes), cfg.width)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.labels = torch.tensor(self.train.meta["label"])
        self.seconds, self.last_loss = 0.0, float("nan")

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.network.state_dict(), "optimizer": self.optimizer.state_dict(), "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.seconds = state.get("seconds", 0.0)

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        started = time.perf_counter()
        # cosine decay to 0 over `steps`, a function of the step (as LambdaLR computes it): nothing to resume
        lr = cfg.lr * (0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.network.train()
        indices = batch_indices(len(self.train), cfg.batch_size, cfg.seed, step)
        images = torch.stack([self.train[int(i)] for i in indices])  # (B, C, H, W)
        loss = F.cross_entropy(self.network(images), self.labels[indices])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.seconds += time.perf_counter() - started
        self.last_loss = loss.item()
        return {"loss": self.last_loss, "lr": lr}

    def validate(self, step: int) -> None:
        return None

    def export(self, checkpoint: dict[str, Any], out: Path) -> dict[str, Any]:
        """The weights with their real-image scores (the test split's accuracy is the ceiling for samples)."""
        self.network.load_state_dict(checkpoint["model"])
        real_test = _split_scores(self.network, self.test, self.cfg.score_images)
        summary = {
            "description": DESCRIPTION,
            "classes": self.classes,
            "image_shape": list(self.image_shape),
            "train_images": len(self.train),
            "final_train_loss": self.last_loss,
            "real_train_accuracy": _split_scores(self.network, self.train, self.cfg.score_images)["accuracy"],
            "real_test_accuracy": real_test["accuracy"],  # the ceiling for samples
            "real_test_confidence": real_test["confidence"],
            "test_images": real_test["n"],
            "train_seconds": checkpoint.get("seconds", self.seconds),
            "config": asdict(self.cfg),
        }
        # The reference of the classifier-feature Fréchet distance / precision / recall: computed once here,
        # not per evaluation (the same test images that give real_test_accuracy).
        test_features = torch.from_numpy(split_features(self.network, self.test, self.cfg.score_images))
        state = {"model": self.network.state_dict(), "in_channels": self.image_shape[2], "num_classes": len(self.classes),
                 "test_features": test_features, **summary}
        with atomic_path(out) as tmp:
            torch.save(state, tmp)
        log.info("classifier: real test accuracy %.4f on %d images (train %.4f), %.1f s",
                 summary["real_test_accuracy"], real_test["n"], summary["real_train_accuracy"], summary["train_seconds"])
        return summary


def train_classifier(dataset_dir: Path, out: Path, cfg: ClassifierConfig, work_dir: Path,
                     should_stop: Callable[[], bool] = lambda: False, code_version: str | None = None) -> dict[str, Any] | None:
    """Train on the train split of a class-labelled data set, score the real test split (the ceiling),
    write the weights to `out` (+ provenance beside it) and return the summary."""
    trainer = ClassifierTrainer(dataset_dir, cfg, work_dir)
    # a few seconds of training: checkpoints only at the end and on a stop signal
    loop = LoopConfig(steps=cfg.steps, checkpoint_every=cfg.steps, seed=cfg.seed)
    run = RunInfo("classifier", "train_classifier", {**asdict(cfg), "dataset": str(dataset_dir)}, code_version=code_version)
    return run_training(trainer, loop, run, Path(work_dir), Path(out), should_stop)
