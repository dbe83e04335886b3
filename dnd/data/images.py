"""Image data sets as tensors: the Parquet shards of one or more data sets, decoded on access.

PNG bytes stay compressed (an Arrow binary column); an item is decoded, converted to the
tokenizer's channels, resized to the training resolution and (optionally) randomly cropped from a
seed that the sampler passes with the index, so the data order and crops are a function of
(seed, step) alone and a resumed run sees exactly the batches it would have seen.

Where the PNG bytes live: in process memory by default (small sets, evaluation), or — given a
`cache_dir` (the trainers pass their work area) — in uncompressed Arrow IPC copies of the shards,
memory-mapped: a training set far larger than RAM (ImageNet's ~1.3M images) then costs page cache,
shared by the DataLoader workers, instead of resident memory per process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from dnd.atomic import atomic_path
from dnd.data.shards import decode_png, split_shards
from dnd.digests import cached_sha256


def mapped_png_column(shard: Path, cache_dir: Path) -> pa.ChunkedArray:
    """The shard's `png` column from a memory-mapped Arrow IPC copy in cache_dir (made once per shard content:
    a touched or copied shard finds its copy again)."""
    key = cached_sha256(shard, cache_dir)[:16]
    target = Path(cache_dir) / f"{shard.stem}-{key}.arrow"
    if not target.exists():
        source = pq.ParquetFile(shard)
        with atomic_path(target) as tmp:
            schema = pa.schema([pa.field("png", pa.binary())])
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                # row group by row group: memory bounded by one group (iter_batches reads the whole file ahead)
                for group in range(source.num_row_groups):
                    writer.write_table(source.read_row_group(group, columns=["png"]))
    return pa.ipc.open_file(pa.memory_map(str(target), "r")).read_all()["png"]


def to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    """PIL image → float tensor (C, H, W) in [-1, 1] with 1 (gray) or 3 (RGB) channels."""
    array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return torch.from_numpy(array / 127.5 - 1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] → uint8 (B, H, W, C), the layout PNGs and the ADM `.npz` use."""
    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).cpu().numpy()


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


class ImageShardDataset(torch.utils.data.Dataset):
    """Items: `(index, crop_seed)` → image tensor (C, size, size); or an int index → the full image."""

    def __init__(self, datasets: list[Path], split: str, channels: int, resolution: int | None, crop: int | None = None,
                 limit: int | None = None, columns: tuple[str, ...] = ("id", "text"), cache_dir: Path | None = None):
        pngs, extra = [], {name: [] for name in columns}
        for dataset in datasets:
            for shard in split_shards(Path(dataset), split):
                if cache_dir is None:
                    pngs.append(pq.read_table(shard, columns=["png"])["png"])
                else:
                    pngs.append(mapped_png_column(shard, cache_dir))
                table = pq.read_table(shard, columns=list(columns))
                for name in columns:
                    extra[name].extend(table[name].to_pylist())
        if not pngs or sum(len(chunk) for chunk in pngs) == 0:
            raise FileNotFoundError(f"no {split!r} images in {[str(d) for d in datasets]}")
        pngs = pa.chunked_array([c for chunk in pngs for c in chunk.chunks], pa.binary())
        # In memory: one contiguous array. Mapped: keep the chunks (combining them would copy into memory).
        self.pngs = pngs.combine_chunks() if cache_dir is None else pngs
        self.meta = extra
        self.channels, self.resolution, self.crop = channels, resolution, crop
        self.length = len(self.pngs) if limit is None else min(limit, len(self.pngs))

    def __len__(self) -> int:
        return self.length

    def image(self, index: int) -> Image.Image:
        image = decode_png(self.pngs[index].as_py())
        if self.resolution and image.size != (self.resolution, self.resolution):
            image = image.resize((self.resolution, self.resolution), Image.Resampling.LANCZOS)
        return image

    def __getitem__(self, item: int | tuple[int, tuple[int, ...]]) -> torch.Tensor:
        index, seed = item if isinstance(item, tuple) else (item, None)
        tensor = to_tensor(self.image(index), self.channels)
        if self.crop and seed is not None and self.crop < tensor.shape[-1]:
            rng = np.random.default_rng(seed)
            top, left = rng.integers(0, tensor.shape[-2] - self.crop + 1), rng.integers(0, tensor.shape[-1] - self.crop + 1)
            tensor = tensor[:, top : top + self.crop, left : left + self.crop]
        return tensor


def save_grid(images: np.ndarray, labels: np.ndarray, path: Path, max_images: int = 100) -> None:
    """Up to 10 images per class in rows (unconditional: the first 100 in a 10-wide grid)."""
    from torchvision.utils import make_grid  # torchvision takes a while to import: only here

    if labels.size and labels[0] >= 0:
        picks = [i for c in np.unique(labels) for i in np.flatnonzero(labels == c)[:10]]
    else:
        picks = list(range(min(max_images, len(images))))
    tensor = torch.from_numpy(images[picks]).permute(0, 3, 1, 2).float() / 127.5 - 1
    grid = make_grid(tensor, nrow=10, padding=2, pad_value=1.0)
    with atomic_path(path) as tmp:
        to_pil(to_uint8(grid[None])[0]).save(tmp, format="PNG")
