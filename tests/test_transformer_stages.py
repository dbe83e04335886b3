"""Transformer training and sampling through their real entry points, on code maps written to disk."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from dnd.data import shards
from dnd.data.codes import CodeMapInfo, write_code_shard
from dnd.stages.sample import SampleSpec, label_list, sample_images
from dnd.tokenizer.rqvae import RQVAE, rqvae_config
from dnd.tokenizer.rqvae import save_tokenizer
from dnd.transformer.model import load_transformer
from dnd.transformer.train import TransformerSpec, train_transformer
from testdata import REPO

TINY = {
    "tokenizer": "tok", "data": "classes", "size": "tiny",
    "model": {"variant": "dnd"},
    "train": {"batch_size": 8, "steps": 40, "lr": 3e-3, "eval_every": 20, "checkpoint_every": 1, "eval_batches": 1},
}
GRID, DEPTH, VOCAB, CLASSES = 4, 2, 16, 3


@pytest.fixture(scope="module")
def codes(tmp_path_factory):
    """Three classes, each a fixed code map plus a little noise, as Arrow shards (train + val)."""
    root = tmp_path_factory.mktemp("codes")
    rng = np.random.default_rng(0)
    prototypes = rng.integers(0, VOCAB, (CLASSES, GRID, GRID, DEPTH))
    info = CodeMapInfo(GRID, GRID, DEPTH, VOCAB, "tok")
    for split, n in (("train", 48), ("val", 12), ("test", 6)):
        labels = [i % CLASSES for i in range(n)]
        maps = prototypes[labels].copy()
        noise = rng.random(maps.shape) < 0.05
        maps[noise] = rng.integers(0, VOCAB, noise.sum())
        write_code_shard(root / split / "shard-00000-of-00001.arrow", [f"{split}{i}" for i in range(n)], maps, labels, info)
    return root, prototypes


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A tiny untrained tokenizer with the codes' vocabulary and depth: sampling decodes through it."""
    torch.manual_seed(0)
    model = RQVAE(rqvae_config("demo_f8", depth=DEPTH, codebook_size=VOCAB, ch=32, z_channels=8, embed_dim=8))
    path = tmp_path_factory.mktemp("tok") / "model.pt"
    save_tokenizer(path, model, "tok")
    return path


def _train_cli(codes_dir, tokenizer, out, work):
    return subprocess.Popen(
        [sys.executable, "-m", "dnd", "train-transformer", "--name", "t", "--params", json.dumps(TINY), "--codes", str(codes_dir),
         "--tokenizer", str(tokenizer), "--out", str(out), "--work-dir", str(work)],
        cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def test_killed_training_resumes_to_the_same_weights(codes, tokenizer, tmp_path):
    codes_dir, _ = codes
    reference = _train_cli(codes_dir, tokenizer, tmp_path / "ref" / "model.pt", tmp_path / "ref-work")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    work = tmp_path / "work"
    run = _train_cli(codes_dir, tokenizer, tmp_path / "run" / "model.pt", work)
    deadline = time.time() + 120
    while not (work / "checkpoints" / "last.pt").exists():
        assert run.poll() is None and time.time() < deadline, "training ended before it could be interrupted"
        time.sleep(0.01)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == 128 + signal.SIGTERM, run.stderr.read()
    assert 0 < torch.load(work / "checkpoints" / "last.pt", weights_only=False)["step"] < TINY["train"]["steps"]
    resumed = _train_cli(codes_dir, tokenizer, tmp_path / "run" / "model.pt", work)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a = torch.load(tmp_path / "ref" / "model.pt", weights_only=False)
    b = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    assert a["step"] == b["step"]
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def trained(codes, tokenizer, tmp_path_factory):
    codes_dir, _ = codes
    root = tmp_path_factory.mktemp("model")
    spec = TransformerSpec.from_dict("t", {**TINY, "train": {**TINY["train"], "steps": 150, "checkpoint_every": 50,
                                                             "eval_every": 50}})
    spec.model.update(class_dropout=0.0, token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0)
    summary = train_transformer(spec, codes_dir, root / "model.pt", root / "work", tokenizer)
    assert summary["params"] > 0 and (root / "work" / "samples").exists()
    return root / "model.pt"


def test_model_learns_the_class_code_maps(trained, codes):
    _, prototypes = codes
    model = load_transformer(trained)
    assert model.config.num_classes == CLASSES and model.config.depth == DEPTH and model.config.grid_size == GRID
    from dnd.transformer.generate import SamplingConfig, generate

    greedy = generate(model, torch.arange(CLASSES), SamplingConfig(temperature=0.0)).numpy()
    agreement = (greedy == prototypes).mean()
    assert agreement > 0.9, f"greedy samples match their class prototype on {agreement:.0%} of codes"


def grouped_by_class(labels) -> bool:
    """Every class's labels in one contiguous run."""
    runs = [label for i, label in enumerate(labels) if i == 0 or labels[i - 1] != label]
    return len(runs) == len(set(runs))


def test_sample_labels_are_balanced_shuffled_by_the_seed_and_mix_every_is_chunk():
    """At the paper's scale (1000 classes × 50): 50 labels per class, and every ADM IS chunk of 5,000 holds
    almost every class (stored by class, each chunk would hold 100)."""
    spec = SampleSpec.from_dict({"per_class": 50, "seed": 0})
    labels = np.asarray(label_list(1000, spec))
    assert np.bincount(labels).tolist() == [50] * 1000 and not grouped_by_class(labels)
    assert min(len(np.unique(labels[start : start + 5000])) for start in range(0, 50_000, 5000)) > 980
    assert label_list(1000, spec) == labels.tolist()  # the seed decides the order
    assert label_list(1000, SampleSpec.from_dict({"per_class": 50, "seed": 1})) != labels.tolist()
    assert label_list(0, SampleSpec.from_dict({"n": 4})) == [-1] * 4  # unconditional


def test_sampling_writes_the_adm_batch_and_is_deterministic(trained, tokenizer, tmp_path):
    spec = SampleSpec.from_dict({"cfg_scale": 2.0, "per_class": 2, "batch_size": 4, "shards": 2, "seed": 7})
    names = {"model": "t", "sampling": "cfg2"}
    first = sample_images(trained, tokenizer, spec, tmp_path / "a", tmp_path / "wa", names)
    sample_images(trained, tokenizer, spec, tmp_path / "b", tmp_path / "wb", names)
    with np.load(tmp_path / "a" / "samples.npz") as a, np.load(tmp_path / "b" / "samples.npz") as b:
        assert a["arr_0"].shape == (CLASSES * 2, GRID * 8, GRID * 8, 3) and a["arr_0"].dtype == np.uint8
        # balanced, and stored in the seed's shuffled order, not grouped by class
        assert sorted(a["arr_1"].tolist()) == [0, 0, 1, 1, 2, 2] and not grouped_by_class(a["arr_1"])
        assert a["arr_1"].tolist() == label_list(CLASSES, spec)
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
    assert first["n_images"] == 6 and first["variant"] == "dnd" and first["params"] > 0
    assert len(list((tmp_path / "a" / "png").glob("*.png"))) == 6
    assert shards.decode_png((tmp_path / "a" / "grid.png").read_bytes()).size[0] > 0


def test_ema_training_keeps_raw_and_ema_weights_each_chosen_by_its_own_validation(codes, tmp_path):
    from dnd.data.codes import CodeMapDataset, code_shards
    from dnd.transformer.train import validate

    codes_dir, _ = codes
    spec = TransformerSpec.from_dict("t", {**TINY, "train": {**TINY["train"], "steps": 12, "eval_every": 3,
                                                             "checkpoint_every": 6, "ema_decay": 0.8}})
    summary = train_transformer(spec, codes_dir, tmp_path / "model.pt", tmp_path / "work")
    payload = torch.load(tmp_path / "model.pt", weights_only=False)
    assert set(payload["weights"]) == {"raw", "ema"} and summary["weights"] == payload["weights"]
    assert summary["also_selected"]["ema"]["step"] == payload["weights"]["ema"]["step"]
    assert any(not torch.equal(payload["state_dict"][k], payload["ema_state_dict"][k]) for k in payload["state_dict"])
    val_set = CodeMapDataset(code_shards(codes_dir, "val"))
    for weights in ("raw", "ema"):  # each set's recorded figure is its own validation loss
        loss = validate(load_transformer(tmp_path / "model.pt", weights=weights), val_set, spec.train, torch.device("cpu"))
        assert loss["val/loss"] == pytest.approx(payload["weights"][weights]["val_loss"], rel=1e-5), weights
    # val_history.csv: one row per validation, the loss and each depth's, raw and EMA
    history = pd.read_csv(tmp_path / "val_history.csv")
    assert list(history.columns) == ["step", "loss", "loss_depth1", "loss_depth2", "ema_loss", "ema_loss_depth1", "ema_loss_depth2"]
    assert list(history["step"]) == [3, 6, 9, 12]
    assert history["loss"].tolist() == pytest.approx(history[["loss_depth1", "loss_depth2"]].mean(axis=1).tolist(), rel=1e-5)
    assert history["ema_loss"].min() == pytest.approx(payload["weights"]["ema"]["val_loss"], rel=1e-6)
    # a run stopped after step 7 (a validation at 3 and 6 behind it) and resumed writes the same file
    stops = iter(range(1, 100))
    stopped = train_transformer(spec, codes_dir, tmp_path / "resumed" / "model.pt", tmp_path / "resumed-work",
                                should_stop=lambda: next(stops) >= 7)
    assert stopped is None and not (tmp_path / "resumed" / "val_history.csv").exists()
    last = torch.load(tmp_path / "resumed-work" / "checkpoints" / "last.pt", weights_only=False)
    assert last["step"] == 7 and [row["step"] for row in last["val_history"]] == [3, 6]
    train_transformer(spec, codes_dir, tmp_path / "resumed" / "model.pt", tmp_path / "resumed-work")
    assert (tmp_path / "resumed" / "val_history.csv").read_text() == (tmp_path / "val_history.csv").read_text()
    # the report's long table and figure (one panel per variant, one line per depth)
    from dnd.report.training_curves import write_val_loss

    curves = write_val_loss({"dnd": ("t", tmp_path / "val_history.csv")}, tmp_path / "val_loss.csv")
    assert set(curves["weights"]) == {"raw", "ema"} and set(curves["depth"]) == {"all", "1", "2"} and len(curves) == 4 * 6
    assert (tmp_path / "val_loss.png").read_bytes()[:4] == b"\x89PNG"


def test_sampling_weights_raw_samples_the_raw_weights_and_ema_the_ema_weights(trained, tokenizer, tmp_path):
    """A model file whose raw and EMA weights disagree: greedy samples of `weights: raw` are the raw model's
    codes decoded, those of `weights: ema` the EMA model's, and a file without EMA weights refuses `ema`."""
    from dnd.data.images import to_uint8
    from dnd.tokenizer.rqvae import load_tokenizer
    from dnd.transformer.generate import SamplingConfig, generate
    from dnd.transformer.model import save_transformer

    raw = load_transformer(trained)
    ema = load_transformer(trained)
    torch.manual_seed(1)
    with torch.no_grad():
        for head in ema.heads:
            head.output.weight.normal_(std=1.0)  # other greedy codes
    both = tmp_path / "both.pt"
    save_transformer(both, raw, "t", ema_state_dict=ema.state_dict(),
                     weights={"raw": {"step": 1, "val_loss": 1.0}, "ema": {"step": 2, "val_loss": 1.0}})
    decoder = load_tokenizer(tokenizer)
    produced = {}
    for weights, model in (("raw", raw), ("ema", ema)):
        spec = SampleSpec.from_dict({"temperature": 0.0, "per_class": 2, "batch_size": 3, "save_png": False, "weights": weights})
        summary = sample_images(both, tokenizer, spec, tmp_path / weights, tmp_path / f"w-{weights}", {"model": "t", "sampling": weights})
        assert summary["weights"] == weights and summary["weights_step"] == {"raw": 1, "ema": 2}[weights]
        with np.load(tmp_path / weights / "samples.npz") as written:
            images, labels = written["arr_0"], written["arr_1"]
        with torch.no_grad():
            expected = to_uint8(decoder.decode(generate(model, torch.from_numpy(labels), SamplingConfig(temperature=0.0))).clamp(-1, 1))
        np.testing.assert_array_equal(images, np.repeat(expected, 3, axis=-1) if expected.shape[-1] == 1 else expected)
        produced[weights] = images
    assert not np.array_equal(produced["raw"], produced["ema"])
    with pytest.raises(ValueError, match="no EMA weights"):
        sample_images(trained, tokenizer, SampleSpec.from_dict({"per_class": 1, "weights": "ema"}), tmp_path / "x",
                      tmp_path / "wx", {"model": "t", "sampling": "x"})


def test_the_sampler_streams_its_shards_and_reads_only_the_model_header(trained, tokenizer, tmp_path):
    """samples.npz is written shard by shard (never all images in one process) and holds exactly the shards'
    images in order; the stage reads num_classes and the parameter count from the model file's header."""
    from dnd.metrics.adm import read_adm_batch
    from dnd.modelfile import read_model_header

    config, params, extra = read_model_header(trained)
    model = load_transformer(trained)
    assert config["num_classes"] == model.config.num_classes and params == model.num_params() and extra["name"]
    spec = SampleSpec.from_dict({"per_class": 3, "batch_size": 2, "shards": 3, "save_png": False, "seed": 1})
    summary = sample_images(trained, tokenizer, spec, tmp_path / "out", tmp_path / "work", {"model": "t", "sampling": "s"})
    shards_written = sorted((tmp_path / "work").glob("shard-*.npz"))
    assert len(shards_written) == 3
    parts = [np.load(path) for path in shards_written]
    expected = np.concatenate([np.repeat(p["arr_0"], 3, axis=-1) if p["arr_0"].shape[-1] == 1 else p["arr_0"] for p in parts])
    with np.load(tmp_path / "out" / "samples.npz") as written:
        np.testing.assert_array_equal(written["arr_0"], expected)
        assert written["arr_1"].tolist() == label_list(CLASSES, spec) == np.concatenate([p["arr_1"] for p in parts]).tolist()
        assert sorted(written["arr_1"].tolist()) == [c for c in range(CLASSES) for _ in range(3)]
    streamed = np.concatenate(list(read_adm_batch(tmp_path / "out" / "samples.npz").iter_images(4)))
    np.testing.assert_array_equal(streamed, expected)
    assert summary["params"] == model.num_params() and summary["n_images"] == CLASSES * 3


def test_the_sampler_compiles_its_decode_step_on_gpu_only(trained, tokenizer, tmp_path, monkeypatch):
    """`dnd sample` takes the compiled decode step (CUDA graphs) on a GPU and the eager one on a CPU, unless
    the sampling config says otherwise; the compiled step is the one `bench_sampling.py` measures."""
    import importlib

    generate_module = importlib.import_module("dnd.transformer.generate")  # the package re-exports a function of that name

    assert SampleSpec().compiled_on(torch.device("cuda")) and not SampleSpec().compiled_on(torch.device("cpu"))
    assert not SampleSpec(compile=False).compiled_on(torch.device("cuda"))
    assert SampleSpec(compile=True).compiled_on(torch.device("cpu"))
    seen = []
    real = generate_module.generate
    monkeypatch.setattr(generate_module, "generate", lambda *a, compile=False, **k: seen.append(compile) or real(*a, **k))
    spec = SampleSpec.from_dict({"per_class": 1, "batch_size": 4, "save_png": False})
    sample_images(trained, tokenizer, spec, tmp_path / "out", tmp_path / "work", {"model": "t", "sampling": "s"})
    assert seen and not any(seen)  # this machine: CPU, eager


def _ddp_worker(rank: int, world: int, port: int, codes_dir, out, work) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        train_transformer(TransformerSpec.from_dict("t", DETERMINISTIC), codes_dir, out, work)
    finally:
        dist.destroy_process_group()


DETERMINISTIC = {
    **TINY,
    "model": {"variant": "dnd", "class_dropout": 0.0, "token_dropout": 0.0, "resid_dropout": 0.0, "ffn_dropout": 0.0},
    "train": {**TINY["train"], "steps": 6, "checkpoint_every": 3, "eval_every": 6},
}


def test_ddp_over_two_ranks_equals_one_process_with_the_same_global_batch(codes, tmp_path):
    """Gloo on CPU: each rank takes half of every global batch; DDP's averaged gradients must give the
    weights a single process gets from the whole batch (no dropout, so nothing random differs)."""
    import socket

    import torch.multiprocessing as mp

    codes_dir, _ = codes
    train_transformer(TransformerSpec.from_dict("t", DETERMINISTIC), codes_dir, tmp_path / "one" / "model.pt", tmp_path / "one-work")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, codes_dir, tmp_path / "two" / "model.pt", tmp_path / "two-work"), nprocs=2, join=True)
    one = torch.load(tmp_path / "one" / "model.pt", weights_only=False)["state_dict"]
    two = torch.load(tmp_path / "two" / "model.pt", weights_only=False)["state_dict"]
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_the_authors_checkpoint_imports_as_a_model_file_with_both_weight_sets(tokenizer, tmp_path):
    """`import_authors_transformer` writes the same model.pt as training (raw weights, their EMA beside),
    says where it came from, and refuses a tokenizer whose codes the checkpoint does not predict."""
    import argparse

    from authors_layout import authors_shapes, random_state
    from dnd.stages.authors_weights import SOURCE, import_authors_transformer
    from dnd.transformer.authors_checkpoint import load_authors_checkpoint

    shapes = authors_shapes(dim=64, n_layer=2, vocab=VOCAB, num_classes=CLASSES, heads=DEPTH)
    args = argparse.Namespace(image_size=GRID * 16, downsample_size=16, num_classes=CLASSES, cls_token_num=1, gpt_type="c2i",
                              pred_head_positions="0,1")
    checkpoint = tmp_path / "authors.pt"
    torch.save({"model": random_state(shapes, 1), "ema": random_state(shapes, 2), "steps": 77, "args": args}, checkpoint)
    summary = import_authors_transformer("authors", checkpoint, tmp_path / "model.pt", tokenizer, {"n_head": 2})
    payload = torch.load(tmp_path / "model.pt", weights_only=False)
    assert payload["source"] == SOURCE == summary["source"] and payload["pretrained_sha256"]
    assert payload["weights"] == {"raw": {"step": 77, "val_loss": None}, "ema": {"step": 77, "val_loss": None}}
    raw, _ = load_authors_checkpoint(checkpoint, n_head=2)
    ema, _ = load_authors_checkpoint(checkpoint, n_head=2, use_ema=True)
    for key, value in load_transformer(tmp_path / "model.pt").state_dict().items():
        assert torch.equal(value, raw.state_dict()[key]), key
    for key, value in load_transformer(tmp_path / "model.pt", weights="ema").state_dict().items():
        assert torch.equal(value, ema.state_dict()[key]), key
    assert json.loads((tmp_path / "model.pt.provenance.json").read_text())["stage"] == "import_authors_transformer"
    other = tmp_path / "other_tok.pt"
    save_tokenizer(other, RQVAE(rqvae_config("demo_f8", depth=1, codebook_size=VOCAB, ch=32, z_channels=8, embed_dim=8)), "o")
    with pytest.raises(ValueError, match="depth 1"):
        import_authors_transformer("authors", checkpoint, tmp_path / "bad.pt", other, {"n_head": 2})
