"""Text-Image: Wikipedia dump → prose chunks → pages rendered with Pillow → sharded Parquet.

Three stages, each a plain function of (config subtree, inputs, outputs, work dir):
`extract_wiki_text` (stream the dump, clean, chunk), `render_text_images` (lay out, split, draw:
the shards fan out through the launcher), `resize_images` (the derived Text256 set).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dnd.atomic import atomic_dir, atomic_path, write_json
from dnd.data import shards
from dnd.data.render import PageLayout, RenderConfig, resolve_font_path
from dnd.data.splits import SplitConfig, assign_splits, key_hash
from dnd.launch import map_shards
from dnd.provenance import file_sha256, write_provenance

log = logging.getLogger("dnd.text_image")

CHUNK_SCHEMA = pa.schema(
    [
        pa.field("title", pa.string()),
        pa.field("title_hash", pa.uint64()),
        pa.field("chunk", pa.int32()),
        pa.field("text", pa.string()),
    ]
)


# ---------------------------------------------------------------- extract_wiki_text
@dataclass(frozen=True)
class WikiTextConfig:
    dump: str  # MediaWiki pages-articles export: .xml, .xml.bz2 or multistream .bz2
    max_words: int = 100  # words per chunk (the paper: at most 100 words per image)
    max_articles: int | None = None  # stop after this many kept articles; None = the whole dump
    min_words: int = 20  # articles with fewer words of prose are skipped (stubs, lists)
    # Headings from which an article's tail is cut: "@en", "@de", … name the sets of dnd.data.wiki's
    # APPENDIX_SECTIONS; any other entry is a heading itself (case and spacing don't matter).
    appendix_sections: tuple[str, ...] = ("@en",)
    # A dump cut short (an interrupted download) or a page without <id>: False keeps every complete
    # page before the cut (reported as truncated), skips the page; True stops with an error naming
    # the file and the byte offset (or the page).
    strict: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "appendix_sections", tuple(self.appendix_sections))  # frozen: YAML gives a list


def extract_wiki_text(cfg: WikiTextConfig, out_path: Path) -> dict[str, int]:
    from dnd.data.wiki import CleaningRules, DumpReport, appendix_headings, chunk_words, clean_wikitext, iter_pages

    appendix_headings(cfg.appendix_sections)  # an unknown "@xx" set fails before the dump is read
    stats: Counter = Counter()
    report = DumpReport()
    rules = None  # from the dump's own namespace names, read from <siteinfo> before the first page
    rows: dict[str, list] = {name: [] for name in CHUNK_SCHEMA.names}
    for page in iter_pages(Path(cfg.dump), stats, report=report, strict=cfg.strict):
        if rules is None:
            rules = CleaningRules.for_dump(report.namespaces, cfg.appendix_sections)
        prose = clean_wikitext(page.wikitext, rules)
        if len(prose.split()) < cfg.min_words:
            stats["too_short"] += 1
            continue
        stats["kept_article"] += 1
        for index, chunk in enumerate(chunk_words(prose, cfg.max_words)):
            rows["title"].append(page.title)
            rows["title_hash"].append(key_hash(page.title))
            rows["chunk"].append(index)
            rows["text"].append(chunk)
        if cfg.max_articles is not None and stats["kept_article"] >= cfg.max_articles:
            break
    stats["chunks"] = len(rows["text"])
    stats["words"] = sum(len(text.split()) for text in rows["text"])
    with atomic_path(out_path) as tmp:
        pq.write_table(pa.Table.from_pydict(rows, schema=CHUNK_SCHEMA), tmp, compression="zstd")
    write_provenance(
        out_path, "extract_wiki_text", _as_dict(cfg), dump_sha256=file_sha256(Path(cfg.dump)), stats=stats,
        dump=report.as_dict(),
    )
    log.info("extracted %s from %s", dict(sorted(stats.items())), cfg.dump)
    if report.cut:
        log.warning("%s: %s dump (%s); the chunks hold every complete page before the fault", cfg.dump, report.cut["fault"].upper(), report.cut)
    if report.pages_without_id:
        log.warning("%s: %d page(s) without <id> skipped: %s", cfg.dump, len(report.pages_without_id), report.pages_without_id)
    return dict(stats)


# ---------------------------------------------------------------- render_text_images
@dataclass(frozen=True)
class TextImageConfig:
    render: RenderConfig = field(default_factory=RenderConfig)
    splits: SplitConfig = field(default_factory=SplitConfig)
    shards: int = 4  # fixed number of shards: the unit of parallelism (processes, array tasks)
    # keep the first this many images (pages, or lines with render.layout "line") of each chunk; None = all
    max_images_per_chunk: int | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TextImageConfig":
        return cls(
            render=RenderConfig(**raw.get("render", {})),
            splits=SplitConfig(**raw.get("splits", {})),
            shards=raw.get("shards", cls.shards),
            max_images_per_chunk=raw.get("max_images_per_chunk"),
        )


@dataclass(frozen=True)
class ShardTask:
    chunks: Path
    index: int
    count: int
    render: RenderConfig
    out_dir: Path  # <work>/shards: the worker writes <split>/shard-i-of-n.parquet below it
    splits: dict[str, str] | None = None  # title → split; None = only count pages (layout pass)
    max_images_per_chunk: int | None = None


def _chunk_pages(task: ShardTask, layout: PageLayout, text: str) -> list[list[str]]:
    """The lines of each image drawn from one chunk, the first `max_images_per_chunk` of them."""
    return layout.pages(text)[: task.max_images_per_chunk]


def _read_shard_chunks(task: ShardTask) -> list[dict[str, Any]]:
    """This shard's chunks, in dump order: an article belongs to shard `title_hash % count`."""
    table = pq.read_table(task.chunks)
    keep = table["title_hash"].to_numpy() % task.count == task.index
    return table.filter(pa.array(keep)).to_pylist()


def _drawable_chunks(task: ShardTask, layout: PageLayout, stats: Counter) -> Iterator[tuple[dict[str, Any], str]]:
    """This shard's chunks as the font can draw them: words it cannot draw are dropped from image and
    label alike (counted), a chunk left without a word is skipped (counted)."""
    for row in _read_shard_chunks(task):
        drawable = layout.drawable(row["text"])
        if drawable.dropped_chars:
            stats["undrawable_words"] += drawable.dropped_words
            stats["undrawable_chars"] += drawable.dropped_chars
            stats["chunks_with_undrawable_text"] += 1
            for char in drawable.missing:
                stats[f"undrawable:U+{ord(char):04X}"] += 1  # chunks where the character was met
        if not drawable.text:
            stats["undrawable_chunks"] += 1
            continue
        yield row, drawable.text


def count_shard_pages(task: ShardTask) -> dict[str, int]:
    """Layout pass: pages per article title, without drawing."""
    layout = PageLayout(task.render)
    counts: Counter = Counter()
    for row, text in _drawable_chunks(task, layout, Counter()):
        counts[row["title"]] += len(_chunk_pages(task, layout, text))
    return dict(counts)


def _done_marker(out_dir: Path, index: int, count: int) -> Path:
    return out_dir / f".done-{index:05d}-of-{count:05d}"


def render_shard(task: ShardTask) -> dict[str, int]:
    """Draw every page of one shard's articles; write one Parquet file per split. Skips if already done."""
    marker = _done_marker(task.out_dir, task.index, task.count)
    if marker.exists():
        return {"reused_shard": 1}
    layout = PageLayout(task.render)
    stats: Counter = Counter()
    per_split: dict[str, list[dict[str, Any]]] = {split: [] for split in shards.SPLITS}
    for row, text in _drawable_chunks(task, layout, stats):
        split = task.splits[row["title"]]
        for page_index, lines in enumerate(_chunk_pages(task, layout, text)):
            per_split[split].append(
                {
                    "id": f"{row['title_hash']:016x}-{row['chunk']:04d}-{page_index:02d}",
                    "png": shards.encode_png(layout.draw(lines)),
                    "text": "\n".join(lines),
                    "title": row["title"],
                    "split": split,
                }
            )
    schema = shards.image_schema()
    for split, records in per_split.items():
        shards.write_shard(task.out_dir / split / shards.shard_name(task.index, task.count), records, schema)
    marker.touch()
    return {**stats, **{f"images_{split}": len(records) for split, records in per_split.items()}}


def render_text_images(cfg: TextImageConfig, chunks: Path, out_dir: Path, work_dir: Path) -> dict[str, int]:
    font = resolve_font_path(cfg.render.font)
    shard_dir = work_dir / "shards"
    base = dict(chunks=Path(chunks), count=cfg.shards, render=cfg.render, out_dir=shard_dir,
                max_images_per_chunk=cfg.max_images_per_chunk)
    page_counts: dict[str, int] = {}
    for counts in map_shards("render_text_images", count_shard_pages, [ShardTask(index=i, **base) for i in range(cfg.shards)], work_dir):
        page_counts.update(counts)
    splits = assign_splits(page_counts, cfg.splits)
    tasks = [ShardTask(index=i, splits=splits, **base) for i in range(cfg.shards)]
    stats: Counter = Counter()
    for shard_stats in map_shards("render_text_images", render_shard, tasks, work_dir):
        stats.update(shard_stats)
    # Characters the font cannot draw: counted per character in the manifest, named in the log.
    undrawable = {key.split(":", 1)[1]: n for key, n in stats.items() if key.startswith("undrawable:")}
    stats = Counter({key: n for key, n in stats.items() if not key.startswith("undrawable:")})
    images = {split: sum(page_counts[t] for t, s in splits.items() if s == split) for split in shards.SPLITS}
    articles = Counter(splits.values())
    manifest = {
        "dataset": "text_image",
        "layout": cfg.render.layout,
        "shards": cfg.shards,
        "images": images,
        "articles": {split: articles.get(split, 0) for split in shards.SPLITS},
        "stats": dict(sorted(stats.items())),
        # code point → chunks where it was met; its words were dropped from image and label
        "undrawable_characters": dict(sorted(undrawable.items(), key=lambda item: (-item[1], item[0]))),
    }
    with atomic_dir(out_dir) as tmp:
        shards.publish(shard_dir, tmp, manifest)
        write_provenance(tmp, "render_text_images", _as_dict(cfg), font_sha256=file_sha256(font), images=images)
    log.info("rendered %s images (%s)", sum(images.values()), images)
    if undrawable:
        common = ", ".join(f"{code} {chr(int(code[2:], 16))!r} ×{n}" for code, n in list(manifest["undrawable_characters"].items())[:20])
        log.warning(
            "%s: the font cannot draw %d distinct character(s); dropped %d word(s) (%d characters) from images and "
            "labels alike, %d chunk(s) left empty. Most met: %s",
            font, len(undrawable), stats["undrawable_words"], stats["undrawable_chars"], stats["undrawable_chunks"], common,
        )
    return images


# ---------------------------------------------------------------- resize_images (Text256)
@dataclass(frozen=True)
class ResizeConfig:
    size: int = 256  # output side (the paper's Text256)
    splits: tuple[str, ...] = ("test",)  # which splits to derive

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", tuple(self.splits))  # frozen: YAML gives a list


def resize_images(cfg: ResizeConfig, in_dir: Path, out_dir: Path) -> dict[str, int]:
    """Lanczos-resize every image of the chosen splits (Text512 → Text256); text and ids are kept."""
    counts = {}
    with atomic_dir(out_dir) as tmp:
        for split in cfg.splits:
            records = []
            for record in shards.iter_records(in_dir, split):
                image = shards.decode_png(record["png"]).resize((cfg.size, cfg.size), Image.Resampling.LANCZOS)
                records.append({**record, "png": shards.encode_png(image)})
            shards.write_shard(tmp / split / shards.shard_name(0, 1), records, shards.image_schema())
            counts[split] = len(records)
        write_json(tmp / "manifest.json", {"dataset": "resized", "source": str(in_dir), "images": counts, "shards": 1})
        write_provenance(tmp, "resize_images", {"size": cfg.size, "splits": list(cfg.splits)}, images=counts)
    return counts


def _as_dict(cfg: Any) -> Any:
    from dataclasses import asdict

    return asdict(cfg)
