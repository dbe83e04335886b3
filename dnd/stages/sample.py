"""`sample_images`: N images per class (or N unconditional) from a trained transformer, decoded by its tokenizer.

Labels: exactly `per_class` of each class, in an order shuffled by the sampling seed (never grouped by
class). The ADM evaluator scores IS over consecutive chunks of 5,000 samples: stored by class, each chunk
of a 50k ImageNet set would hold 100 classes and cap IS near 100. The authors (and ADM) draw labels at
random; a balanced, shuffled list gives every chunk the same random mix of classes while keeping the
class histogram equal to the reference's (a multinomial draw moves each class count by about ±7 at 50 per
class, a needless source of FID noise), and makes each class's images reproducible from the seed.

The label list is split into `shards` contiguous parts that fan out through the launcher (local
processes, or one SLURM job array for 50 000 samples); each shard seeds its batches from
(seed, shard, batch), so the samples depend on the seed and the shard layout only. Outputs:
`samples.npz` (ADM layout: `arr_0` uint8 (N, H, W, 3), `arr_1` labels), `grid.png`, optional
`png/<index>_<label>.png`, and `summary.json` (settings, parameter count, timing).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnd.atomic import atomic_dir, atomic_path, write_json
from dnd.data.images import save_grid, to_pil, to_uint8
from dnd.launch import map_shards
from dnd.metrics.adm import write_adm_batch_from_parts
from dnd.provenance import write_provenance
from dnd.transformer.generate import SamplingConfig
from dnd.device import default_device

log = logging.getLogger("dnd.sample")


@dataclass
class SampleSpec:
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    per_class: int = 50  # class-conditional models: images per class (the paper: 50 for 50 000 ImageNet samples)
    n: int = 250  # unconditional models: images in all (the paper's PPL-OCR: 250)
    batch_size: int = 32
    shards: int = 1  # the unit of parallelism (local processes or array tasks)
    save_png: bool = True  # also one PNG per image under png/
    # Which of the model file's weight sets to sample: "raw" (the trained weights; the authors' sampler) or
    # "ema" (their moving average, when the model was trained with train.ema_decay).
    weights: str = "raw"
    # The decode step under torch.compile (CUDA graphs): None = on GPU only, where per-kernel launch cost
    # dominates a one-position step; eager on CPU, where compiling costs more than it saves.
    compile: bool | None = None

    def __post_init__(self) -> None:
        from dnd.transformer.model import WEIGHT_SETS

        if self.weights not in WEIGHT_SETS:
            raise ValueError(f"weights must be one of {sorted(WEIGHT_SETS)}, got {self.weights!r}")

    def compiled_on(self, device: torch.device) -> bool:
        return self.compile if self.compile is not None else device.type == "cuda"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "SampleSpec":
        raw = dict(raw)
        sampling = SamplingConfig(**{k: raw.pop(k) for k in list(raw) if k in SamplingConfig.__dataclass_fields__})
        return cls(sampling=sampling, **raw)


@dataclass(frozen=True)
class SampleShardTask:
    model: Path
    tokenizer: Path
    labels: tuple[int, ...]  # -1 = unconditional
    index: int
    spec: SampleSpec
    out: Path


def sample_shard(task: SampleShardTask) -> dict[str, Any]:
    from dnd.tokenizer.rqvae import load_tokenizer
    from dnd.transformer.generate import generate
    from dnd.transformer.model import load_transformer

    if task.out.exists():
        with np.load(task.out) as done:
            return {"images": len(done["arr_1"]), "seconds": float(done["seconds"])}
    device = default_device()
    model = load_transformer(task.model, device, task.spec.weights)
    decoder = load_tokenizer(task.tokenizer, device)
    images, start_time = [], time.perf_counter()
    batch_size = task.spec.batch_size
    for b, first in enumerate(range(0, len(task.labels), batch_size)):
        labels = task.labels[first : first + batch_size]
        seed = int(np.random.SeedSequence([task.spec.sampling.seed, task.index, b]).generate_state(1)[0])
        cfg = SamplingConfig(**{**asdict(task.spec.sampling), "seed": seed})
        conditioning = torch.tensor(labels, device=device) if labels[0] >= 0 else len(labels)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            codes = generate(model, conditioning, cfg, compile=task.spec.compiled_on(device))
        with torch.no_grad():
            images.append(to_uint8(decoder.decode(codes).clamp(-1, 1).float()))
    seconds = time.perf_counter() - start_time
    stacked = np.concatenate(images) if images else np.zeros((0, 1, 1, 1), np.uint8)
    with atomic_path(task.out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, arr_0=stacked, arr_1=np.asarray(task.labels, np.int64), seconds=seconds)
    return {"images": len(stacked), "seconds": seconds}


LABEL_ORDER_STREAM = 1  # the label shuffle's generator: (seed, this); the batches' are (seed, shard, batch)


def label_list(num_classes: int, spec: SampleSpec) -> list[int]:
    """`per_class` labels of each class in an order shuffled by the sampling seed; -1 × n when unconditional."""
    if num_classes > 0:
        balanced = np.repeat(np.arange(num_classes), spec.per_class)
        order = np.random.default_rng([spec.sampling.seed, LABEL_ORDER_STREAM]).permutation(len(balanced))
        return balanced[order].tolist()
    return [-1] * spec.n


class GridPicks:
    """The images `save_grid` shows, picked while the samples stream past: the first 10 of each class
    (unconditional samples: the first 100), in sample order."""

    def __init__(self, per_class: int = 10, unconditional: int = 100):
        self.per_class, self.unconditional = per_class, unconditional
        self.images: list[np.ndarray] = []
        self.labels: list[int] = []
        self.counts: dict[int, int] = {}

    def offer(self, image: np.ndarray, label: int) -> None:
        limit = self.per_class if label >= 0 else self.unconditional
        if self.counts.get(label, 0) < limit:
            self.counts[label] = self.counts.get(label, 0) + 1
            self.images.append(image)
            self.labels.append(label)


def sample_images(model_path: Path, tokenizer: Path, spec: SampleSpec, out_dir: Path, work_dir: Path, names: dict[str, str]) -> dict[str, Any]:
    """Sample on the launcher's workers, one shard file each; this process reads the model file's header
    (not its weights) and streams the shards into `samples.npz`, never holding all images at once."""
    from dnd.modelfile import read_model_header

    config, params, header = read_model_header(model_path)
    weights = header.get("weights", {})
    if spec.weights == "ema" and "ema" not in weights:
        raise ValueError(f"sampling {names['sampling']!r} asks for weights: ema, but {model_path} holds no EMA weights "
                         "(trained without train.ema_decay)")
    labels = label_list(config["num_classes"], spec)
    parts = np.array_split(np.asarray(labels), max(1, spec.shards))
    tasks = [
        SampleShardTask(model_path, tokenizer, tuple(int(x) for x in part), i, spec, work_dir / f"shard-{i:05d}.npz")
        for i, part in enumerate(parts)
        if len(part)
    ]
    results = map_shards("sample_images", sample_shard, tasks, work_dir)
    seconds = sum(r["seconds"] for r in results)
    count = sum(r["images"] for r in results)

    with np.load(tasks[0].out) as first:
        height, width = first["arr_0"].shape[1:3]
    summary = {
        "model": names["model"], "sampling_name": names["sampling"], "sampling": asdict(spec.sampling),
        "variant": config["variant"], "params": params, "depth": config["depth"],
        "weights": spec.weights, "weights_step": weights.get(spec.weights, {}).get("step"),
        "weights_source": header.get("source", "trained"),
        "n_images": count, "seconds": seconds, "seconds_per_image": seconds / max(1, count),
        "device": default_device().type, "shards": len(tasks),
    }
    with atomic_dir(out_dir) as tmp:
        grid = GridPicks()

        def shard_parts():
            """Each shard read once, in order: its images go to the grid and the PNGs on the way, and
            (as RGB: the ADM layout repeats gray to 3 channels) with their labels into samples.npz."""
            index = 0
            for task in tasks:
                with np.load(task.out) as shard:
                    images, shard_labels = shard["arr_0"], shard["arr_1"]
                for image, label in zip(images, shard_labels):
                    grid.offer(image, int(label))
                    if spec.save_png:
                        (tmp / "png").mkdir(exist_ok=True)
                        to_pil(image).save(tmp / "png" / f"{index:06d}_{label}.png")
                    index += 1
                yield (np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images), shard_labels

        write_adm_batch_from_parts(tmp / "samples.npz", shard_parts(), count, (height, width, 3))
        save_grid(np.stack(grid.images), np.asarray(grid.labels), tmp / "grid.png")
        write_json(tmp / "summary.json", summary)
        write_provenance(tmp, "sample_images", {"spec": asdict(spec), **names}, seed=spec.sampling.seed)
    log.info("sampled %d images from %s (%s) in %.1f s", count, names["model"], names["sampling"], seconds)
    return summary
