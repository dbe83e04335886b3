"""arXiv-Image: PDF pages rasterized with PyMuPDF → crops with their clipped text → sharded Parquet.

Pass 1 (fanned out through the launcher): each shard rasterizes its PDFs into a raw shard in the
work area (kept across reruns) and reports images per paper. Pass 2: papers get their split by a
stable hash of the arXiv id (both versions of a paper land together), raw shards are split into
the published layout. Broken files and pages are skipped, counted and named; the run finishes.

A paper is read from its newest version that yields an image: the versions of one paper (by the id
in their names) go to one shard, newest first, and an unreadable newer file falls back to the next.
A paper whose id comes from two files (copies, or an id only found in the first page's stamp) keeps
one; every superseded and duplicate file is named in the manifest, so record ids stay unique.

Each file is read by a watched child process (`dnd.data.pdf_watchdog`) with a time limit; its crops
go to a part file as soon as it is finished and a journal line records it, so a shard's memory does
not grow with its files and a killed shard resumes after its last finished file (a file that timed
out is not tried again). A shard's log lines go to a file beside its raw shard, which the stage
copies into its own log whatever ran the shard (this process, a local pool, a SLURM array task).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from dnd.atomic import atomic_dir, atomic_path
from dnd.data import shards
from dnd.data.pdf import RasterConfig, paper_id_from
from dnd.data.pdf_watchdog import WatchedReader
from dnd.data.splits import SplitConfig, assign_splits, key_hash
from dnd.launch import map_shards
from dnd.provenance import write_provenance

log = logging.getLogger("dnd.arxiv_image")

EXTRA_FIELDS = [
    pa.field("paper_id", pa.string()),
    pa.field("page", pa.int32()),
    pa.field("crop", pa.int32()),
    pa.field("repaired", pa.bool_()),
    pa.field("source", pa.string()),  # the PDF, relative to data.arxiv_image.pdfs
]
# Per-file counters that name their file in the manifest's `skipped_or_repaired` list.
NAMED_EVENTS = ("skipped_file:", "skipped_page:", "repaired_file", "no_text_layer_page")


@dataclass(frozen=True)
class ArxivImageConfig:
    pdfs: str  # a folder of PDFs (searched recursively) or a text file listing one PDF path per line
    raster: RasterConfig = field(default_factory=RasterConfig)
    splits: SplitConfig = field(default_factory=SplitConfig)
    shards: int = 4  # fixed number of shards: the unit of parallelism
    # Seconds one file may take (open, render, text, encode); a file that runs over is skipped and
    # named, its reader process killed and replaced (MuPDF can loop in C on a malformed file).
    file_timeout_s: float = 300.0

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ArxivImageConfig":
        return cls(
            pdfs=raw["pdfs"],
            raster=RasterConfig(**raw.get("raster", {})),
            splits=SplitConfig(**raw.get("splits", {})),
            shards=raw.get("shards", cls.shards),
            file_timeout_s=raw.get("file_timeout_s", cls.file_timeout_s),
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


def _version(pdf: Path) -> int:
    match = VERSION.search(pdf.stem)
    return int(match.group(1)) if match else 0


def version_groups(pdfs: list[Path]) -> list[list[Path]]:
    """The files of each paper (those whose names hold one arXiv id), newest version first (then by
    name), in the order of their newest files; a file whose name holds no id is a group of its own."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for pdf in pdfs:
        paper = paper_id_from(pdf, None)
        groups[paper if paper != pdf.stem else f"file:{pdf}"].append(pdf)
    newest_first = [sorted(files, key=lambda f: (_version(f), f.name, str(f)), reverse=True) for files in groups.values()]
    return sorted(newest_first, key=lambda files: str(files[0]))


@dataclass(frozen=True)
class RasterShardTask:
    groups: tuple[tuple[str, ...], ...]  # the versions of each paper, newest first
    index: int
    count: int
    raster: RasterConfig
    raw_dir: Path
    source_root: str  # the PDFs' folder: records name their file relative to it
    file_timeout_s: float


class _JsonLines(logging.Handler):
    """A shard's log lines as JSON lines in the work area, for the stage to copy into its own log."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        with open(self.path, "a", encoding="utf-8") as lines:
            lines.write(json.dumps([record.levelno, record.getMessage()]) + "\n")


@contextmanager
def _shard_log(path: Path) -> Iterator[logging.Logger]:
    shard_log = logging.getLogger(f"dnd.arxiv_image.shard.{path.stem}")
    shard_log.propagate = False  # the stage logs these lines once, from the file, in every mode
    shard_log.setLevel(logging.INFO)
    handler = _JsonLines(path)
    shard_log.addHandler(handler)
    try:
        yield shard_log
    finally:
        shard_log.removeHandler(handler)


class _Journal:
    """One JSON line per file read by a shard, appended as each finishes: what a resumed shard reuses."""

    def __init__(self, path: Path):
        self.path = path
        self.results: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    result = json.loads(line)
                except json.JSONDecodeError:  # a line cut by the kill that stopped the last run
                    continue
                if result.get("part") is None or Path(result["part"]).exists():
                    self.results[result["file"]] = result

    def add(self, result: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as lines:
            lines.write(json.dumps({k: v for k, v in result.items() if k != "log"}) + "\n")
            lines.flush()
            os.fsync(lines.fileno())
        self.results[result["file"]] = result


def rasterize_shard(task: RasterShardTask) -> dict[str, Any]:
    """Rasterize one shard's papers into a raw shard; reuse it when a previous run finished it, resume
    after the last finished file when a previous run was killed."""
    raw = shards.raw_shard_path(task.raw_dir, task.index, task.count)
    summary_path = raw.with_suffix(".json")
    if raw.exists() and summary_path.exists():
        return json.loads(summary_path.read_text())
    schema = shards.image_schema(EXTRA_FIELDS)
    parts = raw.with_suffix(".parts")
    parts.mkdir(parents=True, exist_ok=True)
    journal = _Journal(raw.with_suffix(".files.jsonl"))
    stats: Counter = Counter()
    events: list[dict[str, Any]] = []
    chosen: dict[str, dict[str, Any]] = {}  # file → its result, one per paper group
    superseded: list[dict[str, str]] = []
    with _shard_log(raw.with_suffix(".log.jsonl")) as shard_log, WatchedReader(
        task.raster, schema, task.source_root, task.file_timeout_s, shard_log
    ) as reader:
        if journal.results:
            shard_log.info("shard %d: resuming after %d file(s) finished by an earlier run", task.index, len(journal.results))
        for group in task.groups:
            for position, pdf in enumerate(group):
                result = journal.results.get(pdf)
                if result is None:
                    result = reader.read(pdf, str(parts / f"{key_hash(pdf):016x}.parquet"))
                    for level, message in result["log"]:
                        shard_log.log(level, "%s", message)
                    journal.add(result)
                elif "skipped_file:timeout" in result["stats"]:
                    shard_log.warning("%s: skipped file (timeout) in an earlier run; not read again", pdf)
                stats.update(result["stats"])
                events += [{"file": pdf, "event": key, "count": n} for key, n in result["stats"].items() if key.startswith(NAMED_EVENTS)]
                if result["images"]:
                    chosen[pdf] = result
                    superseded += [{"file": older, "paper_id": result["paper_id"], "by": pdf} for older in group[position + 1 :]]
                    break
                if position + 1 < len(group):
                    shard_log.warning("%s: gave no image; falling back to the older version %s", pdf, group[position + 1])
        for entry in superseded:
            shard_log.info("%s: superseded by %s, the newest readable version of %s; not rasterized", entry["file"], entry["by"], entry["paper_id"])
    stats["superseded_version"] += len(superseded)
    # The raw shard: the chosen files' parts, streamed one after another (bounded memory).
    with atomic_path(raw) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for result in chosen.values():
            for batch in pq.ParquetFile(result["part"]).iter_batches(batch_size=shards.ROW_GROUP_SIZE):
                writer.write_batch(batch)
    files = {pdf: {"paper_id": r["paper_id"], "images": r["images"]} for pdf, r in chosen.items()}
    summary = {"stats": dict(+stats), "events": events, "files": files, "superseded": superseded}
    shards.write_json(summary_path, summary)
    shutil.rmtree(parts)  # the raw shard holds them now (the summary marks it finished)
    return summary


def _replay_shard_logs(raw_dir: Path, count: int) -> None:
    """Copy every shard's log lines into the stage's log (their own process may have had no handler)."""
    for index in range(count):
        path = shards.raw_shard_path(raw_dir, index, count).with_suffix(".log.jsonl")
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                level, message = json.loads(line)
            except (json.JSONDecodeError, ValueError):
                continue
            log.log(level, "[shard %d/%d] %s", index, count, message)


def rasterize_pdfs(cfg: ArxivImageConfig, out_dir: Path, work_dir: Path) -> dict[str, Any]:
    source = Path(cfg.pdfs)
    source_root = str(source if source.is_dir() else source.parent)
    pdfs = list_pdfs(source)
    groups = version_groups(pdfs)
    by_shard: list[list[tuple[str, ...]]] = [[] for _ in range(cfg.shards)]
    for files in groups:  # by the newest file's name: adding a PDF never moves other papers to another shard
        by_shard[key_hash(files[0].name) % cfg.shards].append(tuple(map(str, files)))
    raw_dir = work_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    tasks = [
        RasterShardTask(tuple(files), i, cfg.shards, cfg.raster, raw_dir, source_root, cfg.file_timeout_s)
        for i, files in enumerate(by_shard)
    ]
    try:
        summaries = map_shards("rasterize_pdfs", rasterize_shard, tasks, work_dir)
    finally:
        _replay_shard_logs(raw_dir, cfg.shards)  # also what a failed shard logged before it failed

    stats: Counter = Counter()
    events, superseded, files = [], [], {}
    for summary in summaries:
        stats.update(summary["stats"])
        events.extend(summary["events"])
        superseded.extend(summary["superseded"])
        files.update(summary["files"])
    # One file per paper id: copies, or a file whose id was only found in its first page's stamp.
    by_paper: dict[str, list[str]] = defaultdict(list)
    for pdf, info in sorted(files.items()):
        by_paper[info["paper_id"]].append(pdf)
    duplicates = []
    for paper_id, candidates in by_paper.items():
        if len(candidates) > 1:
            kept = max(candidates, key=lambda f: (_version(Path(f)), Path(f).name, f))
            duplicates += [{"file": f, "paper_id": paper_id, "kept": kept} for f in candidates if f != kept]
    dropped = {d["file"] for d in duplicates}
    if duplicates:
        stats["duplicate_file"] = len(duplicates)
        stats["images"] -= sum(files[f]["images"] for f in dropped)
        stats["file_ok"] -= len(dropped)
    images_per_paper = Counter({info["paper_id"]: info["images"] for pdf, info in files.items() if pdf not in dropped})
    splits = assign_splits(dict(images_per_paper), cfg.splits)
    excluded = {os.path.relpath(f, source_root) for f in dropped}
    images: Counter = Counter()
    shard_dir = work_dir / "shards"
    for task in tasks:
        raw = shards.raw_shard_path(raw_dir, task.index, task.count)
        images.update(shards.split_raw_shard(raw, "paper_id", splits, shard_dir, task.index, task.count, exclude=("source", excluded)))
    manifest = {
        "dataset": "arxiv_image",
        "pdfs": len(pdfs),
        "shards": cfg.shards,
        "images": {split: images.get(split, 0) for split in shards.SPLITS},
        "papers": {split: sum(1 for s in splits.values() if s == split) for split in shards.SPLITS},
        "stats": dict(sorted((+stats).items())),
        "skipped_or_repaired": sorted(events, key=lambda e: (e["file"], e["event"])),
        "superseded": sorted(superseded, key=lambda e: e["file"]),  # older versions, never rasterized
        "duplicates": sorted(duplicates, key=lambda e: e["file"]),  # rasterized, but another file has the id
    }
    with atomic_dir(out_dir) as tmp:
        shards.publish(shard_dir, tmp, manifest)
        write_provenance(tmp, "rasterize_pdfs", asdict(cfg), images=manifest["images"])
    log.info("rasterized %d PDFs into %s images; counts: %s", len(pdfs), manifest["images"], manifest["stats"])
    for event in manifest["skipped_or_repaired"]:
        level = logging.INFO if event["event"] == "repaired_file" else logging.WARNING
        log.log(level, "  %s: %s ×%d", event["file"], event["event"], event["count"])
    for entry in manifest["superseded"]:
        log.info("  %s: superseded by %s (same paper %s)", entry["file"], entry["by"], entry["paper_id"])
    for entry in manifest["duplicates"]:
        log.warning("  %s: duplicate of %s (both are paper %s); its images are left out", entry["file"], entry["kept"], entry["paper_id"])
    return manifest
