"""The demo's class-labelled set: confusable capital letters rendered with Pillow, as an ImageFolder tree.

Why glyphs: the paper's Table 1a shows what deeper codes keep that depth-1 codes lose. On 8×8 digits
upscaled to 32 px there is little such detail. Here the classes differ by small strokes — O/Q/C/G/D by
a tail, a bar or a corner, E/F by the lower arm, P/R/B by a leg or a bowl — drawn in the fonts every
matplotlib install ships (its `mpl-data/fonts/ttf`: DejaVu, STIX, Computer Modern), at random height,
position and a small rotation, bright on a dark ground (like the digits), 8-bit gray.

Every image draws from its own generator seeded by (seed, class, index): the tree is the same bytes
for the same config, whatever the order it is written in. Fonts take turns (index mod the font count),
so each class holds each font equally often; the font is part of the file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dnd.atomic import atomic_dir
from dnd.data.shards import encode_png

# Capital letters whose classes hinge on fine strokes (O/Q/C/G/D, E/F, P/R/B).
DEFAULT_CLASSES = "BCDEFGOPQR"
# Regular, bold and slanted faces of the three families matplotlib ships (file names in its ttf folder).
DEFAULT_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
    "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmb10.ttf", "cmti10.ttf",
)
SUPERSAMPLE = 4    # glyphs are placed on a 4× canvas, then box-filtered down: sub-pixel positions, smooth edges
RENDER_PX = 96     # font size of the master rendering (before rotation and scaling)


@dataclass
class DemoGlyphsConfig:
    """`demo.glyphs`: which glyphs, in which fonts, how many, how varied."""

    classes: str = DEFAULT_CLASSES  # one class per character; the folder name is the character
    fonts: tuple[str, ...] = DEFAULT_FONTS  # font files in matplotlib's mpl-data/fonts/ttf
    per_class: int = 300  # images per class
    size: int = 32  # side in pixels
    seed: int = 0
    min_height: float = 0.5  # glyph ink height as a fraction of the side, drawn uniformly in [min, max]
    max_height: float = 0.85
    max_rotation: float = 10.0  # degrees, drawn uniformly in [-max, max]

    def __post_init__(self) -> None:
        self.fonts = tuple(self.fonts)  # YAML gives a list
        if len(set(self.classes)) != len(self.classes) or not self.classes or any(c.isspace() for c in self.classes):
            raise ValueError(f"demo.glyphs.classes must be distinct visible characters, got {self.classes!r}")
        if any(c in '/\\.:*?"<>|' for c in self.classes):
            raise ValueError(f"demo.glyphs.classes: {self.classes!r} holds a character unfit for a folder name")
        if not self.fonts:
            raise ValueError("demo.glyphs.fonts is empty")
        if not 0 < self.min_height <= self.max_height <= 1:
            raise ValueError(f"demo.glyphs: need 0 < min_height <= max_height <= 1, got {self.min_height}, {self.max_height}")


def matplotlib_font_dir() -> Path:
    """The fonts every matplotlib install ships (no system font is relied on)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=4096)
def _upright_mask(char: str, font: ImageFont.FreeTypeFont) -> Image.Image:
    """The glyph's coverage (0..255) at RENDER_PX, cropped to its ink (cached: rendering is the slow part)."""
    side = RENDER_PX * 3
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).text((side // 2, side // 2), char, font=font, fill=255, anchor="mm")
    bbox = mask.getbbox()
    if bbox is None:
        raise ValueError(f"font {Path(font.path).name} draws nothing for {char!r}")
    return mask.crop(bbox)


def _glyph_mask(char: str, font: ImageFont.FreeTypeFont, angle: float) -> Image.Image:
    """The glyph's coverage, rotated by `angle` degrees, cropped to its ink."""
    mask = _upright_mask(char, font).rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    return mask.crop(mask.getbbox())


def render_glyph(char: str, font: ImageFont.FreeTypeFont, cfg: DemoGlyphsConfig, rng: np.random.Generator) -> Image.Image:
    """One size×size gray image of `char`: random height, rotation, position and gray levels."""
    angle = rng.uniform(-cfg.max_rotation, cfg.max_rotation)
    height = rng.uniform(cfg.min_height, cfg.max_height)
    ink = _glyph_mask(char, font, angle)
    canvas = cfg.size * SUPERSAMPLE
    scale = min(height * canvas / ink.height, 0.95 * canvas / ink.width)  # wide glyphs stay inside too
    width, tall = max(1, round(ink.width * scale)), max(1, round(ink.height * scale))
    ink = ink.resize((width, tall), Image.Resampling.LANCZOS)
    left = int(rng.integers(0, canvas - width + 1))
    top = int(rng.integers(0, canvas - tall + 1))
    coverage = Image.new("L", (canvas, canvas), 0)
    coverage.paste(ink, (left, top))
    coverage = np.asarray(coverage.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0
    ground, stroke = rng.uniform(0, 40), rng.uniform(190, 255)  # mild contrast changes
    return Image.fromarray(np.rint(ground + (stroke - ground) * coverage).astype(np.uint8), mode="L")


def write_glyph_image_folder(out_dir: Path, cfg: DemoGlyphsConfig) -> Path:
    """Write `out_dir/<char>/<index>_<font>.png` for every class; `out_dir` is replaced whole."""
    font_dir = matplotlib_font_dir()
    fonts = [ImageFont.truetype(str(font_dir / name), RENDER_PX) for name in cfg.fonts]
    with atomic_dir(Path(out_dir)) as tmp:
        for label, char in enumerate(cfg.classes):
            folder = tmp / char
            folder.mkdir()
            for index in range(cfg.per_class):
                rng = np.random.default_rng([cfg.seed, label, index])
                font_index = index % len(fonts)
                image = render_glyph(char, fonts[font_index], cfg, rng)
                stem = Path(cfg.fonts[font_index]).stem
                (folder / f"{index:05d}_{stem}.png").write_bytes(encode_png(image))  # padded: name order = index order
    return Path(out_dir)
