"""ImageShardDataset: PNG bytes in memory or memory-mapped from Arrow IPC copies of the shards."""

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from dnd.data import shards
from dnd.data.images import ImageShardDataset


def write_noise_dataset(root, per_shard=6, shard_count=2, side=48):
    """Noisy PNGs (incompressible: their bytes dominate what the data set holds)."""
    rng = np.random.default_rng(0)
    for index in range(shard_count):
        records = [
            {"id": f"{index}-{i}", "png": shards.encode_png(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))),
             "text": "", "title": "t", "split": "train"}
            for i in range(per_shard)
        ]
        shards.write_shard(root / "train" / shards.shard_name(index, shard_count), records, shards.image_schema())
    return root


def test_memory_mapped_pngs_match_in_memory_ones(tmp_path):
    data = write_noise_dataset(tmp_path / "data")
    in_memory = ImageShardDataset([data], "train", 3, resolution=32, crop=16)
    before = pa.total_allocated_bytes()
    mapped = ImageShardDataset([data], "train", 3, resolution=32, crop=16, cache_dir=tmp_path / "cache")
    png_bytes = sum(len(p) for p in in_memory.pngs.to_pylist())
    # the mapped set holds its PNG bytes in the page cache, not in Arrow's memory pool
    assert pa.total_allocated_bytes() - before < png_bytes / 4
    assert len(mapped) == len(in_memory) == 12 and mapped.meta["id"] == in_memory.meta["id"]
    for item in [0, 5, 6, 11, (7, (1, 2))]:
        torch.testing.assert_close(mapped[item], in_memory[item], rtol=0, atol=0)

    cached = sorted((tmp_path / "cache").glob("*.arrow"))
    assert len(cached) == 2
    stamps = [p.stat().st_mtime_ns for p in cached]
    ImageShardDataset([data], "train", 3, resolution=32, cache_dir=tmp_path / "cache")
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # made once per shard version, then reused

    write_noise_dataset(data, per_shard=3)  # the data set is rebuilt: its shards change, so do the copies
    assert len(ImageShardDataset([data], "train", 3, resolution=32, cache_dir=tmp_path / "cache")) == 6
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 4
