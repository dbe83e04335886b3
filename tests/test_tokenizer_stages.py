"""Tokenizer training, code maps and reconstruction metrics through their real entry points."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from dnd.data import shards
from dnd.data.codes import CENTRE_CROP, CodeMapDataset, code_shards, draw_crops
from dnd.data.images import to_tensor
from dnd.data.render import PageLayout, RenderConfig
from dnd.stages.recon import ORIGINAL, ReconEvalConfig, evaluate_reconstruction
from dnd.stages.tokenize import ten_crops, tokenize_images
from dnd.tokenizer.rqvae import load_tokenizer
from dnd.tokenizer.train import TokenizerSpec, train_tokenizer
from testdata import REPO

SENTENCES = [
    "Residual codes describe each patch", "with a short stack of vectors", "drawn from one shared codebook",
    "every code corrects the one before", "so deeper stacks keep more detail", "and text stays sharp to read",
]

TINY = {
    "model": {"preset": "demo_f8", "depth": 2, "ch": 32, "z_channels": 8, "embed_dim": 8, "codebook_size": 32},
    "loss": {"perceptual_weight": 0.0, "gan_weight": 0.0},
    "train": {"resolution": 64, "crop": 32, "batch_size": 4, "steps": 40, "lr": 2e-3, "warmup_steps": 5,
              "eval_every": 20, "checkpoint_every": 1, "eval_images": 2},
}


@pytest.fixture(scope="module")
def text_dataset(tmp_path_factory):
    """A small Text-Image-like data set on disk: rendered sentences with their text, all three splits."""
    root = tmp_path_factory.mktemp("text")
    layout = PageLayout(RenderConfig(size=128, font_size=14, margin=6))
    for split in shards.SPLITS:
        records = [
            {"id": f"{split}-{i}", "png": shards.encode_png(layout.draw(layout.lines(text))), "text": text,
             "title": "t", "split": split}
            for i, text in enumerate(SENTENCES)
        ]
        shards.write_shard(root / split / shards.shard_name(0, 1), records, shards.image_schema())
    return root


def _train_cli(dataset: Path, out: Path, work: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dnd", "train-tokenizer", "--name", "tiny", "--params", json.dumps(TINY),
         "--datasets", str(dataset), "--out", str(out), "--work-dir", str(work)],
        cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_training_resumes_to_the_same_weights(text_dataset, tmp_path, sig):
    reference = _train_cli(text_dataset, tmp_path / "ref" / "model.pt", tmp_path / "ref-work")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()

    work = tmp_path / "work"
    run = _train_cli(text_dataset, tmp_path / "run" / "model.pt", work)
    deadline = time.time() + 120
    while not (work / "checkpoints" / "last.pt").exists():  # kill it once it is under way
        assert run.poll() is None and time.time() < deadline, "training ended before it could be interrupted"
        time.sleep(0.01)
    time.sleep(0.2)
    run.send_signal(sig)
    code = run.wait(timeout=120)
    assert code in (-sig, 128 + sig), f"expected the run to stop on signal {sig}, got exit code {code}"
    killed_at = torch.load(work / "checkpoints" / "last.pt", weights_only=False)["step"]
    assert 0 < killed_at < TINY["train"]["steps"]

    resumed = _train_cli(text_dataset, tmp_path / "run" / "model.pt", work)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert "resuming from" in resumed.stderr.read()
    a = torch.load(tmp_path / "ref" / "model.pt", weights_only=False)
    b = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    assert a["step"] == b["step"] == TINY["train"]["steps"]
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def trained(text_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    spec = TokenizerSpec.from_dict("tiny", {**TINY, "train": {**TINY["train"], "checkpoint_every": 20}})
    summary = train_tokenizer(spec, [text_dataset], root / "tiny" / "model.pt", root / "work")
    assert summary["best_step"] > 0
    assert (root / "tiny" / "recon.png").exists()
    return root / "tiny" / "model.pt"


def test_code_maps_round_trip_through_plain_pyarrow(trained, text_dataset, tmp_path):
    manifest = tokenize_images(trained, "tiny", text_dataset, tmp_path / "codes", tmp_path / "work", batch_size=4)
    assert manifest["code_map"] == {"height": 16, "width": 16, "depth": 2, "codebook_size": 32, "tokenizer": "tiny", "crops_per_image": 1}
    model = load_tokenizer(trained)
    records = list(shards.iter_records(text_dataset, "test"))
    expected = model.encode(torch.stack([to_tensor(shards.decode_png(r["png"]), 1) for r in records])).numpy()
    path = code_shards(tmp_path / "codes", "test")[0]
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()  # no project code involved
    assert table.schema.field("codes").type == pa.list_(pa.uint16(), 16 * 16 * 2)
    codes = table["codes"].combine_chunks().flatten().to_numpy().reshape(-1, 16, 16, 2)
    np.testing.assert_array_equal(codes, expected)
    assert table["id"].to_pylist() == [r["id"] for r in records]
    dataset = CodeMapDataset(code_shards(tmp_path / "codes", "test"))
    item, label = dataset[2]
    np.testing.assert_array_equal(item, expected[2])
    assert label == -1
    # A rerun reuses the finished code shards in the work area instead of encoding again.
    finished = sorted((tmp_path / "work").rglob("shard-*.arrow"))
    stamps = [p.stat().st_mtime_ns for p in finished]
    tokenize_images(trained, "tiny", text_dataset, tmp_path / "codes2", tmp_path / "work", batch_size=4)
    assert [p.stat().st_mtime_ns for p in finished] == stamps
    assert (tmp_path / "codes2" / "test" / path.name).read_bytes() == path.read_bytes()


def test_ten_crop_code_maps(trained, text_dataset, tmp_path):
    """The authors' ImageNet recipe: ten code maps per training image, one per crop; val/test keep one."""
    manifest = tokenize_images(trained, "tiny", text_dataset, tmp_path / "codes", tmp_path / "work", batch_size=8, ten_crop_scale=1.25)
    assert manifest["crops_per_image"] == {"train": 10, "val": 1, "test": 1}
    model = load_tokenizer(trained)
    records = list(shards.iter_records(text_dataset, "train"))
    crops = ten_crops(shards.decode_png(records[1]["png"]), 1.25)
    assert [c.size for c in crops] == [(128, 128)] * 10
    expected = model.encode(torch.stack([to_tensor(c, 1) for c in crops])).numpy()

    train = CodeMapDataset(code_shards(tmp_path / "codes", "train"))
    assert (len(train), train.crops, train.info.crops_per_image) == (len(records), 10, 10)
    assert train.files[0].ids[10:12].to_pylist() == [f"{records[1]['id']}/crop0", f"{records[1]['id']}/crop1"]
    for k in range(10):
        np.testing.assert_array_equal(train.get(1, k)[0], expected[k])
    np.testing.assert_array_equal(train[1][0], expected[CENTRE_CROP])
    assert not np.array_equal(expected[0], expected[CENTRE_CROP])  # the corners differ from the centre
    assert len(CodeMapDataset(code_shards(tmp_path / "codes", "test"))) == len(SENTENCES)
    # the trainer's crop draw is a function of (seed, step): a resumed run draws the same crops
    np.testing.assert_array_equal(draw_crops(16, 10, seed=0, step=7), draw_crops(16, 10, seed=0, step=7))
    assert not np.array_equal(draw_crops(16, 10, seed=0, step=7), draw_crops(16, 10, seed=0, step=8))
    assert set(draw_crops(1000, 10, seed=0, step=0)) == set(range(10))
    with pytest.raises(ValueError, match="ten_crop_scale"):
        tokenize_images(trained, "tiny", text_dataset, tmp_path / "codes-bad", tmp_path / "work-bad", ten_crop_scale=0.5)


def test_reconstruction_metrics(trained, text_dataset, tmp_path):
    cfg = ReconEvalConfig(max_images=4, batch_size=2)
    ceiling = evaluate_reconstruction(None, text_dataset, tmp_path / "orig.json", cfg, {"tokenizer": ORIGINAL, "testset": "t"})
    assert ceiling["rocr"] >= 0.9, ceiling["ocr_examples"]
    assert ceiling["l2"] == 0.0
    metrics = evaluate_reconstruction(trained, text_dataset, tmp_path / "tiny.json", cfg, {"tokenizer": "tiny", "testset": "t"})
    assert metrics["n_images"] == 4 and metrics["depth"] == 2
    assert len(metrics["code_usage"]) == 2 and all(0 < u <= 1 for u in metrics["code_usage"])
    assert 0 <= metrics["rocr"] <= 1 and metrics["l2"] > 0
    assert metrics["rfid"] is None and "metrics.inception_weights" in metrics["rfid_na_reason"]
    assert json.loads((tmp_path / "tiny.json").read_text())["tokenizer"] == "tiny"
    assert (tmp_path / "tiny.png").exists()


def test_rocr_can_score_against_the_ocr_of_the_original_image(monkeypatch):
    """rocr_reference: original_ocr (the paper's arXiv512) scores the reconstructions' OCR against the same
    backend's reading of the originals, not against the ground-truth text."""
    from dnd.stages import recon

    class PixelReader:  # "OCR" that reads an image's first pixel value: deterministic and image-dependent
        name = "pixel"

        def read(self, images):
            return [f"word{image.convert('L').getpixel((0, 0))}" for image in images]

    monkeypatch.setattr(recon, "make_ocr_backend", lambda cfg: PixelReader())
    originals = np.zeros((2, 4, 4, 3), np.uint8)
    recons = originals.copy()
    recons[1] = 9
    texts = ["ground truth", "ground truth"]
    against_text = recon.ocr_metrics(recons, texts, ReconEvalConfig(), originals)
    against_original = recon.ocr_metrics(recons, texts, ReconEvalConfig(ocr_reference="original_ocr"), originals)
    assert against_text["rocr"] == 0.0 and "ground-truth text" in against_text["rocr_reference"]
    assert against_original["rocr_per_image"] == [1.0, 0.0] and "OCR of the original" in against_original["rocr_reference"]
    low, high = against_original["rocr_interval"]  # the mean's bootstrap interval over the two images
    assert 0.0 <= low <= 0.5 <= high <= 1.0
    with pytest.raises(ValueError, match="rocr_reference"):
        recon.ocr_metrics(recons, texts, ReconEvalConfig(ocr_reference="pdf"), originals)
