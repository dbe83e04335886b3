"""Rerun triggers computed from the source: the import closure of each command's dnd modules."""

from pathlib import Path

import pytest

from dnd import cli
from dnd.codeversion import RUNTIME_ONLY, code_version, command_entries, import_closure, is_runtime_only

COMMANDS = [name for name, *_ in cli.COMMANDS]


def test_every_command_has_a_closure_without_runtime_modules():
    for command in COMMANDS:
        closure = import_closure(command_entries(command))
        assert closure, command
        assert not [m for m in closure if is_runtime_only(m)], command


def test_closures_hold_what_the_hand_kept_lists_missed():
    assert "dnd.transformer.parallel" in import_closure(command_entries("train-transformer"))
    recon = import_closure(command_entries("evaluate-reconstruction"))
    assert {"dnd.data.images", "dnd.metrics.inception", "dnd.tokenizer.rqvae"} <= set(recon)
    assert "dnd.training" not in recon  # evaluating a tokenizer does not depend on how it was trained
    assert set(import_closure(command_entries("make-table1"))) == {"dnd", "dnd.report", "dnd.report.common", "dnd.report.table1"}


def test_lazy_imports_inside_functions_count(tmp_path):
    # dnd.stages.sample imports the transformer inside its shard function
    assert "dnd.transformer.generate" in import_closure(["dnd.stages.sample"])
    assert "dnd.tokenizer.rqvae" in import_closure(["dnd.stages.sample"])


def test_the_version_follows_the_bytes_of_the_closure(tmp_path, monkeypatch):
    """A copy of the package with one module edited: the commands that import it change version, others not."""
    import shutil

    import dnd.codeversion as cv

    copy = tmp_path / "dnd"
    shutil.copytree(Path(cv.__file__).parent, copy)
    monkeypatch.setattr(cv, "PACKAGE_DIR", copy)
    cv.direct_imports.cache_clear()
    before = {c: cv.command_code_version(c) for c in ("train-transformer", "make-table1", "train-tokenizer")}
    with open(copy / "transformer" / "model.py", "a") as fh:
        fh.write("\n# edited\n")
    with open(copy / "launch" / "slurm.py", "a") as fh:
        fh.write("\n# edited\n")
    cv.direct_imports.cache_clear()
    after = {c: cv.command_code_version(c) for c in before}
    assert after["train-transformer"] != before["train-transformer"]
    assert after["make-table1"] == before["make-table1"] and after["train-tokenizer"] == before["train-tokenizer"]
    cv.direct_imports.cache_clear()


def test_runtime_only_modules_are_named_once():
    assert "dnd.launch" in RUNTIME_ONLY and is_runtime_only("dnd.launch.slurm") and not is_runtime_only("dnd.training")
    assert code_version(["dnd.training"]) == code_version(["dnd.training", "dnd.launch.slurm"])


def test_an_unknown_command_is_a_clear_error():
    with pytest.raises(KeyError, match="no-such-stage"):
        command_entries("no-such-stage")
