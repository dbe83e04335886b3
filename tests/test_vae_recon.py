"""Table 1's pretrained continuous VAE rows: a tiny diffusers AutoencoderKL saved to disk, evaluated for real."""

import json
import math

import pytest
import torch

from dnd.report import table1 as tables
from dnd.cli import main
from dnd.config import ConfigError
from dnd.data import shards
from dnd.data.render import PageLayout, RenderConfig
from dnd.stages.recon import ReconEvalConfig
from dnd.stages.vae_recon import ReferenceVAEConfig, evaluate_vae_reconstruction

SENTENCES = ["Continuous latents keep fine strokes", "a small VAE blurs them", "and OCR reads what is left"]


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=4)
    root = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(root / "vae")  # laid out like a pipeline folder: the VAE under vae/
    return root


@pytest.fixture(scope="module")
def text_testset(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    layout = PageLayout(RenderConfig(size=64, font_size=12, margin=4))
    records = [{"id": f"test-{i}", "png": shards.encode_png(layout.draw(layout.lines(text))), "text": text, "title": "t",
                "split": "test"} for i, text in enumerate(SENTENCES)]
    shards.write_shard(root / "test" / shards.shard_name(0, 1), records, shards.image_schema())
    return root


def test_vae_reconstruction_metrics(vae_dir, text_testset, tmp_path):
    cfg = ReconEvalConfig(max_images=2, batch_size=2)
    out = tmp_path / "tiny_vae" / "text512.json"
    result = evaluate_vae_reconstruction("tiny_vae", ReferenceVAEConfig(path=str(vae_dir), subfolder="vae"), text_testset,
                                         out, cfg, "text512")
    written = json.loads(out.read_text())
    assert written["tokenizer"] == "tiny_vae" and written["testset"] == "text512" and written["n_images"] == 2
    assert math.isfinite(written["l2"]) and written["l2"] > 0
    assert written["code_usage"] is None and "depth" not in written
    assert written["latent_channels"] == 4 and written["downsample_factor"] == 2
    assert 0 <= written["rocr"] <= 1 and len(written["rocr_per_image"]) == 2
    assert written["rfid"] is None and "metrics.inception_weights" in written["rfid_na_reason"]
    assert out.with_suffix(".png").exists()
    assert result["l2"] == written["l2"]


def test_sampled_latents_are_seeded(vae_dir, text_testset, tmp_path):
    cfg = ReconEvalConfig(max_images=1, batch_size=1)
    vae = ReferenceVAEConfig(path=str(vae_dir), subfolder="vae", latent="sample", seed=3)
    from dnd.stages import recon

    with pytest.MonkeyPatch.context() as patch:  # OCR is tested above; here only the latents matter
        patch.setattr(recon, "ocr_metrics", lambda *args: {"rocr": None})
        first = evaluate_vae_reconstruction("v", vae, text_testset, tmp_path / "a.json", cfg, "t")
        second = evaluate_vae_reconstruction("v", vae, text_testset, tmp_path / "b.json", cfg, "t")
    assert first["l2"] == second["l2"]


@pytest.mark.parametrize("path, subfolder, message", [
    ("missing", None, "is not a folder"),
    ("", None, "no config.json"),  # the pipeline folder itself: the VAE is one level down
])
def test_a_wrong_path_names_the_setting(vae_dir, text_testset, tmp_path, path, subfolder, message):
    folder = tmp_path / path if path else vae_dir
    with pytest.raises(ConfigError, match=rf"evaluation\.recon\.reference_vaes\.sdxl_vae\.path: .*{message}"):
        evaluate_vae_reconstruction("sdxl_vae", ReferenceVAEConfig(path=str(folder), subfolder=subfolder), text_testset,
                                    tmp_path / "m.json", ReconEvalConfig(max_images=1), "text512")


def test_a_folder_of_another_model_class_is_refused(tmp_path, text_testset):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ConfigError, match=r"reference_vaes\.x\.path: .*'UNet2DModel', not a diffusers AutoencoderKL"):
        evaluate_vae_reconstruction("x", ReferenceVAEConfig(path=str(tmp_path), subfolder="unet"), text_testset,
                                    tmp_path / "m.json", ReconEvalConfig(max_images=1), "t")


def test_cli_missing_vae_is_one_line(tmp_path, text_testset, capsys):
    params = {"recon": {}, "metrics": {}, "vae": {"path": str(tmp_path / "nowhere")}}
    code = main(["evaluate-vae-reconstruction", "--params", json.dumps(params), "--vae-name", "sd3_vae",
                 "--testset", str(text_testset), "--out", str(tmp_path / "m.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "evaluation.recon.reference_vaes.sd3_vae.path" in err and "Traceback" not in err


def test_configured_vae_is_a_row_of_table1(vae_dir, text_testset, tmp_path):
    metrics = []
    for row in ("original", "tiny_vae"):
        path = tmp_path / row / "text512.json"
        path.parent.mkdir()
        metric = {"tokenizer": row, "testset": "text512", "n_images": 2, "l2": 0.0, "rocr": 0.9, "rfid": None}
        metrics.append(path)
        path.write_text(json.dumps(metric))
    evaluate_vae_reconstruction("tiny_vae", ReferenceVAEConfig(path=str(vae_dir), subfolder="vae"), text_testset,
                                metrics[1], ReconEvalConfig(max_images=2, batch_size=2), "text512")
    table1b = tables.table1b(metrics, {"text512": "Text512"}, {"tiny_vae": "a tiny VAE"})
    assert list(table1b["tokenizer"]) == ["original", "tiny_vae"]
    vae_row = table1b.set_index("tokenizer").loc["tiny_vae"]
    assert vae_row["Text512"] == f"{json.loads(metrics[1].read_text())['rocr']:.3f}"
    assert vae_row["note"].startswith("a tiny VAE; continuous VAE (f2, 4 latent channels)")
    table1a = tables.table1a(metrics, {}).set_index("tokenizer")
    assert table1a.loc["tiny_vae", "code_usage"] == tables.NA and table1a.loc["tiny_vae", "depth"] == tables.NA
    assert "no codebook" in table1a.loc["tiny_vae", "note"]
    # each rFID cell states its interval, its counts and whether it follows the paper's protocol
    assert table1a.loc["tiny_vae", "rFID_95ci"] == tables.NA and table1a.loc["tiny_vae", "n_reference"] == 2
    assert table1a.loc["tiny_vae", "paper_protocol"].startswith("not comparable to the paper: 2 test images")
