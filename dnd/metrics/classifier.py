"""A metric that needs no downloaded weights: the accuracy of a small CNN, trained by the pipeline on
the real training images of the class-labelled set, on generated samples w.r.t. their intended labels.

It answers "does the sample look like the class it was asked for?" and nothing about diversity or
fidelity beyond that; it is not FID and no table presents it as such. Its accuracy on the real test
split is the ceiling a perfect generator would reach, and is stored with the weights.

Its pooled penultimate features (`SmallCNN.features`, 4 × width dimensions) of the real test split are
stored with the weights too: `evaluate_generation` compares the samples' features with them by the
Fréchet distance, precision and recall of `dnd.metrics.fid` (FID's code in this network's feature space,
named `classifier_fd` / `classifier_precision` / `classifier_recall`, never FID).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from einops import rearrange
from torch import nn

from dnd.data.images import ImageShardDataset
from dnd.data.shards import decode_png, iter_records

log = logging.getLogger("dnd.classifier")

DESCRIPTION = (
    "accuracy of a small CNN trained by this pipeline on the real training images of the class-labelled set, "
    "applied to the samples with their intended labels (not FID; no external weights)"
)
# PIL's "L" conversion (ITU-R 601-2 luma): RGB samples scored by a grayscale classifier.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class ClassifierConfig:
    steps: int = 250  # AdamW steps (~11 passes over 1,450 digits at batch 64: ~15 s on one core)
    batch_size: int = 64
    lr: float = 3e-3  # peak; cosine decay to 0 over `steps`
    seed: int = 0  # initialisation and batch order: same seed, same weights
    width: int = 16  # channels of the first conv; doubled after each pooling
    weight_decay: float = 1e-4
    score_images: int | None = 10_000  # real images of each split scored for its own accuracy; None = all

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"classifier steps and batch_size must be positive, got {self.steps}, {self.batch_size}")


class SmallCNN(nn.Module):
    """(conv-BN-ReLU-pool) ×2, conv-BN-ReLU, global average pool, linear: ~24k parameters at width 16.

    BatchNorm makes a few hundred steps enough (without it the same budget reaches ~75 % on digits)."""

    def __init__(self, in_channels: int, num_classes: int, width: int):
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(
            *block(in_channels, width), nn.MaxPool2d(2),
            *block(width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, C, H, W) in [-1, 1] -> logits (B, K)."""
        return self.head(self.features(images))


@dataclass
class TrainedClassifier:
    network: SmallCNN
    image_shape: tuple[int, int, int]  # (H, W, C) of the training images; samples must match H and W
    classes: list[str]  # class names in label order
    summary: dict[str, Any] = field(default_factory=dict)  # training figures, incl. real_test_accuracy


def _image_shape(dataset_dir: Path, split: str) -> tuple[int, int, int]:
    first = next(iter_records(dataset_dir, split, columns=["png"]), None)
    if first is None:
        raise FileNotFoundError(f"no {split!r} images in {dataset_dir}")
    image = decode_png(first["png"])
    return image.height, image.width, 1 if image.mode == "L" else 3


def _labelled_batches(data: ImageShardDataset, batch_size: int, limit: int | None = None
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split's first `limit` images (None: all) in order: (B, C, H, W) in [-1, 1], labels (B,)."""
    end = len(data) if limit is None else min(limit, len(data))
    for start in range(0, end, batch_size):
        indices = range(start, min(start + batch_size, end))
        yield torch.stack([data[i] for i in indices]), torch.tensor([data.meta["label"][i] for i in indices])


@torch.no_grad()
def _split_scores(network: SmallCNN, data: ImageShardDataset, limit: int | None = None) -> dict[str, float]:
    network.eval()
    probs, labels = [], []
    for images, batch_labels in _labelled_batches(data, 256, limit):
        probs.append(network(images).softmax(dim=1).numpy())
        labels.append(batch_labels.numpy())
    scores = scores_from_probabilities(np.concatenate(probs), np.concatenate(labels))
    return {"accuracy": scores["accuracy"], "confidence": scores["confidence"], "n": scores["n"]}


def load_classifier(path: Path) -> TrainedClassifier:
    state = torch.load(path, map_location="cpu", weights_only=True)
    network = SmallCNN(state["in_channels"], state["num_classes"], state["config"]["width"])
    network.load_state_dict(state["model"])
    network.eval()
    summary = {k: v for k, v in state.items() if k not in ("model", "in_channels", "num_classes")}
    return TrainedClassifier(network, tuple(state["image_shape"]), list(state["classes"]), summary)


def _as_network_input(classifier: TrainedClassifier, images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, C) -> (B, C', H, W) in [-1, 1] with the classifier's channel count C'."""
    height, width, channels = classifier.image_shape
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:3] != (height, width):
        raise ValueError(f"the classifier scores uint8 (B, {height}, {width}, C) images, got {images.dtype} {images.shape}")
    pixels = images.astype(np.float32)
    if channels == 1 and pixels.shape[-1] == 3:
        pixels = pixels @ LUMA[:, None]  # gray repeated to RGB comes back unchanged
    elif channels == 3 and pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return torch.from_numpy(rearrange(pixels, "b h w c -> b c h w") / 127.5 - 1.0)


@torch.no_grad()
def predict(classifier: TrainedClassifier, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W, C) -> class probabilities (N, K) and pooled penultimate features (N, 4 × width)."""
    probs, feats = [], []
    for start in range(0, len(images), batch_size):
        features = classifier.network.features(_as_network_input(classifier, images[start : start + batch_size]))
        feats.append(features.numpy())
        probs.append(classifier.network.head(features).softmax(dim=1).numpy())
    return np.concatenate(probs), np.concatenate(feats)


def predict_probabilities(classifier: TrainedClassifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """uint8 (N, H, W, C) -> class probabilities (N, K)."""
    return predict(classifier, images, batch_size)[0]


@torch.no_grad()
def split_features(network: SmallCNN, data: ImageShardDataset, limit: int | None = None) -> np.ndarray:
    """Pooled penultimate features (N, 4 × width) of a split's first `limit` images, in shard order."""
    network.eval()
    return np.concatenate([network.features(images).numpy() for images, _ in _labelled_batches(data, 256, limit)])


def real_test_reference(classifier: TrainedClassifier) -> "Reference":
    """The real test split's features and their statistics, as a `dnd.metrics.fid.Reference`."""
    from dnd.metrics.fid import Reference, compute_stats

    if "test_features" not in classifier.summary:
        raise ValueError("this classifier file holds no test-split features (retrain it: train_classifier stores them)")
    features = np.asarray(classifier.summary["test_features"], dtype=np.float32)
    return Reference(stats=compute_stats(features), features=features, provenance={
        "reference_split": "test", "reference_images": len(features), "reference_stats_precomputed": False,
        "reference_features": "the demo classifier's pooled penultimate features of the real test split",
    })


def scores_from_probabilities(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """probs (N, K), intended labels (N,) -> accuracy, confidence (mean probability of the intended class),
    per-class accuracy, and the entropy of the predicted-class histogram (log2 K when classes are balanced)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(probs) != len(labels) or len(labels) == 0:
        raise ValueError(f"need one label per image, got {len(probs)} images and {len(labels)} labels")
    predicted = probs.argmax(axis=1)
    hits = predicted == labels
    histogram = np.bincount(predicted, minlength=probs.shape[1]) / len(predicted)
    nonzero = histogram[histogram > 0]
    return {
        "accuracy": float(hits.mean()),
        "confidence": float(probs[np.arange(len(labels)), labels].mean()),
        "per_class_accuracy": {int(c): float(hits[labels == c].mean()) for c in np.unique(labels)},
        "predicted_class_entropy_bits": float(-(nonzero * np.log2(nonzero)).sum()),
        "n": int(len(labels)),
    }


def classifier_scores(classifier: TrainedClassifier, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Scores of uint8 (N, H, W, C) images w.r.t. their intended labels (N,)."""
    return scores_from_probabilities(predict_probabilities(classifier, images), labels)
