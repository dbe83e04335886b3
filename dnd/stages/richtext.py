"""Rich-text generation (the paper's §5): PPL-OCR of a sample set (or of the training images).

PPL-OCR: OCR every image (the first `max_images` of a samples folder), then score the recognised text with a
language model; the number is the LM's corpus perplexity over all non-empty texts, exp(total NLL / total
scored tokens), lower is better. Images whose OCR output is empty have no perplexity: they are left out of
the score and counted (`empty_ocr`), and `words_per_image` (a mean over every image, empty ones as 0) says
how much text the score rests on: a model that writes little legible text can score a low perplexity on
the few words that were read.

Uncertainty: 95 % percentile bootstrap intervals over images (`dnd.metrics.bootstrap`): PPL-OCR's over the
`n_with_text` images whose OCR read text (each resample the corpus perplexity of the images drawn),
words per image's over all `n_images` images.

The reference row ("training images") runs the same OCR and LM on the first `max_images` images of the
training split, the best a model can hope for. With the `ngram` language model, fitted on that split's
own text, the reference is optimistic: the LM has seen those very sentences (the JSON's `note` says so).

Samples folders are the sampler's format (`dnd.stages.sample`): `samples.npz` (ADM layout, `arr_0` uint8
(N, H, W, 3), `arr_1` labels, -1 = unconditional), `grid.png`, `summary.json`, `provenance.json`.
The DDPM baseline's samples come in that same format (`dnd.baselines.ddpm_samples`), so both go through
one evaluation rule; the table and its figures are `dnd.report.richtext`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from dnd.atomic import write_json
from dnd.data.images import to_pil
from dnd.data.shards import decode_png, iter_records
from dnd.metrics.bootstrap import BootstrapSettings, corpus_perplexity_interval, mean_interval
from dnd.metrics.ocr import OCRConfig, check_ocr_backend, make_ocr_backend
from dnd.metrics.ppl import LanguageModel, LMConfig, count_empty, make_language_model
from dnd.provenance import file_sha256, record
from dnd.stages.gen_eval import iter_sample_images

log = logging.getLogger("dnd.richtext")

REFERENCE_MODEL = "training images"  # the reference row's model name
REFERENCE_SPLIT = "train"
SAMPLES_NAME = "samples.npz"
SUMMARY_NAME = "summary.json"
OCR_BATCH = 16  # images decoded and handed to the OCR backend at a time
PPL_DEFINITION = "exp(total NLL / total scored tokens) of the language model over the non-empty OCR texts"


@dataclass
class RichTextEvalConfig:
    """What scoring one row of the rich-text table depends on (`richtext` less its rows, notes and pipelines)."""

    dataset: str = "text256"  # the data set the models learn (its name in the table)
    max_images: int = 250  # OCR'd images per row (the paper: 250)
    language_model: LMConfig = field(default_factory=LMConfig)
    ocr: OCRConfig = field(default_factory=OCRConfig)  # PPL-OCR's own OCR (the paper: the VLM)
    bootstrap_resamples: int = 1000  # resamples of the images behind each 95 % interval; 0 = no intervals
    bootstrap_seed: int = 0

    TABLE_KEYS = ("runs", "pipelines", "notes")  # the table's, not a row's

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "RichTextEvalConfig":
        own = {k: v for k, v in params.items() if k not in cls.TABLE_KEYS}
        return cls(**{**own, "language_model": LMConfig(**own.get("language_model", {})), "ocr": OCRConfig(**own.get("ocr", {}))})


# ----------------------------------------------------------------------------------------------------
# PPL-OCR of one sample set (or of the training images)


def _sample_batches(samples_dir: Path, max_images: int) -> Iterator[list[Image.Image]]:
    seen = 0
    for batch in iter_sample_images(samples_dir / SAMPLES_NAME, OCR_BATCH):  # (b, H, W, C) uint8
        batch = batch[: max_images - seen]
        seen += len(batch)
        yield [to_pil(image) for image in batch]
        if seen >= max_images:
            return


def _reference_records(dataset: Path, max_images: int) -> list[dict[str, Any]]:
    records = []
    for row in iter_records(dataset, REFERENCE_SPLIT, columns=["png", "text"]):
        if len(records) >= max_images:
            break
        records.append(row)
    if not records:
        raise FileNotFoundError(f"no {REFERENCE_SPLIT!r} images in {dataset}")
    return records


def _reference_batches(records: list[dict[str, Any]]) -> Iterator[list[Image.Image]]:
    for start in range(0, len(records), OCR_BATCH):
        yield [decode_png(row["png"]) for row in records[start : start + OCR_BATCH]]


def _corpus_perplexity(lm: LanguageModel, texts: list[str]) -> float | None:
    """The LM's corpus perplexity, None when every text is empty."""
    return None if count_empty(texts) == len(texts) else lm.corpus_perplexity(texts)


def _lm_provenance(lm_cfg: LMConfig, lm_path: Path) -> dict[str, Any]:
    if lm_cfg.backend == "ngram":
        return {"lm_file": str(lm_path), "lm_sha256": file_sha256(Path(lm_path))}
    return {"lm_folder": lm_cfg.hf_path}


def evaluate_richtext(samples_dir: Path | None, reference_dataset: Path | None, lm_path: Path, out_json: Path,
                      lm_cfg: LMConfig, ocr_cfg: OCRConfig, max_images: int, names: dict[str, str],
                      bootstrap: BootstrapSettings | None = None) -> dict[str, Any]:
    """PPL-OCR of the first `max_images` images of `samples_dir`, or, when it is None, of the training split
    of `reference_dataset` (the reference row) → `out_json`.

    `lm_path`: the fitted n-gram model (`fit_ngram_on_dataset`; unused by the `hf` backend, which reads
    `lm_cfg.hf_path`). `names`: "dataset" (the data set the model was trained on, for the table), and for
    samples optionally "model" / "sampling" (default: what summary.json says). `bootstrap`: the intervals'
    settings (None or 0 resamples: none).
    """
    if (samples_dir is None) == (reference_dataset is None):
        raise ValueError("evaluate_richtext scores either a samples folder or a reference data set: give exactly one")
    check_ocr_backend(ocr_cfg, "richtext.ocr")  # before the language model: a 72B LM takes a while to load
    lm = make_language_model(lm_cfg, ngram_model=lm_path)
    backend = make_ocr_backend(ocr_cfg)

    if samples_dir is not None:
        samples_dir = Path(samples_dir)
        summary = json.loads((samples_dir / SUMMARY_NAME).read_text())
        sampling = summary.get("sampling", {})
        batches = _sample_batches(samples_dir, max_images)
        result: dict[str, Any] = {
            "model": names.get("model", summary["model"]), "sampling_name": names.get("sampling", summary.get("sampling_name")),
            "is_reference": False, "variant": summary.get("variant"), "params": summary.get("params"),
            "temperature": sampling.get("temperature"), "cfg_scale": sampling.get("cfg_scale"), "sampling": sampling,
        }
        source = {"samples": str(samples_dir / SAMPLES_NAME), "samples_sha256": file_sha256(samples_dir / SAMPLES_NAME)}
        ground_truth: list[str] | None = None
    else:
        records = _reference_records(Path(reference_dataset), max_images)
        batches = _reference_batches(records)
        result = {"model": REFERENCE_MODEL, "sampling_name": None, "is_reference": True, "variant": None, "params": None,
                  "temperature": None, "cfg_scale": None, "sampling": None}
        source = {"reference_dataset": str(reference_dataset), "reference_split": REFERENCE_SPLIT,
                  "reference_selection": f"first {len(records)} images in shard order"}
        ground_truth = [row["text"] for row in records]

    texts: list[str] = []
    image_shape: list[int] | None = None
    for images in batches:
        image_shape = image_shape or [images[0].height, images[0].width, len(images[0].getbands())]
        texts.extend(backend.read(images))
    if not texts:
        raise ValueError(f"no images to score in {samples_dir or reference_dataset}")

    per_image = lm.perplexity(texts)
    scored = [p for p in per_image if p is not None]
    ppl = _corpus_perplexity(lm, texts)
    words = [len(text.split()) for text in texts]
    bootstrap = bootstrap or BootstrapSettings(resamples=0)
    with_text = [score for score in lm.scores(texts) if score is not None]
    intervals = {}
    if bootstrap.resamples:
        intervals["words_per_image_ci"] = mean_interval(words, bootstrap, "words_per_image")
        intervals["ppl_ocr_ci"] = corpus_perplexity_interval(with_text, bootstrap) if with_text else None
    result |= {
        "dataset": names["dataset"],
        "n_images": len(texts),
        "image_shape": image_shape,
        "ppl_ocr": ppl,
        "ppl_ocr_definition": PPL_DEFINITION,
        "mean_image_ppl": float(np.mean(scored)) if scored else None,
        "perplexity_per_image": per_image,
        "words_per_image": float(np.mean(words)),
        "empty_ocr": count_empty(texts),
        "n_with_text": len(with_text),  # the images PPL-OCR (and its interval) rests on
        **intervals,
        "bootstrap": (f"{bootstrap.level:.0%} percentile bootstrap over images, {bootstrap.resamples} resamples, "
                      f"seed {bootstrap.seed}") if bootstrap.resamples else None,
        "ocr_backend": backend.name,
        "language_model": lm.name,
        "ocr_examples": texts[:3],
        "ocr_texts": texts,
    }
    if ppl is None:
        result["ppl_ocr_na_reason"] = f"OCR read no text in any of the {len(texts)} images"
    if ppl is not None and hasattr(lm, "oov_rate"):
        result["oov_rate"] = lm.oov_rate(texts)  # share of words the n-gram model had to spell letter by letter
    if ground_truth is not None:
        result["ppl_ground_truth"] = _corpus_perplexity(lm, ground_truth)  # the same LM on the true text: OCR's cost
    if result["is_reference"] and lm_cfg.backend == "ngram":
        result["note"] = "the n-gram language model was fitted on this split's text: an optimistic reference"
    result["provenance"] = {
        **source,
        **_lm_provenance(lm_cfg, lm_path),
        "run": record("evaluate_richtext", {"lm": asdict(lm_cfg), "ocr": asdict(ocr_cfg), "max_images": max_images, **names}),
    }
    write_json(out_json, result)
    log.info("%s (%s): PPL-OCR %s over %d images, %d with no OCR text, %.1f words per image", result["model"],
             result["sampling_name"], ppl, len(texts), result["empty_ocr"], result["words_per_image"])
    return result
