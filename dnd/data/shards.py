"""Sharded Parquet image data sets.

Layout of a data set folder (the declared output of a data stage):

    <dataset>/<split>/shard-00003-of-00008.parquet   one file per (split, shard); columns below
    <dataset>/manifest.json                           counts per split, shard list, stage stats
    <dataset>/provenance.json                         what made it

Columns: `id` (string, unique), `png` (PNG bytes), `text` (ground truth; "" when none), `title`
(article / paper / class name), `split`, plus stage-specific columns (`label`, `paper_id`, `page`...).
Shards are written in a fixed order with fixed settings, so the same input gives the same bytes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
from PIL import Image

from dnd.atomic import atomic_path, link_or_copy, write_json

SPLITS = ("train", "val", "test")
BASE_FIELDS = [
    pa.field("id", pa.string()),
    pa.field("png", pa.binary()),
    pa.field("text", pa.string()),
    pa.field("title", pa.string()),
    pa.field("split", pa.string()),
]
ROW_GROUP_SIZE = 128  # rows; small enough that readers can stream a shard


def image_schema(extra: Iterable[pa.Field] = ()) -> pa.Schema:
    return pa.schema(BASE_FIELDS + list(extra))


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}.parquet"


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes that depend only on the pixels (no metadata, fixed compression)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def write_shard(path: Path, records: list[dict[str, Any]], schema: pa.Schema) -> None:
    """Write one shard atomically; an empty record list gives a valid empty shard."""
    columns = {field.name: [record.get(field.name) for record in records] for field in schema}
    table = pa.Table.from_pydict(columns, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE, compression="zstd", write_statistics=False)


def split_shards(dataset: Path, split: str) -> list[Path]:
    return sorted((Path(dataset) / split).glob("shard-*.parquet"))


def iter_records(dataset: Path, split: str, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Stream the rows of one split, shard by shard, row group by row group."""
    for shard in split_shards(dataset, split):
        parquet = pq.ParquetFile(shard)
        for group in range(parquet.num_row_groups):
            yield from parquet.read_row_group(group, columns=columns).to_pylist()


def read_manifest(dataset: Path) -> dict[str, Any]:
    return json.loads((Path(dataset) / "manifest.json").read_text())


def publish(work_shards: Path, out_dir: Path, manifest: dict[str, Any]) -> None:
    """Link finished shards from the work area into the declared output folder, manifest last.

    `out_dir` must not exist yet (Snakemake removes a directory output before rerunning its job);
    shards are hard links, so publishing costs no copy.
    """
    for shard in sorted(Path(work_shards).glob("*/shard-*.parquet")):
        link_or_copy(shard, Path(out_dir) / shard.parent.name / shard.name)
    write_json(Path(out_dir) / "manifest.json", manifest)


def split_raw_shard(
    raw: Path, key_column: str, splits: dict[str, str], out_dir: Path, index: int, count: int,
    exclude: tuple[str, set[str]] | None = None,
) -> dict[str, int]:
    """Rewrite one raw shard (no split yet) as one shard file per split under `out_dir/<split>/`,
    leaving out the rows whose `exclude[0]` column holds a value of `exclude[1]`.

    Two-pass stages (the split of a group depends on every group's image count, e.g. the capped test
    split) write raw shards first; this second pass only moves rows, it never re-encodes images.
    """
    table = pq.read_table(raw)
    if exclude is not None and exclude[1]:
        column, values = exclude
        table = table.filter(pa.compute.invert(pa.compute.is_in(table[column], value_set=pa.array(sorted(values), pa.string()))))
    keys = table[key_column].to_pylist()
    labels = pa.array([splits[key] for key in keys], pa.string())
    table = table.set_column(table.schema.get_field_index("split"), "split", labels)
    counts = {}
    for split in SPLITS:
        part = table.filter(pa.compute.equal(table["split"], split))
        with atomic_path(out_dir / split / shard_name(index, count)) as tmp:
            pq.write_table(part, tmp, row_group_size=ROW_GROUP_SIZE, compression="zstd", write_statistics=False)
        counts[split] = part.num_rows
    return counts


def raw_shard_path(raw_dir: Path, index: int, count: int) -> Path:
    return Path(raw_dir) / f"raw-{index:05d}-of-{count:05d}.parquet"


def build_raw_shard(
    raw: Path, build: Callable[[], tuple[list[dict[str, Any]], dict[str, Any]]], schema: pa.Schema
) -> dict[str, Any]:
    """Run `build() -> (records, summary)` once: a finished raw shard (and its summary) is reused by reruns.

    The summary is written last, so its presence marks the shard finished.
    """
    summary_path = Path(raw).with_suffix(".json")
    if Path(raw).exists() and summary_path.exists():
        return json.loads(summary_path.read_text())
    records, summary = build()
    for record in records:
        record.setdefault("split", "")
    write_shard(raw, records, schema)
    write_json(summary_path, summary)
    return summary
