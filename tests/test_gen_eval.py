"""Generation metrics (Tables 2 and 3): the weight-free classifier, reference statistics with and without
Inception weights, evaluate_generation on sample folders in the sampler's layout, and the tables."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dnd.report import generation as gen_tables
from dnd.data import shards
from dnd.data.labelled import LabelledConfig, write_digits_image_folder
from dnd.data.splits import SplitConfig
from dnd.metrics.adm import write_adm_batch
from dnd.metrics.classifier import ClassifierConfig, classifier_scores, load_classifier
from dnd.metrics.classifier_train import train_classifier
from dnd.metrics.fid import Reference
from dnd.metrics.inception import WEIGHTS_SETTING
from dnd.provenance import file_sha256
from dnd.stages.classes import ClassesConfig, prepare_images
from dnd.stages.gen_eval import (
    GenEvalConfig,
    ReferenceConfig,
    compute_reference,
    evaluate_generation,
    load_reference,
)

FAST_CLASSIFIER = ClassifierConfig(steps=60, batch_size=32, width=8, seed=0)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """20 digits per class at 16 px grayscale: ~150 train and ~50 test images."""
    base = tmp_path_factory.mktemp("digits")
    root = write_digits_image_folder(base / "tree", per_class=20, upscale_to=16)
    cfg = ClassesConfig(root=str(root), image=LabelledConfig(size=16, grayscale=True), shards=1,
                        splits=SplitConfig(val_fraction=0.0, test_fraction=0.25, test_max_images=None))
    prepare_images(cfg, base / "classes", base / "work")
    return base / "classes"


@pytest.fixture(scope="module")
def classifier_path(digits, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("classifier") / "classifier.pt"
    train_classifier(digits, path, FAST_CLASSIFIER, path.parent / "work")
    return path


def split_images(dataset: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W, 1) grayscale images and labels (N,) of one split."""
    rows = list(shards.iter_records(dataset, split, columns=["png", "label"]))
    images = np.stack([np.asarray(shards.decode_png(r["png"]))[..., None] for r in rows])
    return images, np.array([r["label"] for r in rows])


def write_samples(folder: Path, images: np.ndarray, labels: np.ndarray, grayscale_file: bool = False, **summary) -> Path:
    """A samples folder as the sampler writes it: samples.npz (ADM layout) + summary.json."""
    folder.mkdir(parents=True)
    if grayscale_file:
        np.savez(folder / "samples.npz", arr_0=images, arr_1=labels)
    else:
        write_adm_batch(folder / "samples.npz", np.repeat(images, 3, axis=-1), labels)
    settings = {"model": "dnd_demo", "sampling_name": "cfg2", "variant": "dnd", "params": 123_456, "seconds": 1.5,
                "sampling": {"cfg_scale": 2.0, "temperature": 1.0, "top_k": 0}} | summary
    (folder / "summary.json").write_text(json.dumps(settings))
    return folder


def test_classifier_beats_chance_on_real_images_and_is_deterministic(digits, classifier_path, tmp_path):
    classifier = load_classifier(classifier_path)
    assert classifier.image_shape == (16, 16, 1) and classifier.classes == [str(d) for d in range(10)]
    images, labels = split_images(digits, "test")
    scores = classifier_scores(classifier, images, labels)
    assert scores["n"] == len(labels) >= 30
    assert scores["accuracy"] > 0.6  # chance: 0.1
    assert scores["accuracy"] == pytest.approx(classifier.summary["real_test_accuracy"])
    assert 0 < scores["confidence"] <= 1
    scrambled = np.random.default_rng(0).permutation(labels)
    assert classifier_scores(classifier, images, scrambled)["accuracy"] < 0.35
    # RGB samples of gray digits score exactly as the gray ones.
    rgb = classifier_scores(classifier, np.repeat(images, 3, axis=-1), labels)
    assert rgb["accuracy"] == scores["accuracy"]
    again = tmp_path / "again.pt"
    train_classifier(digits, again, FAST_CLASSIFIER, tmp_path / "work-again")
    first, second = torch.load(classifier_path)["model"], torch.load(again)["model"]
    assert all(torch.equal(first[name], second[name]) for name in first)
    with pytest.raises(ValueError, match="16, 16"):
        classifier_scores(classifier, np.zeros((2, 8, 8, 1), np.uint8), np.zeros(2))


def test_table1a_scores_reconstructions_with_the_classifier(digits, classifier_path, tmp_path):
    """Table 1a's classifier column: accuracy on the reconstructions with its interval over the test images;
    the identity scores as the originals, a blank reconstruction near chance; n/a with the reason elsewhere."""
    from dnd.data.images import ImageShardDataset
    from dnd.report import table1
    from dnd.stages.recon import ReconBatch, ReconEvalConfig, classifier_metrics, image_bootstrap, measure_reconstruction

    cfg = ReconEvalConfig(max_images=None, batch_size=16, bootstrap_resamples=200)
    data = ImageShardDataset([digits], "test", 1, resolution=None, columns=("id", "text", "label"))
    rows = {
        "identity": lambda batch, grid: ReconBatch(batch),
        "blank": lambda batch, grid: ReconBatch(torch.full_like(batch, -1.0)),
    }
    for name, reconstruct in rows.items():
        metrics = measure_reconstruction(reconstruct, data, 16, torch.device("cpu"), None, cfg, tmp_path / f"{name}.json",
                                         classifier_path)
        (tmp_path / f"{name}.json").write_text(json.dumps({"tokenizer": name, "testset": "classes", **metrics}))
        assert metrics["classifier_n"] == metrics["n_images"] == len(data)
        low, high = metrics["classifier_acc_interval"]
        assert low <= metrics["classifier_acc"] <= high and metrics["l2_interval"][0] <= metrics["l2"] <= metrics["l2_interval"][1]
        if name == "identity":
            assert metrics["classifier_acc"] == metrics["classifier_acc_originals"] > 0.6 and metrics["l2_interval"] == [0.0, 0.0]
        else:
            assert metrics["classifier_acc"] <= 0.2 and low < high
    frame = table1.table1a([tmp_path / "identity.json", tmp_path / "blank.json"], {}).set_index("tokenizer")
    assert frame.loc["identity", "classifier_acc"] == frame.loc["identity", "classifier_acc_originals"]
    assert frame.loc["blank", "classifier_acc_95ci"].startswith("[") and frame.loc["blank", "L2_95ci"].startswith("[")
    assert "classifier accuracy" not in frame.loc["blank", "note"]
    # n/a with the reason: no classifier given, or a test set without labels
    unlabelled = ImageShardDataset([digits], "test", 1, resolution=None)
    images = np.zeros((len(data), 16, 16, 1), np.uint8)
    bootstrap = image_bootstrap(cfg)
    assert "demo_classifier" in classifier_metrics(images, images, data, None, bootstrap)["classifier_acc_na_reason"]
    na = classifier_metrics(images, images, unlabelled, classifier_path, bootstrap)
    assert na == {"classifier_acc": None, "classifier_acc_na_reason": "the test set has no class labels"}
    (tmp_path / "text.json").write_text(json.dumps({"tokenizer": "text", "testset": "t", "n_images": 2, "l2": 0.1, **na}))
    row = table1.table1a([tmp_path / "text.json"], {}).iloc[0]
    assert row["classifier_acc"] == row["classifier_acc_95ci"] == row["L2_95ci"] == "n/a"
    assert "classifier accuracy n/a: the test set has no class labels" in row["note"]


def test_reference_without_weights_records_the_reason(digits, tmp_path):
    out = tmp_path / "reference.npz"
    summary = compute_reference(digits, out, ReferenceConfig(inception_weights=None))
    assert summary["available"] is False
    reference, provenance = load_reference(out)
    assert reference is None
    assert provenance["available"] is False and WEIGHTS_SETTING in provenance["reason"]
    assert out.with_name(out.name + ".provenance.json").exists()


@pytest.mark.parametrize("grayscale_file", [False, True])
def test_generation_without_weights_is_na_with_the_classifier_metric(digits, classifier_path, tmp_path, grayscale_file):
    reference = tmp_path / "reference.npz"
    compute_reference(digits, reference, ReferenceConfig(inception_weights=None))
    images, labels = split_images(digits, "test")
    samples = write_samples(tmp_path / "samples" / "dnd_demo" / "cfg2", images, labels, grayscale_file)
    out = tmp_path / "metrics.json"
    result = evaluate_generation(samples, reference, classifier_path, out, GenEvalConfig())
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert (result["fid"], result["is"], result["precision"], result["recall"]) == (None, None, None, None)
    assert WEIGHTS_SETTING in result["fid_na_reason"]
    assert result["provenance"]["evaluator"] is None
    assert result["classifier"]["accuracy"] > 0.6
    assert result["classifier"]["accuracy"] == pytest.approx(load_classifier(classifier_path).summary["real_test_accuracy"])
    assert (result["model"], result["variant"], result["params"]) == ("dnd_demo", "dnd", 123_456)
    assert (result["cfg_scale"], result["temperature"], result["n_samples"]) == (2.0, 1.0, len(labels))
    assert result["provenance"]["classifier"]["sha256"] == file_sha256(classifier_path)
    no_classifier = evaluate_generation(samples, reference, None, tmp_path / "bare.json", GenEvalConfig())
    assert no_classifier["classifier"] is None and no_classifier["classifier_na_reason"] == "no classifier given"
    unasked = evaluate_generation(samples, reference, None, tmp_path / "unasked.json", GenEvalConfig(demo_classifier=False))
    assert unasked["classifier_na_reason"] == "not requested (evaluation.generation.demo_classifier: false)"


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # a few images in 2048 dimensions: expected
def test_generation_with_weights_gives_numbers_and_names_them(digits, classifier_path, random_weights, tmp_path):
    reference_path = tmp_path / "reference.npz"
    cfg = ReferenceConfig(inception_weights=str(random_weights), max_images=5, batch_size=5)
    provenance = compute_reference(digits, reference_path, cfg)
    assert provenance["available"] and provenance["reference_images"] == 5
    images, labels = split_images(digits, "test")
    samples = write_samples(tmp_path / "samples", images[:5], labels[:5])
    gen_cfg = GenEvalConfig(inception_weights=str(random_weights), batch_size=5, is_split_size=2, bootstrap_resamples=4)
    result = evaluate_generation(samples, reference_path, classifier_path, tmp_path / "m.json", gen_cfg)
    # 5 images in 2048 dimensions: FID n/a with the reason; IS and precision/recall are numbers
    assert result["fid"] is None and "5 sample images" in result["frechet_na_reason"]
    assert result["is"] >= 1.0 - 1e-9
    assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
    assert "fid_na_reason" not in result
    assert result["n_reference"] == {"fid": 5, "precision_recall": 5}
    assert result["intervals"]["fid"] is None and len(result["intervals"]["is"]) == 2
    assert result["paper_protocol"].startswith("not comparable to the paper: 5 samples (paper: 50000)")
    assert "data set split" in result["paper_protocol"]
    named = result["provenance"]
    assert named["inception_weights"] == str(random_weights)
    assert named["inception_weights_sha256"] == file_sha256(random_weights)
    assert named["reference"]["reference_dataset"] == str(digits)
    assert named["reference"]["reference_split"] == "train"
    assert named["is_chunks"] == [2, 2, 1]  # ADM: consecutive chunks, the last one partial
    assert "4 resamples" in named["bootstrap"]
    assert "repeated to 3 channels" in named["grayscale"]
    assert result["classifier"]["n"] == 5
    # A reference made with other weights is refused, never mixed into one FID.
    forged = Reference.load(reference_path)
    forged.provenance["inception_weights_sha256"] = "0" * 64
    forged.save(tmp_path / "forged.npz")
    with pytest.raises(ValueError, match="recompute the reference"):
        evaluate_generation(samples, tmp_path / "forged.npz", None, tmp_path / "x.json", gen_cfg)


def test_adm_reference_batch_mode_uses_the_stored_statistics(random_weights, tmp_path):
    adm = tmp_path / "VIRTUAL_demo_labeled.npz"
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    np.savez(adm, arr_0=images, arr_1=np.arange(4), mu=np.full(2048, 0.5), sigma=np.eye(2048))
    out = tmp_path / "reference.npz"
    compute_reference(adm, out, ReferenceConfig(inception_weights=str(random_weights), batch_size=4))
    reference, provenance = load_reference(out)
    np.testing.assert_array_equal(reference.stats.mu, np.full(2048, 0.5))
    assert reference.features.shape == (4, 2048)
    assert provenance["reference_mode"] == "ADM reference batch" and "precomputed" in provenance["reference_stats"]
    assert provenance["reference_batch_sha256"] == file_sha256(adm)


def metrics_json(folder: Path, model: str, cfg: float, variant: str, fid: float | None, acc: float | None) -> Path:
    result = {
        "model": model, "variant": variant, "params": 1_400_000_000 if model == "dnd_xxl" else 2_345_678,
        "cfg_scale": cfg, "temperature": 1.0, "n_samples": 100, "sampling_name": f"cfg{cfg:g}",
        "fid": fid, "is": None if fid is None else 250.0, "precision": None if fid is None else 0.8,
        "recall": None if fid is None else 0.55,
        "classifier": None if acc is None else {"accuracy": acc, "confidence": acc - 0.1, "real_test_accuracy": 0.99},
        "provenance": {"evaluator": None if fid is None else "dnd.metrics.fid", "reference": {"available": fid is not None}},
    }
    if fid is not None:
        result |= {"intervals": {"fid": [fid - 0.1, fid + 0.1], "is": [245.0, 255.0], "precision": [0.79, 0.81],
                                 "recall": [0.54, 0.56]},
                   "n_reference": {"fid": None, "precision_recall": 10_000},
                   "paper_protocol": "not comparable to the paper: 100 samples (paper: 50000)"}
    if fid is None:
        result["fid_na_reason"] = f"... set {WEIGHTS_SETTING} ..."
    if acc is None:
        result["classifier_na_reason"] = "no classifier configured"
    path = folder / f"{model}-{cfg:g}-{variant}.json"
    path.write_text(json.dumps(result))
    return path


def test_table2_rows_columns_and_na_cells(tmp_path):
    paths = [
        metrics_json(tmp_path, "dnd_xxl", 4.0, "dnd", 6.55, None),
        metrics_json(tmp_path, "dnd_xxl", 1.5, "dnd", 2.96, None),
        metrics_json(tmp_path, "demo", 2.0, "dnd", None, 0.9),
    ]
    frame = gen_tables.table2(paths, {"demo": "demo: digits 32 px"})
    assert list(frame.columns) == gen_tables.TABLE2_COLUMNS
    assert list(zip(frame["model"], frame["cfg"])) == [("dnd_xxl", "1.5"), ("dnd_xxl", "4"), ("demo", "2")]
    assert list(frame["params"]) == ["1.4B", "1.4B", "2.3M"]
    assert frame.loc[0, "FID"] == "2.96" and frame.loc[0, gen_tables.CLASSIFIER_ACC] == "n/a"
    assert (frame.loc[0, "FID_95ci"], frame.loc[0, "IS_95ci"], frame.loc[0, "recall_95ci"]) == (
        "[2.86, 3.06]", "[245.0, 255.0]", "[0.540, 0.560]")
    assert frame.loc[0, "n_reference"] == "FID:ADM precomputed (whole set) PR:10000"
    assert frame.loc[0, "paper_protocol"].startswith("not comparable to the paper")
    assert (frame.loc[2, "FID_95ci"], frame.loc[2, "n_reference"]) == ("n/a", "n/a")
    # FID alone n/a (too few images): IS and precision/recall stay, the note gives the reason
    few = json.loads(paths[0].read_text()) | {"fid": None, "frechet_na_reason": "FID n/a: 100 sample images, no more than ..."}
    few["intervals"]["fid"] = None
    (tmp_path / "few.json").write_text(json.dumps(few))
    row = gen_tables.table2([tmp_path / "few.json"], {}).iloc[0]
    assert (row["FID"], row["FID_95ci"], row["IS"]) == ("n/a", "n/a", "250.0")
    assert row["note"].startswith("FID n/a: 100 sample images")
    demo = frame.iloc[2]
    assert (demo["FID"], demo["IS"], demo["precision"], demo[gen_tables.CLASSIFIER_ACC]) == ("n/a", "n/a", "n/a", "0.900")
    assert demo["note"].startswith("demo: digits 32 px") and WEIGHTS_SETTING in demo["note"] and "0.990" in demo["note"]
    assert gen_tables.headline_metric(frame) == "FID"
    assert gen_tables.headline_metric(frame.iloc[2:]) == gen_tables.CLASSIFIER_ACC
    with_fd = frame.iloc[2:].assign(**{gen_tables.CLASSIFIER_FD: "1.5"})
    assert gen_tables.headline_metric(with_fd) == gen_tables.CLASSIFIER_FD
    for rows in (frame, frame.iloc[2:]):  # FID, then the classifier accuracy when FID is n/a
        plot = tmp_path / f"plot-{len(rows)}.png"
        gen_tables.plot_fid_vs_cfg(rows, plot)
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    provenance = gen_tables.row_provenance(paths)
    assert [p["model"] for p in provenance] == ["dnd_xxl", "dnd_xxl", "demo"]
    assert WEIGHTS_SETTING in provenance[2]["fid_na_reason"]


def test_table3_rows_in_variant_order_and_one_sampling_setting(tmp_path):
    paths = [metrics_json(tmp_path, f"m_{v}", 2.0, v, None, acc) for v, acc in
             [("dnd", 0.9), ("1d", 0.8), ("vertical", 0.85), ("parallel", 0.7)]]
    frame = gen_tables.table3(paths)
    assert list(frame.columns) == gen_tables.TABLE3_COLUMNS
    assert list(frame["variant"]) == ["1d", "parallel", "vertical", "dnd"]
    with pytest.raises(ValueError, match="one metrics file per variant"):
        gen_tables.table3(paths + [paths[0]])
    other_cfg = metrics_json(tmp_path / "..", "m_dnd", 4.0, "dnd", None, 0.9)
    with pytest.raises(ValueError, match="one sampling setting"):
        gen_tables.table3(paths[1:] + [other_cfg])


def order_frame(values: dict[str, float | None], column: str, half_width: float | dict[str, float] = 0.01) -> pd.DataFrame:
    """A Table 3 frame with `column` and its `_95ci` (value ± half_width; a dict gives each variant its own)."""
    widths = half_width if isinstance(half_width, dict) else dict.fromkeys(values, half_width)
    return pd.DataFrame({"variant": list(values), column: ["n/a" if v is None else f"{v}" for v in values.values()],
                         f"{column}_95ci": ["n/a" if v is None else f"[{v - widths[k]:.4f}, {v + widths[k]:.4f}]"
                                            for k, v in values.items()]})


def test_order_note_claims_an_order_only_where_intervals_separate():
    acc = gen_tables.CLASSIFIER_ACC
    paper_like = order_frame({"1d": 0.8, "parallel": 0.7, "vertical": 0.85, "dnd": 0.9}, acc)
    assert gen_tables.order_note(paper_like, acc).startswith("Table 3 shows the paper's order")
    # the same values with wide intervals: dnd/vertical and vertical/1d overlap, 1d/parallel still separate
    wide = order_frame({"1d": 0.8, "parallel": 0.7, "vertical": 0.85, "dnd": 0.9}, acc,
                       {"1d": 0.03, "parallel": 0.01, "vertical": 0.03, "dnd": 0.03})
    note = gen_tables.order_note(wide, acc)
    assert note.startswith("Table 3 does not show")
    assert "dnd vs vertical: no significant difference" in note and "vertical vs 1d: no significant difference" in note
    assert "1d vs parallel: paper's order (95 % intervals separate)" in note
    swapped = order_frame({"1d": 0.86, "parallel": 0.7, "vertical": 0.8, "dnd": 0.9}, acc)
    note = gen_tables.order_note(swapped, acc)
    assert note.startswith("Table 3 does not show") and "dnd (0.9), 1d (0.86), vertical (0.8)" in note
    assert "vertical vs 1d: opposite order" in note
    tie = order_frame({"1d": 0.8, "parallel": 0.7, "vertical": 0.9, "dnd": 0.9}, acc)
    assert "dnd vs vertical: no significant difference" in gen_tables.order_note(tie, acc)
    no_intervals = order_frame({"1d": 0.8, "parallel": 0.7, "vertical": 0.85, "dnd": 0.9}, acc).drop(columns=f"{acc}_95ci")
    assert gen_tables.order_note(no_intervals, acc).startswith("Table 3 does not show")
    # FID (lower is better): the paper's own numbers show its order; the classifier-feature distance is named as such
    fid = order_frame({"1d": 4.12, "parallel": 6.32, "vertical": 3.18, "dnd": 2.58}, "FID")
    assert gen_tables.order_note(fid, "FID").startswith("Table 3 shows")
    fd = order_frame({"1d": 4.12, "parallel": 6.32, "vertical": 3.18, "dnd": 2.58}, gen_tables.CLASSIFIER_FD)
    assert "not FID" in gen_tables.order_note(fd, gen_tables.CLASSIFIER_FD)
    partial = order_frame({"1d": 4.12, "parallel": None, "vertical": None, "dnd": 5.0}, "FID")
    assert "does not show" in gen_tables.order_note(partial, "FID") and "only 2 of 4" in gen_tables.order_note(partial, "FID")
    missing = order_frame({"1d": None, "parallel": None, "vertical": None, "dnd": 2.0}, "FID")
    assert "cannot be compared" in gen_tables.order_note(missing, "FID")


def _noise_image_folder(root: Path, per_class: int, classes: int = 3, side: int = 32) -> Path:
    """An ImageFolder tree of random gray images (~1 KB as PNG each: they dominate what the sets hold)."""
    from PIL import Image

    rng = np.random.default_rng(per_class)
    for label in range(classes):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(root / f"c{label}" / f"{index:05d}.png")
    return root


PEAK_SCRIPT = """
import sys
from pathlib import Path
import pyarrow as pa
from dnd.data.images import ImageShardDataset
from dnd.metrics.classifier import ClassifierConfig
from dnd.metrics.classifier_train import train_classifier
dataset, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if mode == "classifier":
    train_classifier(dataset, out / "classifier.pt", ClassifierConfig(steps=3, batch_size=16, width=4, score_images=64), out / "work")
else:  # the control: the same split held in memory
    ImageShardDataset([dataset], "train", 1, resolution=None, columns=("label",))
print(pa.default_memory_pool().max_memory())
"""


def test_the_classifier_streams_its_training_set(tmp_path):
    """Training sets 20x apart in size: the classifier's peak Arrow memory stays the same (its training images are
    memory-mapped, not held), while holding the same split in memory grows with it (the control)."""
    peaks = {}
    for name, per_class in (("small", 100), ("large", 2000)):
        root = _noise_image_folder(tmp_path / name / "tree", per_class)
        cfg = ClassesConfig(root=str(root), image=LabelledConfig(size=32, grayscale=True), shards=1,
                            splits=SplitConfig(val_fraction=0.0, test_fraction=0.02, test_max_images=None))
        prepare_images(cfg, tmp_path / name / "classes", tmp_path / name / "work")
        for mode in ("classifier", "in_memory"):
            run = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / name / "classes"), str(tmp_path / name / mode), mode],
                                 capture_output=True, text=True, check=True)
            peaks[name, mode] = int(run.stdout.split()[-1])
    assert peaks["large", "in_memory"] > 10 * peaks["small", "in_memory"]  # the control: memory ∝ set size
    assert peaks["large", "classifier"] < 1.5 * peaks["small", "classifier"], peaks
    assert peaks["large", "classifier"] < peaks["large", "in_memory"] / 5, peaks


def test_classifier_feature_metrics_use_the_fid_code_on_the_test_split(digits, classifier_path, tmp_path):
    """The classifier-feature Fréchet distance: ≈ 0 for the real test split itself, larger for a shifted set;
    precision/recall and every interval (the accuracy's too) are there, named apart from FID."""
    reference = tmp_path / "reference.npz"
    compute_reference(digits, reference, ReferenceConfig(inception_weights=None))
    images, labels = split_images(digits, "test")
    classifier = load_classifier(classifier_path)
    assert classifier.summary["test_features"].shape == (len(images), 4 * FAST_CLASSIFIER.width)
    cfg = GenEvalConfig(bootstrap_resamples=20)
    same = evaluate_generation(write_samples(tmp_path / "same", images, labels), reference, classifier_path,
                               tmp_path / "same.json", cfg)
    assert same["fid"] is None and same["classifier_fd"] == pytest.approx(0.0, abs=1e-3)
    assert same["classifier_precision"] == same["classifier_recall"] == 1.0
    assert same["classifier_feature_dim"] == 32 and same["classifier_n_reference"] == len(images)
    shifted = np.clip(images.astype(int) + 80, 0, 255).astype(np.uint8)  # a brighter background
    far = evaluate_generation(write_samples(tmp_path / "far", shifted, labels), reference, classifier_path,
                              tmp_path / "far.json", cfg)
    assert far["classifier_fd"] > 10 * max(same["classifier_fd"], 1e-3) and far["classifier_fd"] > 0.1
    low, high = far["classifier_intervals"]["classifier_fd"]
    assert low <= far["classifier_fd"] <= high or low > 0  # a resampled reference: the interval may not hold the point
    acc_low, acc_high = far["classifier_intervals"]["classifier_accuracy"]
    assert acc_low <= far["classifier"]["accuracy"] <= acc_high
    # no more samples than feature dimensions: the distance is n/a with its reason, precision/recall remain
    few = evaluate_generation(write_samples(tmp_path / "few", images[:20], labels[:20]), reference, classifier_path,
                              tmp_path / "few.json", cfg)
    assert few["classifier_fd"] is None and "32 feature dimensions" in few["classifier_fd_na_reason"]
    assert few["classifier_precision"] is not None
