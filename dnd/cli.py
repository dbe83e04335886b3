"""`python -m dnd <stage>`: one entry point, a subcommand per stage, each usable without Snakemake.

This module is the table of contents: one registry entry per stage (its name, what it does, its
options); `build_parser` generates the subcommands from it. What a command does with its arguments
is in `dnd.commands`; what a stage computes, in the module that command imports.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

from dnd import commands as c
from dnd.config import ConfigError
from dnd.launch import Interrupted
from dnd.logs import setup_logging

log = logging.getLogger("dnd")
Option = tuple[str, dict[str, Any]]


class Stage(NamedTuple):
    name: str  # the subcommand
    help: str
    run: Callable[[argparse.Namespace], None]
    options: list[Option]


def required(flag: str, help: str, **kwargs: Any) -> Option:
    return flag, dict(required=True, help=help, **kwargs)


def optional(flag: str, help: str, **kwargs: Any) -> Option:
    return flag, dict(help=help, **kwargs)


OUT_DATASET = required("--out", "output data set folder")
WORK_DIR = optional("--work-dir", "where resumable state is kept between runs (default: work/<stage>/<name>-<hash>)")
FRESH = ("--fresh", dict(action="store_true", help="start over: remove this run's checkpoints first (else a rerun resumes)"))
NAME = required("--name", "the config name (the key under its section of the config)")
TABLE_METRICS = required("--metrics", "metrics .json files of the table's rows", nargs="+")
OUT_CSV = required("--out", "output .csv (its figures are written beside it)")

COMMANDS: list[Stage] = [
    # ---- data sets
    Stage("extract-wiki-text", "Stream a MediaWiki dump, clean wikitext to prose with mwparserfromhell, write chunks (Parquet).",
          c.cmd_extract_wiki_text, [required("--out", "output chunks .parquet")]),
    Stage("render-text-images", "Render prose chunks on pages with Pillow into sharded Parquet (the Text-Image set).",
          c.cmd_render_text_images, [required("--chunks", "chunks .parquet from extract-wiki-text"), OUT_DATASET, WORK_DIR]),
    Stage("resize-images", "Resize splits of an image data set (Text512 → Text256).",
          c.cmd_resize_images, [required("--images", "input data set folder"), OUT_DATASET]),
    Stage("rasterize-pdfs", "Rasterize PDF pages with PyMuPDF into crops + their clipped text layer (the arXiv-Image set).",
          c.cmd_rasterize_pdfs, [optional("--pdfs", "folder of PDFs or list file (default: data.arxiv_image.pdfs)"), OUT_DATASET, WORK_DIR]),
    Stage("prepare-images", "An ImageFolder tree (one folder per class) into sharded Parquet with labels.",
          c.cmd_prepare_images, [optional("--root", "ImageFolder root (default: data.classes.root)"), OUT_DATASET, WORK_DIR]),
    Stage("write-demo-pdfs", "Generate arXiv-like demo PDFs from the project's own prose (nothing is downloaded).",
          c.cmd_write_demo_pdfs, [required("--out", "output folder of PDFs")]),
    Stage("write-demo-digits", "Write scikit-learn's bundled digits as an ImageFolder tree (the demo's labelled set).",
          c.cmd_write_demo_digits, [required("--out", "output ImageFolder root")]),
    Stage("write-demo-glyphs", "Render confusable capital letters in matplotlib's fonts as an ImageFolder tree (the demo's labelled set).",
          c.cmd_write_demo_glyphs, [required("--out", "output ImageFolder root")]),
    # ---- tokenizers and Table 1
    Stage("train-tokenizer", "Train an RQ-VAE tokenizer (resumable: checkpoints in the work area, resume on rerun).",
          c.cmd_train_tokenizer, [NAME, required("--datasets", "image data set folders (train split; val for validation)", nargs="+"),
                                  required("--out", "output model.pt"), WORK_DIR, FRESH]),
    Stage("import-authors-tokenizer", "Write the authors' released RQ-VAE checkpoint (tokenizers.<name>.pretrained) as model.pt.",
          c.cmd_import_authors_tokenizer, [NAME, required("--out", "output model.pt")]),
    Stage("evaluate-reconstruction", "L2, code usage per depth, rOCR and rFID of a tokenizer on a test split.",
          c.cmd_evaluate_reconstruction,
          [required("--tokenizer", "model.pt of a trained tokenizer, or 'original' (no tokenizer: the OCR ceiling)"),
           required("--testset", "image data set folder (its test split is used)"), optional("--tokenizer-name", "row name in the tables"),
           optional("--testset-name", "test set name in the tables"),
           optional("--classifier", "classifier .pt from train-classifier: its accuracy on the reconstructions (class-labelled test set)"),
           required("--out", "output metrics .json (a recon grid .png beside it)")]),
    Stage("evaluate-vae-reconstruction", "L2, rOCR and rFID of a pretrained continuous VAE (a local diffusers AutoencoderKL) on a test split.",
          c.cmd_evaluate_vae_reconstruction,
          [required("--vae-name", "key under evaluation.recon.reference_vaes (the row name)"),
           required("--testset", "image data set folder (its test split is used)"), optional("--testset-name", "test set name in the tables"),
           required("--out", "output metrics .json (a recon grid .png beside it)")]),
    Stage("tokenize-images", "Encode every split of an image data set into Arrow code maps (fixed_size_list<uint16>).",
          c.cmd_tokenize_images,
          [required("--tokenizer", "model.pt of a trained tokenizer"), required("--dataset", "image data set folder"),
           required("--out", "output code-map folder"), optional("--batch-size", "images per encoder batch", type=int, default=32),
           optional("--ten-crop-scale", "tokenize the train split as ten crops of the images resized by this factor (e.g. 1.1)", type=float),
           WORK_DIR]),
    Stage("make-table1", "Write Table 1a or 1b (CSV + bar plot + recon grids) from reconstruction metrics.",
          c.cmd_make_table1, [required("--table", "which table", choices=["table1a", "table1b"]), TABLE_METRICS, OUT_CSV]),
    # ---- DnD-Transformers
    Stage("train-transformer", "Train a DnD-Transformer (or the 1d / parallel / vertical baselines) on Arrow code maps (resumable).",
          c.cmd_train_transformer,
          [NAME, required("--codes", "code-map folder from tokenize-images (train and val splits)"),
           required("--tokenizer", "the tokenizer's model.pt (decodes sample grids during training)"),
           required("--out", "output model.pt"), WORK_DIR, FRESH]),
    Stage("import-authors-transformer", "Write the authors' released DnD-Transformer checkpoint (transformers.<name>.pretrained) as model.pt.",
          c.cmd_import_authors_transformer,
          [NAME, required("--tokenizer", "the tokenizer's model.pt (its depth and codebook must match)"), required("--out", "output model.pt")]),
    Stage("sample", "Sample images with the KV cache (CFG, temperature, top-k/p), decode them; PNGs + an ADM-style .npz.",
          c.cmd_sample,
          [required("--model", "a trained transformer's model.pt"), required("--tokenizer", "its tokenizer's model.pt"),
           required("--model-name", "the model's name in summaries and tables"), required("--sampling-name", "key under sampling:"),
           required("--out", "output samples folder"), WORK_DIR]),
    # ---- class-conditional evaluation: Tables 2 and 3
    Stage("compute-reference", "Reference Inception statistics of a data set's training split (or of an ADM reference .npz).",
          c.cmd_compute_reference, [required("--source", "image data set folder, or an ADM reference batch .npz"),
                                    required("--out", "output reference .npz")]),
    Stage("train-classifier", "Train the small CNN whose accuracy on samples is the demo's weight-free generation metric.",
          c.cmd_train_classifier, [required("--dataset", "class-labelled data set folder"), required("--out", "output classifier .pt"), FRESH]),
    Stage("evaluate-generation", "FID / IS / precision / recall (n/a without Inception weights) and classifier accuracy of a sample set.",
          c.cmd_evaluate_generation,
          [required("--samples", "samples folder from `sample`"), required("--reference", "reference .npz from compute-reference"),
           optional("--classifier", "classifier .pt from train-classifier"), required("--out", "output metrics .json")]),
    Stage("make-generation-table", "Write Table 2 (models × cfg) or Table 3 (the four variants) with a plot.",
          c.cmd_make_generation_table, [required("--table", "which table", choices=["table2", "table3"]), TABLE_METRICS, OUT_CSV]),
    Stage("plot-val-loss", "Validation loss per depth against steps of Table 3's variants (their val_history.csv): a CSV and a figure.",
          c.cmd_plot_val_loss, [required("--histories", "val_history.csv files of the trained Table 3 models (none: an empty figure)", nargs="*"), OUT_CSV]),
    # ---- rich-text generation
    Stage("fit-language-model", "Fit the offline PPL-OCR language model (word n-gram, nltk) on a data set's training text.",
          c.cmd_fit_language_model, [required("--dataset", "Text-Image data set folder (its train split's text)"),
                                     required("--out", "output .pkl")]),
    Stage("train-ddpm", "Train the pixel-space DDPM baseline (diffusers UNet2DModel + DDPMScheduler), resumable.",
          c.cmd_train_ddpm, [NAME, required("--datasets", "image data set folders (train split)", nargs="+"),
                             required("--out", "output model.pt"), WORK_DIR, FRESH]),
    Stage("sample-ddpm", "Sample the DDPM baseline into the same samples-folder format as `sample`.",
          c.cmd_sample_ddpm, [NAME, required("--model", "the DDPM's model.pt"), required("--out", "output samples folder")]),
    Stage("sample-pipeline", "Sample a local diffusers pipeline (e.g. fine-tuned SDXL / SD3) into the samples-folder format.",
          c.cmd_sample_pipeline, [required("--name", "key under richtext.pipelines (the row name)"),
                                  required("--out", "output samples folder"), WORK_DIR]),
    Stage("evaluate-richtext", "PPL-OCR of a samples folder (or of the training images: the reference row).",
          c.cmd_evaluate_richtext,
          [optional("--samples", "samples folder (from `sample`, `sample-ddpm` or `sample-pipeline`)"),
           optional("--reference-dataset", "instead of --samples: score this data set's training images"),
           required("--lm", "fitted language model .pkl"), optional("--model-name", "row name"),
           optional("--sampling-name", "sampling name"), required("--out", "output metrics .json")]),
    Stage("make-richtext-table", "Write results/richtext.csv with the PPL-OCR-by-temperature figure and sample grids.",
          c.cmd_make_richtext_table, [TABLE_METRICS, required("--samples", "the samples folders (for the grids figure)", nargs="+"),
                                      optional("--benchmarks", "the trainings' Snakemake benchmark files (<model>.tsv): "
                                               "the table's training-time columns", nargs="*"),
                                      OUT_CSV]),
]

MAINTENANCE: list[Stage] = [
    Stage("clean-work", "List (default) or remove (--delete) the work folders no job of the current config's DAG points to.",
          c.cmd_clean_work,
          [optional("--snakefile", "the workflow (default: ./Snakefile)", default="Snakefile"),
           ("--delete", dict(action="store_true", help="remove them (default: a dry run that only lists them)")),
           ("targets", dict(nargs="*", help="Snakemake targets whose jobs count as current (default: the whole DAG)"))]),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dnd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for stage in COMMANDS + MAINTENANCE:
        command = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        source = command.add_mutually_exclusive_group()
        source.add_argument("--params", help="the stage's config subtree as JSON (what Snakemake passes)")
        source.add_argument("--configfile", help="a config YAML; validated, the stage's subtree is used")
        command.add_argument("--key", help="dotted key of the subtree in --configfile (default: the stage's own)")
        command.add_argument("--log", help="append log lines to this file too")
        command.add_argument("--code-version", help="the version of the stage's code (the rules pass it): recorded in checkpoints")
        for flag, kwargs in stage.options:
            command.add_argument(flag, **kwargs)
        command.set_defaults(func=stage.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(Path(args.log) if args.log else None)
    try:
        args.func(args)
    except ConfigError as err:
        print(f"dnd {args.command}: {err}", file=sys.stderr)
        return 2
    except Interrupted as stopped:  # checkpointed on a signal: the exit status says which, a rerun resumes
        log.warning("%s", stopped)
        return 128 + (stopped.signals[0] if stopped.signals else 15)
    return 0
