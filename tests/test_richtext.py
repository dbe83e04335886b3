"""PPL-OCR end to end on CPU: rendered pages through the real OCR backend and the fitted n-gram model,
the table and plots, and DDPM samples written in the sampler's folder format."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dnd.baselines.ddpm import DDPMConfig, train_ddpm
from dnd.data import shards
from dnd.data.render import PageLayout, RenderConfig
from dnd.metrics.adm import write_adm_batch
from dnd.metrics.bootstrap import BootstrapSettings
from dnd.metrics.ocr import OCRConfig
from dnd.metrics.ppl import LMConfig, fit_ngram_on_dataset
from dnd.baselines.ddpm_samples import sample_ddpm_images
from dnd.report.richtext import TABLE_COLUMNS, plot_ppl_by_temperature, richtext_table, stack_grids
from dnd.stages.richtext import REFERENCE_MODEL, evaluate_richtext

SENTENCES = [
    "the river flows past the old mill and into the quiet town",
    "a small boat drifts along the river under the stone bridge",
    "the old mill grinds grain for the bakers of the town",
    "children walk to school along the river every morning",
    "the stone bridge was built by the monks of the abbey",
    "bakers sell fresh bread in the market square of the town",
]
LAYOUT = PageLayout(RenderConfig(size=128, font_size=14, margin=6))
# Every word of the tiny corpus is kept in the vocabulary (the default cutoff of 2 would make most of them <UNK>).
LM_CFG = LMConfig(backend="ngram", unk_cutoff=1)
OCR_CFG = OCRConfig(backend="rapidocr", threads=1)
BOOTSTRAP = BootstrapSettings(resamples=200, seed=0)


def render(text: str) -> np.ndarray:
    """A rendered page as uint8 (H, W, 3)."""
    return np.asarray(LAYOUT.draw(LAYOUT.lines(text)).convert("RGB"))


def shuffled(text: str, seed: int) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def write_samples(folder: Path, images: list[np.ndarray], model: str, sampling: str, temperature: float | None,
                  variant: str = "dnd") -> Path:
    """A samples folder as the samplers write it."""
    folder.mkdir(parents=True)
    write_adm_batch(folder / "samples.npz", np.stack(images), np.full(len(images), -1))
    Image.fromarray(np.concatenate(images[:2], axis=1)).save(folder / "grid.png")
    summary = {"model": model, "sampling_name": sampling, "sampling": {"temperature": temperature, "cfg_scale": 1.0},
               "params": 1000, "variant": variant, "n_images": len(images), "seconds": 1.0, "seconds_per_image": 0.1}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture(scope="module")
def text_dataset(tmp_path_factory) -> Path:
    """A Text-Image-like data set: one rendered sentence per page, with its text."""
    root = tmp_path_factory.mktemp("text")
    records = [{"id": f"train-{i}", "png": shards.encode_png(LAYOUT.draw(LAYOUT.lines(text))), "text": text,
                "title": "t", "split": "train"} for i, text in enumerate(SENTENCES)]
    shards.write_shard(root / "train" / shards.shard_name(0, 1), records, shards.image_schema())
    return root


@pytest.fixture(scope="module")
def lm_path(text_dataset, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lm") / "ngram.pkl"
    fit_ngram_on_dataset(LM_CFG, text_dataset, path)
    return path


@pytest.fixture(scope="module")
def metrics(text_dataset, lm_path, tmp_path_factory) -> dict[str, Path]:
    """Metrics JSONs of: training sentences (+ one blank page), the same words shuffled (+ one blank page),
    only blank pages, a model without temperature (DDPM-like), and the reference row from the data set."""
    root = tmp_path_factory.mktemp("richtext")
    blank = np.full_like(render(SENTENCES[0]), 255)
    folders = {
        "prose": write_samples(root / "prose", [render(s) for s in SENTENCES[:4]] + [blank], "dnd_demo", "t0.1", 0.1),
        "shuffled": write_samples(root / "shuffled", [render(shuffled(s, i)) for i, s in enumerate(SENTENCES[:4])] + [blank],
                                  "dnd_demo", "t1.0", 1.0),
        "blank": write_samples(root / "blank", [blank, blank], "blank_model", "t1.0", 1.0),
        "ddpm": write_samples(root / "ddpm", [render(shuffled(s, 9)) for s in SENTENCES[4:]], "ddpm_demo", "ddpm", None, "ddpm"),
    }
    out = {}
    for name, folder in folders.items():
        out[name] = root / f"{name}.json"
        evaluate_richtext(folder, None, lm_path, out[name], LM_CFG, OCR_CFG, max_images=10, names={"dataset": "text_image"},
                          bootstrap=BOOTSTRAP)
    out["reference"] = root / "reference.json"
    evaluate_richtext(None, text_dataset, lm_path, out["reference"], LM_CFG, OCR_CFG, max_images=3,
                      names={"dataset": "text_image"}, bootstrap=BOOTSTRAP)
    return out


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_prose_scores_lower_than_shuffled_words(metrics):
    prose, mixed = load(metrics["prose"]), load(metrics["shuffled"])
    assert prose["n_images"] == mixed["n_images"] == 5
    assert prose["ocr_backend"] == "rapidocr" and prose["language_model"] == "ngram3"
    assert prose["ppl_ocr"] < mixed["ppl_ocr"] / 2, (prose["ppl_ocr"], mixed["ppl_ocr"], prose["ocr_texts"], mixed["ocr_texts"])
    assert prose["temperature"] == 0.1 and mixed["temperature"] == 1.0
    assert prose["words_per_image"] > 0.8 * np.mean([len(s.split()) for s in SENTENCES[:4]]) * 4 / 5  # blank counts 0
    assert len(prose["ocr_examples"]) == 3 and "river" in prose["ocr_examples"][0].lower()
    assert prose["provenance"]["lm_sha256"] and prose["provenance"]["samples_sha256"]


def test_blank_pages_are_counted_as_empty_and_left_out(metrics):
    prose, blank = load(metrics["prose"]), load(metrics["blank"])
    assert prose["empty_ocr"] == 1 and prose["perplexity_per_image"][-1] is None
    assert all(p is not None for p in prose["perplexity_per_image"][:4])
    assert blank["empty_ocr"] == 2 and blank["ppl_ocr"] is None and blank["mean_image_ppl"] is None
    assert blank["words_per_image"] == 0.0 and "no text" in blank["ppl_ocr_na_reason"]


def test_reference_row_reads_the_training_images(metrics):
    reference = load(metrics["reference"])
    assert reference["model"] == REFERENCE_MODEL and reference["is_reference"]
    assert reference["n_images"] == 3 and reference["empty_ocr"] == 0 and reference["temperature"] is None
    assert reference["ppl_ocr"] == pytest.approx(reference["ppl_ground_truth"], rel=0.2)  # clean pages read (almost) exactly
    assert "fitted on this split" in reference["note"]
    assert reference["provenance"]["reference_selection"] == "first 3 images in shard order"


def test_table_plot_and_grids(metrics, tmp_path):
    paths = [metrics[name] for name in ("prose", "ddpm", "blank", "shuffled", "reference")]
    benchmark = tmp_path / "dnd_demo.tsv"  # a Snakemake benchmark file of the training
    benchmark.write_text("s\th:m:s\tmax_rss\tcpu_time\n121.5\t0:02:01\t300.0\t118.2\n")
    frame = richtext_table(paths, notes={"dnd_demo": "demo model"}, benchmarks=[benchmark])
    assert list(frame.columns) == TABLE_COLUMNS
    assert list(frame["model"]) == [REFERENCE_MODEL, "dnd_demo", "dnd_demo", "ddpm_demo", "blank_model"]
    assert list(frame["temperature"]) == ["n/a", "0.1", "1", "n/a", "1"]
    reference, prose, _, ddpm, blank = (row for _, row in frame.iterrows())
    assert ddpm["sampling"] == "ddpm" and ddpm["PPL_OCR"] != "n/a"
    assert reference["sampling"] == "n/a" and reference["dataset"] == "text_image"
    assert blank["PPL_OCR"] == "n/a" and "PPL-OCR n/a" in blank["note"] and blank["empty_ocr"] == 2
    assert prose["note"].startswith("demo model") and "over the 4 of 5 images with OCR text (1 read nothing)" in prose["note"]
    assert float(prose["PPL_OCR"]) == pytest.approx(load(metrics["prose"])["ppl_ocr"], abs=0.05)
    # every cell with its interval and the images it rests on; the blank row still shows words per image
    low, high = (float(x) for x in prose["PPL_OCR_95ci"].strip("[]").split(","))
    assert low <= float(prose["PPL_OCR"]) <= high and prose["n_with_text"] == 4 and prose["n_images"] == 5
    assert blank["PPL_OCR_95ci"] == "n/a" and blank["n_with_text"] == 0
    assert blank["words_per_image"] == "0.00" and blank["words_per_image_95ci"] == "[0.00, 0.00]"
    assert (prose["train_s"], prose["train_cpu_s"]) == ("122", "118") and ddpm["train_s"] == "n/a"
    # an order only where the intervals separate: prose against its own model's lower temperature has none,
    # shuffled words (T=1) score a higher perplexity than prose (T=0.1), the DDPM row meets every T row
    shuffled_row = frame.iloc[2]
    assert prose["comparison"] == "" and reference["comparison"] == ""
    assert "than dnd_demo T=0.1" in shuffled_row["comparison"] or "no significant difference" in shuffled_row["comparison"]
    assert "dnd_demo T=0.1" in ddpm["comparison"] and "dnd_demo T=1" in ddpm["comparison"]

    plot_ppl_by_temperature(frame, tmp_path / "ppl.png")
    stack_grids([metrics["prose"].parent / "prose", metrics["prose"].parent / "shuffled"], ["t=0.1", "t=1.0"],
                tmp_path / "grids.png")
    for name in ("ppl.png", "grids.png"):
        assert Image.open(tmp_path / name).size[0] > 100


def test_ddpm_samples_use_the_sampler_folder_format(text_dataset, tmp_path):
    cfg = DDPMConfig.from_dict({"preset": "tiny", "steps": 3, "checkpoint_every": 3})
    model = tmp_path / "ddpm" / "model.pt"
    train_ddpm(cfg, [text_dataset], model, tmp_path / "work")
    out = tmp_path / "samples"
    summary = sample_ddpm_images(model, n=3, seed=7, batch_size=2, num_inference_steps=2, out_dir=out,
                                 names={"model": "ddpm_demo", "sampling": "ddpm"})
    with np.load(out / "samples.npz") as data:
        images, labels = data["arr_0"], data["arr_1"]
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    assert (images[..., 0] == images[..., 2]).all()  # grayscale repeated to 3 channels
    assert labels.tolist() == [-1, -1, -1]
    written = load(out / "summary.json")
    assert written == json.loads(json.dumps(summary))
    assert written["variant"] == "ddpm" and written["model"] == "ddpm_demo" and written["sampling_name"] == "ddpm"
    assert written["sampling"] == {"temperature": None, "num_inference_steps": 2, "seed": 7}
    assert written["params"] > 0 and written["n_images"] == 3 and written["seconds_per_image"] > 0
    assert (out / "grid.png").is_file() and load(out / "provenance.json")["stage"] == "sample_ddpm_images"


def test_comparisons_claim_an_order_only_where_intervals_separate():
    from dnd.report.richtext import NO_DIFFERENCE, _comparisons

    def row(model, temperature, ppl, ppl_ci, words, words_ci):
        return {"model": model, "temperature": temperature, "ppl_ocr": ppl, "ppl_ocr_ci": ppl_ci,
                "words_per_image": words, "words_per_image_ci": words_ci}

    cold = row("ar", 0.1, 40.0, [30.0, 50.0], 1.0, [0.8, 1.2])
    hot = row("ar", 1.0, 45.0, [35.0, 60.0], 0.5, [0.3, 0.7])
    ddpm = row("ddpm", None, None, None, 0.0, [0.0, 0.0])
    rows = [cold, hot, ddpm]
    assert _comparisons(cold, rows) == ""
    assert _comparisons(hot, rows) == (f"PPL-OCR vs ar T=0.1: {NO_DIFFERENCE}; "
                                       "words/image lower than ar T=0.1 (worse, intervals separate)")
    assert _comparisons(ddpm, rows).startswith("PPL-OCR vs ar T=0.1: n/a; words/image lower than ar T=0.1 (worse")
