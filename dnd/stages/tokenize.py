"""`tokenize_images`: every split of an image data set through a trained tokenizer → Arrow code maps.

The code shards mirror the image shards one to one and fan out through the launcher (a process
pool locally, one job array on SLURM); finished code shards live in the work area and are reused.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from dnd.atomic import atomic_dir, link_or_copy, write_json
from dnd.data import shards
from dnd.data.codes import CodeMapInfo, write_code_shard
from dnd.data.images import to_tensor
from dnd.launch import map_shards
from dnd.provenance import write_provenance

log = logging.getLogger("dnd.tokenize")


@dataclass(frozen=True)
class TokenizeTask:
    tokenizer: Path
    info: CodeMapInfo
    image_shard: Path
    code_shard: Path
    batch_size: int


def tokenize_shard(task: TokenizeTask) -> int:
    """Encode one image shard; returns the number of code maps written (0 when reused)."""
    from dnd.tokenizer.train import load_tokenizer

    if task.code_shard.exists():
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_tokenizer(task.tokenizer, device)
    table = pq.read_table(task.image_shard)
    labels = table["label"].to_pylist() if "label" in table.column_names else None
    info = task.info
    codes = [torch.zeros((0, info.height, info.width, info.depth), dtype=torch.int64)]
    for start in range(0, table.num_rows, task.batch_size):
        pngs = table["png"][start : start + task.batch_size].to_pylist()
        batch = torch.stack([to_tensor(shards.decode_png(png), model.config.in_channels) for png in pngs]).to(device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            codes.append(model.encode(batch).cpu())
    write_code_shard(task.code_shard, table["id"].to_pylist(), torch.cat(codes).numpy(), labels, info)
    return table.num_rows


def _image_side(dataset: Path) -> int:
    for split in shards.SPLITS:
        for record in shards.iter_records(dataset, split, columns=["png"]):
            return shards.decode_png(record["png"]).size[0]
    raise FileNotFoundError(f"{dataset} holds no images")


def tokenize_images(tokenizer: Path, name: str, dataset: Path, out_dir: Path, work_dir: Path, batch_size: int = 32) -> dict[str, Any]:
    from dnd.tokenizer.train import load_tokenizer

    model = load_tokenizer(tokenizer)
    side = _image_side(dataset)
    f = model.downsample_factor
    if side % f:
        raise ValueError(f"{dataset}: images of {side} px are not a multiple of tokenizer {name}'s factor f={f}")
    info = CodeMapInfo(side // f, side // f, model.config.depth, model.config.codebook_size, name)
    tasks = [
        TokenizeTask(tokenizer, info, shard, work_dir / "codes" / split / shard.with_suffix(".arrow").name, batch_size)
        for split in shards.SPLITS
        for shard in shards.split_shards(dataset, split)
    ]
    map_shards("tokenize_images", tokenize_shard, tasks, work_dir)
    counts: Counter = Counter()
    with atomic_dir(out_dir) as tmp:
        for task in tasks:
            split = task.code_shard.parent.name
            link_or_copy(task.code_shard, tmp / split / task.code_shard.name)
            counts[split] += pq.read_metadata(task.image_shard).num_rows
        manifest = {"tokenizer": name, "dataset": str(dataset), "code_map": info.__dict__, "maps": dict(counts)}
        write_json(tmp / "manifest.json", manifest)
        write_provenance(tmp, "tokenize_images", {"tokenizer": name, "batch_size": batch_size}, maps=dict(counts))
    log.info("tokenized %s with %s: %s code maps of %dx%dx%d", dataset, name, dict(counts), info.height, info.width, info.depth)
    return manifest
