"""Image data sets as tensors: the Parquet shards of one or more data sets, decoded on access.

PNG bytes stay compressed in memory (an Arrow binary column); an item is decoded, converted to the
tokenizer's channels, resized to the training resolution and (optionally) randomly cropped from a
seed that the sampler passes with the index, so the data order and crops are a function of
(seed, step) alone and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from dnd.data.shards import decode_png, split_shards


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
                 limit: int | None = None, columns: tuple[str, ...] = ("id", "text")):
        pngs, extra = [], {name: [] for name in columns}
        for dataset in datasets:
            for shard in split_shards(Path(dataset), split):
                table = pq.read_table(shard, columns=["png", *columns])
                pngs.append(table["png"])
                for name in columns:
                    extra[name].extend(table[name].to_pylist())
        if not pngs or sum(len(chunk) for chunk in pngs) == 0:
            raise FileNotFoundError(f"no {split!r} images in {[str(d) for d in datasets]}")
        self.pngs = pa.chunked_array([c for chunk in pngs for c in chunk.chunks], pa.binary()).combine_chunks()
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
