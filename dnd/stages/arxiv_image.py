"""arXiv-Image: PDF pages rasterized with PyMuPDF → crops with their clipped text → sharded Parquet.

Pass 1 (fanned out through the launcher): each shard rasterizes its PDFs into a raw shard in the
work area (kept across reruns) and reports images per paper. Pass 2: papers get their split by a
stable hash of the arXiv id (both versions of a paper land together), raw shards are split into
the published layout. Broken files and pages are skipped, counted and named; the run finishes.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from dnd.atomic import atomic_dir
from dnd.data import shards
from dnd.data.pdf import RasterConfig, paper_id_from, rasterize_pdf
from dnd.data.splits import SplitConfig, assign_splits, key_hash
from dnd.launch import map_shards
from dnd.provenance import write_provenance

log = logging.getLogger("dnd.arxiv_image")

EXTRA_FIELDS = [
    pa.field("paper_id", pa.string()),
    pa.field("page", pa.int32()),
    pa.field("crop", pa.int32()),
    pa.field("repaired", pa.bool_()),
]


@dataclass(frozen=True)
class ArxivImageConfig:
    pdfs: str  # a folder of PDFs (searched recursively) or a text file listing one PDF path per line
    raster: RasterConfig = field(default_factory=RasterConfig)
    splits: SplitConfig = field(default_factory=SplitConfig)
    shards: int = 4  # fixed number of shards: the unit of parallelism

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ArxivImageConfig":
        return cls(
            pdfs=raw["pdfs"],
            raster=RasterConfig(**raw.get("raster", {})),
            splits=SplitConfig(**raw.get("splits", {})),
            shards=raw.get("shards", cls.shards),
        )


def list_pdfs(source: Path) -> list[Path]:
    """The PDFs of a folder (recursive, sorted) or of a list file (paths relative to the list's folder)."""
    source = Path(source)
    if source.is_dir():
        return sorted(path for path in source.rglob("*") if path.suffix.lower() == ".pdf" and path.is_file())
    if source.is_file():
        lines = [line.strip() for line in source.read_text().splitlines()]
        return [source.parent / line for line in lines if line and not line.startswith("#")]
    raise FileNotFoundError(f"data.arxiv_image.pdfs: {source} is neither a folder nor a list file")


VERSION = re.compile(r"v(\d+)(?!.*v\d)", re.IGNORECASE)


def latest_versions(pdfs: list[Path]) -> tuple[list[Path], list[Path]]:
    """Keep one file per arXiv id (the highest version in its file name); return (kept, superseded).

    Two versions of a paper would give the same record ids and near-duplicate pages. Files whose
    name holds no arXiv id are all kept (their id comes from the first page, after rendering).
    """
    best: dict[str, tuple[int, Path]] = {}
    kept: list[Path] = []
    for pdf in pdfs:
        paper = paper_id_from(pdf, None)
        if paper == pdf.stem:  # no id in the name
            kept.append(pdf)
            continue
        match = VERSION.search(pdf.stem)
        version = int(match.group(1)) if match else 0
        if paper not in best or (version, pdf.name) > (best[paper][0], best[paper][1].name):
            best[paper] = (version, pdf)
    kept.extend(path for _, path in best.values())
    kept_set = set(kept)
    return sorted(kept), [pdf for pdf in pdfs if pdf not in kept_set]


@dataclass(frozen=True)
class RasterShardTask:
    pdfs: tuple[str, ...]
    index: int
    count: int
    raster: RasterConfig
    raw_dir: Path


def rasterize_shard(task: RasterShardTask) -> dict[str, Any]:
    """Rasterize one shard's PDFs into a raw shard; reuse it when a previous run finished it."""

    def build() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        stats: Counter = Counter()
        events: list[dict[str, Any]] = []
        records: list[dict[str, Any]] = []
        for pdf in task.pdfs:
            before = Counter(stats)
            records.extend(rasterize_pdf(Path(pdf), task.raster, stats, log))
            for key, value in stats.items():
                delta = value - before.get(key, 0)
                if delta and key.startswith(("skipped_file:", "skipped_page:", "repaired_file")):
                    events.append({"file": pdf, "event": key, "count": delta})
        images_per_paper = Counter(record["paper_id"] for record in records)
        return records, {"stats": dict(stats), "events": events, "images_per_paper": dict(images_per_paper)}

    raw = shards.raw_shard_path(task.raw_dir, task.index, task.count)
    return shards.build_raw_shard(raw, build, shards.image_schema(EXTRA_FIELDS))


def rasterize_pdfs(cfg: ArxivImageConfig, out_dir: Path, work_dir: Path) -> dict[str, Any]:
    pdfs, superseded = latest_versions(list_pdfs(Path(cfg.pdfs)))
    for pdf in superseded:
        log.info("%s: superseded by a later version of the same paper; not rasterized", pdf)
    by_shard: list[list[str]] = [[] for _ in range(cfg.shards)]
    for pdf in pdfs:  # by file name: adding a PDF never moves the others to another shard
        by_shard[key_hash(pdf.name) % cfg.shards].append(str(pdf))
    raw_dir = work_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    tasks = [RasterShardTask(tuple(files), i, cfg.shards, cfg.raster, raw_dir) for i, files in enumerate(by_shard)]
    summaries = map_shards("rasterize_pdfs", rasterize_shard, tasks, work_dir)

    stats: Counter = Counter({"superseded_version": len(superseded)} if superseded else {})
    images_per_paper: Counter = Counter()
    events = []
    for summary in summaries:
        stats.update(summary["stats"])
        images_per_paper.update(summary["images_per_paper"])
        events.extend(summary["events"])
    splits = assign_splits(dict(images_per_paper), cfg.splits)
    images: Counter = Counter()
    shard_dir = work_dir / "shards"
    for task in tasks:
        raw = shards.raw_shard_path(raw_dir, task.index, task.count)
        images.update(shards.split_raw_shard(raw, "paper_id", splits, shard_dir, task.index, task.count))
    manifest = {
        "dataset": "arxiv_image",
        "pdfs": len(pdfs),
        "shards": cfg.shards,
        "images": {split: images.get(split, 0) for split in shards.SPLITS},
        "papers": {split: sum(1 for s in splits.values() if s == split) for split in shards.SPLITS},
        "stats": dict(sorted(stats.items())),
        "skipped_or_repaired": sorted(events, key=lambda e: (e["file"], e["event"])),
    }
    with atomic_dir(out_dir) as tmp:
        shards.publish(shard_dir, tmp, manifest)
        write_provenance(tmp, "rasterize_pdfs", asdict(cfg), images=manifest["images"])
    skips = {k: v for k, v in stats.items() if k.startswith(("skipped", "repaired"))}
    log.info("rasterized %d PDFs into %s images; skipped/repaired: %s", len(pdfs), manifest["images"], skips or "none")
    for event in manifest["skipped_or_repaired"]:
        log.info("  %s: %s ×%d", event["file"], event["event"], event["count"])
    return manifest
