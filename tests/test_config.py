import subprocess
import sys

import pytest
import yaml

from dnd.config import ConfigError, check_config, load_config, with_defaults
from testdata import REPO


@pytest.mark.parametrize("name", ["config.yaml", "micro.yaml", "paper.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "config" / name)
    assert config["data"]["text_image"]["render"]["size"] > 0


def test_unknown_key_is_one_line_naming_the_key():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["data"]["text_image"]["render"]["font_sise"] = 30
    with pytest.raises(ConfigError) as err:
        check_config(config)
    message = str(err.value)
    assert "\n" not in message
    assert "data.text_image.render.font_sise" in message


def test_wrong_type_is_one_line_naming_the_key():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["data"]["text_image"]["shards"] = "four"
    with pytest.raises(ConfigError, match=r"^config key data\.text_image\.shards: 'four' is not of type 'integer'$"):
        check_config(config)


def test_defaults_are_filled_from_the_schema():
    config = with_defaults({"data": {"wiki_text": {"dump": "x.xml"}, "text_image": {}}})
    assert config["data"]["wiki_text"]["max_words"] == 100
    assert config["data"]["text_image"]["render"] == {"size": 512, "font_size": 32, "margin": 20, "font": None, "mode": "L",
                                                   "layout": "page"}
    assert config["data"]["text_image"]["splits"]["test_max_images"] == 1000


def test_snakemake_stops_before_any_job_on_a_bad_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  text_image:\n    shardz: 3\n")
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", str(bad)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert run.returncode != 0
    assert "unknown config key data.text_image.shardz" in run.stdout + run.stderr


def _paper_with(path: tuple[str, ...], value) -> dict:
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return config


def test_a_training_set_without_a_validation_split_is_rejected_before_any_job(tmp_path):
    """The paper config once had val_fraction 0.0 for ImageNet: every ImageNet tokenizer then stopped on rank 0
    at start-up (and the other ranks waited for ever), the transformers at their first validation."""
    with pytest.raises(ConfigError, match=r"^config key data\.classes\.splits\.val_fraction: 0\.0 .*tokenizers\.in_d"):
        check_config(_paper_with(("data", "classes", "splits", "val_fraction"), 0.0))
    bad = tmp_path / "paper-no-val.yaml"
    bad.write_text(yaml.safe_dump(_paper_with(("data", "classes", "splits", "val_fraction"), 0.0)))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(bad)], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode != 0
    lines = [line for line in (run.stdout + run.stderr).splitlines() if "data.classes.splits.val_fraction" in line]
    assert lines and lines[0].startswith("config key data.classes.splits.val_fraction: 0.0")
    # a data set no model trains on may go without
    config = yaml.safe_load((REPO / "config" / "micro.yaml").read_text())
    config["data"]["arxiv_image"]["splits"]["val_fraction"] = 0.0
    check_config(config)
    # text256 (derived from Text-Image) needs val among its splits when a model trains on it
    config["data"]["text256"]["splits"] = ["test"]
    with pytest.raises(ConfigError, match=r"^config key data\.text256\.splits: transformers\.micro_text\.data"):
        check_config(config)
