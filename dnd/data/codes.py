"""Code maps in Arrow IPC: what a tokenizer makes of every image, ready for transformer training.

One file per (split, shard): `<codes>/<split>/shard-00003-of-00008.arrow`, Arrow IPC *file* format
(memory-mappable), columns `id` (string), `label` (int32, null when the data set has none) and
`codes` (`fixed_size_list<uint16>[h·w·D]`, the code map flattened in (row, column, depth) order:
depth first, spatial second, as the paper orders it). The schema metadata records h, w, D, the
codebook size, the tokenizer and `crops_per_image`: 10 for a split tokenized with ten-crop
augmentation (the authors' ImageNet recipe), whose rows `i*10 … i*10+9` are the crops of image i. Plain `pyarrow` (or HF `datasets.Dataset.from_file`) reads it:

    import pyarrow as pa
    table = pa.ipc.open_file(pa.memory_map(path)).read_all()
    codes = table["codes"].combine_chunks().flatten().to_numpy().reshape(-1, h, w, D)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dnd.atomic import atomic_path


@dataclass(frozen=True)
class CodeMapInfo:
    height: int
    width: int
    depth: int
    codebook_size: int
    tokenizer: str = ""
    crops_per_image: int = 1  # 10: consecutive rows are the ten crops of one image (torchvision's ten_crop order)

    @property
    def length(self) -> int:
        return self.height * self.width * self.depth

    def to_metadata(self) -> dict[bytes, bytes]:
        return {b"dnd.code_map": json.dumps(self.__dict__, sort_keys=True).encode()}

    @classmethod
    def from_schema(cls, schema: pa.Schema) -> "CodeMapInfo":
        raw = (schema.metadata or {}).get(b"dnd.code_map")
        if raw is None:
            raise ValueError("not a dnd code-map file: schema metadata 'dnd.code_map' is missing")
        return cls(**json.loads(raw))


def code_schema(info: CodeMapInfo) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string()),
            pa.field("label", pa.int32()),
            pa.field("codes", pa.list_(pa.uint16(), info.length)),
        ],
        metadata=info.to_metadata(),
    )


def write_code_shard(path: Path, ids: list[str], codes: np.ndarray, labels: list[int | None] | None, info: CodeMapInfo) -> None:
    """codes: uint-like array (N, h, w, D) with values < codebook_size (≤ 65536)."""
    codes = np.asarray(codes)
    if codes.ndim != 4 or codes.shape[1:] != (info.height, info.width, info.depth):
        raise ValueError(f"code maps must be (N, {info.height}, {info.width}, {info.depth}), got {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= info.codebook_size):
        raise ValueError(f"codes outside [0, {info.codebook_size}) in {path}")
    if info.codebook_size > 65536:
        raise ValueError("uint16 code maps hold codebooks of at most 65536 entries")
    flat = pa.array(np.ascontiguousarray(codes, dtype=np.uint16).reshape(-1), pa.uint16())
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "label": pa.array(labels if labels is not None else [None] * len(ids), pa.int32()),
            "codes": pa.FixedSizeListArray.from_arrays(flat, info.length),
        },
        schema=code_schema(info),
    )
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=4096)


class CodeMapFile:
    """One Arrow code-map file, memory-mapped: `codes` is a zero-copy numpy view (N, h, w, D)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._source = pa.memory_map(str(self.path), "r")
        table = pa.ipc.open_file(self._source).read_all()
        self.info = CodeMapInfo.from_schema(table.schema)
        values = table["codes"].combine_chunks().flatten()  # zero-copy when the file has one chunk
        self.codes = values.to_numpy(zero_copy_only=False).reshape(-1, self.info.height, self.info.width, self.info.depth)
        self.ids = table["id"]
        self.labels = table["label"].to_numpy(zero_copy_only=False)

    def __len__(self) -> int:
        return self.codes.shape[0]


# torchvision's ten_crop order: 4 corners, centre, then the same five of the flipped image
CENTRE_CROP = 4


def draw_crops(count: int, crops: int, seed: int, step: int) -> np.ndarray:
    """Which crop each of a batch's `count` images uses at a training step: a pure function of
    (seed, step), so a resumed run draws the same crops as an uninterrupted one."""
    if crops == 1:
        return np.zeros(count, dtype=np.int64)
    return np.random.default_rng([seed, step, 0xC0DE]).integers(crops, size=count)


class CodeMapDataset:
    """All code maps of a split (several shards), indexable: item i → (codes (h, w, D) int64, label).

    Unlabelled data sets give label -1. A split tokenized with ten-crop augmentation has
    `crops_per_image` rows per image: `dataset[i]` is image i's centre crop, `dataset.get(i, crop)`
    any of them (the trainer draws one per sample with `draw_crops`).
    """

    def __init__(self, paths: list[Path]):
        if not paths:
            raise FileNotFoundError("no code-map shards given")
        self.files = [CodeMapFile(p) for p in paths]
        infos = {f.info for f in self.files}
        if len(infos) != 1:
            raise ValueError(f"code-map shards disagree on their shape/tokenizer: {infos}")
        self.info = infos.pop()
        self.crops = self.info.crops_per_image
        self._offsets = np.cumsum([0] + [len(f) for f in self.files])
        if self._offsets[-1] % self.crops:
            raise ValueError(f"{int(self._offsets[-1])} rows do not hold whole sets of {self.crops} crops: {paths}")

    def __len__(self) -> int:
        return int(self._offsets[-1]) // self.crops

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.get(index, CENTRE_CROP if self.crops == 10 else 0)

    def get(self, index: int, crop: int = 0) -> tuple[np.ndarray, int]:
        if not 0 <= crop < self.crops:
            raise IndexError(f"crop {crop} of {self.crops}")
        row = index * self.crops + crop
        file_index = int(np.searchsorted(self._offsets, row, side="right") - 1)
        local = row - int(self._offsets[file_index])
        source = self.files[file_index]
        label = source.labels[local]
        return source.codes[local].astype(np.int64), int(-1 if label is None or np.isnan(label) else label)


def code_shards(root: Path, split: str) -> list[Path]:
    return sorted((Path(root) / split).glob("shard-*.arrow"))


def read_info(root: Path) -> dict[str, Any]:
    return json.loads((Path(root) / "manifest.json").read_text())
