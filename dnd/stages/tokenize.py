"""`tokenize_images`: every split of an image data set through a trained tokenizer → Arrow code maps.

The code shards mirror the image shards one to one and fan out through the launcher (a process
pool locally, one job array on SLURM); finished code shards live in the work area and are reused.

Ten-crop augmentation (the authors' ImageNet recipe, `tokenize.ten_crop`): each training image is
resized by `ten_crop_scale` (bicubic) and cut into torchvision's ten crops of the original side
(4 corners + centre, and the same of the flipped image); the ten code maps are consecutive rows
and the transformer trainer draws one of them per sample. Validation and test splits keep one
code map per image.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, replace
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
from dnd.device import default_device

log = logging.getLogger("dnd.tokenize")


@dataclass(frozen=True)
class TokenizeTask:
    tokenizer: Path
    info: CodeMapInfo
    image_shard: Path
    code_shard: Path
    batch_size: int
    ten_crop_scale: float | None = None  # set: ten crops per image after resizing by this factor


def ten_crops(image, scale: float) -> list:
    """torchvision's ten crops of the original side, from the image resized by `scale` (PIL in, PIL out)."""
    from PIL import Image
    from torchvision.transforms.functional import ten_crop

    side = image.size[0]
    big = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), Image.Resampling.BICUBIC)
    return list(ten_crop(big, [side, side]))


def tokenize_shard(task: TokenizeTask) -> int:
    """Encode one image shard; returns the number of code maps written (0 when reused)."""
    from dnd.tokenizer.rqvae import load_tokenizer

    if task.code_shard.exists():
        return 0
    device = default_device()
    model = load_tokenizer(task.tokenizer, device)
    table = pq.read_table(task.image_shard)
    info = task.info
    k = info.crops_per_image
    ids = [f"{i}/crop{c}" if k > 1 else i for i in table["id"].to_pylist() for c in range(k)]
    labels = [label for label in table["label"].to_pylist() for _ in range(k)] if "label" in table.column_names else None
    codes = [torch.zeros((0, info.height, info.width, info.depth), dtype=torch.int64)]
    per_batch = max(1, task.batch_size // k)  # images per encoder batch, so that a batch holds ~batch_size maps
    for start in range(0, table.num_rows, per_batch):
        images = [shards.decode_png(png) for png in table["png"][start : start + per_batch].to_pylist()]
        if task.ten_crop_scale is not None:
            images = [crop for image in images for crop in ten_crops(image, task.ten_crop_scale)]
        batch = torch.stack([to_tensor(image, model.config.in_channels) for image in images]).to(device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            codes.append(model.encode(batch).cpu())
    write_code_shard(task.code_shard, ids, torch.cat(codes).numpy(), labels, info)
    return len(ids)


def _image_side(dataset: Path) -> int:
    for split in shards.SPLITS:
        for record in shards.iter_records(dataset, split, columns=["png"]):
            return shards.decode_png(record["png"]).size[0]
    raise FileNotFoundError(f"{dataset} holds no images")


def tokenize_images(tokenizer: Path, name: str, dataset: Path, out_dir: Path, work_dir: Path, batch_size: int = 32,
                    ten_crop_scale: float | None = None) -> dict[str, Any]:
    """Encode every split of `dataset`; with `ten_crop_scale`, the train split as ten crops per image."""
    from dnd.tokenizer.rqvae import load_tokenizer

    model = load_tokenizer(tokenizer)
    side = _image_side(dataset)
    f = model.downsample_factor
    if side % f:
        raise ValueError(f"{dataset}: images of {side} px are not a multiple of tokenizer {name}'s factor f={f}")
    if ten_crop_scale is not None and ten_crop_scale < 1:
        raise ValueError(f"tokenize.ten_crop_scale must be >= 1 (the crops keep the images' side), got {ten_crop_scale}")
    info = CodeMapInfo(side // f, side // f, model.config.depth, model.config.codebook_size, name)
    ten_crop_info = replace(info, crops_per_image=10)

    def task(split: str, shard: Path) -> TokenizeTask:
        code_shard = work_dir / "codes" / split / shard.with_suffix(".arrow").name
        if split == "train" and ten_crop_scale is not None:
            return TokenizeTask(tokenizer, ten_crop_info, shard, code_shard, batch_size, ten_crop_scale)
        return TokenizeTask(tokenizer, info, shard, code_shard, batch_size)

    tasks = [task(split, shard) for split in shards.SPLITS for shard in shards.split_shards(dataset, split)]
    map_shards("tokenize_images", tokenize_shard, tasks, work_dir)
    counts: Counter = Counter()
    with atomic_dir(out_dir) as tmp:
        for task in tasks:
            split = task.code_shard.parent.name
            link_or_copy(task.code_shard, tmp / split / task.code_shard.name)
            counts[split] += pq.read_metadata(task.image_shard).num_rows
        manifest = {"tokenizer": name, "dataset": str(dataset), "code_map": info.__dict__, "images": dict(counts),
                    "crops_per_image": {split: 10 if split == "train" and ten_crop_scale is not None else 1 for split in counts}}
        write_json(tmp / "manifest.json", manifest)
        write_provenance(tmp, "tokenize_images", {"tokenizer": name, "batch_size": batch_size, "ten_crop_scale": ten_crop_scale},
                         images=dict(counts))
    log.info("tokenized %s with %s: %s code maps of %dx%dx%d", dataset, name, dict(counts), info.height, info.width, info.depth)
    return manifest
