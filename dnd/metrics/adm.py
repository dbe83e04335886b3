"""Batches in the layout of the ADM evaluator (OpenAI guided-diffusion, `evaluations/evaluator.py`).

An ADM `.npz` batch holds
- `arr_0`: uint8 images (N, H, W, 3), the only array the evaluator requires;
- `arr_1`: int class labels (N,), written by the class-conditional samplers ("labeled" reference batches);
- reference batches only: `mu`, `sigma` (pool_3, 2048-d) and `mu_s`, `sigma_s` (the first 7 channels
  of `mixed_6/conv`, flattened, for sFID), precomputed by the evaluator with its TensorFlow graph.

Which numbers are which. The ADM evaluator (the paper's Table 2 protocol) runs the TensorFlow Inception
graph `classify_image_graph_def.pb` on both batches, e.g. against `VIRTUAL_imagenet256_labeled.npz`
(10k ImageNet validation-set images with TF-computed statistics). We run torch-fidelity's PyTorch port
of that same graph (weights from `metrics.inception_weights`) with the same formulas, so our FID, IS and
precision/recall are comparable to ADM numbers but not bit-identical, and we compute no sFID (the port
does not expose `mixed_6/conv`). `reference_from_adm_batch` records in its provenance whether the
reference statistics are the ones precomputed by the TF graph or our own from `arr_0`.
"""

from __future__ import annotations

import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from dnd.atomic import atomic_path
from dnd.metrics.fid import FeatureStats, Reference, collect_features, compute_stats
from dnd.metrics.inception import InceptionExtractor
from dnd.provenance import file_sha256

IMAGES_KEY = "arr_0"
LABELS_KEY = "arr_1"


@dataclass
class AdmBatch:
    """An ADM batch file, read without loading its images (stream them with `iter_images`)."""

    path: Path
    num_images: int
    image_shape: tuple[int, ...]  # (H, W, 3)
    labels: np.ndarray | None  # (N,) from arr_1, when present
    pool_stats: FeatureStats | None  # mu / sigma, when precomputed
    spatial_stats: FeatureStats | None  # mu_s / sigma_s, when precomputed

    def iter_images(self, batch_size: int) -> Iterator[np.ndarray]:
        """Stream arr_0 in (b, H, W, 3) uint8 chunks; a 50k-image batch never sits in memory whole."""
        with open_images(self.path) as (member, shape, dtype):
            image_bytes = int(np.prod(shape[1:])) * dtype.itemsize
            for start in range(0, shape[0], batch_size):
                count = min(batch_size, shape[0] - start)
                raw = bytearray(member.read(count * image_bytes))  # a bytearray keeps the array writable
                if len(raw) != count * image_bytes:
                    raise ValueError(f"{self.path}: arr_0 ends early at image {start}")
                yield np.frombuffer(raw, dtype=dtype).reshape(count, *shape[1:])


NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


@contextmanager
def open_images(path: Path, channels: tuple[int, ...] = (3,)) -> Iterator[tuple[Any, tuple[int, ...], np.dtype]]:
    """arr_0 of a batch, opened inside its .npz and positioned at its first image, with its shape and dtype:
    C-ordered uint8 (N, H, W, C) with C in `channels` (the ADM layout: 3; the sampler's gray demo sets: 1)."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{IMAGES_KEY}.npy") as member:
        version = np.lib.format.read_magic(member)
        if version not in NPY_HEADER_READERS:
            raise ValueError(f"{path}: arr_0 uses .npy format version {version}; expected 1.0 or 2.0")
        shape, fortran_order, dtype = NPY_HEADER_READERS[version](member)
        if fortran_order or dtype != np.uint8 or len(shape) != 4 or shape[-1] not in channels:
            raise ValueError(f"{path}: arr_0 must be C-ordered uint8 (N, H, W, {' or '.join(map(str, channels))}), "
                             f"got {dtype} {shape} fortran={fortran_order}")
        yield member, tuple(shape), dtype


def read_images_header(path: Path, channels: tuple[int, ...] = (3,)) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of arr_0 from its .npy header, without loading the images."""
    with open_images(path, channels) as (_, shape, dtype):
        return shape, dtype


def read_adm_batch(path: Path) -> AdmBatch:
    path = Path(path)
    with np.load(path) as data:
        keys = set(data.files)
        if IMAGES_KEY not in keys:
            raise ValueError(f"{path} is not an ADM batch: no {IMAGES_KEY} (keys: {sorted(keys)})")
        labels = data[LABELS_KEY] if LABELS_KEY in keys else None
        shape, _ = read_images_header(path)
        num_images = shape[0]

        def stats(mu_key: str, sigma_key: str) -> FeatureStats | None:
            if {mu_key, sigma_key} <= keys:
                return FeatureStats(mu=data[mu_key], sigma=data[sigma_key], n=num_images)
            return None

        return AdmBatch(
            path=path,
            num_images=num_images,
            image_shape=tuple(shape[1:]),
            labels=labels,
            pool_stats=stats("mu", "sigma"),
            spatial_stats=stats("mu_s", "sigma_s"),
        )


def write_adm_batch(path: Path, images: np.ndarray, labels: np.ndarray | None = None) -> None:
    """Write samples as the ADM evaluator reads them: arr_0 uint8 (N, H, W, 3) [+ arr_1 labels (N,)]."""
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"ADM batches hold uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    arrays = {IMAGES_KEY: images}
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
        arrays[LABELS_KEY] = labels
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # uncompressed, as the evaluator streams arr_0


def write_adm_batch_from_parts(path: Path, parts: Iterable[tuple[np.ndarray, np.ndarray]], count: int,
                               image_shape: tuple[int, int, int]) -> None:
    """`write_adm_batch` for samples that never sit in memory at once: `parts` yields (images (n, H, W, 3)
    uint8, labels (n,)) in order, `count` images in all; arr_0 is streamed into the .npz part by part."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (count, *image_shape)}
    labels, written = [], 0
    with atomic_path(Path(path)) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open(f"{IMAGES_KEY}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            for images, part_labels in parts:
                if images.dtype != np.uint8 or images.shape[1:] != tuple(image_shape):
                    raise ValueError(f"ADM batches hold uint8 (N, {', '.join(map(str, image_shape))}) images, got {images.dtype} {images.shape}")
                member.write(np.ascontiguousarray(images).tobytes())
                labels.append(np.asarray(part_labels, dtype=np.int64))
                written += len(images)
        if written != count:
            raise ValueError(f"{path}: {written} images written, {count} announced")
        with archive.open(f"{LABELS_KEY}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, np.concatenate(labels) if labels else np.zeros(0, np.int64))


def reference_from_adm_batch(
    path: Path, extractor: InceptionExtractor, batch_size: int = 50, use_precomputed_stats: bool = False
) -> Reference:
    """Reference pool features of an ADM reference batch, computed from its images with our extractor.

    FID statistics: by default our own, from the same features (both sides of the FID then come from one
    network); with `use_precomputed_stats`, the `mu`/`sigma` the ADM evaluator stored (TF graph).
    """
    batch = read_adm_batch(path)
    features = collect_features(batch.iter_images(batch_size), extractor)["pool"]
    if use_precomputed_stats:
        if batch.pool_stats is None:
            raise ValueError(f"{path} holds no precomputed mu/sigma; set use_precomputed_stats to false")
        stats, stats_origin = batch.pool_stats, "mu/sigma precomputed by the ADM evaluator (TF Inception graph)"
    else:
        stats, stats_origin = compute_stats(features), "computed from arr_0 with our Inception extractor"
    return Reference(
        stats=stats,
        features=features,
        provenance={
            "reference_batch": str(batch.path),
            "reference_batch_sha256": file_sha256(batch.path),
            "reference_images": batch.num_images,
            "reference_stats": stats_origin,
            # ADM's precomputed mu/sigma are over its whole data set (ImageNet train), not over arr_0's images
            "reference_stats_precomputed": use_precomputed_stats,
            "reference_features": "computed from arr_0 with our Inception extractor",
            **extractor.provenance,
        },
    )
