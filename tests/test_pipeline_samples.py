"""Rich-text rows of pretrained diffusers pipelines: a tiny DDPMPipeline saved to disk, sampled for real."""

import json

import numpy as np
import pytest
import torch

from dnd.config import ConfigError
from dnd.data import shards
from dnd.data.render import PageLayout, RenderConfig
from dnd.metrics.ocr import OCRConfig
from dnd.metrics.ppl import LMConfig, fit_ngram_on_dataset
from dnd.stages.pipeline_samples import SAMPLING_NAME, PipelineSpec, sample_pipeline_images
from dnd.stages.richtext import evaluate_richtext


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=4)
    root = tmp_path_factory.mktemp("pipeline")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(root)
    return root


@pytest.fixture(autouse=True)
def in_process(monkeypatch):
    monkeypatch.setenv("DND_WORKERS", "1")  # shards one after another in this process: no interpreter start-ups


def sample(pipeline_dir, out, **settings):
    spec = PipelineSpec(path=str(pipeline_dir), n=3, num_inference_steps=3, **settings)
    summary = sample_pipeline_images("ddpm_pipe", spec, out, out.with_name(out.name + "-work"))
    with np.load(out / "samples.npz") as data:
        return summary, data["arr_0"], data["arr_1"]


def test_samples_use_the_sampler_folder_format(pipeline_dir, tmp_path):
    summary, images, labels = sample(pipeline_dir, tmp_path / "samples", batch_size=2, seed=5)
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    assert (images[..., 0] == images[..., 2]).all()  # grayscale repeated to 3 channels
    assert labels.tolist() == [-1, -1, -1]
    assert not (images[0] == images[1]).all()  # every image its own seed
    written = json.loads((tmp_path / "samples" / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["model"] == "ddpm_pipe" and written["sampling_name"] == SAMPLING_NAME
    assert written["variant"] == "DDPMPipeline" and written["params"] > 0 and written["n_images"] == 3
    assert written["sampling"]["temperature"] is None and written["sampling"]["num_inference_steps"] == 3
    assert (tmp_path / "samples" / "grid.png").is_file()
    assert json.loads((tmp_path / "samples" / "provenance.json").read_text())["stage"] == "sample_pipeline_images"


def test_image_i_depends_on_the_seed_only(pipeline_dir, tmp_path):
    _, first, _ = sample(pipeline_dir, tmp_path / "a", batch_size=1, seed=5)
    _, again, _ = sample(pipeline_dir, tmp_path / "b", batch_size=1, seed=5, shards=2)  # other shard layout
    _, other, _ = sample(pipeline_dir, tmp_path / "c", batch_size=1, seed=6)
    assert (first == again).all()
    assert not (first == other).all()


def test_samples_are_scored_by_evaluate_richtext(pipeline_dir, tmp_path):
    layout = PageLayout(RenderConfig(size=64, font_size=12, margin=4))
    text = "a page of text"
    records = [{"id": "train-0", "png": shards.encode_png(layout.draw(layout.lines(text))), "text": text, "title": "t",
                "split": "train"}]
    shards.write_shard(tmp_path / "data" / "train" / shards.shard_name(0, 1), records, shards.image_schema())
    lm_cfg = LMConfig(backend="ngram", unk_cutoff=1)
    fit_ngram_on_dataset(lm_cfg, tmp_path / "data", tmp_path / "lm.pkl")
    sample(pipeline_dir, tmp_path / "samples", batch_size=3)
    result = evaluate_richtext(tmp_path / "samples", None, tmp_path / "lm.pkl", tmp_path / "m.json", lm_cfg,
                               OCRConfig(backend="rapidocr", threads=1), 10, {"dataset": "text_image"})
    assert result["model"] == "ddpm_pipe" and result["sampling_name"] == SAMPLING_NAME and result["n_images"] == 3


def test_a_missing_path_names_the_setting(tmp_path):
    with pytest.raises(ConfigError, match=r"richtext\.pipelines\.sdxl_ft\.path: .* is not a folder"):
        sample_pipeline_images("sdxl_ft", PipelineSpec(path=str(tmp_path / "nowhere")), tmp_path / "out", tmp_path / "w")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"richtext\.pipelines\.sdxl_ft\.path: no model_index\.json"):
        sample_pipeline_images("sdxl_ft", PipelineSpec(path=str(tmp_path / "empty")), tmp_path / "out", tmp_path / "w")


def test_a_setting_the_pipeline_cannot_take_names_the_key(pipeline_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"richtext\.pipelines\.ddpm_pipe\.prompt: DDPMPipeline takes no 'prompt'"):
        sample(pipeline_dir, tmp_path / "samples", prompt="a page of text")
    with pytest.raises(ConfigError, match=r"richtext\.pipelines\.ddpm_pipe\.resolution: DDPMPipeline takes no 'height'"):
        sample(pipeline_dir, tmp_path / "samples", resolution=32)
    assert not (tmp_path / "samples").exists()
