"""Reconstruction metrics of Table 1 on a test set: L2, code usage per depth, rOCR, rFID, a recon grid, and on
the class-labelled set the demo classifier's accuracy on the reconstructions (does a code keep the detail that
decides the class?). L2 and that accuracy carry bootstrap intervals over the test images.

One evaluator (`measure_reconstruction`) over a `reconstruct(batch)` callable serves every row: an RQ-VAE
by depth, a pretrained continuous VAE (`dnd.stages.vae_recon`), and the "original" pseudo-tokenizer that
returns the images unchanged — its rOCR is the OCR engine's own ceiling, the reference row of Table 1b.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dnd.atomic import atomic_path, write_json
from dnd.data.images import ImageShardDataset, to_pil, to_uint8
from dnd.metrics.bootstrap import BootstrapSettings, mean_interval
from dnd.metrics.ocr import OCRConfig, check_ocr_backend, make_ocr_backend
from dnd.metrics.rouge import rocr
from dnd.provenance import record
from dnd.device import default_device

log = logging.getLogger("dnd.recon")
ORIGINAL = "original"
GRID_IMAGES = 4  # test images (columns) in a recon grid


@dataclass
class ReconEvalConfig:
    # test images per (tokenizer, test set); None = the whole split. The rule sets it per test set: Table 1b's
    # OCR test sets take evaluation.recon.max_images, Table 1a's evaluation.recon.rfid_max_images
    max_images: int | None = 16
    batch_size: int = 8
    # resamples behind the intervals: of the Inception features (rFID) and of the test images (L2, classifier
    # accuracy); 0 = none
    bootstrap_resamples: int = 100
    bootstrap_seed: int = 0
    # what rOCR scores the reconstructions' OCR against: "text", the test set's ground truth (for arXiv512, the
    # PDF's text layer inside the crop), or "original_ocr", the OCR of the original image, as the paper does
    # where a set has no ground truth. The rule sets it per test set from evaluation.rocr_reference.<testset>
    ocr_reference: str = "text"
    ocr: OCRConfig = field(default_factory=OCRConfig)
    inception_weights: str | None = None  # metrics.inception_weights; None → rFID is n/a

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "ReconEvalConfig":
        """From the rule's params {recon: evaluation.recon, metrics: metrics}; absent keys take the defaults above
        (`reference_vaes` are rows of their own; the rule resolves `rfid_max_images` into `max_images` for Table
        1a's test set, and `rocr_reference.<testset>` into `ocr_reference`)."""
        recon = {k: v for k, v in params.get("recon", {}).items()
                 if k not in ("reference_vaes", "rfid_max_images", "rocr_reference")}
        metrics = params.get("metrics", {})
        return cls(**recon, ocr=OCRConfig(**metrics.get("ocr", {})), inception_weights=metrics.get("inception_weights"))


def code_usage(counts: np.ndarray) -> tuple[list[float], list[float]]:
    """Per depth: the fraction of the codebook used, and the entropy (bits) of the code distribution."""
    usage, entropy = [], []
    for row in counts:
        total = row.sum()
        usage.append(float((row > 0).mean()))
        p = row[row > 0] / total
        entropy.append(float(-(p * np.log2(p)).sum()))
    return usage, entropy


@dataclass
class ReconBatch:
    """What a reconstructor returns for one batch of test images."""

    images: torch.Tensor  # (B, C, H, W) in [-1, 1], the reconstructions
    codes: torch.Tensor | None = None  # (B, h, w, D): a discrete tokenizer's codes, for code usage per depth
    grid_rows: list[torch.Tensor] = field(default_factory=list)  # recon-grid rows under the originals (when asked)


# reconstruct(batch, with_grid) → ReconBatch: an RQ-VAE by depth, a continuous VAE, or the identity
Reconstruct = Callable[[torch.Tensor, bool], ReconBatch]


def measure_reconstruction(reconstruct: Reconstruct, data: ImageShardDataset, batch_size: int, device: torch.device,
                           codebook_size: int | None, cfg: ReconEvalConfig, out: Path,
                           classifier: Path | None = None) -> dict[str, Any]:
    """The metrics every Table 1 row shares, over the first `len(data)` test images: L2, code usage per depth
    (when the reconstructor returns codes), rOCR, rFID, the accuracy of `classifier` (the demo classifier) on
    the reconstructions; the recon grid of the first batch beside `out`."""
    texts = data.meta["text"][: len(data)]
    originals, recons, sq_errors, grid_rows = [], [], [], []
    counts = None
    for start in range(0, len(data), batch_size):
        batch = torch.stack([data[i] for i in range(start, min(start + batch_size, len(data)))]).to(device)
        with torch.no_grad():
            result = reconstruct(batch, start == 0)
        if result.codes is not None:
            depth = result.codes.shape[-1]
            batch_counts = np.stack([np.bincount(result.codes[..., d].flatten().cpu().numpy(), minlength=codebook_size)
                                     for d in range(depth)])
            counts = batch_counts if counts is None else counts + batch_counts
        if start == 0 and result.grid_rows:
            grid_rows = [batch[:GRID_IMAGES], *result.grid_rows]
        sq_errors.append(((result.images - batch) ** 2).flatten(1).mean(1).cpu())
        originals.append(to_uint8(batch))
        recons.append(to_uint8(result.images))
    per_image_l2 = torch.cat(sq_errors).double().numpy()
    bootstrap = image_bootstrap(cfg)
    metrics: dict[str, Any] = {
        "n_images": len(data),
        "l2": float(per_image_l2.mean()),
        "l2_interval": mean_interval(per_image_l2, bootstrap, "l2") if bootstrap.resamples > 0 else None,
        "l2_definition": "mean squared error per pixel, images scaled to [-1, 1]",
        "l2_per_image": [round(float(v), 7) for v in per_image_l2],  # paired comparisons between rows
        "image_bootstrap": describe_image_bootstrap(bootstrap),
    }
    if counts is not None:
        usage, entropy = code_usage(counts)
        metrics |= {"code_usage": usage, "code_entropy_bits": entropy}
    recon_uint8, originals_uint8 = np.concatenate(recons), np.concatenate(originals)
    metrics |= ocr_metrics(recon_uint8, texts, cfg, originals_uint8)
    metrics |= rfid_metrics(originals_uint8, recon_uint8, cfg, device)
    metrics |= classifier_metrics(recon_uint8, originals_uint8, data, classifier, bootstrap)
    if grid_rows:
        save_recon_grid(grid_rows, out.with_suffix(".png"))
    return metrics


def rqvae_reconstructor(model: Any) -> Reconstruct:
    """Encode, decode from all D depths; the grid shows the decodes from the first 1..D depths."""
    def reconstruct(batch: torch.Tensor, with_grid: bool) -> ReconBatch:
        codes = model.encode(batch)
        rows = [model.decode(codes[:GRID_IMAGES], depth=d).clamp(-1, 1) for d in range(1, model.config.depth + 1)] if with_grid else []
        return ReconBatch(model.decode(codes).clamp(-1, 1), codes, rows)

    return reconstruct


def identity_reconstructor(batch: torch.Tensor, with_grid: bool) -> ReconBatch:
    """The 'original' row: the test images themselves (its rOCR is the OCR engine's ceiling)."""
    return ReconBatch(batch)


def evaluate_reconstruction(tokenizer: Path | None, testset: Path, out: Path, cfg: ReconEvalConfig, names: dict[str, str],
                            classifier: Path | None = None) -> dict[str, Any]:
    """A tokenizer's row (or, with `tokenizer` None, the 'original' row) of Table 1 on one test set → `out`;
    `classifier` (the demo classifier, for the class-labelled test set) adds its accuracy on the reconstructions."""
    from dnd.tokenizer.rqvae import load_tokenizer

    check_ocr_backend(cfg.ocr, "metrics.ocr")
    device = default_device()
    model = load_tokenizer(tokenizer, device) if tokenizer is not None else None
    channels = model.config.in_channels if model is not None else 3
    data = ImageShardDataset([testset], "test", channels, resolution=None, limit=cfg.max_images, columns=test_columns(testset))
    result: dict[str, Any] = {"tokenizer": names["tokenizer"], "testset": names["testset"]}
    if model is None:
        result |= measure_reconstruction(identity_reconstructor, data, cfg.batch_size, device, None, cfg, out, classifier)
    else:
        result |= {"depth": model.config.depth, "codebook_size": model.config.codebook_size}
        result |= measure_reconstruction(rqvae_reconstructor(model), data, cfg.batch_size, device,
                                         model.config.codebook_size, cfg, out, classifier)
        result["grid"] = "originals, then depth 1..D"
    result["provenance"] = record("evaluate_reconstruction", asdict(cfg), tokenizer=str(tokenizer), testset=str(testset),
                                  classifier=str(classifier) if classifier else None)
    write_json(out, result)
    log.info("%s on %s: l2=%.4g classifier_acc=%s rocr=%s rfid=%s", names["tokenizer"], names["testset"], result["l2"],
             result.get("classifier_acc"), result.get("rocr"), result.get("rfid"))
    return result


def test_columns(testset: Path) -> tuple[str, ...]:
    """The metadata read with the test images: id, text, and the class label where the set has one."""
    import pyarrow.parquet as pq

    from dnd.data.shards import split_shards

    shards = split_shards(Path(testset), "test")
    has_label = bool(shards) and "label" in pq.read_schema(shards[0]).names
    return ("id", "text", "label") if has_label else ("id", "text")


def image_bootstrap(cfg: ReconEvalConfig) -> BootstrapSettings:
    return BootstrapSettings(resamples=cfg.bootstrap_resamples, seed=cfg.bootstrap_seed)


def describe_image_bootstrap(settings: BootstrapSettings) -> str:
    if settings.resamples == 0:
        return "no interval (0 resamples)"
    return (f"{settings.level:.0%} percentile bootstrap over the test images, {settings.resamples} resamples, "
            f"seed {settings.seed}")


def classifier_metrics(recons: np.ndarray, originals: np.ndarray, data: ImageShardDataset, classifier: Path | None,
                       bootstrap: BootstrapSettings) -> dict[str, Any]:
    """The demo classifier's accuracy on the reconstructions (uint8 (N, H, W, C)) w.r.t. the test labels, its
    bootstrap interval over the images, and its accuracy on the same originals (the ceiling); n/a with the
    reason on a set without labels or without the classifier (evaluation.generation.demo_classifier false)."""
    if "label" not in data.meta:
        return {"classifier_acc": None, "classifier_acc_na_reason": "the test set has no class labels"}
    if classifier is None:
        return {"classifier_acc": None, "classifier_acc_na_reason":
                "no demo classifier (evaluation.generation.demo_classifier is false)"}
    from dnd.metrics.classifier import DESCRIPTION, load_classifier, predict_probabilities

    labels = np.asarray(data.meta["label"][: len(recons)], dtype=np.int64)
    trained = load_classifier(classifier)
    hits = predict_probabilities(trained, recons).argmax(axis=1) == labels
    ceiling = predict_probabilities(trained, originals).argmax(axis=1) == labels
    return {
        "classifier_acc": float(hits.mean()),
        "classifier_acc_interval": mean_interval(hits, bootstrap, "classifier_acc") if bootstrap.resamples > 0 else None,
        "classifier_acc_originals": float(ceiling.mean()),
        "classifier_n": int(len(labels)),
        "classifier_hits_per_image": hits.astype(int).tolist(),  # paired comparisons between rows (same test images)
        "classifier_description": DESCRIPTION.replace("the samples with their intended labels",
                                                      "the reconstructions with the test images' labels"),
    }


OCR_REFERENCES = {
    "text": "the test set's ground-truth text (arXiv512: the PDF's text layer inside the crop)",
    "original_ocr": "the OCR of the original test image (the paper's reference where a set has no ground truth)",
}


def ocr_metrics(recons: np.ndarray, texts: list[str], cfg: ReconEvalConfig, originals: np.ndarray) -> dict[str, Any]:
    """rOCR: OCR of the reconstructions (uint8, (N, H, W, C)) against `cfg.ocr_reference`: the test set's
    ground-truth text, or the same backend's OCR of the original images; its interval over the test images."""
    if cfg.ocr_reference not in OCR_REFERENCES:
        raise ValueError(f"evaluation.recon.rocr_reference: {cfg.ocr_reference!r} is none of {sorted(OCR_REFERENCES)}")
    if not any(text.strip() for text in texts):
        return {"rocr": None, "rocr_na_reason": "the test set has no ground-truth text"}
    backend = make_ocr_backend(cfg.ocr)
    read = backend.read([to_pil(image) for image in recons])
    references = texts if cfg.ocr_reference == "text" else backend.read([to_pil(image) for image in originals])
    scores = rocr(read, references)
    bootstrap = image_bootstrap(cfg)
    interval = mean_interval(np.asarray(scores["per_image"]), bootstrap, "rocr") if bootstrap.resamples > 0 else None
    return {"rocr": scores["mean"], "rocr_interval": interval, "rocr_per_image": scores["per_image"], "ocr_backend": backend.name,
            "rocr_reference": OCR_REFERENCES[cfg.ocr_reference],
            "ocr_examples": [{"truth": t, "reference": ref, "read": r} for t, ref, r in list(zip(texts, references, read))[:3]]}


def rfid_metrics(originals: np.ndarray, recons: np.ndarray, cfg: ReconEvalConfig, device: torch.device) -> dict[str, Any]:
    """rFID of the reconstructions against their originals, with its bootstrap interval (both feature sets
    resampled) and whether its image count follows the paper's protocol; n/a with the reason without
    Inception weights or with no more images than feature dimensions."""
    from dnd.metrics.bootstrap import BootstrapSettings, fid_interval
    from dnd.metrics.fid import collect_features, compute_stats, frechet_distance, frechet_na_reason
    from dnd.metrics.inception import InceptionWeightsMissing, load_inception
    from dnd.metrics.protocol import rfid_protocol

    counts = {"rfid_n_reference": len(originals), "rfid_paper_protocol": rfid_protocol(len(originals))}
    try:
        extractor = load_inception(cfg.inception_weights, device)
    except InceptionWeightsMissing as missing:
        log.warning("rFID is n/a: %s", missing)
        return {"rfid": None, "rfid_na_reason": str(missing), **counts}
    reason = frechet_na_reason(len(recons), len(originals), what="rFID", sides=("reconstructed", "original"))
    if reason:
        log.warning("%s", reason)
        return {"rfid": None, "rfid_na_reason": reason, **counts}
    real = collect_features(np.array_split(originals, max(1, math.ceil(len(originals) / 50))), extractor)["pool"]
    fake = collect_features(np.array_split(recons, max(1, math.ceil(len(recons) / 50))), extractor)["pool"]
    real_stats = compute_stats(real)
    bootstrap = BootstrapSettings(resamples=cfg.bootstrap_resamples, seed=cfg.bootstrap_seed)
    interval = fid_interval(fake, real_stats, real, bootstrap, str(device)) if bootstrap.resamples > 0 else None
    return {"rfid": frechet_distance(compute_stats(fake), real_stats), "rfid_interval": interval,
            "rfid_bootstrap": bootstrap.describe() if interval else "no interval (0 resamples)",
            "rfid_provenance": extractor.provenance, **counts}


def save_recon_grid(rows: list[torch.Tensor], path: Path) -> None:
    """Rows of images in [-1, 1] (originals first), one grid PNG."""
    from torchvision.utils import make_grid

    grid = make_grid(torch.cat(rows).float().cpu(), nrow=rows[0].shape[0], padding=2, pad_value=1.0)
    with atomic_path(path) as tmp:
        to_pil(to_uint8(grid[None])[0]).save(tmp, format="PNG")
