"""What each `dnd` subcommand does with its arguments: read its config subtree, find its work area, build
its stage's config dataclass and hand the stage to the launcher. Wiring only: what a stage computes lives
in the module its command imports (which is also what its rerun trigger hashes, `dnd.codeversion`).

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
from typing import Any

from dnd.config import ConfigError, load_config, subtree
from dnd.provenance import write_provenance
from dnd.launch import TrainingTask, run_task
from dnd.workarea import stage_work_dir, start_fresh, work_dir_for

log = logging.getLogger("dnd")
FRESH_ENV = "DND_FRESH"  # DND_FRESH=1 snakemake …: every training job it runs starts at step 0 (like --fresh)


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

    resize_images(ResizeConfig(**_stage_config(args, "data.text256")), Path(args.images), Path(args.out))


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
    inputs = [Path(raw["root"]), *([Path(raw["test_root"])] if raw.get("test_root") else [])]
    work = _work_area(args, "prepare_images", "classes", raw, inputs)
    prepare_images(ClassesConfig.from_dict(raw), Path(args.out), work)


def cmd_write_demo_pdfs(args: argparse.Namespace) -> None:
    from dnd.data.demo_pdfs import DemoPdfsConfig, write_demo_pdfs

    cfg = DemoPdfsConfig(**_stage_config(args, "demo.pdfs"))
    paths = write_demo_pdfs(Path(args.out), n=cfg.count, seed=cfg.seed)
    log.info("wrote %d demo PDFs to %s", len(paths), args.out)


def cmd_write_demo_digits(args: argparse.Namespace) -> None:
    from dnd.data.labelled import DemoDigitsConfig, write_digits_image_folder

    cfg = DemoDigitsConfig(**_stage_config(args, "demo.digits"))
    write_digits_image_folder(Path(args.out), per_class=cfg.per_class, upscale_to=cfg.size)
    log.info("wrote the digits image folder to %s", args.out)


def cmd_write_demo_glyphs(args: argparse.Namespace) -> None:
    from dnd.data.glyphs import DemoGlyphsConfig, write_glyph_image_folder

    cfg = DemoGlyphsConfig(**_stage_config(args, "demo.glyphs"))
    write_glyph_image_folder(Path(args.out), cfg)
    log.info("wrote %d glyph classes × %d images to %s", len(cfg.classes), cfg.per_class, args.out)


def cmd_train_tokenizer(args: argparse.Namespace) -> None:
    from dnd.tokenizer.train import TokenizerSpec, train_tokenizer

    raw = _stage_config(args, f"tokenizers.{args.name}")
    datasets = [Path(d) for d in args.datasets]
    work = _work_area(args, "train_tokenizer", args.name, raw, datasets)
    spec = TokenizerSpec.from_dict(args.name, raw)
    task = TrainingTask(train_tokenizer, (spec, datasets, Path(args.out), work), work, code_version=args.code_version)
    run_task("train_tokenizer", task, work)


def cmd_import_authors_tokenizer(args: argparse.Namespace) -> None:
    from dnd.stages.authors_weights import import_authors_tokenizer

    raw = _stage_config(args, f"tokenizers.{args.name}")
    config_path = raw.get("pretrained_config")
    import_authors_tokenizer(args.name, Path(raw["pretrained"]), Path(args.out), Path(config_path) if config_path else None)


def cmd_evaluate_reconstruction(args: argparse.Namespace) -> None:
    from dnd.stages.recon import ORIGINAL, ReconEvalConfig, evaluate_reconstruction

    raw = _stage_config(args, "evaluation")
    cfg = ReconEvalConfig.from_params(raw)
    tokenizer = None if args.tokenizer == ORIGINAL else Path(args.tokenizer)
    names = {"tokenizer": args.tokenizer_name or (ORIGINAL if tokenizer is None else tokenizer.parent.name),
             "testset": args.testset_name or Path(args.testset).name}
    classifier = Path(args.classifier) if args.classifier else None
    inputs = [Path(args.testset), *([tokenizer] if tokenizer else []), *([classifier] if classifier else [])]
    work = _work_area(args, "evaluate_reconstruction", f"{names['tokenizer']}-{names['testset']}", raw, inputs)
    run_task("evaluate_reconstruction", partial(evaluate_reconstruction, tokenizer, Path(args.testset), Path(args.out), cfg, names,
                                                classifier), work)


def cmd_evaluate_vae_reconstruction(args: argparse.Namespace) -> None:
    from dnd.stages.recon import ReconEvalConfig
    from dnd.stages.vae_recon import ReferenceVAEConfig, check_vae_folder, evaluate_vae_reconstruction

    raw = _stage_config(args, "evaluation")
    # --params carries this VAE's entry as "vae" (the rule's rerun trigger); a config file lists them all.
    vae_cfg = ReferenceVAEConfig.from_params(raw, args.vae_name)
    folder = check_vae_folder(args.vae_name, vae_cfg)  # before fingerprinting it: a clear error if it is not there
    cfg = ReconEvalConfig.from_params(raw)
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


def cmd_import_authors_transformer(args: argparse.Namespace) -> None:
    from dnd.stages.authors_weights import import_authors_transformer

    raw = _stage_config(args, f"transformers.{args.name}")
    import_authors_transformer(args.name, Path(raw["pretrained"]), Path(args.out), Path(args.tokenizer), raw.get("model", {}))


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
    cfg = ReferenceConfig.from_params(raw)
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
    cfg = GenEvalConfig.from_params(raw)
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


def cmd_plot_val_loss(args: argparse.Namespace) -> None:
    from dnd.report.common import VARIANT_ORDER
    from dnd.report.training_curves import write_val_loss

    spec = _stage_config(args, "tables.table3")
    variant_of = {model: variant for variant, model in spec["models"].items()}
    paths = {Path(path).parent.name: Path(path) for path in args.histories}  # results/transformers/<model>/val_history.csv
    unknown = sorted(set(paths) - set(variant_of))
    if unknown:
        raise ConfigError(f"validation histories of models that are not in tables.table3.models: {unknown}")
    order = [v for v in VARIANT_ORDER if v in spec["models"]] + [v for v in spec["models"] if v not in VARIANT_ORDER]
    histories = {v: (spec["models"][v], paths[spec["models"][v]]) for v in order if spec["models"][v] in paths}
    table = write_val_loss(histories, Path(args.out))
    write_provenance(Path(args.out), "plot_val_loss", spec, histories={v: str(p) for v, (_, p) in histories.items()})
    print(table.groupby(["variant", "weights", "depth"])["loss"].agg(["first", "last", "min"]).to_string())


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
    from dnd.metrics.bootstrap import BootstrapSettings
    from dnd.stages.richtext import RichTextEvalConfig, evaluate_richtext

    raw = _stage_config(args, "richtext")
    cfg = RichTextEvalConfig.from_params(raw)
    samples = Path(args.samples) if args.samples else None
    reference = Path(args.reference_dataset) if args.reference_dataset else None
    names = {"dataset": cfg.dataset, **({"model": args.model_name} if args.model_name else {}),
             **({"sampling": args.sampling_name} if args.sampling_name else {})}
    inputs = [p for p in (samples, reference, Path(args.lm)) if p is not None]
    work = _work_area(args, "evaluate_richtext", Path(args.out).stem, raw, inputs)
    run_task("evaluate_richtext", partial(evaluate_richtext, samples, reference, Path(args.lm), Path(args.out),
                                          cfg.language_model, cfg.ocr, cfg.max_images, names,
                                          BootstrapSettings(resamples=cfg.bootstrap_resamples, seed=cfg.bootstrap_seed)), work)


def cmd_make_richtext_table(args: argparse.Namespace) -> None:
    from dnd.report.richtext import write_richtext_table

    raw = _stage_config(args, "richtext")
    metrics = [Path(m) for m in args.metrics]
    frame = write_richtext_table(metrics, [Path(s) for s in args.samples], raw, Path(args.out),
                                 [Path(b) for b in args.benchmarks or []])
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
    from dnd.cli import build_parser

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
