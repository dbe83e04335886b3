"""The DAG for real: a snakemake run of the data targets on the micro config, then rerun triggers by dry run."""

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dnd.data import shards
from report_browser import ReportPage, caption_text, headless_chromium, reported_outputs
from testdata import DEMO_DUMP, REPO

pytestmark = pytest.mark.workflow
REPORTED = reported_outputs(REPO / "workflow" / "rules")


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DND_WORK_DIR=str(workdir / "work"))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args],
        capture_output=True, text=True, env=env, cwd=workdir,
    )


def planned_jobs(run: subprocess.CompletedProcess) -> set[str]:
    """Rule names in the 'Job stats' table of a dry run (empty when nothing is to be done)."""
    rows = re.findall(r"^(\w+)\s+\d+$", run.stdout, flags=re.MULTILINE)
    return {name for name in rows if name not in ("total", "all")}


def planned_runs(run: subprocess.CompletedProcess) -> set[tuple[str, str]]:
    """(rule, wildcards) of every planned job of a dry run, e.g. ("train_ddpm", "ddpm=micro_ddpm")."""
    jobs = set()
    for block in re.split(r"^rule ", run.stdout, flags=re.MULTILINE)[1:]:
        rule = block.split(":", 1)[0].strip()
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, flags=re.MULTILINE)
        if rule != "all":
            jobs.add((rule, wildcards.group(1).strip() if wildcards else ""))
    return jobs


def planned_tokenizer_jobs(run: subprocess.CompletedProcess) -> set[str]:
    """The `tokenizer` wildcard of every planned job that has one."""
    return set(re.findall(r"wildcards: tokenizer=(\w+)", run.stdout))


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    if not DEMO_DUMP.exists():
        pytest.fail(f"the demo dump {DEMO_DUMP} is missing from the repo")
    workdir = tmp_path_factory.mktemp("micro")
    # Snakemake resolves configfile and data paths against the working directory: mirror the repo's.
    (workdir / "config").symlink_to(REPO / "config")
    (workdir / "demo").symlink_to(REPO / "demo")
    config = yaml.safe_load((REPO / "config" / "micro.yaml").read_text())
    (workdir / "run.yaml").write_text(yaml.safe_dump(config))
    run = snakemake(workdir, "--configfile", "run.yaml")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return workdir, config


def test_data_targets_are_built(micro_run):
    workdir, config = micro_run
    images = workdir / "results" / "data" / "text_image"
    manifest = shards.read_manifest(images)
    assert sum(manifest["images"].values()) > 10
    assert 0 < manifest["images"]["test"] <= config["data"]["text_image"]["splits"]["test_max_images"]
    for split in shards.SPLITS:
        assert len(shards.split_shards(images, split)) == config["data"]["text_image"]["shards"]
    record = next(shards.iter_records(images, "train"))
    size = config["data"]["text_image"]["render"]["size"]
    assert shards.decode_png(record["png"]).size == (size, size)
    assert record["text"].strip()
    text256 = workdir / "results" / "data" / "text256"
    small = next(shards.iter_records(text256, "test"))
    assert shards.decode_png(small["png"]).size == (config["data"]["text256"]["size"],) * 2
    assert (images / "provenance.json").exists() and (text256 / "provenance.json").exists()
    assert (workdir / "logs" / "render_text_images.log").exists()


def test_table1_is_written(micro_run):
    import pandas as pd

    workdir, config = micro_run
    table1a = pd.read_csv(workdir / "results" / "table1a.csv", keep_default_na=False)
    assert list(table1a["tokenizer"]) == config["tables"]["table1a"]["rows"]
    assert {"rFID", "L2", "L2_95ci", "classifier_acc", "classifier_acc_95ci", "code_usage", "code_usage_per_depth"} <= set(table1a.columns)
    assert table1a["rFID"].tolist() == ["n/a"]  # no Inception weights in the micro config
    table1b = pd.read_csv(workdir / "results" / "table1b.csv", keep_default_na=False)
    assert list(table1b["tokenizer"]) == config["tables"]["table1b"]["rows"]
    assert list(table1b.columns[1:4]) == ["Text256", "Text512", "arXiv512"]
    original = table1b.set_index("tokenizer").loc["original"]
    assert float(original["Text256"]) > 0.5  # OCR reads the micro test pages themselves
    for name in ("table1a.png", "table1a_grids.png", "table1b.png", "table1b_grids.png"):
        assert (workdir / "results" / name).stat().st_size > 0


def test_tables_2_and_3_are_written(micro_run):
    import pandas as pd

    workdir, config = micro_run
    table2 = pd.read_csv(workdir / "results" / "table2.csv", keep_default_na=False)
    assert len(table2) == len(config["tables"]["table2"]["models"]) * len(config["tables"]["table2"]["samplings"])
    assert {"model", "params", "cfg", "FID", "IS", "precision", "recall", "demo_classifier_acc"} <= set(table2.columns)
    assert set(table2["FID"]) == {"n/a"}  # no Inception weights: n/a, never a number from another network
    assert all(0.0 <= float(a) <= 1.0 for a in table2["demo_classifier_acc"])
    table3 = pd.read_csv(workdir / "results" / "table3.csv", keep_default_na=False)
    assert list(table3["variant"]) == ["1d", "parallel", "vertical", "dnd"]
    assert all("paper" in note for note in table3["note"])  # says whether the paper's order shows
    for name in ("table2.png", "table3.png", "val_loss.png"):
        assert (workdir / "results" / name).stat().st_size > 0
    # the validation loss per depth of every trained Table 3 variant (the 1d one has one depth)
    curves = pd.read_csv(workdir / "results" / "val_loss.csv", keep_default_na=False)
    assert set(curves["variant"]) == {"1d", "parallel", "vertical", "dnd"}
    assert set(curves.loc[curves["variant"] == "1d", "depth"]) == {"all", "1"}


def test_richtext_table_is_written(micro_run):
    import pandas as pd

    workdir, config = micro_run
    table = pd.read_csv(workdir / "results" / "richtext.csv", keep_default_na=False)
    assert table["model"].iloc[0] == "training images"  # the reference row first
    assert set(table["model"]) == {"training images"} | {run["model"] for run in config["richtext"]["runs"]}
    assert {"PPL_OCR", "PPL_OCR_95ci", "n_with_text", "words_per_image", "words_per_image_95ci", "temperature",
            "train_s", "train_cpu_s", "comparison", "ocr_backend", "language_model"} <= set(table.columns)
    reference = table.iloc[0]
    assert float(reference["PPL_OCR"]) > 0 and float(reference["words_per_image"]) > 0
    for name in ("richtext.png", "richtext_grids.png"):
        assert (workdir / "results" / name).stat().st_size > 0


@pytest.fixture(scope="module")
def report_html(micro_run) -> Path:
    """`snakemake --report` of the micro run, built once for both report tests."""
    workdir, _ = micro_run
    run = snakemake(workdir, "--configfile", "run.yaml", "--report", "report.html")
    assert run.returncode == 0, run.stderr[-3000:]
    return workdir / "report.html"


def test_report_embeds_every_table_and_figure(report_html):
    """The data of every `report()` output is in the HTML (also where no browser is installed)."""
    html = report_html.read_text()
    assert {Path(output.path).suffix for output in REPORTED} == {".csv", ".png"}
    for output in REPORTED:
        assert output.path in html, f"{output.path} is missing from the report"


def test_report_shows_every_table_and_figure_in_a_browser(report_html, tmp_path):
    """Headless Chromium clicks through the report: each category lists exactly its `report()` outputs,
    each image shows (decoded, the file's bytes), each table downloads as the file's text, and each
    result's description is its caption."""
    from PIL import Image

    workdir = report_html.parent
    with headless_chromium() as browser:
        page = ReportPage(browser, report_html)
        try:
            intro = caption_text(REPO / "workflow" / "report" / "workflow.rst").split("{{")[0].strip()  # before Jinja
            assert page.workflow_description().startswith(intro)
            categories = sorted({output.category for output in REPORTED})
            assert sorted(page.categories()) == categories
            for category in categories:
                expected = [output for output in REPORTED if output.category == category]
                assert sorted(page.open_category(category)) == sorted(output.path for output in expected)
                for output in expected:
                    file = workdir / output.path
                    if file.suffix == ".png":
                        shown = page.view_image(output.path)
                        assert shown["bytes"] == file.read_bytes(), f"{output.path}: the report shows other bytes"
                        with Image.open(file) as image:
                            assert shown["size"] == image.size and shown["shown_width"] > 0, output.path
                    else:
                        text = page.download_text(output.path)
                        assert text == file.read_text(encoding="utf-8"), f"{output.path}: the report holds other text"
                        assert len(list(csv.reader(io.StringIO(text)))) >= 2, f"{output.path}: a header and no rows"
                    assert page.caption(output.path, category) == caption_text(output.caption), output.path
            assert page.errors() == []
        finally:
            page.screenshot(tmp_path / "report.png")  # where it stopped (the last image shown), for a person


def test_nothing_to_do_after_a_complete_run(micro_run):
    workdir, _ = micro_run
    assert planned_jobs(snakemake(workdir, "-n", "--configfile", "run.yaml")) == set()


def _dry_run_with(workdir: Path, config: dict, *keys_and_value) -> subprocess.CompletedProcess:
    """A dry run with one config key set: `*keys, value`."""
    edited = json.loads(json.dumps(config))  # unshared copies: YAML merge keys share nested dicts
    *keys, last, value = keys_and_value
    node = edited
    for key in keys:
        node = node.setdefault(key, {})
    node[last] = value
    (workdir / "edited.yaml").write_text(yaml.safe_dump(edited))
    run = snakemake(workdir, "-n", "--configfile", "edited.yaml")
    assert run.returncode == 0, run.stderr[-2000:]
    return run


@pytest.mark.parametrize(
    "edit, expected",
    [
        (("data", "text256", "size", 96), {
            "make_text256", "evaluate_reconstruction", "make_table1b",  # Text256 column
            "tokenize_images", "train_transformer", "sample_images", "fit_language_model", "train_ddpm",
            "sample_ddpm", "evaluate_richtext", "evaluate_richtext_reference", "make_richtext_table",  # rich text
        }),
        (("data", "classes", "image", "size", 8), {
            "prepare_images", "train_tokenizer", "evaluate_reconstruction", "make_table1a",  # Table 1a
            "tokenize_images", "train_transformer", "sample_images", "compute_reference", "train_classifier",
            "evaluate_generation", "make_table2", "make_table3", "plot_val_loss",  # Tables 2 and 3, the curves
        }),
        (("tokenizers", "micro_d2", "train", "steps", 20), {"train_tokenizer", "evaluate_reconstruction", "make_table1b"}),
        # the OCR cells' count reruns Table 1b's cells only; Table 1a's (rFID, L2, code usage) has its own
        (("evaluation", "recon", "max_images", 1), {"evaluate_reconstruction", "make_table1b"}),
        (("evaluation", "recon", "rfid_max_images", 1), {"evaluate_reconstruction", "make_table1a"}),
        (("evaluation", "recon", "rocr_reference", {"arxiv512": "original_ocr"}), {"evaluate_reconstruction", "make_table1b"}),
        (("tables", "table1a", "notes", {"micro_cls": "edited"}), {"make_table1a"}),
        # an optional pretrained model adds its own jobs and reruns no other row (a dry run: the path is not read)
        (("evaluation", "recon", "reference_vaes", {"sdxl_vae": {"path": "/models/sdxl-vae"}}),
         {"evaluate_vae_reconstruction", "make_table1a", "make_table1b"}),
        (("richtext", "pipelines", {"sdxl_ft": {"path": "/models/sdxl-textimage"}}),
         {"sample_pipeline", "evaluate_richtext", "make_richtext_table"}),
        (("launch", "workers", 1), set()),
        # the tables no longer ask for the demo classifier's metric: the generation metrics and Table 1a's cells on
        # the class-labelled set are recomputed without it, and train_classifier is not asked for
        (("evaluation", "generation", "demo_classifier", False),
         {"evaluate_generation", "make_table2", "make_table3", "evaluate_reconstruction", "make_table1a"}),
    ],
)
def test_config_edit_reruns_only_that_stage_and_what_follows(micro_run, edit, expected):
    workdir, config = micro_run
    run = _dry_run_with(workdir, config, *edit)
    assert planned_jobs(run) == expected
    if edit[0] == "tokenizers":  # only the edited tokenizer retrains and is re-evaluated
        assert planned_tokenizer_jobs(run) == {edit[1]}


def test_rendering_twice_gives_the_same_bytes(micro_run, tmp_path):
    workdir, _ = micro_run
    chunks = workdir / "results" / "data" / "wiki_text" / "chunks.parquet"
    params = yaml.safe_load((workdir / "run.yaml").read_text())["data"]["text_image"]
    import json

    outs = []
    for attempt in ("a", "b"):
        out = tmp_path / attempt
        subprocess.run(
            [sys.executable, "-m", "dnd", "render-text-images", "--params", json.dumps(params),
             "--chunks", str(chunks), "--out", str(out), "--work-dir", str(tmp_path / f"work-{attempt}")],
            check=True, capture_output=True, cwd=REPO,
        )
        outs.append(out)
    first = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*.parquet"))
    assert first and first == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*.parquet"))
    for rel in first:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes()
    published = workdir / "results" / "data" / "text_image"
    for rel in first:
        assert (published / rel).read_bytes() == (outs[0] / rel).read_bytes()


GOLDEN = REPO / "tests" / "golden" / "micro"


def test_micro_tables_are_pinned(micro_run):
    """The micro config's tables, cell for cell (measured training times aside), as the code before the one-loop refactor wrote them:
    refactors of the trainers, the rules or the report must not change a number."""
    workdir, _ = micro_run
    names = sorted(p.name for p in GOLDEN.glob("*.csv"))
    assert names == ["richtext.csv", "table1a.csv", "table1b.csv", "table2.csv", "table3.csv"]
    for name in names:
        assert _without_timings(workdir / "results" / name) == _without_timings(GOLDEN / name), name


# Measured training times (the rich-text table's train_s, train_cpu_s) differ from run to run: blanked.
TIMING_COLUMNS = ("train_s", "train_cpu_s")


def _without_timings(path: Path) -> list[list[str]]:
    import csv

    rows = list(csv.reader(path.read_text().splitlines()))
    drop = {i for i, column in enumerate(rows[0]) if column in TIMING_COLUMNS}
    return [[cell for i, cell in enumerate(row) if i not in drop] for row in rows]


def _edited_code_copy(tmp_path: Path, module: str) -> Path:
    """A copy of the workflow and the package with one module edited (a comment appended): its Snakefile."""
    import shutil

    copy = tmp_path / "code"
    copy.mkdir()
    for name in ("Snakefile", "workflow", "dnd", "envs"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, copy / name)
    with open(copy / module, "a") as fh:
        fh.write("\n# an edit\n")
    return copy / "Snakefile"


def _rules(jobs: set[tuple[str, str]]) -> set[str]:
    return {rule for rule, _ in jobs}


TRAINED_TRANSFORMERS = {"micro_dnd", "micro_1d", "micro_parallel", "micro_vertical", "micro_text"}


@pytest.mark.parametrize("module, expected", [
    # the table code: the tables and nothing else
    ("dnd/report/common.py", {("make_table1a", ""), ("make_table1b", ""), ("make_table2", ""), ("make_table3", ""),
                              ("make_richtext_table", ""), ("plot_val_loss", "")}),
    ("dnd/report/training_curves.py", {("plot_val_loss", "")}),
    ("dnd/report/generation.py", {("make_table2", ""), ("make_table3", "")}),
    # how stages run: nothing
    ("dnd/launch/slurm.py", set()),
    ("dnd/provenance.py", set()),
    ("dnd/cli.py", set()),
    ("dnd/commands.py", set()),
])
def test_code_edit_plans_exactly_the_jobs_it_determines(micro_run, tmp_path, module, expected):
    workdir, _ = micro_run
    snakefile = _edited_code_copy(tmp_path, module)
    run = snakemake(workdir, "-s", str(snakefile), "-n", "--configfile", "run.yaml")
    assert run.returncode == 0, run.stderr[-2000:]
    assert planned_runs(run) == expected


def test_editing_the_transformer_model_plans_training_and_what_follows(micro_run, tmp_path):
    workdir, _ = micro_run
    run = snakemake(workdir, "-s", str(_edited_code_copy(tmp_path, "dnd/transformer/model.py")), "-n", "--configfile", "run.yaml")
    assert run.returncode == 0, run.stderr[-2000:]
    jobs = planned_runs(run)
    assert {w for rule, w in jobs if rule == "train_transformer"} == {f"model={m}" for m in TRAINED_TRANSFORMERS}
    assert _rules(jobs) == {"train_transformer", "sample_images", "evaluate_generation", "make_table2", "make_table3",
                            "plot_val_loss", "evaluate_richtext", "make_richtext_table"}
    # the DDPM's row is not downstream of any transformer: its sampling and scoring stay
    assert ("evaluate_richtext", "model=micro_ddpm, sampling=ddpm") not in jobs
    assert ("evaluate_richtext", "model=micro_text, sampling=micro_text_t1") in jobs


def test_one_job_one_row(micro_run):
    """Each job's params hold only what it depends on."""
    workdir, config = micro_run
    # a row's note is the table's: no OCR or LM reruns
    assert planned_runs(_dry_run_with(workdir, config, "richtext", "notes", {"micro_text": "edited"})) == {("make_richtext_table", "")}
    # a new row scores that row only
    runs = [*config["richtext"]["runs"], {"model": "micro_dnd", "sampling": "micro_cfg1"}]
    assert planned_runs(_dry_run_with(workdir, config, "richtext", "runs", runs)) == {
        ("evaluate_richtext", "model=micro_dnd, sampling=micro_cfg1"), ("make_richtext_table", "")}
    # the DDPM's sample count: sampling and what follows, not training
    sampling = {**config["ddpm"]["micro_ddpm"].get("sampling", {}), "n": 3}
    assert planned_runs(_dry_run_with(workdir, config, "ddpm", "micro_ddpm", "sampling", sampling)) == {
        ("sample_ddpm", "ddpm=micro_ddpm"), ("evaluate_richtext", "model=micro_ddpm, sampling=ddpm"),
        ("make_richtext_table", "")}


def test_clean_work_lists_and_removes_only_folders_no_job_points_to(micro_run):
    workdir, _ = micro_run
    env = dict(os.environ, DND_WORK_DIR=str(workdir / "work"))
    orphan = workdir / "work" / "train_tokenizer" / "micro_d1-000000000000"
    (orphan / "checkpoints").mkdir(parents=True)
    (orphan / "checkpoints" / "last.pt").write_bytes(b"x" * 1000)
    in_use = sorted(p for p in (workdir / "work").glob("*/*") if p.is_dir() and p != orphan and not p.parent.name.startswith("."))
    assert in_use

    def clean(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dnd", "clean-work", "--snakefile", str(REPO / "Snakefile"),
                               "--configfile", "run.yaml", *args], capture_output=True, text=True, cwd=workdir, env=env)

    listed = clean()
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert f"would remove {orphan} " in listed.stdout and "1 work folder(s)" in listed.stdout, listed.stdout
    assert orphan.exists()  # a dry run by default
    removed = clean("--delete")
    assert removed.returncode == 0 and not orphan.exists()
    assert all(p.exists() for p in in_use)


def test_unlock_after_a_hard_kill_works_as_the_docs_say(micro_run):
    """`snakemake --unlock` (no --cores) after Snakemake was killed with SIGKILL holding its lock."""
    import signal
    import time

    workdir, _ = micro_run
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", "run.yaml"]
    env = dict(os.environ, DND_WORK_DIR=str(workdir / "work"))
    running = subprocess.Popen([*command, "--cores", "1", "--forcerun", "make_table1a", "results/table1a.csv"],
                               cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    locks = workdir / ".snakemake" / "locks"
    deadline = time.time() + 120
    while not (locks.is_dir() and any(locks.iterdir())) and time.time() < deadline and running.poll() is None:
        time.sleep(0.1)
    running.send_signal(signal.SIGKILL)
    running.wait()
    assert locks.is_dir() and any(locks.iterdir()), "the run ended before it took its lock"
    # forced, so that the run has a job to start whether or not the killed run's orphaned job finished the table:
    # Snakemake checks the lock only before it runs jobs
    locked = subprocess.run([*command, "--cores", "1", "--rerun-incomplete", "--forcerun", "make_table1a",
                             "results/table1a.csv"], cwd=workdir, env=env, capture_output=True, text=True)
    assert locked.returncode != 0 and "--unlock" in (locked.stdout + locked.stderr)  # (a dry run takes no lock)
    unlocked = subprocess.run([*command, "--unlock"], cwd=workdir, env=env, capture_output=True, text=True)
    assert unlocked.returncode == 0, unlocked.stderr[-2000:]
    assert subprocess.run([*command, "-n", "--cores", "1", "--rerun-incomplete"], cwd=workdir, env=env,
                          capture_output=True, text=True).returncode == 0


def test_touched_inputs_resume_training_from_the_last_checkpoint(micro_run):
    """A `touch` (or copy, or rsync) of a training job's inputs reruns the job, which finds its work area
    by the inputs' content and resumes from its last checkpoint instead of starting at step 0.
    (Last in this file: the rerun makes the transformer newer than what follows it.)"""
    import time

    import torch

    workdir, config = micro_run
    model = workdir / "results" / "transformers" / "micro_dnd" / "model.pt"
    before = torch.load(model, weights_only=False)["state_dict"]
    later = time.time() + 5
    for path in [workdir / "results" / "tokenizers" / "micro_cls" / "model.pt",
                 *sorted((workdir / "results" / "codes" / "micro_cls" / "classes").rglob("*"))]:
        os.utime(path, (later, later))  # in dependency order: the codes stay newer than their tokenizer
    run = snakemake(workdir, str(model.relative_to(workdir)), "--configfile", "run.yaml")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "train_transformer" in run.stderr + run.stdout
    log = (workdir / "logs" / "train_transformer" / "micro_dnd.log").read_text()
    steps = config["transformers"]["micro_dnd"]["train"]["steps"]
    assert f"at step {steps}" in log and "resuming from" in log, log[-2000:]
    after = torch.load(model, weights_only=False)["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_an_authors_checkpoint_is_a_row_of_table2(micro_run, tmp_path):
    """A transformer given as `pretrained:` (a checkpoint in the authors' layout, written here for the micro
    tokenizer's codes) is imported instead of trained, then sampled, evaluated and tabled like the trained
    rows, its Table 2 rows noted as the authors' weights; no trained row reruns."""
    import argparse
    import shutil

    import pandas as pd
    import torch

    from authors_layout import authors_shapes, random_state

    workdir, config = micro_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, symlinks=True)  # the shared micro run stays as the other tests expect it
    tokenizer = torch.load(copy / "results" / "tokenizers" / "micro_cls" / "model.pt", weights_only=False)["config"]
    resolution = config["tokenizers"]["micro_cls"]["train"]["resolution"]
    classes = 10  # the micro config's class-labelled set: scikit-learn's digits
    shapes = authors_shapes(dim=64, n_layer=2, vocab=tokenizer["codebook_size"], num_classes=classes, heads=tokenizer["depth"])
    args = argparse.Namespace(image_size=resolution, downsample_size=8, num_classes=classes, cls_token_num=1, gpt_type="c2i",
                              pred_head_positions="0,1")
    checkpoint = tmp_path / "authors_c2i.pt"
    torch.save({"model": random_state(shapes, 0), "steps": 5, "args": args}, checkpoint)
    edited = json.loads(json.dumps(config))
    edited["transformers"]["authors_dnd"] = {"tokenizer": "micro_cls", "pretrained": str(checkpoint)}
    edited["tables"]["table2"]["models"] = [*config["tables"]["table2"]["models"], "authors_dnd"]
    (copy / "authors.yaml").write_text(yaml.safe_dump(edited))

    # what the edit adds to the plan (other tests of this module may leave the shared run's rows out of date)
    (copy / "base.yaml").write_text(yaml.safe_dump(config))
    before = snakemake(copy, "-n", "results/table2.csv", "--configfile", "base.yaml")
    plan = snakemake(copy, "-n", "results/table2.csv", "--configfile", "authors.yaml")  # --configfile takes several
    assert plan.returncode == 0 and before.returncode == 0, plan.stderr[-2000:] + before.stderr[-2000:]
    added = planned_runs(plan) - planned_runs(before)
    assert ("import_authors_transformer", "model=authors_dnd") in added
    assert not any(rule == "train_transformer" for rule, _ in added)
    assert {w for rule, w in added if rule in ("sample_images", "evaluate_generation")} == {
        f"model=authors_dnd, sampling={s}" for s in config["tables"]["table2"]["samplings"]}
    run = snakemake(copy, "results/table2.csv", "--configfile", "authors.yaml")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table2 = pd.read_csv(copy / "results" / "table2.csv", keep_default_na=False)
    rows = table2[table2["model"] == "authors_dnd"]
    assert len(rows) == len(config["tables"]["table2"]["samplings"])
    assert all("the authors' released weights (authors_c2i.pt)" in note for note in rows["note"])
    assert all(0.0 <= float(a) <= 1.0 for a in rows["demo_classifier_acc"])
    assert not any("authors" in note for note in table2[table2["model"] != "authors_dnd"]["note"])
    model = torch.load(copy / "results" / "transformers" / "authors_dnd" / "model.pt", weights_only=False)
    assert model["source"] == "authors' checkpoint" and model["pretrained"] == str(checkpoint)
    summary = json.loads((copy / "results" / "samples" / "authors_dnd" / config["tables"]["table2"]["samplings"][0] / "summary.json").read_text())
    assert summary["weights"] == "raw" and summary["weights_source"] == "authors' checkpoint"
