"""Rich-text generation (the paper's §5): DDPM baseline samples, PPL-OCR of a sample set, its table and plots.

PPL-OCR: OCR every image (the first `max_images` of a samples folder), then score the recognised text with a
language model; the number is the LM's corpus perplexity over all non-empty texts, exp(total NLL / total
scored tokens), lower is better. Images whose OCR output is empty have no perplexity: they are left out of
the score and counted (`empty_ocr`), and `words_per_image` (a mean over every image, empty ones as 0) says
how much text the score rests on: a model that writes little legible text can score a low perplexity on
the few words that were read.

The reference row ("training images") runs the same OCR and LM on the first `max_images` images of the
training split, the best a model can hope for. With the `ngram` language model, fitted on that split's
own text, the reference is optimistic: the LM has seen those very sentences (the JSON's `note` says so).

Samples folders are the sampler's format (`dnd.stages.sample`): `samples.npz` (ADM layout, `arr_0` uint8
(N, H, W, 3), `arr_1` labels, -1 = unconditional), `grid.png`, `summary.json`, `provenance.json`.
`sample_ddpm_images` writes the DDPM baseline's samples in that same format, so both go through one
evaluation rule.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dnd.atomic import atomic_dir, atomic_path, write_json
from dnd.data.images import to_pil
from dnd.data.shards import decode_png, iter_records
from dnd.metrics.adm import write_adm_batch
from dnd.metrics.ocr import OCRConfig, make_ocr_backend
from dnd.metrics.ppl import LanguageModel, LMConfig, count_empty, make_language_model
from dnd.provenance import file_sha256, record, write_provenance
from dnd.stages.gen_eval import iter_sample_images
from dnd.stages.sample import save_grid  # the sampler's grid: first 100 images, 10 wide
from dnd.tables import NA, stack_images

log = logging.getLogger("dnd.richtext")

REFERENCE_MODEL = "training images"  # the reference row's model name
REFERENCE_SPLIT = "train"
SAMPLES_NAME = "samples.npz"
SUMMARY_NAME = "summary.json"
OCR_BATCH = 16  # images decoded and handed to the OCR backend at a time
PPL_DEFINITION = "exp(total NLL / total scored tokens) of the language model over the non-empty OCR texts"
TABLE_COLUMNS = ["model", "sampling", "dataset", "temperature", "PPL_OCR", "words_per_image", "empty_ocr", "n_images",
                 "ocr_backend", "language_model", "note"]
LOG_SCALE_SPREAD = 20.0  # plot PPL-OCR on a log axis when the largest value is this many times the smallest


# ----------------------------------------------------------------------------------------------------
# DDPM baseline samples


def sample_ddpm_images(model_path: Path, n: int, seed: int, batch_size: int, num_inference_steps: int | None,
                       out_dir: Path, names: dict[str, str]) -> dict[str, Any]:
    """`n` unconditional DDPM samples → `out_dir` in the sampler's folder format; returns its summary.

    `names`: "model" and "sampling" (the experiment names the table shows). Grayscale models are repeated
    to 3 channels, as the ADM layout requires. `num_inference_steps` None = the model's own setting.
    """
    from dnd.baselines.ddpm import load_ddpm, sample_ddpm  # diffusers takes seconds to import: only here

    model, cfg = load_ddpm(model_path, "cpu")
    steps = num_inference_steps or cfg.num_inference_steps
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start_time = time.perf_counter()
    images = sample_ddpm(model_path, n, seed, batch_size, steps, device=device)  # (N, H, W, C) uint8
    seconds = time.perf_counter() - start_time
    rgb = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images  # (N, H, W, 3)
    labels = np.full(len(rgb), -1, np.int64)
    summary = {
        "model": names["model"], "sampling_name": names["sampling"],
        "sampling": {"temperature": None, "num_inference_steps": steps, "seed": seed},
        "variant": "ddpm", "params": sum(p.numel() for p in model.parameters()), "resolution": cfg.resolution,
        "n_images": len(rgb), "seconds": seconds, "seconds_per_image": seconds / max(1, len(rgb)), "device": device,
    }
    with atomic_dir(out_dir) as tmp:
        write_adm_batch(tmp / SAMPLES_NAME, rgb, labels)
        save_grid(rgb, labels, tmp / "grid.png")
        write_json(tmp / SUMMARY_NAME, summary)
        settings = {"n": n, "seed": seed, "batch_size": batch_size, "num_inference_steps": steps, **names}
        write_provenance(tmp, "sample_ddpm_images", settings, seed=seed, model=str(model_path),
                         model_sha256=file_sha256(Path(model_path)))
    log.info("sampled %d DDPM images from %s (%d steps) in %.1f s", len(rgb), names["model"], steps, seconds)
    return summary


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
                      lm_cfg: LMConfig, ocr_cfg: OCRConfig, max_images: int, names: dict[str, str]) -> dict[str, Any]:
    """PPL-OCR of the first `max_images` images of `samples_dir`, or, when it is None, of the training split
    of `reference_dataset` (the reference row) → `out_json`.

    `lm_path`: the fitted n-gram model (`fit_ngram_on_dataset`; unused by the `hf` backend, which reads
    `lm_cfg.hf_path`). `names`: "dataset" (the data set the model was trained on, for the table), and for
    samples optionally "model" / "sampling" (default: what summary.json says).
    """
    if (samples_dir is None) == (reference_dataset is None):
        raise ValueError("evaluate_richtext scores either a samples folder or a reference data set: give exactly one")
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
    result |= {
        "dataset": names["dataset"],
        "n_images": len(texts),
        "image_shape": image_shape,
        "ppl_ocr": ppl,
        "ppl_ocr_definition": PPL_DEFINITION,
        "mean_image_ppl": float(np.mean(scored)) if scored else None,
        "perplexity_per_image": per_image,
        "words_per_image": float(np.mean([len(text.split()) for text in texts])),
        "empty_ocr": count_empty(texts),
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


# ----------------------------------------------------------------------------------------------------
# Table and figures


def _number(value: float | None, digits: int) -> str:
    return NA if value is None else f"{value:.{digits}f}"


def _automatic_note(m: dict[str, Any]) -> str:
    parts = [m.get("note", "")]
    if m["ppl_ocr"] is None:
        parts.append(f"PPL-OCR n/a: {m.get('ppl_ocr_na_reason', 'no OCR text')}")
    elif m["empty_ocr"]:
        parts.append(f"{m['empty_ocr']} of {m['n_images']} images with no OCR text, left out of PPL-OCR")
    return "; ".join(filter(None, parts))


def _row(m: dict[str, Any], notes: dict[str, str]) -> dict[str, Any]:
    return {
        "model": m["model"],
        "sampling": m.get("sampling_name") or NA,
        "dataset": m["dataset"],
        "temperature": NA if m.get("temperature") is None else f"{m['temperature']:g}",
        "PPL_OCR": _number(m["ppl_ocr"], 1),
        "words_per_image": _number(m["words_per_image"], 1),
        "empty_ocr": m["empty_ocr"],
        "n_images": m["n_images"],
        "ocr_backend": m["ocr_backend"],
        "language_model": m["language_model"],
        "note": "; ".join(filter(None, [notes.get(m["model"], ""), _automatic_note(m)])),
    }


def richtext_table(metric_jsons: list[Path], notes: dict[str, str]) -> pd.DataFrame:
    """One row per (model, sampling): the reference first, then models in the order given, temperature
    ascending within a model; `notes` by model name."""
    metrics = [json.loads(Path(p).read_text()) for p in metric_jsons]
    model_order = list(dict.fromkeys(m["model"] for m in metrics))

    def key(m: dict[str, Any]) -> tuple[bool, int, float]:
        temperature = m.get("temperature")
        return (not m.get("is_reference"), model_order.index(m["model"]), math.inf if temperature is None else temperature)

    return pd.DataFrame([_row(m, notes) for m in sorted(metrics, key=key)], columns=TABLE_COLUMNS)


def plot_ppl_by_temperature(frame: pd.DataFrame, path: Path) -> None:
    """PPL-OCR against sampling temperature: a line per model sampled at temperatures; models without one
    (DDPM) and the training images as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    data = frame.assign(x=pd.to_numeric(frame["temperature"], errors="coerce"),
                        y=pd.to_numeric(frame["PPL_OCR"], errors="coerce")).dropna(subset=["y"])
    fig, ax = plt.subplots(figsize=(5.8, 3.8))
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)  # axhline does not advance the cycle
    for model, rows in data.dropna(subset=["x"]).groupby("model", sort=False):
        ax.plot(rows["x"], rows["y"], marker="o", color=next(colors), label=model)
    for _, row in data[data["x"].isna()].iterrows():
        if row["model"] == REFERENCE_MODEL:
            ax.axhline(row["y"], color="black", linestyle="--", label=REFERENCE_MODEL)
        else:
            ax.axhline(row["y"], color=next(colors), linestyle=":", label=f"{row['model']} (no temperature)")
    if data.empty:
        ax.text(0.5, 0.5, "PPL-OCR n/a for every row (see the table's notes)", ha="center", va="center",
                transform=ax.transAxes)
    else:
        if data["y"].max() / data["y"].min() > LOG_SCALE_SPREAD:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 50, not 5×10¹
            ax.yaxis.set_minor_formatter(NullFormatter())
        if data["x"].isna().all():
            ax.set_xlim(0.0, 1.1)  # only horizontal lines: show the usual temperature range
        ax.legend(fontsize=8)
    lms = ", ".join(frame["language_model"].astype(str).unique())
    ocrs = ", ".join(frame["ocr_backend"].astype(str).unique())
    ax.set_xlabel("sampling temperature")
    ax.set_ylabel(f"PPL-OCR: {lms} perplexity\nof {ocrs} text (lower is better)", fontsize=9)
    ax.set_title("Rich-text generation: PPL-OCR vs temperature")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def stack_grids(sample_dirs: Sequence[Path], labels: Sequence[str], path: Path) -> None:
    """One figure of the samples folders' `grid.png`, a label above each."""
    stack_images([Path(d) / "grid.png" for d in sample_dirs], list(labels), path)
