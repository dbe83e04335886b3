"""Render prose onto fixed-size pages with Pillow (the Text-Image data set).

Layout is greedy word wrap at the font's real advance widths; a chunk that does not fit on one page
continues on the next, so no word is dropped, and each page's ground truth is exactly its drawn lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


@dataclass(frozen=True)
class RenderConfig:
    size: int = 512  # canvas side in pixels (the paper: 512)
    font_size: int = 32  # font size in pixels (the paper: 32 pt)
    margin: int = 20  # blank border on every side, pixels (the paper: 20 pt)
    font: str | None = None  # TTF path; None = DejaVu Sans as shipped with matplotlib
    mode: str = "L"  # "L" (grayscale, 8-bit) or "RGB"; black text on white either way

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


class PageLayout:
    """Greedy word wrap for one font and page geometry, with a cache of word widths."""

    def __init__(self, cfg: RenderConfig):
        self.cfg = cfg
        self.font = load_font(str(resolve_font_path(cfg.font)), cfg.font_size)
        ascent, descent = self.font.getmetrics()
        self.line_height = ascent + descent
        self.lines_per_page = max(1, (cfg.size - 2 * cfg.margin) // self.line_height)
        self.space = self.font.getlength(" ")
        self._widths: dict[str, float] = {}

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
            draw.text((cfg.margin, cfg.margin + row * self.line_height), line, fill="black", font=self.font)
        return image
