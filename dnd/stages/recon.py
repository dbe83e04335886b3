"""Reconstruction metrics of a tokenizer on a test set: L2, code usage per depth, rOCR, rFID.

The "original" pseudo-tokenizer returns the images unchanged: its rOCR is the OCR engine's own
ceiling on that test set, the reference row of Table 1b.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnd.atomic import atomic_path, write_json
from dnd.data.images import ImageShardDataset, to_pil, to_uint8
from dnd.metrics.ocr import OCRConfig, make_ocr_backend
from dnd.metrics.rouge import rocr
from dnd.provenance import record

log = logging.getLogger("dnd.recon")
ORIGINAL = "original"


@dataclass
class ReconEvalConfig:
    max_images: int | None = 16  # test images per (tokenizer, test set); None = the whole split
    batch_size: int = 8
    ocr: OCRConfig = field(default_factory=OCRConfig)
    inception_weights: str | None = None  # metrics.inception_weights; None → rFID is n/a

    @classmethod
    def from_dict(cls, recon: dict[str, Any], metrics: dict[str, Any]) -> "ReconEvalConfig":
        return cls(
            max_images=recon.get("max_images", 16),
            batch_size=recon.get("batch_size", 8),
            ocr=OCRConfig(**metrics.get("ocr", {})),
            inception_weights=metrics.get("inception_weights"),
        )


def code_usage(counts: np.ndarray) -> tuple[list[float], list[float]]:
    """Per depth: the fraction of the codebook used, and the entropy (bits) of the code distribution."""
    usage, entropy = [], []
    for row in counts:
        total = row.sum()
        usage.append(float((row > 0).mean()))
        p = row[row > 0] / total
        entropy.append(float(-(p * np.log2(p)).sum()))
    return usage, entropy


def evaluate_reconstruction(tokenizer: Path | None, testset: Path, out: Path, cfg: ReconEvalConfig, names: dict[str, str]) -> dict[str, Any]:
    from dnd.tokenizer.rqvae import load_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_tokenizer(tokenizer, device) if tokenizer is not None else None
    channels = model.config.in_channels if model is not None else 3
    data = ImageShardDataset([testset], "test", channels, resolution=None, limit=cfg.max_images)
    texts = data.meta["text"][: len(data)]
    originals, recons, sq_errors = [], [], []
    counts = None
    grid_rows: list[torch.Tensor] = []
    for start in range(0, len(data), cfg.batch_size):
        batch = torch.stack([data[i] for i in range(start, min(start + cfg.batch_size, len(data)))]).to(device)
        if model is None:
            recon = batch
        else:
            with torch.no_grad():
                codes = model.encode(batch)
                recon = model.decode(codes).clamp(-1, 1)
            depth, size = model.config.depth, model.config.codebook_size
            batch_counts = np.stack([np.bincount(codes[..., d].flatten().cpu().numpy(), minlength=size) for d in range(depth)])
            counts = batch_counts if counts is None else counts + batch_counts
            if start == 0:
                grid_rows = [batch[:4]] + [model.decode(codes[:4], depth=d).clamp(-1, 1) for d in range(1, depth + 1)]
        sq_errors.append(((recon - batch) ** 2).flatten(1).mean(1).cpu())
        originals.append(to_uint8(batch))
        recons.append(to_uint8(recon))
    result: dict[str, Any] = {
        "tokenizer": names["tokenizer"],
        "testset": names["testset"],
        "n_images": len(data),
        "l2": float(torch.cat(sq_errors).mean()) if model is not None else 0.0,
        "l2_definition": "mean squared error per pixel, images scaled to [-1, 1]",
    }
    if counts is not None:
        usage, entropy = code_usage(counts)
        result |= {"depth": model.config.depth, "codebook_size": model.config.codebook_size,
                   "code_usage": usage, "code_entropy_bits": entropy}
    recon_uint8 = np.concatenate(recons)
    result |= ocr_metrics(recon_uint8, texts, cfg)
    result |= rfid_metrics(np.concatenate(originals), recon_uint8, cfg, device)
    if grid_rows:
        save_recon_grid(grid_rows, out.with_suffix(".png"))
        result["grid"] = "originals, then depth 1..D"
    result["provenance"] = record("evaluate_reconstruction", asdict(cfg), tokenizer=str(tokenizer), testset=str(testset))
    write_json(out, result)
    log.info("%s on %s: l2=%.4g rocr=%s rfid=%s", names["tokenizer"], names["testset"], result["l2"],
             result.get("rocr"), result.get("rfid"))
    return result


def ocr_metrics(recons: np.ndarray, texts: list[str], cfg: ReconEvalConfig) -> dict[str, Any]:
    """rOCR: OCR of the reconstructions (uint8, (N, H, W, C)) against the test set's ground-truth text."""
    if not any(text.strip() for text in texts):
        return {"rocr": None, "rocr_na_reason": "the test set has no ground-truth text"}
    backend = make_ocr_backend(cfg.ocr)
    read = backend.read([to_pil(image) for image in recons])
    scores = rocr(read, texts)
    return {"rocr": scores["mean"], "rocr_per_image": scores["per_image"], "ocr_backend": backend.name,
            "ocr_examples": [{"truth": t, "read": r} for t, r in list(zip(texts, read))[:3]]}


def rfid_metrics(originals: np.ndarray, recons: np.ndarray, cfg: ReconEvalConfig, device: torch.device) -> dict[str, Any]:
    from dnd.metrics.fid import collect_features, compute_stats, frechet_distance
    from dnd.metrics.inception import InceptionWeightsMissing, load_inception

    try:
        extractor = load_inception(cfg.inception_weights, device)
    except InceptionWeightsMissing as missing:
        log.warning("rFID is n/a: %s", missing)
        return {"rfid": None, "rfid_na_reason": str(missing)}
    real = collect_features(np.array_split(originals, max(1, math.ceil(len(originals) / 50))), extractor)
    fake = collect_features(np.array_split(recons, max(1, math.ceil(len(recons) / 50))), extractor)
    return {"rfid": frechet_distance(compute_stats(real["pool"]), compute_stats(fake["pool"])),
            "rfid_provenance": extractor.provenance}


def save_recon_grid(rows: list[torch.Tensor], path: Path) -> None:
    """Rows of images in [-1, 1] (originals first), one grid PNG."""
    from torchvision.utils import make_grid

    grid = make_grid(torch.cat(rows).float().cpu(), nrow=rows[0].shape[0], padding=2, pad_value=1.0)
    with atomic_path(path) as tmp:
        to_pil(to_uint8(grid[None])[0]).save(tmp, format="PNG")
