"""The class-labelled image set (ImageNet layout) → sharded Parquet with a `label` column.

Images are split by a stable hash of their id (`<class>/<file>`), so every class is spread over the
splits; each shard handles the files whose id hashes to it, through the launcher. With `test_root` (the
paper's Table 1a: ImageNet val), that tree's images make the whole test split, labelled by the training
tree's class folders of the same name, and `root` gives train and val only.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
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
    # A separate tree (same class folder names) whose images are the whole test split; None = held out of root
    test_root: str | None = None
    image: LabelledConfig = field(default_factory=LabelledConfig)
    splits: SplitConfig = field(default_factory=lambda: SplitConfig(test_max_images=None))
    shards: int = 4

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ClassesConfig":
        return cls(
            root=raw["root"],
            test_root=raw.get("test_root"),
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


# test_root's ids are "<class>/@test_root/<file>": a file may repeat a training file's relative path, and the
# class stays the id's first part (the record's title)
TEST_ID_MARK = "/@test_root/"
BEYOND_TEST_CAP = "beyond_test_cap"  # a split label no shard is written for


def test_folder_images(test_root: Path, classes: list[str], listing: Counter) -> list[tuple[str, str, int]]:
    """test_root's images as (path, "<class>/@test_root/<file>", label of the training folder of the same name)."""
    test_classes, files = list_images(test_root, listing)
    unknown = sorted(set(test_classes) - set(classes))
    if unknown:
        raise ValueError(f"{test_root}: class folders {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} "
                         f"({len(unknown)} in all) are not class folders of the training tree; arrange the test "
                         "images into the training set's class folders (data.classes.test_root)")
    labels = {name: label for label, name in enumerate(classes)}
    test_ids = [image_id.replace("/", TEST_ID_MARK, 1) for _, image_id, _ in files]
    return [(str(path), test_id, labels[test_id.split("/", 1)[0]]) for (path, _, _), test_id in zip(files, test_ids)]


def assign_class_splits(ids: list[str], cfg: ClassesConfig) -> dict[str, str]:
    """id → split: by hash (SplitConfig) over root's images; with test_root, its images are the test split
    (capped at splits.test_max_images by hash order; the rest are BEYOND_TEST_CAP, written to no split: test
    images must never reach train) and root's go to train and val only."""
    if cfg.test_root is None:
        return assign_splits({image_id: 1 for image_id in ids}, cfg.splits)
    is_test = [TEST_ID_MARK in image_id for image_id in ids]
    train_cfg = replace(cfg.splits, test_fraction=0.0, test_max_images=None)
    splits = assign_splits({image_id: 1 for image_id, test in zip(ids, is_test) if not test}, train_cfg)
    tests = sorted((image_id for image_id, test in zip(ids, is_test) if test), key=lambda i: (key_hash(i), i))
    kept = tests if cfg.splits.test_max_images is None else tests[: cfg.splits.test_max_images]
    return splits | {image_id: BEYOND_TEST_CAP for image_id in tests[len(kept):]} | {image_id: "test" for image_id in kept}


def prepare_images(cfg: ClassesConfig, out_dir: Path, work_dir: Path) -> dict[str, Any]:
    listing: Counter = Counter()
    classes, files = list_images(Path(cfg.root), listing)
    files = [(str(path), image_id, label) for path, image_id, label in files]
    if cfg.test_root is not None:
        files += test_folder_images(Path(cfg.test_root), classes, listing)
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
    splits = assign_class_splits([image_id for result in results for image_id in result["ids"]], cfg)
    beyond_cap = sum(split == BEYOND_TEST_CAP for split in splits.values())
    if beyond_cap:
        stats["skipped_image:test_root_beyond_test_max_images"] += beyond_cap
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
