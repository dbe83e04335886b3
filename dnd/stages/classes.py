"""The class-labelled image set (ImageNet layout) → sharded Parquet with a `label` column.

Images are split by a stable hash of their id (`<class>/<file>`), so every class is spread over the
splits; each shard handles the files whose id hashes to it, through the launcher.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from dnd.atomic import atomic_dir
from dnd.data import shards
from dnd.data.labelled import LabelledConfig, image_record, list_images
from dnd.data.splits import SplitConfig, assign_splits, key_hash
from dnd.launch import map_shards
from dnd.provenance import write_provenance

log = logging.getLogger("dnd.classes")

EXTRA_FIELDS = [pa.field("label", pa.int32())]


@dataclass(frozen=True)
class ClassesConfig:
    root: str  # ImageFolder tree: one subfolder per class (class names sorted → labels 0..K-1)
    image: LabelledConfig = field(default_factory=LabelledConfig)
    splits: SplitConfig = field(default_factory=lambda: SplitConfig(test_max_images=None))
    shards: int = 4

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ClassesConfig":
        return cls(
            root=raw["root"],
            image=LabelledConfig(**raw.get("image", {})),
            splits=SplitConfig(**raw.get("splits", {})),
            shards=raw.get("shards", cls.shards),
        )


@dataclass(frozen=True)
class ClassShardTask:
    files: tuple[tuple[str, str, int], ...]  # (path, id, label)
    index: int
    count: int
    image: LabelledConfig
    raw_dir: Path


def prepare_shard(task: ClassShardTask) -> dict[str, Any]:
    """Decode, resize and encode one shard's images into a raw shard; reuse it when already finished."""

    def build() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        stats: Counter = Counter()
        records = [image_record(Path(path), image_id, label, task.image, stats, log) for path, image_id, label in task.files]
        records = [record for record in records if record is not None]
        return records, {"stats": dict(stats), "ids": [record["id"] for record in records]}

    raw = shards.raw_shard_path(task.raw_dir, task.index, task.count)
    return shards.build_raw_shard(raw, build, shards.image_schema(EXTRA_FIELDS))


def prepare_images(cfg: ClassesConfig, out_dir: Path, work_dir: Path) -> dict[str, Any]:
    listing: Counter = Counter()
    classes, files = list_images(Path(cfg.root), listing)
    files = [(str(path), image_id, label) for path, image_id, label in files]
    by_shard: list[list[tuple[str, str, int]]] = [[] for _ in range(cfg.shards)]
    for entry in files:
        by_shard[key_hash(entry[1]) % cfg.shards].append(entry)
    raw_dir = work_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    tasks = [ClassShardTask(tuple(f), i, cfg.shards, cfg.image, raw_dir) for i, f in enumerate(by_shard)]
    results = map_shards("prepare_images", prepare_shard, tasks, work_dir)
    stats: Counter = Counter(listing)
    for result in results:
        stats.update(result["stats"])
    splits = assign_splits({image_id: 1 for result in results for image_id in result["ids"]}, cfg.splits)
    images: Counter = Counter()
    for task in tasks:
        raw = shards.raw_shard_path(raw_dir, task.index, task.count)
        images.update(shards.split_raw_shard(raw, "id", splits, work_dir / "shards", task.index, task.count))
    manifest = {
        "dataset": "classes",
        "classes": classes,
        "shards": cfg.shards,
        "images": {split: images.get(split, 0) for split in shards.SPLITS},
        "stats": dict(sorted(stats.items())),
    }
    with atomic_dir(out_dir) as tmp:
        shards.publish(work_dir / "shards", tmp, manifest)
        write_provenance(tmp, "prepare_images", asdict(cfg), images=manifest["images"])
    log.info("prepared %d classes, %s images; %s", len(classes), manifest["images"], dict(stats))
    return manifest
