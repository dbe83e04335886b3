"""The paper's evaluation protocol, which every FID/IS/precision/recall and rFID cell is held against.

A cell computed on fewer images than the paper's protocol, or against another reference, is still a
number (with its bootstrap interval), but its table marks it "not comparable to the paper" and says why:
FID and IS move with the sample count (FID is biased upwards at small N) and with the reference set.
docs/protocol.md has the full comparison, metric by metric.
"""

from __future__ import annotations

PAPER_GEN_SAMPLES = 50_000  # Tables 2 and 3: 50 samples per class of ImageNet, ADM evaluator
PAPER_REFERENCE = "ADM reference batch"  # VIRTUAL_imagenet256_labeled.npz, statistics precomputed over ImageNet train
PAPER_RFID_IMAGES = 50_000  # Table 1a: rFID on the ImageNet validation set
COMPARABLE = "comparable"
NOT_COMPARABLE = "not comparable to the paper"


def _verdict(reasons: list[str]) -> str:
    return f"{NOT_COMPARABLE}: {'; '.join(reasons)}" if reasons else COMPARABLE


def generation_protocol(n_samples: int, reference_provenance: dict) -> str:
    """Whether FID/IS/precision/recall of `n_samples` against this reference follow the paper's protocol."""
    reasons = []
    if n_samples < PAPER_GEN_SAMPLES:
        reasons.append(f"{n_samples} samples (paper: {PAPER_GEN_SAMPLES})")
    mode = reference_provenance.get("reference_mode")
    if mode != PAPER_REFERENCE:
        reasons.append(f"reference: {mode or 'unavailable'} (paper: the {PAPER_REFERENCE})")
    elif not reference_provenance.get("reference_stats_precomputed", False):
        reasons.append("FID statistics of the batch's images, not its precomputed whole-set statistics (paper: precomputed)")
    return _verdict(reasons)


def rfid_protocol(n_images: int) -> str:
    """Whether an rFID over `n_images` test images follows the paper's count (ImageNet val, 50,000 images);
    that the test set is ImageNet val is the config's to say (data.classes.test_root)."""
    return _verdict([f"{n_images} test images (paper: {PAPER_RFID_IMAGES}, ImageNet val)"] if n_images < PAPER_RFID_IMAGES else [])
