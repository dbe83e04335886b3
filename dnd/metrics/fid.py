"""FID, Inception Score and precision/recall of generated images, computed as the ADM evaluator does.

- FID: Fréchet distance between Gaussians fitted to Inception pool features (scipy `sqrtm`, with the
  near-singular and complex-part handling of TTUR / pytorch-fid / ADM).
- IS: exp(E[KL(p(y|x) || p(y))]) from the bias-free 1008-way logits, averaged over contiguous splits
  (ADM uses splits of 5000 images: 10 splits for 50k samples).
- Precision/recall: Kynkäänniemi et al. 2019, k-NN hyperspheres (k = 3) in squared Euclidean distance
  over pool features; precision = share of samples inside the real manifold, recall = share of real
  images inside the sample manifold.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from einops import rearrange
from scipy import linalg

from dnd.atomic import atomic_path
from dnd.metrics.inception import InceptionExtractor

ADM_COMPARABILITY = (
    "same Inception network and formulas as the ADM evaluator, run as torch-fidelity's PyTorch port of the "
    "TensorFlow graph: comparable to published ADM-evaluator numbers, not bit-identical"
)


@dataclass
class FeatureStats:
    """Gaussian fitted to features: mean (D,), covariance (D, D), number of feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    def save(self, path: Path) -> None:
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, mu=self.mu, sigma=self.sigma, n=np.int64(self.n))

    @classmethod
    def load(cls, path: Path) -> FeatureStats:
        with np.load(path) as data:
            return cls(mu=data["mu"], sigma=data["sigma"], n=int(data["n"]))


def compute_stats(features: np.ndarray) -> FeatureStats:
    """features: (N, D) -> mean and unbiased covariance in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need at least 2 feature vectors of shape (N, D), got {features.shape}")
    return FeatureStats(mu=features.mean(axis=0), sigma=np.cov(features, rowvar=False), n=len(features))


def frechet_distance(a: FeatureStats, b: FeatureStats, eps: float = 1e-6) -> float:
    """||mu_a - mu_b||² + Tr(S_a + S_b - 2 (S_a S_b)^½)."""
    if a.mu.shape != b.mu.shape or a.sigma.shape != b.sigma.shape:
        raise ValueError(f"feature sizes differ: {a.mu.shape} vs {b.mu.shape}")
    diff = a.mu - b.mu
    covmean = linalg.sqrtm(a.sigma @ b.sigma)
    if not np.isfinite(covmean).all():
        # The product is (near) singular, e.g. fewer samples than feature dimensions.
        warnings.warn(f"singular covariance product in FID; adding {eps} to the diagonals")
        offset = np.eye(a.sigma.shape[0]) * eps
        covmean = linalg.sqrtm((a.sigma + offset) @ (b.sigma + offset))
    if np.iscomplexobj(covmean):
        # Round-off gives a small imaginary part; a large one means the statistics are broken.
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean))


def inception_score(logits: np.ndarray, splits: int = 10) -> float:
    """logits: (N, C) bias-free Inception logits -> mean IS over `splits` contiguous chunks."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if len(logits) < splits:
        raise ValueError(f"Inception Score with {splits} splits needs at least {splits} images, got {len(logits)}")
    scores = []
    for chunk in torch.tensor_split(logits, splits):
        log_p = chunk.log_softmax(dim=1)  # (n, C) log p(y|x)
        log_marginal = torch.logsumexp(log_p, dim=0) - math.log(len(chunk))  # (C,) log p(y)
        kl = (log_p.exp() * (log_p - log_marginal)).sum(dim=1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores))


def _squared_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(n, D), (m, D) -> (n, m) squared Euclidean distances."""
    sq = (u * u).sum(1)[:, None] - 2 * u @ v.T + (v * v).sum(1)[None, :]
    return sq.clamp_min_(0)


def manifold_radii(features: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """(N, D) -> (N,) squared distance of each vector to its k-th nearest neighbour (itself excluded)."""
    if len(features) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} feature vectors, got {len(features)}")
    radii = [
        # The point itself is the nearest one (distance 0), so the k-th neighbour is the (k+1)-th smallest.
        _squared_distances(rows, features).kthvalue(k + 1, dim=1).values
        for rows in features.split(batch_size)
    ]
    return torch.cat(radii)


def precision_recall(
    real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 3, batch_size: int = 4096, device: str = "cpu"
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of fake vs real features (N, D)."""
    real = torch.as_tensor(np.asarray(real_feats), dtype=torch.float32, device=device)
    fake = torch.as_tensor(np.asarray(fake_feats), dtype=torch.float32, device=device)
    real_radii = manifold_radii(real, k, batch_size)  # (N_real,)
    fake_radii = manifold_radii(fake, k, batch_size)  # (N_fake,)
    fake_in_real = torch.zeros(len(fake), dtype=torch.bool, device=device)
    real_in_fake = torch.zeros(len(real), dtype=torch.bool, device=device)
    for r0 in range(0, len(real), batch_size):
        real_rows, radii_rows = real[r0 : r0 + batch_size], real_radii[r0 : r0 + batch_size]
        for f0 in range(0, len(fake), batch_size):
            dist = _squared_distances(real_rows, fake[f0 : f0 + batch_size])  # (n_real, n_fake)
            fake_in_real[f0 : f0 + batch_size] |= (dist <= radii_rows[:, None]).any(dim=0)
            real_in_fake[r0 : r0 + batch_size] |= (dist <= fake_radii[None, f0 : f0 + batch_size]).any(dim=1)
    return fake_in_real.float().mean().item(), real_in_fake.float().mean().item()


def as_nchw_uint8(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A batch in the ADM layout (B, H, W, 3) or grayscale (B, H, W) / (B, H, W, 1) -> (B, C, H, W) uint8."""
    batch = torch.as_tensor(np.asarray(batch))
    if batch.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {batch.dtype}")
    if batch.ndim == 3:
        return rearrange(batch, "b h w -> b 1 h w")
    if batch.ndim == 4 and batch.shape[-1] in (1, 3):
        return rearrange(batch, "b h w c -> b c h w")
    raise ValueError(f"expected (B, H, W[, 1 or 3]) images, got {tuple(batch.shape)}")


def collect_features(image_batches: Iterable[np.ndarray], extractor: InceptionExtractor) -> dict[str, np.ndarray]:
    """Run the extractor over uint8 NHWC batches -> {"pool": (N, 2048), "logits_unbiased": (N, 1008)}."""
    collected: dict[str, list[np.ndarray]] = {}
    for batch in image_batches:
        for name, value in extractor.features(as_nchw_uint8(batch)).items():
            collected.setdefault(name, []).append(value.numpy())
    if not collected:
        raise ValueError("no images to evaluate")
    return {name: np.concatenate(parts) for name, parts in collected.items()}


@dataclass
class Reference:
    """What generated images are compared with: pool-feature statistics, and the pool features
    themselves when precision/recall are wanted. `provenance` says where both came from."""

    stats: FeatureStats
    features: np.ndarray | None = None  # (N, 2048); None = precision/recall are n/a
    provenance: dict = field(default_factory=dict)

    def save(self, path: Path) -> None:
        arrays = {"mu": self.stats.mu, "sigma": self.stats.sigma, "n": np.int64(self.stats.n)}
        if self.features is not None:
            arrays["features"] = self.features
        arrays["provenance"] = np.array(json.dumps(self.provenance, sort_keys=True))
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> Reference:
        with np.load(path) as data:
            return cls(
                stats=FeatureStats(mu=data["mu"], sigma=data["sigma"], n=int(data["n"])),
                features=data["features"] if "features" in data.files else None,
                provenance=json.loads(str(data["provenance"])) if "provenance" in data.files else {},
            )


def evaluate_images(
    image_batches: Iterable[np.ndarray],
    extractor: InceptionExtractor,
    reference: Reference,
    is_splits: int = 10,
    pr_k: int = 3,
    pr_batch_size: int = 4096,
) -> dict:
    """FID, IS, precision and recall of uint8 NHWC image batches against `reference`.

    Returns {"fid", "is", "precision", "recall", "n", "provenance"}; precision and recall are None when
    the reference carries no features. `provenance` names the evaluator, the weights and the reference.
    """
    feats = collect_features(image_batches, extractor)
    sample_stats = compute_stats(feats["pool"])
    precision = recall = None
    if reference.features is not None:
        precision, recall = precision_recall(
            reference.features, feats["pool"], k=pr_k, batch_size=pr_batch_size, device=str(extractor.device)
        )
    return {
        "fid": frechet_distance(sample_stats, reference.stats),
        "is": inception_score(feats["logits_unbiased"], splits=is_splits),
        "precision": precision,
        "recall": recall,
        "n": sample_stats.n,
        "provenance": {
            "evaluator": "dnd.metrics.fid (ADM evaluator formulas)",
            "comparability": ADM_COMPARABILITY,
            **extractor.provenance,
            "reference": reference.provenance,
            "is_splits": is_splits,
            "precision_recall_k": pr_k,
        },
    }
