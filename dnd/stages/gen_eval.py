"""`compute_reference` and `evaluate_generation`: FID, IS, precision/recall and the weight-free classifier
metrics of one sample set (Tables 2 and 3): the classifier's accuracy, and the Fréchet distance, precision
and recall in its features against the real test split (FID's code, another network: never called FID).

Which numbers are which (each metrics JSON repeats this in its `provenance`):
- Evaluator: `dnd.metrics.fid`, the ADM evaluator's formulas, on torch-fidelity's PyTorch port of the TF
  FID Inception graph, loaded from the one local file `metrics.inception_weights` (the same file as
  rFID in Table 1a). Without it FID/IS/precision/recall are n/a with the reason, never a number from
  another network. Grayscale images (the demo's glyphs) are repeated to 3 channels for Inception, on
  both sides.
- Reference: computed once per data set, its own DAG output. Either the training split of the
  class-labelled set (pool statistics and features from our extractor), or, in ADM mode, an ADM
  reference batch such as `VIRTUAL_imagenet256_labeled.npz` (statistics over the whole ImageNet training
  set, precomputed by the TF graph, plus 10k images whose features we compute for precision/recall).
  A reference made without weights is a file that says so and why, so the DAG keeps its shape.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dnd.atomic import atomic_path, write_json
from dnd.data.shards import decode_png, iter_records
from dnd.metrics.adm import IMAGES_KEY, LABELS_KEY, read_adm_batch, read_images_header, reference_from_adm_batch
from dnd.metrics.bootstrap import BootstrapSettings
from dnd.metrics.fid import Reference, collect_features, compare_features, compute_stats, evaluate_images
from dnd.metrics.inception import InceptionExtractor, InceptionWeightsMissing, load_inception
from dnd.metrics.protocol import generation_protocol
from dnd.provenance import file_sha256, record, write_provenance
from dnd.device import default_device

log = logging.getLogger("dnd.gen_eval")

GRAYSCALE_NOTE = "grayscale images are repeated to 3 channels before Inception (reference and samples alike)"
SAMPLES_NAME = "samples.npz"
SUMMARY_NAME = "summary.json"


@dataclass
class ReferenceConfig:
    inception_weights: str | None = None  # metrics.inception_weights (same file as rFID); None → reference unavailable
    split: str = "train"  # data-set mode: statistics of the training set
    # Data-set mode: the first N images of the split in shard order (shards are hash-assigned, so a mix of
    # classes); None = all. The features are kept for precision/recall (8 KB per image): ADM uses 10k.
    max_images: int | None = None
    batch_size: int = 50  # images per Inception forward pass
    # ADM mode: FID against the mu/sigma stored in the reference batch (whole training set, TF graph), as the
    # ADM evaluator does; false = statistics of its 10k images from our extractor instead.
    use_precomputed_stats: bool = True

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "ReferenceConfig":
        """From the rule's params {reference, metrics}. `adm_batch` chooses the rule's input (the source),
        not how the statistics are computed."""
        fields = {k: v for k, v in params.get("reference", {}).items() if k != "adm_batch"}
        return cls(**fields, inception_weights=params.get("metrics", {}).get("inception_weights"))


@dataclass
class GenEvalConfig:
    inception_weights: str | None = None  # metrics.inception_weights; must be the file the reference used
    batch_size: int = 50  # images per Inception / classifier forward pass
    # IS over consecutive chunks of this many samples, the last one partial (ADM: 5000; 50k samples → 10 chunks)
    is_split_size: int = 5000
    pr_k: int = 3  # k of the k-NN manifolds for precision/recall (ADM: 3)
    # precision/recall distances: float16 as ADM's DistanceBlock (float32 redo of an overflowing block), or float32
    pr_distance_dtype: str = "float16"
    bootstrap_resamples: int = 100  # resamples of the feature sets behind each interval; 0 = no intervals
    bootstrap_seed: int = 0
    # Score the samples with the demo's classifier (the rule then depends on train_classifier); False: n/a
    demo_classifier: bool = True

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "GenEvalConfig":
        """From the rule's params {generation, metrics}."""
        return cls(**params.get("generation", {}), inception_weights=params.get("metrics", {}).get("inception_weights"))


# ----------------------------------------------------------------- reference statistics
def _dataset_image_batches(dataset_dir: Path, split: str, max_images: int | None, batch_size: int) -> Iterator[np.ndarray]:
    """uint8 (b, H, W, C) batches of a split in shard order; C = 1 for grayscale sets, else 3."""
    batch: list[np.ndarray] = []
    for count, row in enumerate(iter_records(dataset_dir, split, columns=["png"])):
        if max_images is not None and count >= max_images:
            break
        image = decode_png(row["png"])
        pixels = np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"))
        batch.append(pixels[..., None] if pixels.ndim == 2 else pixels)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def _reference_from_dataset(dataset_dir: Path, cfg: ReferenceConfig, extractor: InceptionExtractor) -> Reference:
    batches = _dataset_image_batches(dataset_dir, cfg.split, cfg.max_images, cfg.batch_size)
    features = collect_features(batches, extractor)["pool"]  # (N, 2048)
    return Reference(
        stats=compute_stats(features),
        features=features,
        provenance={
            "reference_dataset": str(dataset_dir),
            "reference_split": cfg.split,
            "reference_images": len(features),
            "reference_selection": "all images" if cfg.max_images is None else f"first {cfg.max_images} in shard order",
            "reference_stats": "computed from the images with our Inception extractor",
            "reference_stats_precomputed": False,
            "reference_features": "computed from the images with our Inception extractor",
            "grayscale": GRAYSCALE_NOTE,
            **extractor.provenance,
        },
    )


def write_unavailable_reference(out: Path, reason: str, source: Path) -> None:
    """A reference file without statistics: downstream cells become n/a with `reason`."""
    provenance = {"available": False, "reason": reason, "source": str(source)}
    with atomic_path(Path(out)) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, provenance=np.array(json.dumps(provenance, sort_keys=True)))


def load_reference(path: Path) -> tuple[Reference | None, dict[str, Any]]:
    """(reference, provenance); the reference is None when it was made without weights."""
    with np.load(path) as data:
        if "mu" not in data.files:
            return None, json.loads(str(data["provenance"]))
    reference = Reference.load(path)
    return reference, reference.provenance


def compute_reference(source: Path, out: Path, cfg: ReferenceConfig) -> dict[str, Any]:
    """Reference statistics of `source` → `out` (an `.npz`, + provenance beside it).

    `source` is a class-labelled data set folder (statistics of `cfg.split`) or an ADM reference batch
    (`.npz`, ADM mode). Without Inception weights, `out` records {"available": false, "reason"}.
    """
    source, out = Path(source), Path(out)
    device = default_device()
    try:
        extractor = load_inception(cfg.inception_weights, device)
    except InceptionWeightsMissing as missing:
        log.warning("reference statistics unavailable, FID/IS/precision/recall will be n/a: %s", missing)
        write_unavailable_reference(out, str(missing), source)
        write_provenance(out, "compute_reference", asdict(cfg), available=False, reason=str(missing), source=str(source))
        return {"available": False, "reason": str(missing)}
    if source.suffix == ".npz":
        reference = reference_from_adm_batch(source, extractor, cfg.batch_size, cfg.use_precomputed_stats)
        reference.provenance["reference_mode"] = "ADM reference batch"
    else:
        reference = _reference_from_dataset(source, cfg, extractor)
        reference.provenance["reference_mode"] = "data set split"
    reference.provenance["available"] = True
    reference.save(out)
    write_provenance(out, "compute_reference", asdict(cfg), reference=reference.provenance)
    log.info("reference from %s: %d images (%s)", source, reference.provenance["reference_images"],
             reference.provenance["reference_stats"])
    return reference.provenance


# ----------------------------------------------------------------- samples
def sample_image_shape(path: Path) -> tuple[int, ...]:
    """The shape of arr_0 (N, H, W, C), read from its .npy header without loading the images."""
    return read_images_header(path, channels=(1, 3))[0]


def iter_sample_images(path: Path, batch_size: int) -> Iterator[np.ndarray]:
    """uint8 (b, H, W, C) chunks of arr_0: RGB batches (the ADM layout) are streamed from the file,
    grayscale ones (C = 1, small demo sets only) are loaded whole."""
    if sample_image_shape(path)[-1] == 3:
        yield from read_adm_batch(path).iter_images(batch_size)
        return
    with np.load(path) as data:
        images = data[IMAGES_KEY]
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


def sample_labels(path: Path) -> np.ndarray | None:
    with np.load(path) as data:
        return data[LABELS_KEY] if LABELS_KEY in data.files else None


# ----------------------------------------------------------------- evaluation
CLASSIFIER_FEATURE_KEYS = ("classifier_fd", "classifier_precision", "classifier_recall")
CLASSIFIER_FEATURES_NOTE = (
    "classifier_fd / classifier_precision / classifier_recall: Fréchet distance and ADM precision/recall "
    "(dnd.metrics.fid, the code of FID) in the demo classifier's pooled penultimate features, against the real "
    "test split; not FID. The distance is n/a when either side has no more images than feature dimensions"
)


def classifier_feature_metrics(classifier: Any, probs: np.ndarray, features: np.ndarray, labels: np.ndarray,
                               cfg: GenEvalConfig) -> dict[str, Any]:
    """The classifier-feature Fréchet distance, precision and recall of the samples against the real test
    split (FID's code, `compare_features`), and the bootstrap intervals of those and of the accuracy."""
    from dnd.metrics.bootstrap import fraction_interval
    from dnd.metrics.classifier import real_test_reference

    bootstrap = BootstrapSettings(resamples=cfg.bootstrap_resamples, seed=cfg.bootstrap_seed)
    compared = compare_features(features, real_test_reference(classifier), pr_k=cfg.pr_k,
                                pr_distance_dtype=cfg.pr_distance_dtype, bootstrap=bootstrap,
                                names=CLASSIFIER_FEATURE_KEYS, what="classifier Fréchet distance")
    hits = probs.argmax(axis=1) == np.asarray(labels, dtype=np.int64)
    accuracy_ci = fraction_interval(hits, bootstrap, "classifier_accuracy") if bootstrap.resamples > 0 else None
    return {
        **{key: compared[key] for key in CLASSIFIER_FEATURE_KEYS},
        "classifier_fd_na_reason": compared["frechet_na_reason"],
        "classifier_feature_dim": int(features.shape[1]),
        "classifier_n_reference": compared["n_reference"]["precision_recall"],
        "classifier_intervals": {**compared["intervals"], "classifier_accuracy": accuracy_ci},
    }


@dataclass
class InceptionSetup:
    """The extractor and reference for FID/IS/P/R, or the reason they are n/a."""

    extractor: InceptionExtractor | None
    reference: Reference | None
    reference_provenance: dict[str, Any]
    na_reason: str | None


def inception_setup(reference_path: Path, cfg: GenEvalConfig) -> InceptionSetup:
    """Load the reference and the extractor; refuse a reference made with other Inception weights."""
    reference, reference_provenance = load_reference(reference_path)
    if reference is None:
        reason = f"reference statistics unavailable: {reference_provenance['reason']}"
        return InceptionSetup(None, None, reference_provenance, reason)
    try:
        extractor = load_inception(cfg.inception_weights, default_device())
    except InceptionWeightsMissing as missing:
        return InceptionSetup(None, None, reference_provenance, str(missing))
    reference_sha = reference_provenance.get("inception_weights_sha256")
    if reference_sha != extractor.provenance["inception_weights_sha256"]:
        raise ValueError(
            f"{reference_path} was computed with Inception weights {reference_provenance.get('inception_weights')} "
            f"(sha256 {reference_sha}), but {cfg.inception_weights} differs: FID across two networks is meaningless; "
            "recompute the reference with the current metrics.inception_weights"
        )
    return InceptionSetup(extractor, reference, reference_provenance, None)


def _sampling_settings(summary: dict[str, Any]) -> dict[str, Any]:
    """What the sampler's summary.json says about the model and its sampling settings."""
    sampling = summary.get("sampling", {})
    return {
        "model": summary["model"],
        "sampling_name": summary.get("sampling_name"),
        "variant": summary.get("variant"),
        "params": summary.get("params"),
        "cfg_scale": sampling.get("cfg_scale"),
        "temperature": sampling.get("temperature"),
        "sampling": sampling,
        "sampling_seconds": summary.get("seconds"),
    }


def evaluate_generation(
    samples_dir: Path, reference_path: Path, classifier_path: Path | None, out_json: Path, cfg: GenEvalConfig
) -> dict[str, Any]:
    """Metrics of `samples_dir/samples.npz` (ADM layout, intended labels in arr_1) → `out_json`.

    FID/IS/precision/recall against the reference (n/a with `fid_na_reason` without weights), and the
    classifier's accuracy/confidence w.r.t. the intended labels (n/a with `classifier_na_reason` without
    a classifier or labels) with the Fréchet distance, precision and recall in the classifier's features
    against the real test split (`classifier_fd`, ..., not FID). One pass over the samples feeds both.
    """
    from dnd.metrics.classifier import DESCRIPTION, load_classifier, predict, scores_from_probabilities

    samples_dir = Path(samples_dir)
    samples_path = samples_dir / SAMPLES_NAME
    summary = json.loads((samples_dir / SUMMARY_NAME).read_text())
    shape = sample_image_shape(samples_path)  # (N, H, W, C)
    labels = sample_labels(samples_path)
    classifier = load_classifier(classifier_path) if classifier_path is not None and labels is not None else None
    setup = inception_setup(reference_path, cfg)
    probabilities: list[np.ndarray] = []
    classifier_features: list[np.ndarray] = []

    def batches() -> Iterator[np.ndarray]:
        for batch in iter_sample_images(samples_path, cfg.batch_size):
            if classifier is not None:
                probs, feats = predict(classifier, batch, cfg.batch_size)
                probabilities.append(probs)
                classifier_features.append(feats)
            yield batch

    result: dict[str, Any] = {**_sampling_settings(summary), "n_samples": shape[0], "image_shape": list(shape[1:])}
    if setup.extractor is not None:
        inception = evaluate_images(
            batches(), setup.extractor, setup.reference, is_split_size=cfg.is_split_size, pr_k=cfg.pr_k,
            pr_distance_dtype=cfg.pr_distance_dtype,
            bootstrap=BootstrapSettings(resamples=cfg.bootstrap_resamples, seed=cfg.bootstrap_seed),
        )
        result |= {key: inception[key] for key in ("fid", "is", "precision", "recall", "n_reference", "intervals")}
        if inception["fid_na_reason"]:
            result["frechet_na_reason"] = inception["fid_na_reason"]
            log.warning("%s: %s", samples_dir, inception["fid_na_reason"])
        provenance = {**inception["provenance"], "grayscale": GRAYSCALE_NOTE}
    else:
        for _ in batches():  # the classifier's pass alone
            pass
        result |= {"fid": None, "is": None, "precision": None, "recall": None, "fid_na_reason": setup.na_reason,
                   "n_reference": None, "intervals": None}
        provenance = {"evaluator": None, "reference": setup.reference_provenance}
        log.warning("FID/IS/precision/recall n/a for %s: %s", samples_dir, setup.na_reason)
    result["paper_protocol"] = generation_protocol(shape[0], setup.reference_provenance)
    if classifier is not None:
        probs = np.concatenate(probabilities)
        scores = scores_from_probabilities(probs, labels)
        result["classifier"] = {**scores, "real_test_accuracy": classifier.summary["real_test_accuracy"]}
        result |= classifier_feature_metrics(classifier, probs, np.concatenate(classifier_features), labels, cfg)
        provenance["classifier"] = {"path": str(classifier_path), "sha256": file_sha256(Path(classifier_path)),
                                    "description": DESCRIPTION, "feature_metrics": CLASSIFIER_FEATURES_NOTE}
    else:
        result["classifier"] = None
        result |= {key: None for key in CLASSIFIER_FEATURE_KEYS}
        result["classifier_na_reason"] = (
            ("not requested (evaluation.generation.demo_classifier: false)" if not cfg.demo_classifier
             else "no classifier given") if classifier_path is None else f"{samples_path} holds no labels ({LABELS_KEY})"
        )
    result["provenance"] = {
        **provenance,
        "samples": str(samples_path),
        "samples_sha256": file_sha256(samples_path),
        "run": record("evaluate_generation", asdict(cfg), samples=str(samples_dir), reference=str(reference_path)),
    }
    write_json(out_json, result)
    log.info("%s: fid=%s is=%s classifier accuracy=%s classifier_fd=%s (%d samples)", samples_dir, result["fid"], result["is"],
             (result["classifier"] or {}).get("accuracy"), result["classifier_fd"], shape[0])
    return result
