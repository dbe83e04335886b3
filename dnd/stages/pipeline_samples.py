"""Samples of a pretrained diffusers pipeline for the rich-text table: the paper's fine-tuned SDXL and SD3 rows.

`richtext.pipelines.<name>: {path, prompt, ...}` names a local folder written by `save_pretrained` (any
`DiffusionPipeline`: SDXL, SD3, an unconditional DDPM, ...), loaded with `local_files_only`: nothing is
downloaded. Settings reach `__call__` only where its signature has them; a setting the pipeline cannot take
(a prompt for an unconditional pipeline, say) stops the stage naming the key rather than being dropped.

Image i starts from its own generator seeded by (seed, i), on the CPU, so it does not depend on the batch
size, the shard layout or the device's random number generator. The N images split into `shards`
contiguous parts that fan out through the launcher like the transformer sampler's; the samples folder is
that sampler's format (`samples.npz` in the ADM layout, `grid.png`, `summary.json`, `provenance.json`), so
`evaluate_richtext` scores it unchanged. On CUDA the weights are float16 by default (SDXL's and SD3's usual
dtype; some pipelines turn their output into NumPy without a cast, which bfloat16 breaks), on CPU float32.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnd.atomic import atomic_dir, atomic_path, write_json
from dnd.config import ConfigError
from dnd.launch import map_shards
from dnd.metrics.adm import write_adm_batch
from dnd.provenance import write_provenance
from dnd.data.images import save_grid
from dnd.device import default_device

log = logging.getLogger("dnd.pipeline")

CONFIG_KEY = "richtext.pipelines"
SAMPLING_NAME = "pipeline"  # results/samples/<name>/pipeline
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class PipelineSpec:
    path: str  # local pipeline folder (model_index.json and the components' subfolders)
    prompt: str = ""  # the paper samples the fine-tuned models unconditionally: an empty prompt
    negative_prompt: str | None = None
    num_inference_steps: int | None = None  # None: the pipeline's default
    guidance_scale: float | None = None  # None: the pipeline's default
    resolution: int | None = None  # height = width; None: the pipeline's default
    n: int = 250  # images (the paper's PPL-OCR: 250)
    seed: int = 0
    batch_size: int = 4
    shards: int = 1  # parallel parts (local processes or SLURM array tasks)
    dtype: str = "auto"  # auto: float16 on CUDA, float32 on CPU
    extra: dict[str, Any] = field(default_factory=dict)  # further __call__ keyword arguments, passed as given

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError(f"{CONFIG_KEY}.*.dtype: {self.dtype!r} is not auto or one of {', '.join(DTYPES)}")


def check_pipeline_folder(name: str, spec: PipelineSpec) -> Path:
    """The pipeline folder, or a ConfigError naming the setting when it is not a saved diffusers pipeline."""
    key = f"{CONFIG_KEY}.{name}.path"
    root = Path(spec.path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{key}: {spec.path} is not a folder (expected a diffusers pipeline saved with save_pretrained)")
    if not (root / "model_index.json").is_file():
        raise ConfigError(f"{key}: no model_index.json in {root}: not a diffusers pipeline folder")
    return root


def image_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _dtype(spec: PipelineSpec, device: torch.device) -> torch.dtype:
    if spec.dtype != "auto":
        return DTYPES[spec.dtype]
    return torch.float16 if device.type == "cuda" else torch.float32


def load_pipeline(name: str, spec: PipelineSpec, device: torch.device) -> Any:
    from diffusers import DiffusionPipeline  # diffusers takes seconds to import: only here

    root = check_pipeline_folder(name, spec)
    try:
        pipe = DiffusionPipeline.from_pretrained(str(root), local_files_only=True, dtype=_dtype(spec, device))
    except (OSError, ValueError) as err:  # a component's weights missing, or the folder inconsistent
        raise ConfigError(f"{CONFIG_KEY}.{name}.path: cannot load a diffusers pipeline from {root}: {err}") from err
    pipe.set_progress_bar_config(disable=None)  # a bar on a terminal, none in batch logs
    return pipe.to(device)


def call_arguments(name: str, spec: PipelineSpec, pipe: Any) -> tuple[dict[str, Any], str | None]:
    """The fixed `__call__` keywords from the spec, and the keyword that sets the batch size (None: one at a time)."""
    accepted = inspect.signature(pipe.__call__).parameters
    wanted: dict[str, tuple[str, Any]] = {  # __call__ keyword → (config key, value); None = leave the default
        "negative_prompt": ("negative_prompt", spec.negative_prompt),
        "num_inference_steps": ("num_inference_steps", spec.num_inference_steps),
        "guidance_scale": ("guidance_scale", spec.guidance_scale),
        "height": ("resolution", spec.resolution),
        "width": ("resolution", spec.resolution),
        "prompt": ("prompt", spec.prompt if "prompt" in accepted else spec.prompt or None),  # "" = none for unconditional
        **{key: (f"extra.{key}", value) for key, value in spec.extra.items()},
    }
    kwargs = {}
    for keyword, (setting, value) in wanted.items():
        if value is None:
            continue
        if keyword not in accepted:
            raise ConfigError(f"{CONFIG_KEY}.{name}.{setting}: {type(pipe).__name__} takes no {keyword!r} argument")
        kwargs[keyword] = value
    if "generator" not in accepted:
        raise ConfigError(f"{CONFIG_KEY}.{name}.path: {type(pipe).__name__} takes no generator: its samples cannot be seeded")
    if "output_type" in accepted:
        kwargs["output_type"] = "np"
    batch_keyword = next((k for k in ("num_images_per_prompt", "batch_size") if k in accepted), None)
    return kwargs, batch_keyword


def to_uint8_images(images: Any) -> np.ndarray:
    """A pipeline's output images (float arrays in [0, 1], or PIL images) → uint8 (N, H, W, C)."""
    if isinstance(images, np.ndarray):
        array = images if images.ndim == 4 else images[..., None]
        return np.clip(np.round(array.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    arrays = [np.asarray(image) for image in images]
    return np.stack([a if a.ndim == 3 else a[..., None] for a in arrays]).astype(np.uint8)


@dataclass(frozen=True)
class PipelineShardTask:
    name: str
    spec: PipelineSpec
    indices: tuple[int, ...]  # global image indices: each image's seed
    out: Path  # the shard's .npz in the work area


def sample_pipeline_shard(task: PipelineShardTask) -> dict[str, Any]:
    if task.out.exists():
        with np.load(task.out) as done:
            return {"images": len(done["arr_0"]), "seconds": float(done["seconds"]), "params": int(done["params"]),
                    "pipeline_class": str(done["pipeline_class"])}
    device = default_device()
    pipe = load_pipeline(task.name, task.spec, device)
    kwargs, batch_keyword = call_arguments(task.name, task.spec, pipe)
    batch_size = task.spec.batch_size if batch_keyword else 1
    images, start_time = [], time.perf_counter()
    for first in range(0, len(task.indices), batch_size):
        indices = task.indices[first : first + batch_size]
        generators = [torch.Generator("cpu").manual_seed(image_seed(task.spec.seed, i)) for i in indices]
        batch = {batch_keyword: len(indices)} if batch_keyword else {}
        with torch.no_grad():
            output = pipe(**kwargs, **batch, generator=generators if len(generators) > 1 else generators[0])
        images.append(to_uint8_images(output.images))  # (b, H, W, C)
    seconds = time.perf_counter() - start_time
    params = sum(p.numel() for component in pipe.components.values() if isinstance(component, torch.nn.Module)
                 for p in component.parameters())
    stacked = np.concatenate(images)
    with atomic_path(task.out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, arr_0=stacked, seconds=seconds, params=params, pipeline_class=type(pipe).__name__)
    return {"images": len(stacked), "seconds": seconds, "params": params, "pipeline_class": type(pipe).__name__}


def sample_pipeline_images(name: str, spec: PipelineSpec, out_dir: Path, work_dir: Path) -> dict[str, Any]:
    """`spec.n` unconditional samples of the pipeline `name` → `out_dir` in the sampler's folder format."""
    check_pipeline_folder(name, spec)
    parts = np.array_split(np.arange(spec.n), max(1, spec.shards))
    tasks = [PipelineShardTask(name, spec, tuple(int(i) for i in part), Path(work_dir) / f"shard-{k:05d}.npz")
             for k, part in enumerate(parts) if len(part)]
    results = map_shards("sample_pipeline", sample_pipeline_shard, tasks, Path(work_dir))
    arrays = []
    for task in tasks:
        with np.load(task.out) as shard:
            arrays.append(shard["arr_0"])
    images = np.concatenate(arrays)
    rgb = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images  # (N, H, W, 3): the ADM layout
    labels = np.full(len(rgb), -1, np.int64)
    seconds = sum(r["seconds"] for r in results)
    settings = {k: v for k, v in asdict(spec).items() if k not in ("path", "shards", "batch_size")}
    summary = {
        "model": name, "sampling_name": SAMPLING_NAME, "sampling": {"temperature": None, **settings},
        "variant": results[0]["pipeline_class"], "params": results[0]["params"], "resolution": int(rgb.shape[1]),
        "n_images": len(rgb), "seconds": seconds, "seconds_per_image": seconds / max(1, len(rgb)),
        "device": default_device().type, "shards": len(tasks),
    }
    with atomic_dir(out_dir) as tmp:
        write_adm_batch(tmp / "samples.npz", rgb, labels)
        save_grid(rgb, labels, tmp / "grid.png")
        write_json(tmp / "summary.json", summary)
        write_provenance(tmp, "sample_pipeline_images", {"spec": asdict(spec), "name": name}, seed=spec.seed,
                         pipeline=str(spec.path))
    log.info("sampled %d images from the pipeline %s (%s) in %.1f s", len(rgb), name, summary["variant"], seconds)
    return summary
