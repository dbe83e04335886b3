"""FID, Inception Score and precision/recall of generated images, computed as the ADM evaluator does.

- FID: Fréchet distance between Gaussians fitted to Inception pool features (scipy `sqrtm`, with the
  near-singular and complex-part handling of TTUR / pytorch-fid / ADM).
  A Fréchet distance needs more images than feature dimensions on each side (else the covariance is
  singular and the number is an artefact of the regularisation): `frechet_na_reason` says when it is n/a.
- IS: exp(E[KL(p(y|x) || p(y))]) from the bias-free 1008-way logits, averaged over consecutive chunks of
  5,000 images in sample order, the last one partial (ADM's `compute_inception_score`: 50k samples give
  10 chunks, 12k give 5,000 + 5,000 + 2,000).
- Precision/recall: Kynkäänniemi et al. 2019, k-NN hyperspheres (k = 3) in squared Euclidean distance
  over pool features; precision = share of samples inside the real manifold, recall = share of real
  images inside the sample manifold. Distances in float16 as ADM (with its float32 fallback when a block
  overflows), or in float32.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch
from einops import rearrange
from scipy import linalg

from dnd.atomic import atomic_path
from dnd.metrics.inception import InceptionExtractor

if TYPE_CHECKING:  # bootstrap.py imports this module
    from dnd.metrics.bootstrap import BootstrapSettings

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


FEATURE_DIM = 2048  # Inception pool_3
IS_SPLIT_SIZE = 5000  # ADM's compute_inception_score(split_size=5000)


def frechet_na_reason(n_samples: int, n_reference: int | None, dim: int = FEATURE_DIM, what: str = "FID",
                      sides: tuple[str, str] = ("sample", "reference")) -> str | None:
    """Why a Fréchet distance between sets of `n_samples` and `n_reference` (None: precomputed statistics of
    a large set) feature vectors of `dim` dimensions is n/a, or None when it is well defined."""
    for side, n in zip(sides, (n_samples, n_reference)):
        if n is not None and n <= dim:
            return (f"{what} n/a: {n} {side} images, no more than the {dim} feature dimensions (the covariance is "
                    f"singular and a number would only reflect its regularisation); it needs at least {dim + 1}")
    return None


def inception_chunks(n: int, split_size: int = IS_SPLIT_SIZE) -> list[slice]:
    """The ADM evaluator's IS chunks of `n` images: consecutive, `split_size` each, the last one partial."""
    if n < 1 or split_size < 1:
        raise ValueError(f"Inception Score needs at least 1 image and a split size of at least 1, got {n} and {split_size}")
    return [slice(start, min(start + split_size, n)) for start in range(0, n, split_size)]


def inception_score_of_log_probs(log_p: torch.Tensor, split_size: int = IS_SPLIT_SIZE) -> float:
    """log_p: (N, C) log p(y|x) -> mean over `inception_chunks` of exp(E[KL(p(y|x) || p(y))])."""
    scores = []
    for chunk in inception_chunks(len(log_p), split_size):
        part = log_p[chunk]  # (n, C)
        log_marginal = torch.logsumexp(part, dim=0) - math.log(len(part))  # (C,) log p(y)
        kl = (part.exp() * (part - log_marginal)).sum(dim=1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores))


def inception_log_probs(logits: np.ndarray) -> torch.Tensor:
    """(N, C) bias-free Inception logits -> (N, C) float64 log-softmax."""
    return torch.as_tensor(np.asarray(logits), dtype=torch.float64).log_softmax(dim=1)


def inception_score(logits: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> float:
    """logits: (N, C) bias-free Inception logits -> IS averaged over ADM's chunks of `split_size` images."""
    return inception_score_of_log_probs(inception_log_probs(logits), split_size)


PR_DISTANCE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def _squared_distances(u: torch.Tensor, v: torch.Tensor, dtype: str = "float32") -> torch.Tensor:
    """(n, D), (m, D) -> (n, m) float32 squared Euclidean distances, computed in `dtype`. float16 is the ADM
    evaluator's DistanceBlock: both sets cast to float16, and the block redone in float32 when it overflows."""
    def distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]).clamp_min(0)

    if dtype == "float16":
        half = distances(u.to(torch.float16), v.to(torch.float16))
        if torch.isfinite(half).all():
            return half.float()
    elif dtype not in PR_DISTANCE_DTYPES:
        raise ValueError(f"precision/recall distance dtype must be one of {sorted(PR_DISTANCE_DTYPES)}, got {dtype!r}")
    return distances(u.float(), v.float())


def manifold_radii(features: torch.Tensor, k: int, batch_size: int, dtype: str = "float32") -> torch.Tensor:
    """(N, D) -> (N,) squared distance of each vector to its k-th nearest neighbour (itself excluded)."""
    if len(features) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} feature vectors, got {len(features)}")
    radii = [
        # The point itself is the nearest one (distance 0), so the k-th neighbour is the (k+1)-th smallest.
        _squared_distances(rows, features, dtype).kthvalue(k + 1, dim=1).values
        for rows in features.split(batch_size)
    ]
    return torch.cat(radii)


def precision_recall(
    real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 3, batch_size: int = 4096, device: str = "cpu",
    distance_dtype: str = "float32",
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of fake vs real features (N, D)."""
    fake_in_real, real_in_fake = manifold_membership(real_feats, fake_feats, k, batch_size, device, distance_dtype)
    return float(fake_in_real.mean()), float(real_in_fake.mean())


def manifold_membership(
    real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 3, batch_size: int = 4096, device: str = "cpu",
    distance_dtype: str = "float32",
) -> tuple[np.ndarray, np.ndarray]:
    """(N_fake,) whether each sample lies in the real manifold, (N_real,) whether each real image lies in the
    sample manifold: their means are precision and recall."""
    real = torch.as_tensor(np.asarray(real_feats), dtype=torch.float32, device=device)
    fake = torch.as_tensor(np.asarray(fake_feats), dtype=torch.float32, device=device)
    real_radii = manifold_radii(real, k, batch_size, distance_dtype)  # (N_real,)
    fake_radii = manifold_radii(fake, k, batch_size, distance_dtype)  # (N_fake,)
    fake_in_real = torch.zeros(len(fake), dtype=torch.bool, device=device)
    real_in_fake = torch.zeros(len(real), dtype=torch.bool, device=device)
    for r0 in range(0, len(real), batch_size):
        real_rows, radii_rows = real[r0 : r0 + batch_size], real_radii[r0 : r0 + batch_size]
        for f0 in range(0, len(fake), batch_size):
            dist = _squared_distances(real_rows, fake[f0 : f0 + batch_size], distance_dtype)  # (n_real, n_fake)
            fake_in_real[f0 : f0 + batch_size] |= (dist <= radii_rows[:, None]).any(dim=0)
            real_in_fake[r0 : r0 + batch_size] |= (dist <= fake_radii[None, f0 : f0 + batch_size]).any(dim=1)
    return fake_in_real.cpu().numpy(), real_in_fake.cpu().numpy()


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


def compare_features(
    sample_feats: np.ndarray,
    reference: Reference,
    pr_k: int = 3,
    pr_batch_size: int = 4096,
    pr_distance_dtype: str = "float16",
    bootstrap: BootstrapSettings | None = None,
    device: str = "cpu",
    names: tuple[str, str, str] = ("fid", "precision", "recall"),
    what: str = "FID",
) -> dict:
    """Fréchet distance, precision and recall of sample features (N, D) against `reference`, each with its
    bootstrap interval: the code behind FID, whichever network made the features. `names` are the result's
    keys (and the bootstrap streams) for the three metrics, `what` names the distance in its n/a reason.

    Returns {names[0], "frechet_na_reason", names[1], names[2], "n", "n_reference", "intervals"}; the
    distance is None with its reason when either side has no more vectors than feature dimensions,
    precision and recall are None when the reference carries no features.
    """
    from dnd.metrics.bootstrap import BootstrapSettings, fid_interval, fraction_interval  # imports this module

    fd_key, precision_key, recall_key = names
    bootstrap = bootstrap or BootstrapSettings(resamples=0)
    sample_stats = compute_stats(sample_feats)
    stats_precomputed = bool(reference.provenance.get("reference_stats_precomputed", False))
    n_reference = {"fid": None if stats_precomputed else reference.stats.n,
                   "precision_recall": None if reference.features is None else len(reference.features)}
    intervals: dict[str, list[float] | None] = {fd_key: None, precision_key: None, recall_key: None}
    wanted = bootstrap.resamples > 0
    fd_na = frechet_na_reason(sample_stats.n, n_reference["fid"], dim=len(sample_stats.mu), what=what)
    fd = None if fd_na else frechet_distance(sample_stats, reference.stats)
    if fd is not None and wanted:
        intervals[fd_key] = fid_interval(sample_feats, reference.stats, None if stats_precomputed else reference.features,
                                         bootstrap, device, metric=fd_key)
    precision = recall = None
    if reference.features is not None:
        fake_in_real, real_in_fake = manifold_membership(reference.features, sample_feats, k=pr_k, batch_size=pr_batch_size,
                                                         device=device, distance_dtype=pr_distance_dtype)
        precision, recall = float(fake_in_real.mean()), float(real_in_fake.mean())
        if wanted:
            intervals[precision_key] = fraction_interval(fake_in_real, bootstrap, precision_key)
            intervals[recall_key] = fraction_interval(real_in_fake, bootstrap, recall_key)
    return {fd_key: fd, "frechet_na_reason": fd_na, precision_key: precision, recall_key: recall, "n": sample_stats.n,
            "n_reference": n_reference, "intervals": intervals}


def evaluate_images(
    image_batches: Iterable[np.ndarray],
    extractor: InceptionExtractor,
    reference: Reference,
    is_split_size: int = IS_SPLIT_SIZE,
    pr_k: int = 3,
    pr_batch_size: int = 4096,
    pr_distance_dtype: str = "float16",
    bootstrap: BootstrapSettings | None = None,
) -> dict:
    """FID, IS, precision and recall of uint8 NHWC image batches against `reference`, each with its
    bootstrap interval over the feature sets (`bootstrap`; None or 0 resamples = no interval).

    Returns {"fid", "fid_na_reason", "is", "precision", "recall", "n", "n_reference", "intervals",
    "provenance"}: FID is None with its reason when either side has no more images than feature dimensions,
    precision and recall are None when the reference carries no features. `n_reference` holds the images
    behind the reference's FID statistics (None: precomputed by the ADM evaluator over its whole data set)
    and behind its precision/recall features. `provenance` names the evaluator, the weights and the reference.
    """
    from dnd.metrics.bootstrap import BootstrapSettings, is_interval  # imports this module

    bootstrap = bootstrap or BootstrapSettings(resamples=0)
    feats = collect_features(image_batches, extractor)
    device = str(extractor.device)
    wanted = bootstrap.resamples > 0
    compared = compare_features(feats["pool"], reference, pr_k, pr_batch_size, pr_distance_dtype, bootstrap, device)
    intervals = {**compared["intervals"], "is": None}
    inception = inception_score(feats["logits_unbiased"], split_size=is_split_size)
    if wanted:
        intervals["is"] = is_interval(feats["logits_unbiased"], bootstrap, is_split_size)
    return {
        "fid": compared["fid"],
        "fid_na_reason": compared["frechet_na_reason"],
        "is": inception,
        "precision": compared["precision"],
        "recall": compared["recall"],
        "n": compared["n"],
        "n_reference": compared["n_reference"],
        "intervals": {key: intervals[key] for key in ("fid", "is", "precision", "recall")},
        "provenance": {
            "evaluator": "dnd.metrics.fid (ADM evaluator formulas)",
            "comparability": ADM_COMPARABILITY,
            **extractor.provenance,
            "reference": reference.provenance,
            "is_split_size": is_split_size,
            "is_chunks": [chunk.stop - chunk.start for chunk in inception_chunks(compared["n"], is_split_size)],
            "precision_recall_k": pr_k,
            "precision_recall_distance_dtype": pr_distance_dtype,
            "bootstrap": bootstrap.describe() if wanted else "no interval (0 resamples)",
        },
    }
