"""The class-labelled image set: an ImageNet-style folder tree → records with integer labels.

Layout: `root/<class name>/**/<image file>`. Class names sorted give labels 0..K-1 (torchvision's
ImageFolder order), files sorted by their path inside the class folder, so a tree always reads the
same way. The demo's stand-in for ImageNet is scikit-learn's bundled digits, written as such a tree.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from dnd.atomic import atomic_dir
from dnd.data.shards import encode_png

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


@dataclass(frozen=True)
class LabelledConfig:
    # Output side in pixels. Resize rule (ADM's, as LlamaGen uses for ImageNet): halve with a box filter
    # while the shorter side is at least 2×size, bicubic-resize the shorter side to `size`, centre-crop.
    size: int = 256
    grayscale: bool = False  # 8-bit gray ("L") instead of RGB

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"data.classes.size must be positive, got {self.size}")


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, then the central size×size square."""
    while min(image.size) >= 2 * size:
        image = image.resize((image.width // 2, image.height // 2), Image.Resampling.BOX)
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_image(path: Path, grayscale: bool) -> Image.Image:
    """Decode fully (a truncated file fails here, not later); transparency is composited on white."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return image.convert("L" if grayscale else "RGB")


def class_folders(root: Path) -> list[Path]:
    """Class subfolders sorted by name: their positions are the labels."""
    folders = [path for path in Path(root).iterdir() if path.is_dir() and not path.name.startswith(".")]
    if not folders:
        raise FileNotFoundError(f"no class folders under {root}: expected one subfolder of images per class")
    return sorted(folders, key=lambda path: path.name)


def list_images(root: Path, stats: Counter) -> tuple[list[str], list[tuple[Path, str, int]]]:
    """Class names in label order, and every image file as (path, id "<class>/<relative path>", label)."""
    classes, files = [], []
    for label, folder in enumerate(class_folders(root)):
        classes.append(folder.name)
        for relative in sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()):
            path = folder / relative
            if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
                stats["ignored_file"] += 1  # READMEs, checksums, hidden files
                continue
            files.append((path, f"{folder.name}/{relative}", label))
    return classes, files


def image_record(
    path: Path, image_id: str, label: int, cfg: LabelledConfig, stats: Counter, log: logging.Logger
) -> dict[str, Any] | None:
    """The record of one image file, or None (counted and logged) when it cannot be decoded."""
    try:
        image = load_image(path, cfg.grayscale)
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... for broken files
        stats["skipped_image:unreadable"] += 1
        log.warning("%s: skipped unreadable image: %s: %s", path, type(err).__name__, err)
        return None
    stats["images"] += 1
    png = encode_png(resize_center_crop(image, cfg.size))
    return {"id": image_id, "png": png, "text": "", "title": image_id.split("/", 1)[0], "label": label}


def iter_image_folder(root: Path, cfg: LabelledConfig, stats: Counter, log: logging.Logger) -> Iterator[dict[str, Any]]:
    """Yield id, png, text (""), title (class name) and label for every readable image, in a fixed order."""
    _, files = list_images(root, stats)
    for path, image_id, label in files:
        record = image_record(path, image_id, label, cfg, stats, log)
        if record is not None:
            yield record


@dataclass
class DemoDigitsConfig:
    """`demo.digits`: images per class (None = all 1,797) and the side they are upscaled to."""

    per_class: int | None = None
    size: int = 32


def write_digits_image_folder(out_dir: Path, per_class: int | None = None, upscale_to: int = 32) -> Path:
    """scikit-learn's digits (1797 images, 8×8, 10 classes, shipped with the package) as `out_dir/<digit>/<index>.png`.

    Gray levels 0..16 are scaled to 0..255 (bright strokes on black, as in the data set) and upscaled
    bilinearly to upscale_to×upscale_to: smooth strokes rather than 8×8 blocks. `per_class` keeps the
    first images of each class in data set order; None keeps all. `out_dir` is replaced whole.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8)
    written: Counter = Counter()
    with atomic_dir(Path(out_dir)) as tmp:
        for index, (image, target) in enumerate(zip(pixels, digits.target)):
            if per_class is not None and written[target] >= per_class:
                continue
            written[target] += 1
            path = tmp / str(target) / f"{index:04d}.png"  # zero-padded: name order is data set order
            path.parent.mkdir(exist_ok=True)
            upscaled = Image.fromarray(image).resize((upscale_to, upscale_to), Image.Resampling.BILINEAR)
            path.write_bytes(encode_png(upscaled))
    return Path(out_dir)
