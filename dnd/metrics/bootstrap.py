"""Bootstrap intervals of FID, IS and precision/recall over the feature sets, without running Inception again.

Each resample draws the feature vectors (and logits) of the evaluated set with replacement, recomputes the
metric, and the interval is the central `level` percentile range of the resampled values. What is drawn:
- FID: the sample features, and the reference features too when the reference statistics come from them
  (a data-set split); statistics precomputed by the ADM evaluator (whole ImageNet training set) stay fixed.
- IS: the samples' logits, scored over ADM's chunks of 5,000 in the resampled order.
- Per-image means (reconstruction L2, classifier accuracy on reconstructions, rOCR): the test images' own values.
- Precision / recall: the per-image memberships (sample in the real manifold, real image in the sample
  manifold), the k-NN radii held fixed: a resample with replacement holds duplicates, whose k-NN radius
  would shrink towards 0, so the manifolds are not re-estimated. The interval covers which images were
  evaluated, not the manifold's own estimate.
- PPL-OCR (`corpus_perplexity_interval`): the images whose OCR read text, with their (NLL, token count);
  each resample's value is exp(Σ NLL / Σ tokens), the corpus perplexity, as the point estimate is.
- A per-image mean (`mean_interval`, e.g. OCR words per image): the images.
The same functions give the intervals of the demo classifier's feature-space metrics (`classifier_fd`,
`classifier_precision`, `classifier_recall`: FID's code in that network's features) and of its accuracy
(`fraction_interval` over each sample's hit or miss).
Each metric draws from its own generator seeded by (seed, metric), so the intervals are reproducible and
adding a metric moves no other interval. The point estimates are the full-set values, not resample means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dnd.metrics.fid import FeatureStats, IS_SPLIT_SIZE, inception_log_probs, inception_score_of_log_probs

# Table 1's per-image metrics, the demo classifier's feature-space metrics of Tables 2 and 3 (and its accuracy
# on samples) and the rich-text table's draw from streams of their own.
METRIC_STREAMS = {"fid": 0, "is": 1, "precision": 2, "recall": 3, "l2": 4, "classifier_acc": 5, "classifier_fd": 6,
                  "classifier_precision": 7, "classifier_recall": 8, "classifier_accuracy": 9, "rocr": 10,
                  "ppl_ocr": 11, "words_per_image": 12}


@dataclass(frozen=True)
class BootstrapSettings:
    resamples: int = 100  # resamples per metric; 0 = no interval
    seed: int = 0
    level: float = 0.95  # central coverage of the interval

    def describe(self) -> str:
        return (f"{self.level:.0%} percentile bootstrap over the feature sets, {self.resamples} resamples, seed {self.seed} "
                "(features resampled with replacement, no re-inference)")


def _generator(settings: BootstrapSettings, metric: str) -> np.random.Generator:
    return np.random.default_rng([settings.seed, METRIC_STREAMS[metric]])


def percentile_interval(values: list[float], level: float) -> list[float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(np.asarray(values, dtype=np.float64), [tail, 100 - tail])
    return [float(low), float(high)]


def _covariance(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) -> mean (D,), unbiased covariance (D, D)."""
    mu = x.mean(dim=0)
    centred = x - mu
    return mu, centred.T @ centred / (len(x) - 1)


def _sqrt_psd(sigma: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a covariance (negative round-off eigenvalues clipped to 0)."""
    eigenvalues, vectors = torch.linalg.eigh(sigma)
    return (vectors * eigenvalues.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance_psd(mu_a: torch.Tensor, sigma_a: torch.Tensor, mu_b: torch.Tensor, sqrt_b: torch.Tensor,
                         trace_b: torch.Tensor) -> float:
    """The Fréchet distance with Tr (S_a S_b)^½ = Σ sqrt(eig(S_b^½ S_a S_b^½)): a symmetric eigenproblem,
    several times faster than scipy's sqrtm of the non-symmetric product, and equal to it for PSD inputs."""
    diff = mu_a - mu_b
    tr_covmean = torch.linalg.eigvalsh(sqrt_b @ sigma_a @ sqrt_b).clamp_min(0).sqrt().sum()
    return float(diff @ diff + torch.trace(sigma_a) + trace_b - 2 * tr_covmean)


def fid_interval(sample_feats: np.ndarray, reference: FeatureStats, reference_feats: np.ndarray | None,
                 settings: BootstrapSettings, device: str = "cpu", metric: str = "fid") -> list[float]:
    """Interval of the Fréchet distance of `sample_feats` (N, D) against `reference` (FID, or `metric` in
    another network's features); `reference_feats` given = the reference statistics are theirs and are
    resampled too."""
    rng = _generator(settings, metric)
    samples = torch.as_tensor(np.asarray(sample_feats), dtype=torch.float64, device=device)
    ref_feats = None if reference_feats is None else torch.as_tensor(np.asarray(reference_feats), dtype=torch.float64, device=device)
    mu_ref = torch.as_tensor(reference.mu, dtype=torch.float64, device=device)
    sigma_ref = torch.as_tensor(reference.sigma, dtype=torch.float64, device=device)
    fixed = (_sqrt_psd(sigma_ref), torch.trace(sigma_ref))
    values = []
    for _ in range(settings.resamples):
        mu, sigma = _covariance(samples[torch.as_tensor(rng.integers(0, len(samples), len(samples)), device=device)])
        if ref_feats is None:
            values.append(frechet_distance_psd(mu, sigma, mu_ref, *fixed))
        else:
            index = torch.as_tensor(rng.integers(0, len(ref_feats), len(ref_feats)), device=device)
            mu_b, sigma_b = _covariance(ref_feats[index])
            values.append(frechet_distance_psd(mu, sigma, mu_b, _sqrt_psd(sigma_b), torch.trace(sigma_b)))
    return percentile_interval(values, settings.level)


def is_interval(logits: np.ndarray, settings: BootstrapSettings, split_size: int = IS_SPLIT_SIZE) -> list[float]:
    rng = _generator(settings, "is")
    log_p = inception_log_probs(logits)
    values = [inception_score_of_log_probs(log_p[torch.as_tensor(rng.integers(0, len(log_p), len(log_p)))], split_size)
              for _ in range(settings.resamples)]
    return percentile_interval(values, settings.level)


def mean_interval(values: np.ndarray, settings: BootstrapSettings, metric: str) -> list[float]:
    """Interval of the mean of per-image `values` (N,), the images resampled with replacement."""
    rng = _generator(settings, metric)
    values = np.asarray(values, dtype=np.float64)
    draws = values[rng.integers(0, len(values), (settings.resamples, len(values)))]  # (resamples, N)
    return percentile_interval(list(draws.mean(axis=1)), settings.level)


def fraction_interval(members: np.ndarray, settings: BootstrapSettings, metric: str) -> list[float]:
    """Interval of the share of True in `members` (precision: samples in the real manifold; recall: real
    images in the sample manifold)."""
    return mean_interval(members, settings, metric)


def corpus_perplexity_interval(scores: list[tuple[float, int]], settings: BootstrapSettings) -> list[float]:
    """Interval of exp(Σ NLL / Σ tokens) over per-image (NLL, scored tokens), the images drawn with replacement."""
    rng = _generator(settings, "ppl_ocr")
    nll, tokens = (np.asarray(column, dtype=np.float64) for column in zip(*scores))
    index = rng.integers(0, len(nll), (settings.resamples, len(nll)))
    return percentile_interval(list(np.exp(nll[index].sum(axis=1) / tokens[index].sum(axis=1))), settings.level)
