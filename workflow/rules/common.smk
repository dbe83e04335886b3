# Shared helpers: config validation, the launch settings hand-off, rerun triggers.

import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

# The dnd package lives beside this workflow; make it importable without installing it.
sys.path.insert(0, str(Path(workflow.basedir)))
from dnd.codeversion import command_code_version as _command_code_version  # noqa: E402
from dnd.config import check_config  # noqa: E402
from dnd.launch.settings import restore_launch_types  # noqa: E402

SCHEMA = "../schemas/config.schema.yaml"

# A profile's `config:` (the slurm profile sets `launch:`) arrives as strings: restore the types.
if "launch" in config:
    config["launch"] = restore_launch_types(config["launch"])

# One-line error naming the key first, then Snakemake's own validation (which fills defaults).
check_config(config)
validate(config, SCHEMA, set_default=True)

# How stages run reaches them through the environment, never through params: changing resources
# or the backend reruns nothing.
os.environ.update(DND_LAUNCH=json.dumps(config.get("launch", {"backend": "local"}), sort_keys=True))

# Rules run the `dnd` command of the environment Snakemake runs in (./.venv or a conda env), activated
# or not; with --use-conda, envs/dnd.yaml provides it instead.
shell.prefix(f"set -euo pipefail; export PATH={shlex.quote(str(Path(sys.executable).parent))}:\"$PATH\"; ")


def all_cores(wildcards):
    """`threads:` of the sharded local stages: every core Snakemake was given. A function, so that it is asked
    only when a job is scheduled: `snakemake --unlock` (which takes no --cores) parses the rules too."""
    return workflow.cores


def stage_params(dotted):
    """The config subtree a rule depends on, as shell-quoted JSON for `--params`.

    In `params:` it is also the rerun trigger: editing the subtree reruns the rule and what follows,
    editing another stage's subtree (or `launch:`) does not.
    """
    return stage_params_of(lookup(dpath=dotted.replace(".", "/"), within=config, default={}))


def command_code_version(command):
    """The rerun trigger of the jobs that run `dnd <command>`: a hash of the import closure of the dnd modules
    the command runs (dnd.codeversion), less those that only say how it runs (launcher, logging, CLI)."""
    return _command_code_version(command)


# Data sets by name (tokenizers' `train_on`, code maps) and the test sets of the tables.
DATASETS = {
    "text_image": "results/data/text_image",
    "arxiv_image": "results/data/arxiv_image",
    "classes": "results/data/classes",
    "text256": "results/data/text256",
    "text_lines": "results/data/text_lines",
}
TESTSETS = {
    "text256": "results/data/text256",
    "text512": "results/data/text_image",
    "arxiv512": "results/data/arxiv_image",
    "classes": "results/data/classes",
}
ORIGINAL = "original"  # the pseudo-tokenizer of Table 1b's reference row (no tokenizer: the OCR ceiling)


# The authors' released checkpoints (`pretrained:` under tokenizers or transformers) replace training.
AUTHORS_NOTE = "the authors' released weights"


def pretrained(section):
    """Names under `section` (tokenizers / transformers) that load the authors' checkpoint instead of training."""
    return [name for name, spec in config.get(section, {}).items() if spec.get("pretrained")]


def trained(section):
    return [name for name, spec in config.get(section, {}).items() if not spec.get("pretrained")]


def pretrained_files(section, wildcard):
    """Input function: the checkpoint (and a tokenizer's config file, when named) of a pretrained entry."""

    def files(wildcards):
        spec = config[section][getattr(wildcards, wildcard)]
        return [spec["pretrained"], *([spec["pretrained_config"]] if spec.get("pretrained_config") else [])]

    return files


def authors_notes(section, notes):
    """`notes` (row name → note) with the rows of the authors' checkpoints noted as such, after the config's note."""
    notes = dict(notes)
    for name in pretrained(section):
        source = f"{AUTHORS_NOTE} ({Path(config[section][name]['pretrained']).name})"
        notes[name] = f"{notes[name]}; {source}" if notes.get(name) else source
    return notes


def table_params(table):
    """A table's settings (`tables.<table>`), its rows from the authors' checkpoints labelled in its notes."""
    spec = dict(lookup(dpath=f"tables/{table}", within=config, default={}))
    notes = authors_notes("transformers" if table in ("table2", "table3") else "tokenizers", spec.get("notes", {}))
    if notes:
        spec["notes"] = notes
    return stage_params_of(spec)


def tokenizer_params(wildcards):
    return stage_params(f"tokenizers.{wildcards.tokenizer}")


def tokenizer_datasets(wildcards):
    return [DATASETS[name] for name in config["tokenizers"][wildcards.tokenizer]["train_on"]]


def recon_tokenizer(wildcards):
    """The tokenizer file of a reconstruction job; nothing for the 'original' reference row."""
    if wildcards.tokenizer == ORIGINAL:
        return []
    return f"results/tokenizers/{wildcards.tokenizer}/model.pt"


def recon_tokenizer_arg(wildcards, input):
    return input.tokenizer if wildcards.tokenizer != ORIGINAL else ORIGINAL


def recon_metrics(table):
    """Metric files of a Table 1 variant: its rows (then the reference VAEs) × its test sets."""
    spec = config["tables"][table]
    testsets = [spec.get("testset", "classes")] if table == "table1a" else list(spec["columns"])
    rows = list(dict.fromkeys([*spec["rows"], *reference_vaes()]))
    return [f"results/metrics/recon/{row}/{testset}.json" for row in rows for testset in testsets]


def reference_vaes():
    """Pretrained continuous VAEs of Table 1 (evaluation.recon.reference_vaes), name → settings."""
    vaes = config.get("evaluation", {}).get("recon", {}).get("reference_vaes", {})
    clash = sorted(set(vaes) & {*config.get("tokenizers", {}), ORIGINAL})
    if clash:
        raise ValueError(f"evaluation.recon.reference_vaes: {', '.join(clash)} is also a tokenizer's name; rename the VAE")
    return vaes


def recon_tokenizer_pattern():
    """The `tokenizer` wildcard of evaluate_reconstruction: the configured tokenizers and the 'original'
    row (reference VAEs, whose names may not clash with them, have their own rule)."""
    return name_pattern([*config.get("tokenizers", {}), ORIGINAL])


def _recon_settings(testset):
    """evaluation.recon for one test set. Table 1a's test set (rFID, L2, code usage) takes its image count from
    rfid_max_images, the OCR test sets of Table 1b from max_images: each count reruns its own table's cells.
    reference_vaes is left out: adding a VAE must not rerun the tokenizers' evaluations."""
    recon = config.get("evaluation", {}).get("recon", {})
    per_testset = ("reference_vaes", "rfid_max_images", "rocr_reference")
    settings = {key: value for key, value in recon.items() if key not in per_testset}
    if testset == config.get("tables", {}).get("table1a", {}).get("testset", "classes"):
        settings["max_images"] = recon.get("rfid_max_images")
    # rOCR's reference for this test set only: editing arXiv512's reruns no Text256 cell
    settings["ocr_reference"] = recon.get("rocr_reference", {}).get(testset, "text")
    return settings


def evaluation_params(wildcards):
    return stage_params_of({"recon": _recon_settings(wildcards.testset), "metrics": config.get("metrics", {})})


def vae_evaluation_params(wildcards):
    """Like evaluation_params, plus this VAE's own settings (editing another VAE reruns nothing here)."""
    vae = reference_vaes()[wildcards.vae]
    return stage_params_of({"recon": _recon_settings(wildcards.testset), "metrics": config.get("metrics", {}), "vae": vae})


def stage_params_of(obj):
    import shlex

    return shlex.quote(json.dumps(obj, sort_keys=True))


def testset_path(wildcards):
    return TESTSETS[wildcards.testset]


def dataset_path(wildcards):
    return DATASETS[wildcards.dataset]


def ten_crop_arg(wildcards):
    """`--ten-crop-scale S` for the data sets listed in `tokenize.ten_crop` (a rerun trigger per data set)."""
    tokenize = config.get("tokenize", {})
    if wildcards.dataset in tokenize.get("ten_crop", []):
        return f"--ten-crop-scale {tokenize.get('ten_crop_scale', 1.1)}"
    return ""


def transformer_params(wildcards):
    return stage_params(f"transformers.{wildcards.model}")


def sampling_params(wildcards):
    return stage_params(f"sampling.{wildcards.sampling}")


def transformer_tokenizer(wildcards):
    return f"results/tokenizers/{config['transformers'][wildcards.model]['tokenizer']}/model.pt"


def transformer_codes(wildcards):
    spec = config["transformers"][wildcards.model]
    return f"results/codes/{spec['tokenizer']}/{spec['data']}"


def reference_params():
    """What the reference statistics depend on: evaluation.reference and the Inception weights file."""
    return stage_params_of({
        "reference": config.get("evaluation", {}).get("reference", {}),
        "metrics": {"inception_weights": config.get("metrics", {}).get("inception_weights")},
    })


def generation_eval_params():
    evaluation = config.get("evaluation", {})
    return stage_params_of({
        "reference": evaluation.get("reference", {}),
        "generation": evaluation.get("generation", {}),
        "metrics": {"inception_weights": config.get("metrics", {}).get("inception_weights")},
    })


def demo_classifier_input(wildcards):
    """The demo classifier, when the tables ask for its metric (evaluation.generation.demo_classifier)."""
    if config.get("evaluation", {}).get("generation", {}).get("demo_classifier", True):
        return "results/metrics/classifier/classes.pt"
    return []


def recon_classifier_input(wildcards):
    """Table 1a's classifier accuracy on reconstructions: the demo classifier (trained on the class-labelled
    set) for that set only, and only while the tables ask for it (evaluation.generation.demo_classifier)."""
    if wildcards.testset == "classes":
        return demo_classifier_input(wildcards)
    return []


def classifier_arg(wildcards, input):
    return f"--classifier {input.classifier}" if input.classifier else ""


def generation_metrics(table):
    """Metric files of Table 2 (models × samplings) or Table 3 (one model per variant, one sampling)."""
    spec = config["tables"][table]
    if table == "table2":
        runs = [(model, sampling) for model in spec["models"] for sampling in spec["samplings"]]
    else:
        runs = [(model, spec["sampling"]) for model in spec["models"].values()]
    return [f"results/metrics/gen/{model}/{sampling}.json" for model, sampling in runs]


def table3_val_histories(wildcards=None):
    """The validation histories of Table 3's trained models (an authors' checkpoint has none)."""
    models = config["tables"]["table3"]["models"].values()
    return [f"results/transformers/{model}/val_history.csv" for model in models if model in trained("transformers")]


def richtext_dataset(wildcards=None):
    return DATASETS[config["richtext"]["dataset"]]


# What scoring one row of the rich-text table depends on: not the list of rows, the notes or the
# pipelines (adding a row or a pipeline, or editing a note, reruns no other row's OCR and LM).
RICHTEXT_EVAL_KEYS = ("dataset", "max_images", "language_model", "ocr", "bootstrap_resamples", "bootstrap_seed")


def richtext_eval_params():
    richtext = config.get("richtext", {})
    return stage_params_of({key: richtext[key] for key in RICHTEXT_EVAL_KEYS if key in richtext})


def richtext_table_params():
    return stage_params_of({"notes": authors_notes("transformers", config.get("richtext", {}).get("notes", {}))})


def richtext_pipelines():
    """Pretrained diffusers pipelines sampled for the rich-text table (richtext.pipelines), name → settings."""
    pipelines = config.get("richtext", {}).get("pipelines", {})
    clash = sorted(set(pipelines) & {*config.get("transformers", {}), *config.get("ddpm", {})})
    if clash:  # results/samples/<name>/ would be written by two rules
        raise ValueError(f"richtext.pipelines: {', '.join(clash)} is also a transformer's or DDPM's name; rename the pipeline")
    return pipelines


def pipeline_params(wildcards):
    return stage_params_of(richtext_pipelines()[wildcards.pipeline])


def richtext_runs():
    """The table's rows: the configured runs, then each configured pipeline's samples."""
    runs = [(run["model"], run["sampling"]) for run in config["richtext"]["runs"]]
    return list(dict.fromkeys([*runs, *((name, "pipeline") for name in richtext_pipelines())]))


def richtext_metrics(wildcards=None):
    return [f"results/metrics/richtext/{model}/{sampling}.json" for model, sampling in richtext_runs()]


def richtext_train_benchmarks(wildcards=None):
    """Benchmark files of the trainings behind the table's rows (its training-time columns): trained
    transformers and DDPMs; the authors' checkpoints and pipelines have none."""
    models = dict.fromkeys(model for model, _ in richtext_runs())
    return [f"results/benchmarks/train_transformer/{m}.tsv" for m in models if m in trained("transformers")] + [
        f"results/benchmarks/train_ddpm/{m}.tsv" for m in models if m in config.get("ddpm", {})]


def richtext_samples(wildcards=None):
    return [f"results/samples/{model}/{sampling}" for model, sampling in richtext_runs()]


def ddpm_params(wildcards):
    """Training settings of a DDPM: its subtree less `sampling` (a new sample count retrains nothing)."""
    spec = config["ddpm"][wildcards.ddpm]
    return stage_params_of({key: value for key, value in spec.items() if key != "sampling"})


def ddpm_sampling_params(wildcards):
    return stage_params(f"ddpm.{wildcards.ddpm}.sampling")


def ddpm_datasets(wildcards):
    return [DATASETS[name] for name in config["ddpm"][wildcards.ddpm]["data"]]


def name_pattern(names):
    """A wildcard constraint matching exactly these config names (none: matches nothing)."""
    import re

    return "|".join(re.escape(name) for name in names) or r"(?!x)x"


def reference_source():
    """An ADM reference batch when configured (ADM-evaluator mode), else the class-labelled data set."""
    return config.get("evaluation", {}).get("reference", {}).get("adm_batch") or DATASETS["classes"]
