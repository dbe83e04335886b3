"""rOCR: ROUGE-L F-score between the OCR of an image and its reference text (the paper's Table 1b).

Scored with the `rouge_score` package, ROUGE-L with Porter stemming, as the authors' code does. The
reference is the ground-truth text when one exists, otherwise the OCR of the original image.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from rouge_score import rouge_scorer


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_f(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1]; 0 when either side has no words."""
    if not prediction.strip() or not reference.strip():
        return 0.0
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


def rocr(ocr_texts: Sequence[str], references: Sequence[str]) -> dict:
    """Mean ROUGE-L F over image/reference pairs: {"mean", "n", "per_image"}."""
    if len(ocr_texts) != len(references):
        raise ValueError(f"{len(ocr_texts)} OCR texts but {len(references)} references")
    per_image = [rouge_l_f(text, reference) for text, reference in zip(ocr_texts, references)]
    mean = sum(per_image) / len(per_image) if per_image else float("nan")
    return {"mean": mean, "n": len(per_image), "per_image": per_image}
