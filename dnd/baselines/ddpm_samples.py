"""The DDPM baseline's samples in the sampler's folder format (`samples.npz` in the ADM layout, `grid.png`,
`summary.json`, `provenance.json`), so they go through the same evaluation rules as the transformers'."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from dnd.atomic import atomic_dir, write_json
from dnd.data.images import save_grid
from dnd.metrics.adm import write_adm_batch
from dnd.provenance import file_sha256, write_provenance
from dnd.device import default_device

log = logging.getLogger("dnd.baselines.ddpm_samples")
SAMPLES_NAME = "samples.npz"
SUMMARY_NAME = "summary.json"




def sample_ddpm_images(model_path: Path, n: int, seed: int, batch_size: int, num_inference_steps: int | None,
                       out_dir: Path, names: dict[str, str]) -> dict[str, Any]:
    """`n` unconditional DDPM samples → `out_dir` in the sampler's folder format; returns its summary.

    `names`: "model" and "sampling" (the experiment names the table shows). Grayscale models are repeated
    to 3 channels, as the ADM layout requires. `num_inference_steps` None = the model's own setting.
    """
    from dnd.baselines.ddpm import load_ddpm, sample_ddpm  # diffusers takes seconds to import: only here

    model, cfg = load_ddpm(model_path, "cpu")
    steps = num_inference_steps or cfg.num_inference_steps
    device = default_device().type
    start_time = time.perf_counter()
    images = sample_ddpm(model_path, n, seed, batch_size, steps, device=device)  # (N, H, W, C) uint8
    seconds = time.perf_counter() - start_time
    rgb = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images  # (N, H, W, 3)
    labels = np.full(len(rgb), -1, np.int64)
    summary = {
        "model": names["model"], "sampling_name": names["sampling"],
        "sampling": {"temperature": None, "num_inference_steps": steps, "seed": seed},
        "variant": "ddpm", "params": sum(p.numel() for p in model.parameters()), "resolution": cfg.resolution,
        "n_images": len(rgb), "seconds": seconds, "seconds_per_image": seconds / max(1, len(rgb)), "device": device,
    }
    with atomic_dir(out_dir) as tmp:
        write_adm_batch(tmp / SAMPLES_NAME, rgb, labels)
        save_grid(rgb, labels, tmp / "grid.png")
        write_json(tmp / SUMMARY_NAME, summary)
        settings = {"n": n, "seed": seed, "batch_size": batch_size, "num_inference_steps": steps, **names}
        write_provenance(tmp, "sample_ddpm_images", settings, seed=seed, model=str(model_path),
                         model_sha256=file_sha256(Path(model_path)))
    log.info("sampled %d DDPM images from %s (%d steps) in %.1f s", len(rgb), names["model"], steps, seconds)
    return summary
