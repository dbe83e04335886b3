"""Render prose onto fixed-size pages with Pillow (the Text-Image data set).

Layout is greedy word wrap at the font's real advance widths; a chunk that does not fit on one page
continues on the next, so no word is dropped, and each page's ground truth is exactly its drawn lines.
With `layout: line` every line is an image of its own, centred vertically (short, large text for a
model trained in minutes); its label is that line.

The label must say what the image shows, so text meets the font first (`PageLayout.drawable`): a word
holding a character the font has no glyph for (it would be drawn as a box), or one of a script that
needs shaping or right-to-left ordering when Pillow has no raqm (it would be drawn unshaped, in the
wrong order), is dropped from both; invisible format characters the font lacks (zero-width joiners)
are removed. The caller counts what was dropped.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageDraw, ImageFont


LAYOUTS = ("page", "line")


@dataclass(frozen=True)
class RenderConfig:
    size: int = 512  # canvas side in pixels (the paper: 512)
    font_size: int = 32  # font size in pixels (the paper: 32 pt)
    margin: int = 20  # blank border on every side, pixels (the paper: 20 pt)
    font: str | None = None  # TTF path; None = DejaVu Sans as shipped with matplotlib
    mode: str = "L"  # "L" (grayscale, 8-bit) or "RGB"; black text on white either way
    # "page": as many lines as fit, from the top margin down (Text-Image); "line": one line per image,
    # centred vertically (the demo's rich-text line set: short code sequences a small model can learn)
    layout: str = "page"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"render.layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")

    @property
    def text_width(self) -> int:
        return self.size - 2 * self.margin


def default_font_path() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def resolve_font_path(font: str | None) -> Path:
    path = Path(font) if font else default_font_path()
    if not path.is_file():
        raise FileNotFoundError(f"font file not found: {path} (set data.text_image.render.font to a TTF path)")
    return path


@lru_cache(maxsize=8)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


@lru_cache(maxsize=8)
def font_codepoints(path: str) -> frozenset[int]:
    """Every code point the font maps to a glyph (its best Unicode cmap), read with fontTools."""
    from fontTools.ttLib import TTFont

    with TTFont(path, lazy=True, fontNumber=0) as font:
        return frozenset(font.getBestCmap() or ())


# Scripts that Pillow's basic layout draws wrongly: right-to-left (Hebrew, Arabic, Syriac, Thaana,
# N'Ko, …) or needing shaping (the Indic scripts, Sinhala, Tibetan, Myanmar, Khmer, Mongolian, …).
NEEDS_SHAPING = re.compile(
    "[\u0590-\u08ff\u0900-\u0dff\u0f00-\u109f\u1780-\u18af\u1900-\u1a9f\u1b00-\u1c4f"
    "\ua800-\uabff\ufb1d-\ufdff\ufe70-\ufefc]"
)


class Drawable(NamedTuple):
    text: str  # what will be drawn (and is the label)
    dropped_words: int
    dropped_chars: int  # characters of dropped words plus removed invisible ones
    missing: str  # the distinct characters that could not be drawn, in order of appearance


class PageLayout:
    """Greedy word wrap for one font and page geometry, with a cache of word widths."""

    def __init__(self, cfg: RenderConfig):
        self.cfg = cfg
        path = str(resolve_font_path(cfg.font))
        self.font = load_font(path, cfg.font_size)
        self.codepoints = font_codepoints(path)
        self.shapes = self.font.layout_engine == ImageFont.Layout.RAQM
        self._char_ok: dict[str, bool] = {" ": True}
        ascent, descent = self.font.getmetrics()
        self.line_height = ascent + descent
        self.lines_per_page = 1 if cfg.layout == "line" else max(1, (cfg.size - 2 * cfg.margin) // self.line_height)
        # the first line's top: the margin, or (one line per image) centred so the text sits mid-image
        self.top = (cfg.size - self.line_height) // 2 if cfg.layout == "line" else cfg.margin
        self.space = self.font.getlength(" ")
        self._widths: dict[str, float] = {}

    def _drawable_char(self, char: str) -> bool:
        ok = self._char_ok.get(char)
        if ok is None:
            ok = self._char_ok[char] = (char.isspace() or ord(char) in self.codepoints) and (
                self.shapes or not NEEDS_SHAPING.match(char)
            )
        return ok

    def drawable(self, text: str) -> Drawable:
        """`text` without the words the font cannot draw (and without invisible characters it lacks)."""
        if all(self._drawable_char(char) for char in set(text)):
            return Drawable(text, 0, 0, "")
        missing = "".join(dict.fromkeys(char for char in text if not self._drawable_char(char)))
        invisible = {char for char in missing if unicodedata.category(char) == "Cf"}
        kept, dropped_words, dropped_chars = [], 0, 0
        for word in text.split():
            stripped = "".join(char for char in word if char not in invisible) if invisible else word
            dropped_chars += len(word) - len(stripped)
            if all(self._drawable_char(char) for char in stripped):
                if stripped:
                    kept.append(stripped)
            else:
                dropped_words += 1
                dropped_chars += len(stripped)
        return Drawable(" ".join(kept), dropped_words, dropped_chars, missing)

    def width(self, word: str) -> float:
        width = self._widths.get(word)
        if width is None:
            width = self._widths[word] = self.font.getlength(word)
        return width

    def _split_long_word(self, word: str) -> list[str]:
        """Break a word wider than a line (a URL, a formula) into pieces that fit."""
        pieces, current = [], ""
        for char in word:
            if current and self.font.getlength(current + char) > self.cfg.text_width:
                pieces.append(current)
                current = char
            else:
                current += char
        return pieces + [current] if current else pieces

    def lines(self, text: str) -> list[str]:
        limit = self.cfg.text_width
        lines: list[str] = []
        current: list[str] = []
        current_width = 0.0
        for word in text.split():
            width = self.width(word)
            if width > limit:
                pieces = self._split_long_word(word)
                if current:
                    lines.append(" ".join(current))
                lines.extend(pieces[:-1])
                current, current_width = [pieces[-1]], self.width(pieces[-1])
                continue
            extra = width + (self.space if current else 0.0)
            if current and current_width + extra > limit:
                lines.append(" ".join(current))
                current, current_width = [word], width
            else:
                current.append(word)
                current_width += extra
        if current:
            lines.append(" ".join(current))
        return lines

    def pages(self, text: str) -> list[list[str]]:
        lines = self.lines(text)
        step = self.lines_per_page
        return [lines[i : i + step] for i in range(0, len(lines), step)]

    def draw(self, lines: list[str]) -> Image.Image:
        cfg = self.cfg
        image = Image.new(cfg.mode, (cfg.size, cfg.size), "white")
        draw = ImageDraw.Draw(image)
        for row, line in enumerate(lines):
            draw.text((cfg.margin, self.top + row * self.line_height), line, fill="black", font=self.font)
        return image
