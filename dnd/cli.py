"""`python -m dnd <stage>`: one entry point, a subcommand per stage, each usable without Snakemake.

Every stage takes its config subtree either as JSON (`--params`, what the Snakemake rules pass) or
from a config file (`--configfile`, validated against the workflow schema, subtree picked by key).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable

from dnd.config import ConfigError, load_config, subtree
from dnd.logs import setup_logging
from dnd.provenance import write_provenance
from dnd.launch import Interrupted, TrainingTask, run_task
from dnd.workarea import stage_work_dir, start_fresh, work_dir_for

log = logging.getLogger("dnd")
FRESH_ENV = "DND_FRESH"  # DND_FRESH=1 snakemake …: every training job it runs starts at step 0 (like --fresh)
FRESH = ("--fresh", dict(action="store_true", help="start over: remove this run's checkpoints first (else a rerun resumes)"))


class WorkAreaOnly(Exception):
    """Raised by `_work_area` when a command is only asked where its work area is (`dnd clean-work`):
    the folder, or None with the reason when its inputs cannot be read yet."""

    def __init__(self, stage: str, name: str, path: Path | None, reason: str = ""):
        super().__init__(str(path) if path else reason)
        self.stage, self.name, self.path, self.reason = stage, name, path, reason


def _work_area(args: argparse.Namespace, stage: str, name: str, raw: dict[str, Any], inputs: list[Path]) -> Path:
    """`--work-dir` when the command has one and it is given, else work/<stage>/<name>-<hash of the config
    and the inputs' content>: where a stage keeps what survives a rerun (the code version is not part of it:
    checkpoints record theirs, and a resume across versions is logged)."""
    given = getattr(args, "work_dir", None)
    if getattr(args, "work_area_only", False):
        try:
            raise WorkAreaOnly(stage, name, Path(given) if given else work_dir_for(stage, name, raw, inputs)[0])
        except OSError as err:  # an input not built yet
            raise WorkAreaOnly(stage, name, None, f"{err.strerror}: {err.filename}") from None
    work = Path(given) if given else stage_work_dir(stage, name, raw, inputs)
    fresh = getattr(args, "fresh", False) or os.environ.get(FRESH_ENV) == "1"
    if fresh and start_fresh(work):
        log.warning("--fresh: removed the checkpoints in %s; training starts at step 0", work)
    return work


def _stage_config(args: argparse.Namespace, default_key: str) -> dict[str, Any]:
    if args.params is not None:
        return json.loads(args.params)
    if args.configfile is not None:
        return subtree(load_config(Path(args.configfile)), args.key or default_key)
    raise ConfigError("give the stage's config with --params JSON or --configfile FILE")


# ----------------------------------------------------------------- stage commands
def cmd_extract_wiki_text(args: argparse.Namespace) -> None:
    from dnd.stages.text_image import WikiTextConfig, extract_wiki_text

    cfg = _stage_config(args, "data.wiki_text")
    # A single streaming pass, in this process (a multistream index would let it fan out; not yet used).
    extract_wiki_text(WikiTextConfig(**cfg), Path(args.out))


def cmd_render_text_images(args: argparse.Namespace) -> None:
    from dnd.stages.text_image import TextImageConfig, render_text_images

    raw = _stage_config(args, "data.text_image")
    work = _work_area(args, "render_text_images", "text_image", raw, [Path(args.chunks)])
    render_text_images(TextImageConfig.from_dict(raw), Path(args.chunks), Path(args.out), work)


def cmd_resize_images(args: argparse.Namespace) -> None:
    from dnd.stages.text_image import ResizeConfig, resize_images

    raw = _stage_config(args, "data.text256")
    cfg = ResizeConfig(size=raw.get("size", 256), splits=tuple(raw.get("splits", ["test"])))
    resize_images(cfg, Path(args.images), Path(args.out))


def cmd_rasterize_pdfs(args: argparse.Namespace) -> None:
    from dnd.stages.arxiv_image import ArxivImageConfig, rasterize_pdfs

    raw = _stage_config(args, "data.arxiv_image")
    if args.pdfs:
        raw = {**raw, "pdfs": args.pdfs}
    inputs = [Path(raw["pdfs"])]
    work = _work_area(args, "rasterize_pdfs", "arxiv_image", raw, inputs)
    rasterize_pdfs(ArxivImageConfig.from_dict(raw), Path(args.out), work)


def cmd_prepare_images(args: argparse.Namespace) -> None:
    from dnd.stages.classes import ClassesConfig, prepare_images

    raw = _stage_config(args, "data.classes")
    if args.root:
        raw = {**raw, "root": args.root}
    inputs = [Path(raw["root"])]
    work = _work_area(args, "prepare_images", "classes", raw, inputs)
    prepare_images(ClassesConfig.from_dict(raw), Path(args.out), work)


def cmd_write_demo_pdfs(args: argparse.Namespace) -> None:
    from dnd.data.demo_pdfs import write_demo_pdfs

    raw = _stage_config(args, "demo.pdfs")
    paths = write_demo_pdfs(Path(args.out), n=raw.get("count", 6), seed=raw.get("seed", 0))
    log.info("wrote %d demo PDFs to %s", len(paths), args.out)


def cmd_write_demo_digits(args: argparse.Namespace) -> None:
    from dnd.data.labelled import write_digits_image_folder

    raw = _stage_config(args, "demo.digits")
    write_digits_image_folder(Path(args.out), per_class=raw.get("per_class"), upscale_to=raw.get("size", 32))
    log.info("wrote the digits image folder to %s", args.out)


def cmd_train_tokenizer(args: argparse.Namespace) -> None:
    from dnd.tokenizer.train import TokenizerSpec, train_tokenizer

    raw = _stage_config(args, f"tokenizers.{args.name}")
    datasets = [Path(d) for d in args.datasets]
    work = _work_area(args, "train_tokenizer", args.name, raw, datasets)
    spec = TokenizerSpec.from_dict(args.name, raw)
    task = TrainingTask(train_tokenizer, (spec, datasets, Path(args.out), work), work, code_version=args.code_version)
    run_task("train_tokenizer", task, work)


def cmd_evaluate_reconstruction(args: argparse.Namespace) -> None:
    from dnd.stages.recon import ORIGINAL, ReconEvalConfig, evaluate_reconstruction

    raw = _stage_config(args, "evaluation")
    cfg = ReconEvalConfig.from_dict(raw.get("recon", {}), raw.get("metrics", {}))
    tokenizer = None if args.tokenizer == ORIGINAL else Path(args.tokenizer)
    names = {"tokenizer": args.tokenizer_name or (ORIGINAL if tokenizer is None else tokenizer.parent.name),
             "testset": args.testset_name or Path(args.testset).name}
    work = _work_area(args, "evaluate_reconstruction", f"{names['tokenizer']}-{names['testset']}", raw, [Path(args.testset), *([tokenizer] if tokenizer else [])])
    run_task("evaluate_reconstruction", partial(evaluate_reconstruction, tokenizer, Path(args.testset), Path(args.out), cfg, names), work)


def cmd_evaluate_vae_reconstruction(args: argparse.Namespace) -> None:
    from dnd.stages.recon import ReconEvalConfig
    from dnd.stages.vae_recon import CONFIG_KEY, ReferenceVAEConfig, check_vae_folder, evaluate_vae_reconstruction

    raw = _stage_config(args, "evaluation")
    recon = raw.get("recon", {})
    # --params carries this VAE's entry as "vae" (the rule's rerun trigger); a config file lists them all.
    vae = raw.get("vae") or recon.get("reference_vaes", {}).get(args.vae_name)
    if vae is None:
        raise ConfigError(f"config key {CONFIG_KEY}.{args.vae_name} is missing")
    vae_cfg = ReferenceVAEConfig(**vae)
    folder = check_vae_folder(args.vae_name, vae_cfg)  # before fingerprinting it: a clear error if it is not there
    cfg = ReconEvalConfig.from_dict(recon, raw.get("metrics", {}))
    testset_name = args.testset_name or Path(args.testset).name
    work = _work_area(args, "evaluate_vae_reconstruction", f"{args.vae_name}-{testset_name}", raw, [Path(args.testset), folder])
    run_task("evaluate_vae_reconstruction", partial(
        evaluate_vae_reconstruction, args.vae_name, vae_cfg, Path(args.testset), Path(args.out), cfg, testset_name), work)


def cmd_tokenize_images(args: argparse.Namespace) -> None:
    from dnd.stages.tokenize import tokenize_images

    raw = {"tokenizer": args.tokenizer, "dataset": args.dataset, "batch_size": args.batch_size, "ten_crop_scale": args.ten_crop_scale}
    inputs = [Path(args.tokenizer), Path(args.dataset)]
    work = _work_area(args, "tokenize_images", Path(args.tokenizer).parent.name, raw, inputs)
    tokenize_images(Path(args.tokenizer), Path(args.tokenizer).parent.name, Path(args.dataset), Path(args.out), work, args.batch_size,
                    args.ten_crop_scale)


def cmd_make_table1(args: argparse.Namespace) -> None:
    from dnd.report.table1 import write_table1

    raw = _stage_config(args, f"tables.{args.table}")
    metrics = [Path(m) for m in args.metrics]
    frame = write_table1(args.table, metrics, raw, Path(args.out))
    write_provenance(Path(args.out), f"make_{args.table}", raw, metrics=[str(m) for m in metrics])
    print(frame.to_string(index=False))


def cmd_train_transformer(args: argparse.Namespace) -> None:
    from dnd.transformer.train import TransformerSpec, train_transformer

    raw = _stage_config(args, f"transformers.{args.name}")
    inputs = [Path(args.codes), Path(args.tokenizer)]
    work = _work_area(args, "train_transformer", args.name, raw, inputs)
    spec = TransformerSpec.from_dict(args.name, raw)
    task = TrainingTask(train_transformer, (spec, Path(args.codes), Path(args.out), work, Path(args.tokenizer)), work,
                        code_version=args.code_version)
    run_task("train_transformer", task, work)


def cmd_sample(args: argparse.Namespace) -> None:
    from dnd.stages.sample import SampleSpec, sample_images

    raw = _stage_config(args, f"sampling.{args.sampling_name}")
    inputs = [Path(args.model), Path(args.tokenizer)]
    work = _work_area(args, "sample_images", f"{args.model_name}-{args.sampling_name}", raw, inputs)
    names = {"model": args.model_name, "sampling": args.sampling_name}
    sample_images(Path(args.model), Path(args.tokenizer), SampleSpec.from_dict(raw), Path(args.out), work, names)


def cmd_compute_reference(args: argparse.Namespace) -> None:
    from dnd.stages.gen_eval import ReferenceConfig, compute_reference

    raw = _stage_config(args, "evaluation")
    cfg = ReferenceConfig.from_dict(raw.get("reference", {}), raw.get("metrics", {}))
    work = _work_area(args, "compute_reference", Path(args.source).name, raw, [Path(args.source)])
    run_task("compute_reference", partial(compute_reference, Path(args.source), Path(args.out), cfg), work)


def cmd_train_classifier(args: argparse.Namespace) -> None:
    from dnd.metrics.classifier import ClassifierConfig
    from dnd.metrics.classifier_train import train_classifier

    raw = _stage_config(args, "evaluation.classifier")
    work = _work_area(args, "train_classifier", Path(args.dataset).name, raw, [Path(args.dataset)])
    task = TrainingTask(train_classifier, (Path(args.dataset), Path(args.out), ClassifierConfig(**raw), work), work,
                        code_version=args.code_version)
    run_task("train_classifier", task, work)


def cmd_evaluate_generation(args: argparse.Namespace) -> None:
    from dnd.stages.gen_eval import GenEvalConfig, evaluate_generation

    raw = _stage_config(args, "evaluation")
    cfg = GenEvalConfig.from_dict(raw.get("generation", {}), raw.get("metrics", {}))
    inputs = [Path(args.samples), Path(args.reference), *([Path(args.classifier)] if args.classifier else [])]
    work = _work_area(args, "evaluate_generation", Path(args.samples).name, raw, inputs)
    classifier = Path(args.classifier) if args.classifier else None
    run_task("evaluate_generation", partial(evaluate_generation, Path(args.samples), Path(args.reference), classifier, Path(args.out), cfg), work)


def cmd_make_generation_table(args: argparse.Namespace) -> None:
    from dnd.report.generation import write_generation_table

    raw = _stage_config(args, f"tables.{args.table}")
    frame, extra = write_generation_table(args.table, [Path(m) for m in args.metrics], raw, Path(args.out))
    write_provenance(Path(args.out), f"make_{args.table}", raw, **extra)
    print(frame.to_string(index=False))
    if "order_note" in extra:
        print(extra["order_note"])


def cmd_fit_language_model(args: argparse.Namespace) -> None:
    from dnd.metrics.ppl import LMConfig, fit_ngram_on_dataset

    raw = _stage_config(args, "richtext.language_model")
    work = _work_area(args, "fit_language_model", Path(args.dataset).name, raw, [Path(args.dataset)])
    run_task("fit_language_model", partial(fit_ngram_on_dataset, LMConfig(**raw), Path(args.dataset), Path(args.out)), work)


def cmd_train_ddpm(args: argparse.Namespace) -> None:
    from dnd.baselines.ddpm import DDPMConfig, train_ddpm

    raw = _stage_config(args, f"ddpm.{args.name}")
    datasets = [Path(d) for d in args.datasets]
    work = _work_area(args, "train_ddpm", args.name, raw, datasets)
    cfg = DDPMConfig.from_dict({k: v for k, v in raw.items() if k not in ("data", "sampling")})
    task = TrainingTask(train_ddpm, (cfg, datasets, Path(args.out), work), work, code_version=args.code_version, name=args.name)
    run_task("train_ddpm", task, work)


def cmd_sample_ddpm(args: argparse.Namespace) -> None:
    from dnd.baselines.ddpm import DDPMSamplingConfig
    from dnd.baselines.ddpm_samples import sample_ddpm_images

    raw = _stage_config(args, f"ddpm.{args.name}.sampling")
    cfg = DDPMSamplingConfig(**raw)
    work = _work_area(args, "sample_ddpm", args.name, raw, [Path(args.model)])
    sample = partial(sample_ddpm_images, Path(args.model), cfg.n, cfg.seed, cfg.batch_size, cfg.num_inference_steps,
                     Path(args.out), {"model": args.name, "sampling": "ddpm"})
    run_task("sample_ddpm", sample, work)


def cmd_sample_pipeline(args: argparse.Namespace) -> None:
    from dnd.stages.pipeline_samples import PipelineSpec, check_pipeline_folder, sample_pipeline_images

    raw = _stage_config(args, f"richtext.pipelines.{args.name}")
    spec = PipelineSpec(**raw)
    folder = check_pipeline_folder(args.name, spec)  # before fingerprinting it: a clear error if it is not there
    work = _work_area(args, "sample_pipeline", args.name, raw, [folder])
    sample_pipeline_images(args.name, spec, Path(args.out), work)


def cmd_evaluate_richtext(args: argparse.Namespace) -> None:
    from dnd.metrics.ocr import OCRConfig
    from dnd.metrics.ppl import LMConfig
    from dnd.stages.richtext import evaluate_richtext

    raw = _stage_config(args, "richtext")
    samples = Path(args.samples) if args.samples else None
    reference = Path(args.reference_dataset) if args.reference_dataset else None
    names = {"dataset": raw.get("dataset", "text_image"), **({"model": args.model_name} if args.model_name else {}),
             **({"sampling": args.sampling_name} if args.sampling_name else {})}
    inputs = [p for p in (samples, reference, Path(args.lm)) if p is not None]
    work = _work_area(args, "evaluate_richtext", Path(args.out).stem, raw, inputs)
    run_task("evaluate_richtext", partial(
        evaluate_richtext, samples, reference, Path(args.lm), Path(args.out), LMConfig(**raw.get("language_model", {})),
        OCRConfig(**raw.get("ocr", {})), raw.get("max_images", 250), names), work)


def cmd_make_richtext_table(args: argparse.Namespace) -> None:
    from dnd.report.richtext import write_richtext_table

    raw = _stage_config(args, "richtext")
    metrics = [Path(m) for m in args.metrics]
    frame = write_richtext_table(metrics, [Path(s) for s in args.samples], raw.get("notes", {}), Path(args.out))
    write_provenance(Path(args.out), "make_richtext_table", raw, metrics=[str(m) for m in metrics])
    print(frame.to_string(index=False))


def _planned_commands(args: argparse.Namespace) -> list[list[str]]:
    """The `dnd …` argument lists of every job of the DAG (a forced dry run: Snakemake's own plan)."""
    import shlex
    import subprocess

    cmd = [sys.executable, "-m", "snakemake", "--dry-run", "--forceall", "--printshellcmds", "--cores", "1",
           "--snakefile", args.snakefile, *(["--configfile", args.configfile] if args.configfile else []), *args.targets]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise ConfigError(f"clean-work: the dry run failed: {(run.stderr or run.stdout).strip().splitlines()[-1:]}")
    commands = []
    for line in run.stdout.splitlines():
        if not line.startswith("Shell command: "):
            continue
        words = shlex.split(line[len("Shell command: "):])
        if "dnd" in words:
            rest = words[words.index("dnd") + 1:]
            commands.append(rest[: rest.index(">")] if ">" in rest else rest)
    return commands


def cmd_clean_work(args: argparse.Namespace) -> None:
    import inspect
    import shutil

    from dnd.workarea import folder_size, work_folders, work_root

    root = work_root()
    current: set[Path] = set()
    undecided: dict[tuple[str, str], str] = {}
    parser = build_parser()
    for argv in _planned_commands(args):
        job = parser.parse_args(argv)
        if "_work_area(" not in inspect.getsource(job.func):
            continue  # a stage without a work area
        job.work_area_only = True
        try:
            job.func(job)
        except WorkAreaOnly as found:
            if found.path is not None:
                current.add(found.path.resolve())
            else:
                undecided[(found.stage, found.name)] = found.reason
    orphans, kept = [], 0
    for folder in work_folders(root):
        stage, name = folder.parent.name, folder.name.rsplit("-", 1)[0]
        if folder.resolve() in current:
            kept += 1
        elif (stage, name) in undecided:
            kept += 1
            log.info("kept %s: its inputs are not built yet (%s)", folder, undecided[(stage, name)])
        else:
            orphans.append(folder)
    total = 0
    for folder in orphans:
        size = folder_size(folder)
        total += size
        print(f"{'removed' if args.delete else 'would remove'} {folder} ({size / 2**20:.1f} MiB)")
        if args.delete:
            shutil.rmtree(folder)
    print(f"{len(orphans)} work folder(s) no current config points to ({total / 2**20:.1f} MiB), {kept} in use"
          + ("" if args.delete or not orphans else "; rerun with --delete to remove them"))


Command = tuple[str, str, Callable[[argparse.Namespace], None], list[tuple[str, dict[str, Any]]]]
COMMANDS: list[Command] = [
    (
        "extract-wiki-text",
        "Stream a MediaWiki dump, clean wikitext to prose with mwparserfromhell, write chunks (Parquet).",
        cmd_extract_wiki_text,
        [("--out", dict(required=True, help="output chunks .parquet"))],
    ),
    (
        "render-text-images",
        "Render prose chunks on pages with Pillow into sharded Parquet (the Text-Image set).",
        cmd_render_text_images,
        [
            ("--chunks", dict(required=True, help="chunks .parquet from extract-wiki-text")),
            ("--out", dict(required=True, help="output data set folder")),
            ("--work-dir", dict(help="where finished shards are kept between runs (default: work/<stage>/<name>-<config hash>)")),
        ],
    ),
    (
        "resize-images",
        "Resize the test split of an image data set (Text512 → Text256).",
        cmd_resize_images,
        [
            ("--images", dict(required=True, help="input data set folder")),
            ("--out", dict(required=True, help="output data set folder")),
        ],
    ),
    (
        "rasterize-pdfs",
        "Rasterize PDF pages with PyMuPDF into crops + their clipped text layer (the arXiv-Image set).",
        cmd_rasterize_pdfs,
        [
            ("--pdfs", dict(help="folder of PDFs or list file (default: the config's data.arxiv_image.pdfs)")),
            ("--out", dict(required=True, help="output data set folder")),
            ("--work-dir", dict(help="where finished shards are kept between runs")),
        ],
    ),
    (
        "prepare-images",
        "An ImageFolder tree (one folder per class) into sharded Parquet with labels.",
        cmd_prepare_images,
        [
            ("--root", dict(help="ImageFolder root (default: the config's data.classes.root)")),
            ("--out", dict(required=True, help="output data set folder")),
            ("--work-dir", dict(help="where finished shards are kept between runs")),
        ],
    ),
    (
        "write-demo-pdfs",
        "Generate arXiv-like demo PDFs from the project's own prose (nothing is downloaded).",
        cmd_write_demo_pdfs,
        [("--out", dict(required=True, help="output folder of PDFs"))],
    ),
    (
        "write-demo-digits",
        "Write scikit-learn's bundled digits as an ImageFolder tree (the demo's labelled set).",
        cmd_write_demo_digits,
        [("--out", dict(required=True, help="output ImageFolder root"))],
    ),
    (
        "train-tokenizer",
        "Train an RQ-VAE tokenizer (resumable: checkpoints in the work area, resume on rerun).",
        cmd_train_tokenizer,
        [
            ("--name", dict(required=True, help="the tokenizer's name (key under tokenizers: in the config)")),
            ("--datasets", dict(required=True, nargs="+", help="image data set folders to train on (train split; val for validation)")),
            ("--out", dict(required=True, help="output model.pt")),
            ("--work-dir", dict(help="checkpoints, TensorBoard logs and recon grids (default: work/train_tokenizer/<name>-<hash>)")),
            FRESH,
        ],
    ),
    (
        "evaluate-reconstruction",
        "L2, code usage per depth, rOCR and rFID of a tokenizer on a test split.",
        cmd_evaluate_reconstruction,
        [
            ("--tokenizer", dict(required=True, help="model.pt of a trained tokenizer, or 'original' (no tokenizer: OCR ceiling)")),
            ("--testset", dict(required=True, help="image data set folder (its test split is used)")),
            ("--tokenizer-name", dict(help="row name in the tables")),
            ("--testset-name", dict(help="test set name in the tables")),
            ("--out", dict(required=True, help="output metrics .json (a recon grid .png is written beside it)")),
        ],
    ),
    (
        "evaluate-vae-reconstruction",
        "L2, rOCR and rFID of a pretrained continuous VAE (a local diffusers AutoencoderKL) on a test split.",
        cmd_evaluate_vae_reconstruction,
        [
            ("--vae-name", dict(required=True, help="key under evaluation.recon.reference_vaes: (the row name in the tables)")),
            ("--testset", dict(required=True, help="image data set folder (its test split is used)")),
            ("--testset-name", dict(help="test set name in the tables")),
            ("--out", dict(required=True, help="output metrics .json (a recon grid .png is written beside it)")),
        ],
    ),
    (
        "tokenize-images",
        "Encode every split of an image data set into Arrow code maps (fixed_size_list<uint16>).",
        cmd_tokenize_images,
        [
            ("--tokenizer", dict(required=True, help="model.pt of a trained tokenizer")),
            ("--dataset", dict(required=True, help="image data set folder")),
            ("--out", dict(required=True, help="output code-map folder")),
            ("--batch-size", dict(type=int, default=32, help="images per encoder batch")),
            ("--ten-crop-scale", dict(type=float, default=None,
                                      help="tokenize the train split as ten crops of the images resized by this factor (e.g. 1.1)")),
            ("--work-dir", dict(help="where finished code shards are kept between runs")),
        ],
    ),
    (
        "make-table1",
        "Write Table 1a or 1b (CSV + PNG plot + recon grids) from reconstruction metrics.",
        cmd_make_table1,
        [
            ("--table", dict(required=True, choices=["table1a", "table1b"])),
            ("--metrics", dict(required=True, nargs="+", help="metrics .json files from evaluate-reconstruction")),
            ("--out", dict(required=True, help="output .csv")),
        ],
    ),
    (
        "train-transformer",
        "Train a DnD-Transformer (or the 1d / parallel / vertical baselines) on Arrow code maps (resumable).",
        cmd_train_transformer,
        [
            ("--name", dict(required=True, help="the model's name (key under transformers: in the config)")),
            ("--codes", dict(required=True, help="code-map folder from tokenize-images (train and val splits)")),
            ("--tokenizer", dict(required=True, help="the tokenizer's model.pt (decodes sample grids during training)")),
            ("--out", dict(required=True, help="output model.pt")),
            ("--work-dir", dict(help="checkpoints and TensorBoard logs (default: work/train_transformer/<name>-<hash>)")),
            FRESH,
        ],
    ),
    (
        "sample",
        "Sample images with the KV cache (CFG, temperature, top-k/p), decode them; PNGs + an ADM-style .npz.",
        cmd_sample,
        [
            ("--model", dict(required=True, help="a trained transformer's model.pt")),
            ("--tokenizer", dict(required=True, help="its tokenizer's model.pt")),
            ("--model-name", dict(required=True, help="name of the model in summaries and tables")),
            ("--sampling-name", dict(required=True, help="key under sampling: in the config")),
            ("--out", dict(required=True, help="output folder")),
            ("--work-dir", dict(help="where finished sample shards are kept between runs")),
        ],
    ),
    (
        "compute-reference",
        "Reference Inception statistics of a data set's training split (or of an ADM reference .npz).",
        cmd_compute_reference,
        [
            ("--source", dict(required=True, help="image data set folder, or an ADM reference batch .npz")),
            ("--out", dict(required=True, help="output reference .npz")),
        ],
    ),
    (
        "train-classifier",
        "Train the small CNN whose accuracy on samples is the demo's weight-free generation metric.",
        cmd_train_classifier,
        [
            ("--dataset", dict(required=True, help="class-labelled data set folder")),
            ("--out", dict(required=True, help="output classifier .pt")),
            FRESH,
        ],
    ),
    (
        "evaluate-generation",
        "FID / IS / precision / recall (n/a without Inception weights) and classifier accuracy of a sample set.",
        cmd_evaluate_generation,
        [
            ("--samples", dict(required=True, help="samples folder from `sample`")),
            ("--reference", dict(required=True, help="reference .npz from compute-reference")),
            ("--classifier", dict(help="classifier .pt from train-classifier (optional)")),
            ("--out", dict(required=True, help="output metrics .json")),
        ],
    ),
    (
        "make-generation-table",
        "Write Table 2 (models × cfg) or Table 3 (the four variants) with a plot.",
        cmd_make_generation_table,
        [
            ("--table", dict(required=True, choices=["table2", "table3"])),
            ("--metrics", dict(required=True, nargs="+", help="metrics .json files from evaluate-generation")),
            ("--out", dict(required=True, help="output .csv")),
        ],
    ),
    (
        "fit-language-model",
        "Fit the offline PPL-OCR language model (word n-gram, nltk) on a data set's training text.",
        cmd_fit_language_model,
        [
            ("--dataset", dict(required=True, help="Text-Image data set folder (its train split's text)")),
            ("--out", dict(required=True, help="output .pkl")),
        ],
    ),
    (
        "train-ddpm",
        "Train the pixel-space DDPM baseline (diffusers UNet2DModel + DDPMScheduler), resumable.",
        cmd_train_ddpm,
        [
            ("--name", dict(required=True, help="key under ddpm: in the config")),
            ("--datasets", dict(required=True, nargs="+", help="image data set folders (train split)")),
            ("--out", dict(required=True, help="output model.pt")),
            ("--work-dir", dict(help="checkpoints (default: work/train_ddpm/<name>-<hash>)")),
            FRESH,
        ],
    ),
    (
        "sample-ddpm",
        "Sample the DDPM baseline into the same samples-folder format as `sample`.",
        cmd_sample_ddpm,
        [
            ("--name", dict(required=True, help="key under ddpm: in the config")),
            ("--model", dict(required=True, help="the DDPM's model.pt")),
            ("--out", dict(required=True, help="output samples folder")),
        ],
    ),
    (
        "sample-pipeline",
        "Sample a pretrained diffusers pipeline (a local folder, e.g. fine-tuned SDXL / SD3) into the samples-folder format.",
        cmd_sample_pipeline,
        [
            ("--name", dict(required=True, help="key under richtext.pipelines: in the config (the row name)")),
            ("--out", dict(required=True, help="output samples folder")),
            ("--work-dir", dict(help="where finished sample shards are kept between runs")),
        ],
    ),
    (
        "evaluate-richtext",
        "PPL-OCR of a samples folder (or of the training images: the reference row).",
        cmd_evaluate_richtext,
        [
            ("--samples", dict(help="samples folder (from `sample` or `sample-ddpm`)")),
            ("--reference-dataset", dict(help="instead of --samples: score this data set's training images")),
            ("--lm", dict(required=True, help="fitted language model .pkl")),
            ("--model-name", dict(help="row name")),
            ("--sampling-name", dict(help="sampling name")),
            ("--out", dict(required=True, help="output metrics .json")),
        ],
    ),
    (
        "make-richtext-table",
        "Write results/richtext.csv with the PPL-OCR-by-temperature figure and sample grids.",
        cmd_make_richtext_table,
        [
            ("--metrics", dict(required=True, nargs="+", help="metrics .json files from evaluate-richtext")),
            ("--samples", dict(required=True, nargs="+", help="the samples folders (for the grids figure)")),
            ("--out", dict(required=True, help="output .csv")),
        ],
    ),
]


MAINTENANCE: list[Command] = [
    (
        "clean-work",
        "List (default) or remove (--delete) the work folders no job of the current config's DAG points to.",
        cmd_clean_work,
        [
            ("--snakefile", dict(default="Snakefile", help="the workflow (default: ./Snakefile)")),
            ("--delete", dict(action="store_true", help="remove them (default: a dry run that only lists them)")),
            ("targets", dict(nargs="*", help="Snakemake targets whose jobs count as current (default: the whole DAG)")),
        ],
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dnd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for name, help_text, func, options in COMMANDS + MAINTENANCE:
        stage = sub.add_parser(name, help=help_text, description=help_text)
        source = stage.add_mutually_exclusive_group()
        source.add_argument("--params", help="the stage's config subtree as JSON (what Snakemake passes)")
        source.add_argument("--configfile", help="a config YAML; validated, the stage's subtree is used")
        stage.add_argument("--key", help="dotted key of the subtree in --configfile (default: the stage's own)")
        stage.add_argument("--log", help="append log lines to this file too")
        stage.add_argument("--code-version", help="a hash of the stage's code (the rules pass it): part of the work-area key")
        for flag, kwargs in options:
            stage.add_argument(flag, **kwargs)
        stage.set_defaults(func=func)
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
